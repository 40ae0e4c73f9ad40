"""--crop-pct auto: the crop per resolution is chosen on calibration labels only, kept at the
model's default unless the gain is significant, assembled into one run, and its split enforced."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reswise import ReswiseError
from reswise.choose.choices import Budget, select
from reswise.choose.crops import assemble, choose_crops, crop_grid
from reswise.choose.policies import calib_heldout_split
from reswise.cli import main
from reswise.records import Records, SweepResult, summarize

from .conftest import IMAGENET_SAMPLE, make_imagefolder

RES = [224, 112]
N = 600


def _records(correct: np.ndarray, labels: np.ndarray, crop: float | None = None) -> Records:
    """Records whose top-1 is right exactly where ``correct[r, i]`` is True."""
    wrong = (labels + 1) % 10
    top1 = np.where(correct, labels[None], wrong[None])
    topk = np.stack([top1, (top1 + 2) % 10, (top1 + 3) % 10], axis=-1).astype(np.int32)
    prob = np.tile(np.array([0.6, 0.3, 0.1], np.float32), (*correct.shape, 1))
    ent = np.ones(correct.shape, np.float32)
    crops = None if crop is None else np.full(len(RES), crop)
    return Records(list(RES), np.arange(len(labels)), labels, topk, prob, ent, crops)


def _by_crop(seed: int = 0) -> tuple[dict[float, Records], np.ndarray]:
    """Default 0.875; at 112, crop 0.65 is right on 15 % more images, 1.0 on fewer."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, N)
    base = rng.random((len(RES), N)) < np.array([[0.88], [0.55]])
    better = base.copy()
    better[1] |= rng.random(N) < 0.35  # gains at 112 only
    worse = base & (rng.random((len(RES), N)) < 0.9)
    by_crop = {0.875: base, 0.65: better, 1.0: worse}
    return {c: _records(m, labels) for c, m in by_crop.items()}, labels


def _chosen(by_crop: dict[float, Records]) -> list[float]:
    return [row["crop_pct"] for row in choose_crops(by_crop, 0.875, calib_frac=0.5, seed=0)]


def test_a_significant_calibration_gain_changes_the_crop_only_there():
    by_crop, _ = _by_crop()
    choice = choose_crops(by_crop, 0.875, calib_frac=0.5, seed=0)
    assert [row["crop_pct"] for row in choice] == [0.875, 0.65]
    lo, hi = choice[1]["heldout_gain_ci"]
    assert choice[1]["heldout_gain"] > 0 and lo > 0
    assert choice[0]["heldout_gain"] == 0.0  # the default is compared with itself


def test_heldout_labels_do_not_move_the_choice():
    by_crop, labels = _by_crop()
    calib, held = calib_heldout_split(N, 0.5, 0)
    before = choose_crops(by_crop, 0.875, calib_frac=0.5, seed=0)
    for new_labels in (labels[held] + 5) % 10, np.zeros(len(held), np.int64):
        changed = labels.copy()
        changed[held] = new_labels  # held-out labels scrambled: the held-out report moves...
        moved = {c: _records(np.stack([r.correct(x) for x in RES]), changed) for c, r in
                 by_crop.items()}  # fmt: skip
        for c, rec in moved.items():  # keep every image's prediction, change only its label
            rec.topk_idx = by_crop[c].topk_idx
        after = choose_crops(moved, 0.875, calib_frac=0.5, seed=0)
        assert [r["crop_pct"] for r in after] == [r["crop_pct"] for r in before]
        assert [r["calib_top1_by_crop"] for r in after] == [r["calib_top1_by_crop"] for r in before]
        assert after[1]["heldout_top1"] != before[1]["heldout_top1"]
    # ...while calibration labels do decide: make the gaining crop wrong on calibration images
    changed = labels.copy()
    changed[calib] = (by_crop[0.65].topk_idx[1, calib, 0] + 1) % 10
    moved = {c: _records(np.zeros((len(RES), N), bool), changed) for c in by_crop}
    for c, rec in moved.items():
        rec.topk_idx = by_crop[c].topk_idx
    assert _chosen(moved)[1] != 0.65


def test_no_significant_gain_keeps_the_default():
    by_crop, labels = _by_crop()
    same = {c: by_crop[0.875] for c in by_crop}
    assert _chosen(same) == [0.875, 0.875]
    # a small gain on calibration (a few images) does not pass the one-sided test
    small = by_crop[0.875].topk_idx.copy()
    calib, _ = calib_heldout_split(N, 0.5, 0)
    wrong = calib[~by_crop[0.875].correct(112)[calib]][:4]
    small[1, wrong, 0] = labels[wrong]
    tweaked = Records(list(RES), by_crop[0.875].indices, labels, small,
                      by_crop[0.875].topk_prob, by_crop[0.875].entropy)  # fmt: skip
    assert tweaked.correct(112)[calib].sum() == by_crop[0.875].correct(112)[calib].sum() + 4
    assert _chosen({0.875: by_crop[0.875], 0.65: tweaked}) == [0.875, 0.875]


def test_grid_always_holds_the_default_once():
    assert crop_grid(0.875) == [0.65, 0.75, 0.875, 1.0]
    assert crop_grid(240 / 272) == [0.65, 0.75, 240 / 272, 1.0]  # 0.875 is the default here
    assert crop_grid(260 / 292) == [0.65, 0.75, 260 / 292, 1.0]
    assert crop_grid(0.875, "0.7,1") == [0.7, 0.875, 1.0]
    with pytest.raises(ReswiseError, match="--crop-grid"):
        crop_grid(0.875, "0.875")
    with pytest.raises(ReswiseError, match="--crop-grid"):
        crop_grid(0.875, "a,b")


