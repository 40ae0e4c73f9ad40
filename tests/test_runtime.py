"""The exported cascade: one ONNX graph per stage, run by reswise.runtime without torch, with the
torch module's answers on real CIFAR-10 (JPEG copy) images."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from reswise.errors import ReswiseError

from .conftest import CIFAR_JPEG, needs_shared
from .test_adaptive import shipped

pytest.importorskip("onnxruntime")


@functools.lru_cache(maxsize=1)
def exported() -> tuple[Path, dict]:
    from reswise.ship.export import export_policy

    _, path, images, lm = shipped()
    out = Path(tempfile.mkdtemp(prefix="reswise_onnx_")) / "shipped"
    return out, export_policy(path, out, lm=lm, check_images=images)


@needs_shared
def test_export_reproduces_the_sweeps_resize_and_the_modules_answers():
    out, result = exported()
    assert sorted(p.name for p in out.glob("*.onnx")) == [
        "cascade.onnx", "reference.onnx", "stage_20.onnx", "stage_24.onnx", "stage_32.onnx"
    ]  # fmt: skip
    # torch's antialiased uint8 resize, pixel for pixel, on the 1 000 real images
    assert result["resize_exact"] and set(result["resize_mismatch_pixels"]) == {"20", "24", "32"}
    assert result["prediction_agreement"] >= 0.999
    assert result["resolution_agreement"] >= 0.999
    assert result["max_abs_logit_diff"] < 1e-3
    shipped_policy = json.loads((out / "policy.json").read_text())
    assert shipped_policy["graphs"]["check"]["n_check_images"] == 1000
    # the fused graph, checked against the module on the same images
    fused = result["fused"]
    assert fused["prediction_agreement"] >= 0.999 and fused["resolution_agreement"] >= 0.999
    assert fused["max_abs_logit_diff_same_stage"] < 1e-3 and fused["routing_flips_unexplained"] == 0


@needs_shared
def test_runner_heldout_top1_equals_the_modules():
    from reswise.ship.adaptive import AdaptiveClassifier
    from reswise.ship.policy_file import heldout_positions, load_policy, measured
    from reswise.ship.runtime import OnnxCascade

    run, path, images, lm = shipped()
    out, _ = exported()
    policy = load_policy(path)
    held = heldout_positions(policy)
    labels = run.records.labels[np.argsort(run.records.indices)][held]
    x = images[torch.as_tensor(held)]
    logits, res = OnnxCascade(out)(x.numpy())
    want = AdaptiveClassifier(policy, lm)(x)
    onnx_fig = measured(policy, logits, res, labels)
    torch_fig = measured(policy, want.logits.numpy(), want.resolution.numpy(), labels)
    assert abs(onnx_fig["top1"] - torch_fig["top1"]) <= 0.05
    assert abs(torch_fig["top1"] - policy["heldout"]["top1"]) <= 0.1
    assert onnx_fig["stage_share_pct"] == pytest.approx(policy["heldout"]["stage_share_pct"])


def test_runtime_imports_no_torch():
    code = "import reswise.runtime, sys; assert 'torch' not in sys.modules, 'torch imported'"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@needs_shared
def test_classify_folder_without_torch(tmp_path: Path):
    out, _ = exported()
    folder = tmp_path / "photos"
    for cls in ("cat", "ship"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((CIFAR_JPEG / "test" / cls).iterdir())[:6]:
            shutil.copy(f, folder / cls / f.name)
    code = (
        "import sys, json\n"
        "from reswise.ship.runtime import OnnxCascade\n"
        f"rows = OnnxCascade({str(out)!r}).classify_folder({str(folder)!r}, batch_size=5)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(json.dumps(rows))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert len(rows) == 12 and {r["resolution"] for r in rows} <= {20, 24, 32}
    right = sum(Path(r["file"]).parent.name == r["class"] for r in rows)
    assert right >= 8  # a 88 % model on 12 real images


@needs_shared
def test_runner_refuses_changed_graphs_and_wrong_sizes(tmp_path: Path):
    from reswise.ship.runtime import OnnxCascade

    out, _ = exported()
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    runner = OnnxCascade(copy)
    with pytest.raises(ReswiseError, match="N x 3 x 32 x 32"):
        runner(np.zeros((2, 3, 28, 28), np.uint8))
    # N x H x W x 3 is taken too
    logits, res = runner(np.zeros((2, 32, 32, 3), np.uint8))
    assert logits.shape == (2, 10) and res.shape == (2,)
    (copy / "stage_24.onnx").write_bytes(b"not a graph")
    with pytest.raises(ReswiseError, match="export it again"):
        OnnxCascade(copy)
    with pytest.raises(ReswiseError, match="no exported cascade"):
        OnnxCascade(tmp_path)


@needs_shared
def test_policy_latency_runs_both_backends_on_heldout_images():
    from reswise.ship.latency import format_policy_latency, measure_policy_latency

    _, path, _, _ = shipped()
    out = measure_policy_latency(str(path), str(CIFAR_JPEG / "test"), batch_sizes=[1, 32],
                                 limit=64, rounds=1, warmup=1)  # fmt: skip
    rows = out["rows"]
    models = {
        "eager": ("fixed", "adaptive"),
        "onnxruntime": ("fixed", "adaptive", "adaptive-fused", "adaptive-pooled"),
    }
    assert {(r["backend"], r["batch_size"], r["model"]) for r in rows} == {
        (b, s, m) for b in models for s in (1, 32) for m in models[b]
    }
    for r in rows:
        pooled = r["model"] == "adaptive-pooled"  # one call a pass: no per-batch latency
        assert r["images_per_s"] > 0 and (pooled or r["p90_ms"] >= r["p50_ms"] > 0)
        if r["model"] != "fixed":
            assert sum(r["stage_share_pct"]) == pytest.approx(100.0)
            assert 0 < r["flops_drop_pct"] < 100 and np.isfinite(r["time_saved_pct"])
    # the same images and answers on both backends
    by = {(r["backend"], r["batch_size"], r["model"]): r["top1"] for r in rows}
    assert by[("eager", 32, "adaptive")] == pytest.approx(by[("onnxruntime", 32, "adaptive")])
    assert by[("onnxruntime", 32, "adaptive-fused")] == by[("onnxruntime", 32, "adaptive")]
    assert by[("onnxruntime", 32, "adaptive-pooled")] == by[("onnxruntime", 32, "adaptive")]
    assert "time saved %" in format_policy_latency(out)
    with pytest.raises(ReswiseError, match="fingerprint"):
        measure_policy_latency(str(path), str(CIFAR_JPEG / "train"), batch_sizes=[8], limit=8)


@needs_shared
def test_pooled_stages_give_the_per_batch_answers_on_real_images():
    """Issue 30: stages fed full batches of escalated images pooled across batches (what the
    server does under load) answer every image as the per-batch runner does."""
    from reswise.ship.runtime import OnnxCascade

    out, _ = exported()
    runner = OnnxCascade(out)
    x = shipped()[2][:200].numpy()
    logits, res = runner(x)
    for bs in (1, 16, 64, 500):
        pl, pr = runner.pooled(x, batch_size=bs)
        assert (pr == res).all() and np.allclose(pl, logits, atol=1e-4)
    assert len(set(res.tolist())) > 1  # more than one stage answered: the pooling was exercised
    with pytest.raises(ReswiseError, match="batch_size must be a positive integer"):
        runner.pooled(x, batch_size=0)


@needs_shared
def test_cli_policy_flags(tmp_path: Path, capsys: pytest.CaptureFixture):
    from reswise.cli.main import main

    _, path, _, _ = shipped()
    assert main(["latency", "--policy", str(path)]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert main(["export", "--resolution", "24", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "--model" in capsys.readouterr().err
    out = tmp_path / "shipped"
    args = ["export", "--policy", str(path), "--out", str(out), "--check-size", "64"]
    assert main(args) == 0
    assert "resize identical to the sweep's: True" in capsys.readouterr().out
    assert json.loads((out / "policy.json").read_text())["graphs"]["check"]["resize_exact"]
