"""The policy file and reswise.AdaptiveClassifier: round trip, refusal of other weights, and
per-image agreement with the records-based simulation on real CIFAR-10 (JPEG copy) images."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from reswise.errors import ReswiseError
from reswise.records import Records, SweepResult
from reswise.ship.policy_file import (
    build_policy,
    heldout_positions,
    load_bn_states,
    load_policy,
    save_policy,
    simulate,
)

from .conftest import CIFAR_JPEG, needs_shared

MODEL, TAG = "cifar_resnet20", "reswise_jpeg_multires_v2"
CHAIN = [20, 24, 32]


@functools.lru_cache(maxsize=1)
def shipped() -> tuple[object, Path, torch.Tensor, object]:
    """A real sweep (1 000 test images, 32/24/20), a cascade policy from it that escalates
    about a third of the images at each step, the images themselves and the model."""
    import reswise
    from reswise.choose.choices import Budget
    from reswise.choose.policies import calib_heldout_split, evaluate_cascade
    from reswise.data import load_dataset
    from reswise.ship.adaptive import save_choice

    tmp = Path(tempfile.mkdtemp(prefix="reswise_ship_"))
    cfg = reswise.SweepConfig(model=MODEL, pretrained=TAG, dataset="imagefolder",
                              data_root=str(CIFAR_JPEG / "test"), resolutions=CHAIN, limit=1000,
                              out=str(tmp / "run"))  # fmt: skip
    run = reswise.run_sweep(cfg)
    budget = Budget()
    calib, held = calib_heldout_split(run.n, budget.calib_frac, budget.seed)
    # thresholds at calibration quantiles, so every stage answers some images
    cal = run.records.subset(calib)
    ts = [float(np.quantile(cal.confidence(r, "margin"), 0.35)) for r in CHAIN[:-1]]
    found = evaluate_cascade(run.records, run.flops, 32, CHAIN, ts, "margin", idx=held).to_dict()
    found.update(n_calib=len(calib), n_heldout=len(held))
    path = tmp / "policy.json"
    save_choice(run, found, budget, path)
    data = load_dataset("imagefolder", str(CIFAR_JPEG / "test"), limit=1000, seed=0)
    lm = reswise.create_model(MODEL, pretrained=TAG)
    return run, path, data.get(torch.arange(len(data))), lm


def _synthetic_run(n: int = 40) -> SweepResult:
    rng = np.random.default_rng(0)
    prob = np.sort(rng.dirichlet(np.ones(10), (2, n)), axis=2)[:, :, ::-1][:, :, :5]
    rec = Records([32, 16], np.arange(n), rng.integers(0, 10, n),
                  rng.integers(0, 10, (2, n, 5)).astype(np.int32), prob.astype(np.float32),
                  rng.random((2, n)).astype(np.float32))  # fmt: skip
    rows = [{"resolution": r, "flops": f} for r, f in ((32, 100), (16, 25))]
    return SweepResult("m", "m.tag", "/data", 32, "whole image", "bilinear", rows, rec,
                       meta={"images_fingerprint": "abc", "dataset_kind": "imagefolder"})  # fmt: skip


def _policy(run: SweepResult, bn: dict[int, str]) -> dict:
    found = {"chain": [16, 32], "thresholds": [0.5], "signal": "margin", "top1": 80.0,
             "reference_top1": 81.0, "acc_drop_pct": 1.0, "acc_drop_ci": [0.1, 1.9],
             "flops_drop_pct": 40.0, "stage_share_pct": [60.0, 40.0], "n_calib": 20,
             "n_heldout": 20, "calib_upper_bound": 0.9}  # fmt: skip
    budget = {"max_drop": 1.0, "confidence": 0.95, "calib_frac": 0.5, "seed": 0}
    pre = {"kind": "full", "crop_pct": 0.875, "interpolation": "bilinear", "antialias": True,
           "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 32}  # fmt: skip
    weights = {"name": "m.tag", "source": {"pretrained": "tag"}, "sha256": "f" * 64}
    return build_policy(run, found, budget, weights=weights, preprocessing=pre, bn_source=bn)


def test_policy_round_trip_with_recalibrated_bn(tmp_path: Path):
    run = _synthetic_run()
    policy = _policy(run, {16: "recalibrated", 32: "shared"})
    states = {16: {"bn1.running_mean": np.arange(4, dtype=np.float32)}}
    path = save_policy(policy, tmp_path / "p.json", states)
    back = load_policy(path)
    for key in ("chain", "thresholds", "signal", "bn", "weights", "preprocessing", "split",
                "images", "heldout", "budget", "flops", "reference"):  # fmt: skip
        assert back[key] == json.loads(json.dumps(policy[key])), key
    assert back["images"]["fingerprint"] == "abc" and back["split"]["calib_frac"] == 0.5
    assert np.array_equal(load_bn_states(back)[16]["bn1.running_mean"], np.arange(4))
    assert len(heldout_positions(back)) == 20
    # the records-based simulation reads the file's chain and thresholds
    pred, res = simulate(back, run.records)
    assert set(np.unique(res)) <= {16, 32} and pred.shape == (40,)
    # BN statistics changed behind the file's back are refused
    np.savez(tmp_path / "p.bn.npz", **{"16/bn1.running_mean": np.zeros(4, np.float32)})
    with pytest.raises(ReswiseError, match="changed since"):
        load_bn_states(back)


def test_policy_needs_the_recalibrated_statistics_it_names(tmp_path: Path):
    policy = _policy(_synthetic_run(), {16: "recalibrated", 32: "shared"})
    with pytest.raises(ReswiseError, match="--recalibrate-bn"):
        save_policy(policy, tmp_path / "p.json", None)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ReswiseError, match="not a reswise policy"):
        load_policy(tmp_path / "bad.json")


@needs_shared
def test_module_agrees_with_records_simulation_on_real_images():
    from reswise.ship.adaptive import AdaptiveClassifier

    run, path, images, lm = shipped()
    policy = load_policy(path)
    assert policy["bn"] == {"20": "weights", "24": "weights", "32": "shared"}
    net = AdaptiveClassifier(policy, lm)
    preds, ress = [], []
    for s in range(0, len(images), 250):  # ragged sub-batches at every stage
        out = net(images[s : s + 250])
        preds.append(out.logits.argmax(1))
        ress.append(out.resolution)
    pred, res = torch.cat(preds).numpy(), torch.cat(ress).numpy()
    want_pred, want_res = simulate(policy, run.records)
    idx = run.records.indices
    assert len(np.unique(res)) == 3  # every stage answered some images
    assert np.mean(pred[idx] == want_pred) >= 0.999
    assert np.mean(res[idx] == want_res) >= 0.999
    # float input in [0, 1] goes through the same stages
    out = net(images[:8].float() / 255.0)
    assert out.logits.shape == (8, 10) and set(out.resolution.tolist()) <= set(CHAIN)


@needs_shared
def test_module_refuses_other_weights():
    import reswise
    from reswise.ship.adaptive import AdaptiveClassifier

    _, path, _, lm = shipped()
    other = reswise.create_model(MODEL)  # the single-resolution weights
    with pytest.raises(ReswiseError) as e:
        AdaptiveClassifier(path, other)
    msg = str(e.value)
    assert "\n" not in msg and "sha256" in msg and "--save" in msg
    policy = load_policy(path)
    assert policy["weights"]["sha256"][:16] in msg
    policy = {**policy, "weights": {**policy["weights"], "sha256": "0" * 64}}
    with pytest.raises(ReswiseError, match="0000000000000000"):
        AdaptiveClassifier(policy, lm)


@needs_shared
def test_torch_and_numpy_signals_agree_on_real_logits():
    from reswise.records import SIGNALS, confidence
    from reswise.ship.adaptive import AdaptiveClassifier, softmax_stats
    from reswise.ship.runtime import softmax_stats as np_stats

    _, path, images, lm = shipped()
    net = AdaptiveClassifier(path, lm)
    with torch.inference_mode():
        logits = net.stage(0, images[:500])
    top_t, ent_t = softmax_stats(logits)
    top_n, ent_n = np_stats(logits.numpy())
    np.testing.assert_allclose(top_t.numpy(), top_n, atol=1e-6)
    np.testing.assert_allclose(ent_t.numpy(), ent_n, atol=1e-5)
    for s in SIGNALS:
        a = confidence(top_t, ent_t, s).numpy()
        assert np.abs(a - confidence(top_n, ent_n, s)).max() < 1e-5


@needs_shared
def test_cli_cascade_save_writes_a_policy(tmp_path: Path):
    from reswise.cli.main import main

    run, _, _, _ = shipped()
    out = tmp_path / "p.json"
    assert main(["cascade", "--from", run.directory, "--max-drop", "1.0", "--save", str(out)]) == 0
    policy = load_policy(out)
    assert policy["kind"] == "cascade" and policy["model"] == MODEL
    assert policy["images"]["n"] == 1000 and policy["split"]["n_heldout"] == 500
    assert main(["select", "--from", run.directory, "--save", str(tmp_path / "s.json")]) == 0
    assert load_policy(tmp_path / "s.json")["kind"] == "select"
    assert main(["cascade", "--from", run.directory, "--save", str(tmp_path)]) == 2
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ReswiseError, match="not JSON"):
        load_policy(tmp_path / "broken.json")
