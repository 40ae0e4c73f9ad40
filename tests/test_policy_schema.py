"""One schema for the policy file (src/reswise/ship/policy.schema.json), checked on every load:
hand-edited or damaged files are refused in one line naming the field, through load_policy, the
CLI (export, latency) and the torch-free runtime; every file reswise writes passes."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reswise.errors import ReswiseError
from reswise.ship.policy_file import (
    BN_SOURCES,
    FORMAT,
    check_policy,
    load_bn_states,
    load_policy,
    save_policy,
)

from .conftest import CIFAR_JPEG, needs_shared
from .test_adaptive import _policy, _synthetic_run, shipped

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "src" / "reswise" / "ship" / "policy.schema.json"
DOCS_SCHEMA = ROOT / "docs" / "policy.schema.json"


def _saved(tmp: Path, bn: dict[int, str] | None = None) -> dict[str, Any]:
    """A policy as save_policy writes it (cascade 16 -> 32), read back as plain JSON."""
    bn = bn or {16: "weights", 32: "shared"}
    states = {r: {"bn1.running_mean": np.zeros(4, np.float32),
                  "bn1.running_var": np.ones(4, np.float32)} for r in (16, 32)}  # fmt: skip
    path = save_policy(_policy(_synthetic_run(), bn), tmp / "p.json", states)
    return json.loads(path.read_text())


def _set(p: dict, keys: str, value: Any) -> None:
    *head, last = keys.split(".")
    for k in head:
        p = p[k]
    p[last] = value


def _drop(p: dict, keys: str) -> None:
    *head, last = keys.split(".")
    for k in head:
        p = p[k]
    del p[last]


NAN, INF = float("nan"), float("inf")
# (what is wrong, the edit, what the one-line refusal must say)
BAD: list[tuple[str, Callable[[dict], None], str]] = [
    ("NaN threshold", lambda p: _set(p, "thresholds", [NAN]), "thresholds[0] is NaN"),
    ("Infinity threshold", lambda p: _set(p, "thresholds", [INF]), "thresholds[0] is Infinity"),
    ("thresholds not one fewer", lambda p: _set(p, "thresholds", [0.1, 0.2]), "thresholds has 2"),
    ("no weights.sha256", lambda p: _drop(p, "weights.sha256"), "weights.sha256 is missing"),
    ("weights.sha256 not hex", lambda p: _set(p, "weights.sha256", "abc"), "weights.sha256 is"),
    ("no preprocessing.kind", lambda p: _drop(p, "preprocessing.kind"),
     "preprocessing.kind is missing"),
    ("misspelt preprocessing field", lambda p: _set(p, "preprocessing.crop_pct_by_resolution", {}),
     "preprocessing.crop_pct_by_resolution is not a field"),
    ("NaN mean", lambda p: _set(p, "preprocessing.mean", [NAN, 0.5, 0.5]),
     "preprocessing.mean[0] is NaN"),
    ("a stage's bn missing", lambda p: _drop(p, "bn.16"), 'bn["16"] is missing'),
    ("bn of no stage", lambda p: _set(p, "bn.24", "shared"), 'bn["24"] names no stage'),
    ("unknown bn source", lambda p: _set(p, "bn.16", "mine"), 'bn["16"] is "mine"'),
    ("chain 33", lambda p: _set(p, "chain", 33), "chain is 33, not an array"),
    ("chain abc", lambda p: _set(p, "chain", "abc"), 'chain is "abc", not an array'),
    ("chain of floats", lambda p: _set(p, "chain", [16.0, 32]), "chain[0] is 16.0, not an integer"),
    ("chain descending", lambda p: _set(p, "chain", [32, 16]), "not strictly ascending"),
    ("flops empty", lambda p: _set(p, "flops", {}), "flops is empty"),
    ("flops lacks a stage", lambda p: _drop(p, "flops.16"), 'flops["16"] is missing'),
    ("flops not positive", lambda p: _set(p, "flops.32", 0), 'flops["32"] is 0'),
    ("unknown signal", lambda p: _set(p, "signal", "bogus"), 'signal is "bogus", not one of'),
    ("cascade without signal", lambda p: _set(p, "signal", None), "signal is null"),
    ("select of two stages", lambda p: _set(p, "kind", "select"), "chain has 2 item(s), at most 1 allowed (a select policy"),
    ("recalibrated without file", lambda p: (_set(p, "bn.16", "recalibrated"),
                                             _set(p, "bn_file", None)), "bn_file is null"),
    ("bn_file outside the folder", lambda p: _set(p, "bn_file", {"name": "../x.npz",
                                                                  "sha256": "0" * 64}),
     "bn_file.name is"),
    ("no heldout", lambda p: _drop(p, "heldout"), "heldout is missing"),
]  # fmt: skip


@pytest.mark.parametrize("edit,says", [(e, s) for _, e, s in BAD], ids=[b[0] for b in BAD])
def test_load_refuses_a_damaged_policy_naming_the_field(tmp_path: Path, edit, says):
    policy = _saved(tmp_path)
    edit(policy)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(policy))  # NaN / Infinity written as json.dumps writes them
    with pytest.raises(ReswiseError) as e:
        load_policy(path)
    msg = str(e.value)
    assert says in msg, msg
    assert msg.startswith(f"{path}: ") and "\n" not in msg and "--save" in msg


def test_a_newer_format_is_told_apart_from_no_policy(tmp_path: Path):
    policy = _saved(tmp_path)
    for fmt, says in (("reswise-policy/2", "newer reswise; upgrade"),
                      ("reswise-policy/0", "not a reswise policy"),
                      ("other", "not a reswise policy")):  # fmt: skip
        (tmp_path / "v.json").write_text(json.dumps({**policy, "format": fmt}))
        with pytest.raises(ReswiseError, match=says):
            load_policy(tmp_path / "v.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ReswiseError, match="not a reswise policy"):
        load_policy(tmp_path / "list.json")


def test_save_refuses_a_bad_policy_before_writing_anything(tmp_path: Path):
    policy = _policy(_synthetic_run(), {16: "recalibrated", 32: "shared"})
    policy["thresholds"] = [NAN]
    states = {16: {"bn1.running_mean": np.zeros(4, np.float32),
                   "bn1.running_var": np.ones(4, np.float32)}}  # fmt: skip
    with pytest.raises(ReswiseError, match=r"thresholds\[0\] is NaN"):
        save_policy(policy, tmp_path / "p.json", states)
    assert list(tmp_path.iterdir()) == []  # neither the JSON nor the .bn.npz


def _variants(tmp: Path) -> list[dict[str, Any]]:
    """Every shape of policy file the code writes: cascade on shared/weights BN, on recalibrated
    BN (with its .bn.npz), a select, a --crop-pct auto cascade with class names."""
    run = _synthetic_run()
    states = {16: {"bn1.running_mean": np.zeros(4, np.float32),
                   "bn1.running_var": np.ones(4, np.float32)}}  # fmt: skip
    out = []
    for i, bn in enumerate(({16: "weights", 32: "shared"}, {16: "recalibrated", 32: "shared"})):
        out.append(
            json.loads(save_policy(_policy(run, bn), tmp / f"c{i}.json", states).read_text())
        )
    select = _policy(run, {16: "weights", 32: "shared"})
    select.update(kind="select", chain=[16], thresholds=[], signal=None, bn={"16": "weights"})
    out.append(json.loads(save_policy(select, tmp / "s.json").read_text()))
    auto = _policy(run, {16: "shared", 32: "shared"})
    auto["preprocessing"].update(kind="crop", crop_pct_by_res={"16": 0.75, "32": 0.875},
                                 fast_path="conv-bn folded, channels-last")  # fmt: skip
    auto["class_names"] = [f"c{k}" for k in range(10)]
    out.append(json.loads(save_policy(auto, tmp / "a.json").read_text()))
    return out


def test_every_policy_the_code_writes_loads_back(tmp_path: Path):
    written = _variants(tmp_path)
    assert [p["kind"] for p in written] == ["cascade", "cascade", "select", "cascade"]
    assert written[1]["bn_file"]["name"] == "c1.bn.npz" and written[0]["bn_file"] is None
    for name, want in zip(("c0", "c1", "s", "a"), written):
        back = load_policy(tmp_path / f"{name}.json")
        assert {k: v for k, v in back.items() if k != "path"} == want
    assert list(load_bn_states(load_policy(tmp_path / "c1.json"))) == [16]
    # a file from before crop_pct_by_res (and without the informational fast_path) still loads
    old = copy.deepcopy(written[3])
    del old["preprocessing"]["crop_pct_by_res"], old["preprocessing"]["fast_path"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_policy(tmp_path / "old.json")["preprocessing"]["kind"] == "crop"


def _recalibrated(tmp: Path, bn: dict[int, str], arrays: dict[str, np.ndarray]) -> Path:
    """A recalibrated-BN policy whose .bn.npz holds ``arrays``, its sha256 kept consistent (the
    file was replaced whole, not damaged: the sha256 check alone would not see it)."""
    policy = _saved(tmp, bn)
    npz = tmp / "p.bn.npz"
    np.savez(npz, **arrays)
    policy["bn_file"]["sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    (tmp / "p.json").write_text(json.dumps(policy))
    return tmp / "p.json"


ONE, BOTH = {16: "recalibrated", 32: "shared"}, {16: "recalibrated", 32: "recalibrated"}
MEAN, VAR = np.zeros(4, np.float32), np.ones(4, np.float32)


@pytest.mark.parametrize(
    "bn,arrays,says",
    [
        (ONE, {"24/bn1.running_mean": MEAN, "24/bn1.running_var": VAR}, "for [24], but"),
        (BOTH, {"16/bn1.running_mean": MEAN, "16/bn1.running_var": VAR}, "for [16], but"),
        (BOTH, {"16/bn1.running_mean": MEAN, "16/bn1.running_var": VAR,
                "32/bn1.running_mean": MEAN}, "differ in bn1.running_var"),
        (ONE, {"abc": MEAN}, "'abc'"),
    ],
    ids=["keyed for another resolution", "a stage missing", "a tensor missing", "not keyed"],
)  # fmt: skip
def test_bn_statistics_for_other_stages_are_refused(tmp_path: Path, bn, arrays, says):
    policy = load_policy(_recalibrated(tmp_path, bn, arrays))
    with pytest.raises(ReswiseError) as e:
        load_bn_states(policy)
    assert says in str(e.value) and "\n" not in str(e.value) and "p.bn.npz" in str(e.value)


def test_the_schema_is_draft_2020_12_and_agrees_with_the_code():
    import jsonschema

    from reswise.data.policy import INTERPOLATIONS
    from reswise.records import SIGNALS
    from reswise.ship.policy_file import policy_schema

    schema = policy_schema()
    assert schema == json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    props = schema["properties"]
    assert props["format"]["const"] == FORMAT
    assert props["signal"]["enum"] == [*SIGNALS, None]
    assert props["bn"]["additionalProperties"]["enum"] == list(BN_SOURCES)
    assert props["preprocessing"]["properties"]["interpolation"]["enum"] == list(INTERPOLATIONS)


def test_the_docs_publish_the_packaged_schema():
    from fnmatch import fnmatch

    assert DOCS_SCHEMA.read_bytes() == SCHEMA.read_bytes()
    assert "(policy.schema.json)" in (ROOT / "docs" / "policy-schema.md").read_text()
    # the wheel carries it: a package-data glob matches (tomllib is 3.11+, the project 3.10+)
    toml = (ROOT / "pyproject.toml").read_text()
    line = re.search(r"^\[tool\.setuptools\.package-data\]\nreswise = \[(.*)\]$", toml, re.M)
    assert line and any(
        fnmatch("ship/policy.schema.json", g) for g in re.findall(r'"([^"]+)"', line[1])
    )


def test_checking_a_policy_imports_no_torch(tmp_path: Path):
    path = save_policy(
        _policy(_synthetic_run(), {16: "weights", 32: "shared"}), tmp_path / "p.json"
    )
    code = (
        "import sys\n"
        "from reswise.ship.policy_file import load_policy\n"
        f"assert load_policy({str(path)!r})['chain'] == [16, 32]\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def _exported_copy(tmp: Path) -> Path:
    """A folder shaped like `reswise export`'s (policy.json with graphs), the graphs stand-ins:
    the policy is checked before any graph is opened."""
    policy = _saved(tmp)
    out = tmp / "shipped"
    out.mkdir()
    files = {}
    for name in ("stage_16", "stage_32", "reference"):
        (out / f"{name}.onnx").write_bytes(name.encode())
        files[name] = {"file": f"{name}.onnx",
                       "sha256": hashlib.sha256(name.encode()).hexdigest()}  # fmt: skip
    policy["graphs"] = {
        "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "size": [32, 32]},
        "stages": [files["stage_16"], files["stage_32"]],
        "reference": files["reference"],
        "opset": 17,
        "onnxruntime": "1.0",
    }
    (out / "policy.json").write_text(json.dumps(policy))
    return out


RUNTIME_BAD: list[tuple[str, Callable[[dict], None], str]] = [
    ("no chain", lambda p: _drop(p, "chain"), "chain is missing"),
    ("no graphs", lambda p: _drop(p, "graphs"), "graphs is missing"),
    ("no graphs.input", lambda p: _drop(p, "graphs.input"), "graphs.input is missing"),
    ("a stage's graph missing", lambda p: p["graphs"]["stages"].pop(), "graphs.stages has 1"),
    ("input size", lambda p: _set(p, "graphs.input.size", [28, 28]), "graphs.input.size is"),
    ("NaN threshold", lambda p: _set(p, "thresholds", [NAN]), "thresholds[0] is NaN"),
    ("graph outside the folder", lambda p: _set(p, "graphs.reference.file", "/etc/x.onnx"),
     "graphs.reference.file is"),
]  # fmt: skip


@pytest.mark.parametrize("edit,says", [(e, s) for _, e, s in RUNTIME_BAD],
                         ids=[b[0] for b in RUNTIME_BAD])  # fmt: skip
def test_runtime_refuses_a_hand_edited_export(tmp_path: Path, edit, says):
    from reswise.ship.runtime import OnnxCascade

    out = _exported_copy(tmp_path)
    policy = json.loads((out / "policy.json").read_text())
    check_policy(policy, "policy.json", exported=True)  # the untouched copy passes
    edit(policy)
    (out / "policy.json").write_text(json.dumps(policy))
    with pytest.raises(ReswiseError) as e:
        OnnxCascade(out)
    msg = str(e.value)
    assert says in msg and "\n" not in msg and "reswise export --policy" in msg, msg


# ---- on real images: the faults as a user met them, through the CLI ----------------------------


@functools.lru_cache(maxsize=1)
def _real() -> dict[str, Any]:
    _, path, _, _ = shipped()
    return json.loads(Path(path).read_text())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reswise", *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@needs_shared
def test_real_policies_round_trip_and_their_export_validates(tmp_path: Path):
    from .test_runtime import exported

    _, path, _, _ = shipped()
    policy = load_policy(path)
    again = save_policy(policy, tmp_path / "again.json")
    assert load_policy(again)["thresholds"] == policy["thresholds"]
    assert "path" not in json.loads(again.read_text())  # where it was read from is not written
    out, _ = exported()
    shipped_copy = json.loads((out / "policy.json").read_text())
    assert check_policy(shipped_copy, "policy.json", exported=True)["graphs"]["check"]
    assert math.isfinite(shipped_copy["thresholds"][0])


@needs_shared
@pytest.mark.parametrize(
    "command,edit,says",
    [
        ("export", lambda p: _set(p, "thresholds", [NAN, NAN]), "thresholds[0] is NaN"),
        ("latency", lambda p: _set(p, "thresholds", [NAN, NAN]), "thresholds[0] is NaN"),
        ("export", lambda p: _drop(p, "weights.sha256"), "weights.sha256 is missing"),
    ],
    ids=["export NaN", "latency NaN", "export no sha256"],
)
def test_cli_refuses_a_damaged_policy_in_one_line(tmp_path: Path, command, edit, says):
    policy = copy.deepcopy(_real())
    edit(policy)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(policy))
    if command == "export":
        p = _cli("export", "--policy", str(bad), "--out", str(tmp_path / "out"),
                 "--check-size", "64")  # fmt: skip
    else:
        p = _cli("latency", "--policy", str(bad), "--data-root", str(CIFAR_JPEG / "test"),
                 "--limit", "64", "--batch-size", "32", "--backend", "onnxruntime")  # fmt: skip
    assert p.returncode == 2, p.stdout[-400:] + p.stderr[-800:]
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert says in p.stderr and str(bad) in p.stderr
    assert not (tmp_path / "out").exists()  # nothing exported
