"""`reswise frontier`: the Pareto front over runs on the same images, paired comparisons along
it and at equal FLOPs, the budget answer, and refusal of runs on other images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reswise import ReswiseError
from reswise.choose.frontier import pareto_front
from reswise.choose.policies import calib_heldout_split
from reswise.cli import main
from reswise.records import Records, SweepResult, summarize

N = 400


def _run(model, res_acc, params, *, fingerprint="same", seed=0, split=None, tmp=None):
    """A finished run whose top-1 at each resolution is about the given accuracy."""
    rng = np.random.default_rng(seed)
    res = [r for r, _, _ in res_acc]
    labels = np.arange(N) % 10
    correct = np.stack([rng.random(N) < acc for _, acc, _ in res_acc])
    top1 = np.where(correct, labels, (labels + 1) % 10)
    topk = np.stack([top1, (top1 + 2) % 10], axis=-1).astype(np.int32)
    rec = Records(res, np.arange(N), labels, topk, np.full((*topk.shape,), 0.5, np.float32),
                  np.ones(correct.shape, np.float32))  # fmt: skip
    flops = [{"resolution": r, "macs": m, "flops": 2 * m, "params": params,
              "flops_drop_pct": 0.0} for r, _, m in res_acc]  # fmt: skip
    meta = {"images_fingerprint": fingerprint}
    if split:
        meta["crop_auto"] = {"split": split}
    run = SweepResult(model, "w", "data", res[0], "short side to round(r / 0.875), centre crop",
                      "bilinear", summarize(rec, res[0], flops), rec, meta=meta)  # fmt: skip
    if tmp is not None:
        (tmp / model).mkdir()
        run.save(tmp / model)
        run.directory = str(tmp / model)
    return run


def _family(**kw):
    small = _run("small", [(224, 0.88, 385e6), (168, 0.79, 246e6), (112, 0.58, 107e6)], 4, **kw)
    big = _run("big", [(260, 0.91, 860e6), (176, 0.84, 377e6), (160, 0.78, 295e6)], 6,
               seed=1, **kw)  # fmt: skip
    return small, big


def test_front_neighbours_matched_pairs_and_budget():
    small, big = _family()
    f = pareto_front([small, big], budget_flops=2 * 400e6)
    front = [(p.model, p.resolution) for p in f.front]
    assert front[0] == ("small", 112) and front[-1] == ("big", 260)
    for a, b in zip(f.front, f.front[1:]):  # cheaper to dearer, each more accurate
        assert a.flops < b.flops and a.top1 < b.top1
    assert len(f.neighbours) == len(f.front) - 1
    for d in f.neighbours:
        lo, hi = d["diff_ci"]
        assert lo <= d["diff"] <= hi and d["distinguishable"] == (lo > 0 or hi < 0)
    # big @ 176 (377 M) and small @ 224 (385 M) cost the same within 5 %: compared, paired
    pair = [d for d in f.matched if "big @ 176" in d["a"] and "small @ 224" in d["b"]]
    assert len(pair) == 1 and pair[0]["flops_gap_pct"] < 0
    # at 400 MMACs only points up to 385 M fit; the best of them is named
    best = f.budget["best"]
    assert best["macs"] <= 400e6 and best["top1"] == max(
        p.top1 for p in f.points if p.flops <= 800e6
    )
    assert "Not distinguishable" in f.budget["answer"] or all(
        d["distinguishable"] for d in f.budget["ties"]
    )


def test_points_not_on_front_are_beaten_by_a_cheaper_one():
    small, big = _family()
    f = pareto_front([small, big])
    for p in f.points:
        cheaper = [q.top1 for q in f.points if q.flops <= p.flops and q is not p]
        assert p.on_front == (not cheaper or p.top1 > max(cheaper))


def test_frontier_refuses_runs_on_different_images(tmp_path, capsys):
    small, _ = _family()
    with pytest.raises(ReswiseError, match="other images"):
        pareto_front([small, _run("big", [(260, 0.9, 860e6)], 6, fingerprint="other")])
    _run("a", [(224, 0.9, 385e6)], 4, tmp=tmp_path)
    _run("b", [(260, 0.9, 860e6)], 6, fingerprint="other", tmp=tmp_path)
    assert main(["frontier", "--from", str(tmp_path / "a"), "--from", str(tmp_path / "b"),
                 "--out", str(tmp_path / "f")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "other images" in err


def test_crop_chosen_runs_are_reported_on_their_heldout_part_only(tmp_path, capsys):
    split = {"calib_frac": 0.5, "seed": 0, "n": N}
    small, big = _family(split=split, tmp=tmp_path)
    f = pareto_front([small, big])
    _, held = calib_heldout_split(N, 0.5, 0)
    assert f.n == len(held) and "held-out" in f.part
    p = next(p for p in f.points if p.model == "small" and p.resolution == 112)
    assert p.top1 == pytest.approx(100 * small.records.correct(112)[held].mean())
    other = _run("other", [(224, 0.9, 385e6)], 4, split={**split, "seed": 1})
    with pytest.raises(ReswiseError, match="different splits"):
        pareto_front([small, other])
    argv = ["frontier", "--from", str(tmp_path / "small"), "--from", str(tmp_path / "big"),
            "--budget-flops", "800M", "--out", str(tmp_path / "f"), "--json"]  # fmt: skip
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["budget"]["budget_flops"] == 8e8 and d["n"] == len(held)
    assert (tmp_path / "f" / "frontier.png").stat().st_size > 0


def test_points_at_100_and_0_percent_have_cis_that_hold_them(tmp_path):
    """Wilson's interval at n of n (or 0 of n) landed a hair off 100 (or 0) in floating point,
    outside the point itself: the plot then got negative error bars and a traceback."""
    _run("perfect", [(224, 1.0, 385e6), (112, 1.0, 107e6)], 4, tmp=tmp_path)
    _run("hopeless", [(260, 0.0, 860e6), (160, 0.0, 295e6)], 6, tmp=tmp_path)
    f = pareto_front([SweepResult.load(tmp_path / m) for m in ("perfect", "hopeless")])
    for p in f.to_dict()["points"]:
        lo, hi = p["top1_ci"]
        assert 0.0 <= lo <= p["top1"] <= hi <= 100.0
        assert (hi == 100.0) if p["top1"] == 100.0 else (lo == 0.0)
    out = tmp_path / "f"
    argv = ["frontier", "--from", str(tmp_path / "perfect"), "--from", str(tmp_path / "hopeless"),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[99.0, 100.0]" in (out / "frontier.md").read_text()


def _two_runs(tmp_path):
    _run("a", [(224, 0.9, 385e6)], 4, tmp=tmp_path)
    _run("b", [(260, 0.9, 860e6)], 6, tmp=tmp_path)
    return ["frontier", "--from", str(tmp_path / "a"), "--from", str(tmp_path / "b")]


def test_out_under_a_regular_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        # a run that does not exist: the --out check comes first, so it is the one named
        argv = ["frontier", "--from", str(tmp_path / "missing"), "--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"--out {out}" in err and "missing" not in err
    assert (tmp_path / "file").read_text() == "x"


def test_read_only_out_is_refused(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder; the write-failure test covers the path")
    argv = _two_runs(tmp_path)
    (tmp_path / "ro").mkdir(mode=0o555)
    assert main([*argv, "--out", str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not writable" in err and not list((tmp_path / "ro").iterdir())


def test_a_write_that_fails_is_one_line(tmp_path, capsys, monkeypatch):
    """What a full disk (or a folder that turns read-only once checked) does: every file is
    written atomically, and the failure is a one-line error naming --out."""
    import errno

    import reswise.choose.frontier as frontier

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    argv = _two_runs(tmp_path)
    monkeypatch.setattr(frontier, "write_atomic", full_disk)
    monkeypatch.setattr("reswise.records.report.write_atomic", full_disk)  # the plot's writer
    assert main([*argv, "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "No space left" in err and f"--out {tmp_path / 'f'}" in err
    assert not list((tmp_path / "f").iterdir())
