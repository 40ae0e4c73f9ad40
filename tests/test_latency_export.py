"""ONNX export checked on real CIFAR-10 images, and latency rows (no timing claims but > 0)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reswise.data import load_dataset, normalizer, to_input
from reswise.errors import ReswiseError
from reswise.measure import onnx as export_mod
from reswise.measure.latency import format_latency_table, latency_summary, measure_latency
from reswise.measure.onnx import export_onnx
from reswise.models import create_model
from reswise.models._registry import sha256_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR_TEST = SHARED / "datasets" / "cifar10-jpeg" / "test"
needs_cifar = pytest.mark.skipif(
    not CIFAR_TEST.is_dir(), reason=f"{CIFAR_TEST} not present (the shared data sets are absent)"
)
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def r56():
    return create_model("cifar_resnet56", pretrained=True)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    if not CIFAR_TEST.is_dir():
        pytest.skip(f"{CIFAR_TEST} not present")
    return load_dataset("imagefolder", CIFAR_TEST, limit=64, seed=0).images


def _run(path: str | Path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})[0]


def _normalise(lm, imgs: torch.Tensor) -> torch.Tensor:
    return to_input(imgs, normalizer(lm.info.mean, lm.info.std))


@needs_cifar
def test_export_matches_pytorch_on_real_images(r56, images, tmp_path):
    info = export_onnx(r56, 24, tmp_path / "r56_24.onnx", check_images=images)
    assert info["ok"] and info["max_abs_diff"] < 1e-4
    assert info["top1_agreement"] == 1.0
    assert info["n_images"] == 64 and info["check_data"] == "given images"
    assert info["bytes"] == Path(info["out"]).stat().st_size
    assert info["sha256"] == sha256_file(info["out"])
    # the file takes 24x24 only, at any batch size
    x = _normalise(r56, F.interpolate(images[:3], size=(24, 24), mode="bilinear", antialias=True))
    assert _run(info["out"], x).shape == (3, 10)


@needs_cifar
def test_baked_resize_takes_the_original_size(r56, images, tmp_path):
    info = export_onnx(r56, 24, tmp_path / "baked.onnx", bake_resize_from=32, check_images=images)
    assert info["ok"] and info["bake_resize_from"] == 32
    x = _normalise(r56, images)  # 32x32, normalised, not resized
    small = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False, antialias=False)
    with torch.inference_mode():
        want = r56.model(small).numpy()
    got = _run(info["out"], x)
    assert np.abs(got - want).max() < 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()


@needs_cifar
def test_bn_state_reaches_the_exported_graph(r56, images, tmp_path):
    state = r56.model.state_dict()
    bn_state = {k: v + 0.5 for k, v in state.items() if k.endswith("running_mean")}
    plain = export_onnx(r56, 24, tmp_path / "plain.onnx", check_images=images[:16])
    recal = export_onnx(
        r56, 24, tmp_path / "recal.onnx", check_images=images[:16], bn_state=bn_state
    )
    assert recal["ok"]  # checked against PyTorch with the same buffers loaded
    assert plain["sha256"] != recal["sha256"]
    x = _normalise(r56, F.interpolate(images[:16], size=(24, 24), mode="bilinear", antialias=True))
    assert np.abs(_run(plain["out"], x) - _run(recal["out"], x)).max() > 1e-2
    # the caller's model keeps its own statistics
    assert torch.equal(r56.model.state_dict()["bn1.running_mean"], state["bn1.running_mean"])
    with pytest.raises(ReswiseError, match="bn_state key"):
        export_onnx(r56, 24, tmp_path / "bad.onnx", bn_state={"nope.running_mean": torch.zeros(3)})


def test_export_uses_the_checkpoints_own_bn_for_the_resolution(tmp_path):
    from reswise.measure.bn_recal import recalibrate_all, save_bn_checkpoint

    torch.manual_seed(0)
    lm = create_model("cifar_resnet20")  # random init: recalibrated BN moves its logits a lot
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 256, (32, 3, 32, 32), generator=g, dtype=torch.uint8)
    policy = lm.info.eval_policy()
    states = recalibrate_all(lm.model, calib, [24], policy, lm.info.mean, lm.info.std, None)
    save_bn_checkpoint(lm.model, states, tmp_path / "bn.pt")
    loaded = create_model("cifar_resnet20", checkpoint=tmp_path / "bn.pt")
    check = calib[:8]
    auto = export_onnx(loaded, 24, tmp_path / "auto.onnx", check_images=check)
    given = export_onnx(lm, 24, tmp_path / "given.onnx", check_images=check, bn_state=states[24])
    plain = export_onnx(loaded, 24, tmp_path / "plain.onnx", check_images=check, bn_state={})
    native = export_onnx(loaded, 32, tmp_path / "native.onnx", check_images=check)
    assert auto["ok"] and auto["per_resolution_bn"] is True
    assert given["per_resolution_bn"] is True
    assert plain["per_resolution_bn"] is False and native["per_resolution_bn"] is False
    x = _normalise(lm, policy(check, 24))
    assert np.abs(_run(auto["out"], x) - _run(given["out"], x)).max() < 1e-5
    assert np.abs(_run(auto["out"], x) - _run(plain["out"], x)).max() > 1e-2
    # the loaded model keeps its native statistics
    assert torch.equal(loaded.model.bn1.running_mean, lm.model.bn1.running_mean)


def test_failed_check_raises_but_keeps_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "TOLERANCE", 0.0)  # nothing can pass a zero tolerance
    out = tmp_path / "r20.onnx"
    with pytest.raises(ReswiseError, match="ONNX check failed"):
        export_onnx(create_model("cifar_resnet20"), 32, out)
    assert out.is_file() and out.stat().st_size > 0


def test_missing_onnxruntime_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    lm = create_model("cifar_resnet20")
    with pytest.raises(ReswiseError, match=r"pip install 'reswise\[onnx\]'"):
        export_onnx(lm, 32, tmp_path / "x.onnx")
    with pytest.raises(ReswiseError, match=r"reswise\[onnx\]"):
        measure_latency(lm.model, [32], runtime="onnxruntime", warmup=0, repeats=1)
    assert not (tmp_path / "x.onnx").exists()


KEYS = {
    "resolution",
    "batch_size",
    "backend",
    "device",
    "threads",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "iqr_ms",
    "per_image_ms",
    "latency_drop_pct",
    "flops_drop_pct",
    "disagrees",
}


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_latency_rows(backend):
    model = create_model("cifar_resnet20").model
    before = torch.get_num_threads()
    want_threads = 2 if before == 1 else 1  # differs from the current count, so restore shows
    rows = measure_latency(
        model,
        [16, 32],
        batch_sizes=[1, 2],
        threads=want_threads,
        backend=backend,
        warmup=1,
        repeats=3,
    )
    assert torch.get_num_threads() == before
    assert [(r["resolution"], r["batch_size"]) for r in rows] == [
        (16, 1),
        (16, 2),
        (32, 1),
        (32, 2),
    ]
    for r in rows:
        assert KEYS <= r.keys()
        assert r["backend"] == backend and r["threads"] == want_threads
        assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["per_image_ms"] == pytest.approx(r["median_ms"] / r["batch_size"])
        assert isinstance(r["disagrees"], bool)
    ref = [r for r in rows if r["resolution"] == 32]
    assert all(r["latency_drop_pct"] == 0.0 and r["flops_drop_pct"] == 0.0 for r in ref)
    # convolutions dominate: a quarter of the pixels leaves about a quarter of the FLOPs
    assert all(74 < r["flops_drop_pct"] < 76 for r in rows if r["resolution"] == 16)


def test_latency_reference_is_added_and_inputs_checked():
    model = create_model("cifar_resnet20").model
    rows = measure_latency(model, [16], reference=32, warmup=0, repeats=1)
    assert [r["resolution"] for r in rows] == [16, 32]
    with pytest.raises(ReswiseError, match="unknown backend 'tvm'"):
        measure_latency(model, [16], backend="tvm")
    with pytest.raises(ReswiseError, match="batch sizes"):
        measure_latency(model, [16], batch_sizes=[0])
    if not torch.cuda.is_available():
        with pytest.raises(ReswiseError, match="CUDA"):
            measure_latency(model, [16], device="cuda")


def test_table_names_where_latency_and_flops_disagree():
    row = dict.fromkeys(KEYS, 0)
    row.update(backend="eager", device="cpu", threads=1, disagrees=False)
    rows = [
        {**row, "resolution": 32, "batch_size": 1, "median_ms": 4.0},
        {
            **row,
            "resolution": 16,
            "batch_size": 1,
            "median_ms": 3.0,
            "latency_drop_pct": 25.0,
            "flops_drop_pct": 75.0,
            "disagrees": True,
        },
    ]
    text = format_latency_table(rows)
    assert text.count("\n|") == 3  # header rule + two rows
    assert "16x16 batch 1" in latency_summary(rows) and "32x32" not in latency_summary(rows)
    assert "FLOPs overstate" in text
    rows[1]["disagrees"] = False
    assert "within 10 points" in latency_summary(rows)