def _run(rec: Records, crop: float) -> SweepResult:
    flops = [{"resolution": r, "macs": r * r, "flops": 2 * r * r, "params": 10,
              "flops_drop_pct": 100.0 * (1 - r * r / RES[0] ** 2)} for r in RES]  # fmt: skip
    return SweepResult(
        model="m",
        weights="w",
        dataset="d",
        reference=RES[0],
        policy=f"short side to round(r / {crop}), centre crop r x r (bilinear)",
        interpolation="bilinear",
        rows=summarize(rec, RES[0], flops),
        records=rec,
        timings={"total_s": 1.0, "eval_s": 2.0, "eval_s_by_res": [1.0, 1.0]},
        meta={"images_fingerprint": "abc"},
    )


def test_assembled_run_takes_each_resolution_from_its_chosen_crop():
    by_crop, _ = _by_crop()
    runs = {c: _run(rec, c) for c, rec in by_crop.items()}
    choice = choose_crops(by_crop, 0.875, calib_frac=0.5, seed=0)
    split = {"calib_frac": 0.5, "seed": 0, "n": N}
    run = assemble(runs, 0.875, choice, split)
    assert np.array_equal(run.records.topk_idx[0], by_crop[0.875].topk_idx[0])
    assert np.array_equal(run.records.topk_idx[1], by_crop[0.65].topk_idx[1])
    assert list(run.records.crop_pct) == [0.875, 0.65]
    assert run.meta["crop_pct_by_res"] == {"224": 0.875, "112": 0.65}
    assert [row["crop_pct"] for row in run.rows] == [0.875, 0.65]
    assert run.rows[1]["top1"] == pytest.approx(100 * by_crop[0.65].correct(112).mean())
    with pytest.raises(ReswiseError, match="--calib-frac 0.5 --seed 0"):
        select(run, Budget(seed=1))
    select(run, Budget(seed=0))  # the split it was chosen on


def test_whole_image_models_and_bn_recalibration_are_refused(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d")
    base = ["sweep", "--dataset", "imagefolder", "--data-root", str(data), "--resolutions",
            "32,16", "--crop-pct", "auto", "--random-init", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main([*base, "--model", "cifar_resnet20"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cifar_resnet20 resizes the whole image" in err
    assert main([*base, "--model", "mobilenet_v3_small", "--recalibrate-bn"]) == 2
    assert "--recalibrate-bn" in capsys.readouterr().err


@pytest.mark.slow
def test_auto_crop_sweep_end_to_end_and_its_split_is_enforced(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", n_per_class=4, size=(64, 48), fmt="jpg")
    out = tmp_path / "run"
    argv = ["sweep", "--model", "mobilenet_v3_small", "--random-init", "--dataset", "imagefolder",
            "--data-root", str(data), "--resolutions", "48,32", "--crop-pct", "auto",
            "--crop-grid", "0.7,1.0", "--out", str(out), "--no-progress", "--json"]  # fmt: skip
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d["crop_pct_by_res"]) == {"48", "32"}
    assert d["crop_auto"]["split"] == {"calib_frac": 0.5, "seed": 0, "n": 12}
    for c in (0.7, 0.875, 1.0):  # every crop's own run is kept, for the audit
        assert (out / "crops" / f"crop_{c:.4f}" / "results.json").is_file()
    from reswise.pipeline import load_run

    run = load_run(out)
    assert list(run.records.crop_pct) == [float(d["crop_pct_by_res"][k]) for k in ("48", "32")]
    assert main(["select", "--from", str(out), "--seed", "3"]) == 2
    assert "--seed 0" in capsys.readouterr().err
    assert main(["select", "--from", str(out)]) == 0


def test_a_stage_resizes_with_the_crop_chosen_at_its_resolution():
    from reswise.ship.adaptive import resize_policy

    pre = {"kind": "crop", "crop_pct": 0.875, "interpolation": "bilinear", "antialias": True,
           "crop_pct_by_res": {"112": 0.65, "224": 0.875}}  # fmt: skip
    assert resize_policy(pre, 112).crop_pct == 0.65
    assert resize_policy(pre, 224).crop_pct == 0.875
    assert resize_policy({**pre, "crop_pct_by_res": None}, 112).crop_pct == 0.875


@pytest.mark.slow
@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason="ImageNet sample not present")
def test_the_chosen_crops_travel_into_a_saved_policy(tmp_path, capsys):
    import shutil

    for wnid in sorted(p.name for p in IMAGENET_SAMPLE.iterdir())[:8]:
        shutil.copytree(IMAGENET_SAMPLE / wnid, tmp_path / "d" / wnid)
    out, pol = tmp_path / "run", tmp_path / "policy.json"
    argv = ["sweep", "--model", "efficientnet_lite0", "--pretrained", "--dataset", "imagefolder",
            "--data-root", str(tmp_path / "d"), "--resolutions", "224,112", "--crop-pct", "auto",
            "--crop-grid", "0.65,1.0", "--out", str(out), "--no-progress", "--json"]  # fmt: skip
    assert main(argv) == 0
    chosen = json.loads(capsys.readouterr().out)["crop_pct_by_res"]
    assert main(["select", "--from", str(out), "--max-drop", "50", "--save", str(pol)]) == 0
    pre = json.loads(pol.read_text())["preprocessing"]
    assert pre["crop_pct_by_res"] == chosen
