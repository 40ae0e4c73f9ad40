"""Runs and policies say which images and which weights they were made with, so they can be
found again: a policy from a `--limit --seed` sweep is timed on its own images, and two runs
of one model with other weights are told apart (by name in tables, by sha256 in files)."""

from __future__ import annotations

import functools
import json
import re
import tempfile
from pathlib import Path

from reswise.cli import main

from .conftest import CIFAR_JPEG, needs_shared

MODEL = "cifar_resnet20"
TAGS = ("reswise_jpeg", "reswise_jpeg_multires_v2")
DATA = CIFAR_JPEG / "test"
LIMIT, SEED = 600, 3  # a subset seed other than the choosing commands' default split seed (0)


@functools.lru_cache(maxsize=1)
def runs() -> dict[str, Path]:
    """One sweep per weights tag of MODEL on the same `--limit 600 --seed 3` CIFAR JPEGs."""
    tmp = Path(tempfile.mkdtemp(prefix="reswise_identity_"))
    out = {}
    for tag in TAGS:
        out[tag] = tmp / tag
        argv = ["sweep", "--model", MODEL, "--pretrained", tag, "--dataset", "imagefolder",
                "--data-root", str(DATA), "--resolutions", "32,24,16", "--limit", str(LIMIT),
                "--seed", str(SEED), "--backend", "eager", "--out", str(out[tag]),
                "--json"]  # fmt: skip
        assert main(argv) == 0
    return out


def _save_cascade(run: Path, policy: Path, *extra: str) -> dict:
    argv = ["cascade", "--from", str(run), "--max-drop", "5", "--save", str(policy), "--json"]
    assert main([*argv, *extra]) == 0
    return json.loads(policy.read_text())


def _latency(policy: Path) -> list[str]:
    return ["latency", "--policy", str(policy), "--data-root", str(DATA), "--limit", "64",
            "--batch-size", "32", "--backend", "eager", "--warmup", "1", "--json"]  # fmt: skip


@needs_shared
def test_a_policy_from_a_limit_seed_sweep_is_timed_on_its_own_images(tmp_path, capsys):
    run = runs()[TAGS[0]]
    meta = json.loads((run / "results.json").read_text())
    assert meta["images_limit"] == LIMIT and meta["images_seed"] == SEED
    # the choosing command splits with its own --seed (default 0), not the sweep's subset seed
    policy = _save_cascade(run, tmp_path / "p.json")
    assert policy["split"]["seed"] == 0
    assert policy["images"]["seed"] == SEED and policy["images"]["limit"] == LIMIT
    capsys.readouterr()
    assert main(_latency(tmp_path / "p.json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 64 and {r["batch_size"] for r in out["rows"]} == {32}
    assert {r["model"] for r in out["rows"]} == {"fixed", "adaptive"}


@needs_shared
def test_an_old_policy_without_the_subset_seed_gets_a_one_line_error(tmp_path, capsys):
    """Written before policies recorded the sweep's subset: its split seed (0) is not the
    subset's (3), so the images do not match; the error says so and names the way out."""
    run = runs()[TAGS[0]]
    policy = _save_cascade(run, tmp_path / "p.json")
    for key in ("seed", "limit"):
        policy["images"].pop(key, None)
    (tmp_path / "p.json").write_text(json.dumps(policy))
    capsys.readouterr()
    assert main(_latency(tmp_path / "p.json")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not the ones" in err and "--seed" in err


@needs_shared
def test_a_run_records_the_sha256_its_policies_check_weights_by(tmp_path):
    from reswise.measure.progress import weights_sha256
    from reswise.models import create_model
    from reswise.ship.adaptive import state_sha256

    digests = []
    for tag in TAGS:
        meta = json.loads((runs()[tag] / "results.json").read_text())
        policy = _save_cascade(runs()[tag], tmp_path / f"{tag}.json")
        assert meta["weights_sha256"] == policy["weights"]["sha256"]
        lm = create_model(MODEL, pretrained=tag)
        assert weights_sha256(lm.model, lm.extra.per_resolution) == state_sha256(lm)
        digests.append(meta["weights_sha256"])
    assert len(set(digests)) == 2 and all(re.fullmatch(r"[0-9a-f]{64}", d) for d in digests)


def _table_cells(md: str, column: str) -> list[str]:
    """The cells of one column of the first markdown table in ``md``."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    i = head.index(column)
    return [[c.strip() for c in ln.strip("|").split("|")][i] for ln in lines[2:]]


@needs_shared
def test_frontier_tells_two_weights_of_one_model_apart(tmp_path, capsys):
    a, b = (str(runs()[t]) for t in TAGS)
    capsys.readouterr()
    assert main(["frontier", "--from", a, "--from", b, "--out", str(tmp_path / "f"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    md = (tmp_path / "f" / "frontier.md").read_text()
    weights = _table_cells(md, "weights")
    assert len(weights) == 6 and {w.split()[0] for w in weights} == set(TAGS)
    names = {p["name"] for p in d["points"]}
    assert names == {f"{MODEL} ({t})" for t in TAGS}
    assert {p["weights_sha256"] for p in d["points"]} == {
        json.loads((runs()[t] / "results.json").read_text())["weights_sha256"] for t in TAGS
    }
    # one model with two weights: the same FLOPs at each resolution, compared pairwise
    assert len(d["matched_flops"]) == 3


@needs_shared
def test_compare_rows_name_model_and_weights(capsys):
    a, b = (runs()[t] for t in TAGS)
    capsys.readouterr()
    assert main(["compare", "--from", str(a), "--add", f"multires={b}", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    run_of = {r["policy"]: r["run"] for r in d["rows"]}
    assert run_of["fixed"] == f"{MODEL} ({TAGS[0]})"
    assert run_of["multires cascade"] == f"{MODEL} ({TAGS[1]})"
    cells = set(_table_cells((a / "compare.md").read_text(), "Run"))
    assert cells == {f"{MODEL} ({t})" for t in TAGS}
