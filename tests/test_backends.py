"""Backends: the same predictions as eager fp32 on real images, cached exports and decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reswise import create_model, load_dataset, sweep
from reswise.cli import main
from reswise.errors import ReswiseError
from reswise.measure import backends
from reswise.measure.evaluate import build_nets

from .conftest import CIFAR_JPEG, IMAGENET_SAMPLE, make_imagefolder, needs_shared

pytest.importorskip("onnxruntime")
RES = [32, 28, 24, 20, 16, 12]


@pytest.fixture(scope="module")
def real():
    lm = create_model("cifar_resnet20", pretrained=True)
    data = load_dataset("imagefolder", str(CIFAR_JPEG / "test"))
    return lm, data.subset(torch.arange(0, len(data), 5))  # 2 000 images, every class


def _agree(a, b) -> None:
    """top-1 within 0.05 points and per-sample top-1 agreement >= 99.9 % at every resolution."""
    for r in a.records.resolutions:
        pa, pb = (
            a.records.topk_idx[a.records.row(r), :, 0],
            b.records.topk_idx[b.records.row(r), :, 0],
        )
        top_a = 100 * a.records.correct(r).mean()
        top_b = 100 * b.records.correct(r).mean()
        assert abs(top_a - top_b) <= 0.05 + 1e-9, (r, top_a, top_b)
        assert (pa == pb).mean() >= 0.999, (r, (pa != pb).sum())


@needs_shared
@pytest.mark.slow
def test_onnxruntime_predicts_what_eager_fp32_does(real):
    lm, data = real
    ref = sweep(lm, data, RES, fast=False, backend="eager")  # no folding: the plain model
    ort = sweep(lm, data, RES, backend="onnxruntime")
    assert set(ort.meta["backend_by_res"].values()) == {"onnxruntime"}
    _agree(ref, ort)


@needs_shared
@pytest.mark.slow
def test_compiled_predicts_what_eager_fp32_does(real):
    lm, data = real
    part = data.subset(torch.arange(0, 1000))  # one cold compile (~25 s) at one resolution
    ref = sweep(lm, part, [16], fast=False, backend="eager")
    comp = sweep(lm, part, [16], backend="compile")  # 1000 = 7 x 128 + 104: the last is padded
    assert comp.meta["backend_by_res"] == {"16": "compile"}
    _agree(ref, comp)


def test_auto_probes_once_then_reuses_the_cached_choice(monkeypatch):
    lm = create_model("cifar_resnet20")
    nets, _ = build_nets(lm.model, [16], None, True, "cpu", backend="auto", name="r20", batch=8,
                         n_batches=100)  # fmt: skip
    decisions = json.loads((backends.cache_root() / "backends" / "decisions.json").read_text())
    (entry,) = decisions.values()
    assert set(entry["ms"]) == {"eager", "onnxruntime"}
    assert entry["backend"] == min(entry["ms"], key=entry["ms"].get) == nets[16].backend

    def no_probe(*a, **k):
        raise AssertionError("a cached decision must not be probed again")

    monkeypatch.setattr(backends, "_time_ms", no_probe)
    again, _ = build_nets(lm.model, [16], None, True, "cpu", backend="auto", name="r20", batch=8,
                          n_batches=100)  # fmt: skip
    assert again[16].backend == entry["backend"]


def test_short_runs_stay_eager_and_probe_nothing():
    lm = create_model("cifar_resnet20")
    nets, _ = build_nets(lm.model, [16, 12], None, True, "cpu", backend="auto", name="r20",
                         batch=8, n_batches=backends.MIN_BATCHES_TO_PROBE - 1)  # fmt: skip
    assert {n.backend for n in nets.values()} == {"eager"}
    assert not (backends.cache_root() / "backends" / "decisions.json").exists()


def test_exported_graph_is_cached_per_weights_and_resolution():
    a = create_model("cifar_resnet20").model.eval()
    b = create_model("cifar_resnet20").model.eval()  # other random weights
    x = torch.randn(3, 3, 16, 16)
    first = backends.make_runner(
        "onnxruntime", a, a, name="r20", resolution=16, batch=3, device="cpu"
    )
    path = backends.onnx_path(a, "r20", 16)
    stamp = path.stat().st_mtime_ns
    again = backends.make_runner(
        "onnxruntime", a, a, name="r20", resolution=16, batch=3, device="cpu"
    )
    assert path.stat().st_mtime_ns == stamp  # not exported twice
    assert backends.onnx_path(b, "r20", 16) != path
    with torch.inference_mode():
        np.testing.assert_allclose(first(x).numpy(), a(x).numpy(), atol=1e-4)
        np.testing.assert_array_equal(first(x).numpy(), again(x).numpy())


def test_padded_batch_gives_the_same_logits_as_the_full_one():
    net = create_model("cifar_resnet20").model.eval()
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return net(x)

    runner = backends.Runner("compile", fn, channels_last=False, batch=8)
    x = torch.randn(5, 3, 16, 16)
    with torch.inference_mode():
        out = runner(x)
        np.testing.assert_allclose(out.numpy(), net(x).numpy(), atol=1e-5)
    assert calls == [8] and out.shape[0] == 5


def test_backend_errors_are_one_line(capsys, tmp_path):
    with pytest.raises(ReswiseError, match="unknown backend 'tvm'"):
        backends.check_backend("tvm", "cpu")
    with pytest.raises(ReswiseError, match="CPU only"):
        backends.check_backend("onnxruntime", "cuda")
    assert backends.check_backend("torch", "cpu") == "eager"  # latency's old --runtime torch
    code = main(["latency", "--model", "cifar_resnet20", "--random-init", "--resolutions", "16",
                 "--runtime", "torch", "--repeats", "1", "--warmup", "0", "--json"])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["backend"] == "eager"


def test_doctor_measures_a_positive_peak(capsys):
    from reswise.measure.doctor import machine_peak

    peak = machine_peak(threads=1, size=256, calls=2)
    assert peak["matmul_gflops"] > 0 and peak["conv_gflops"] > 0 and peak["threads"] == 1


def test_doctor_says_which_precisions_this_machine_can_sweep(capsys, monkeypatch):
    # sweep --precision bf16 is refused where bf16 is not native, and the docs send the user to
    # `reswise doctor` to find out beforehand; it said nothing about precisions
    from reswise.measure import doctor as doc

    monkeypatch.setattr(doc, "machine_peak", lambda *a, **k: {
        "device": "cpu", "threads": 1, "matmul_gflops": 1.0, "conv_gflops": 1.0,
        "matmul": "m", "conv": "c"})  # fmt: skip
    for flags, bf16, vnni in (
        ({"avx2"}, False, False),
        ({"avx512_bf16", "avx512_vnni"}, True, True),
    ):
        monkeypatch.setattr(doc, "cpu_flags", lambda flags=flags: frozenset(flags))
        why = doc.bf16_support("cpu")
        assert (why is None) == bf16
        prec = doc.doctor(1)["precisions"]
        assert prec["fp32"] == "yes"
        assert prec["bf16"] == "yes (avx512_bf16 or amx_bf16)" if bf16 else f"no: {why}"
        assert ("8-bit weights" in prec["int8"]) == vnni
        assert ("reduce_range" in prec["int8"]) == (not vnni)
        assert main(["doctor", "--threads", "1"]) == 0
        text = capsys.readouterr().out
        assert (
            f"precision bf16: {prec['bf16']}" in text and f"precision int8: {prec['int8']}" in text
        )


def test_progress_of_one_backend_is_not_resumed_by_another(tmp_path, monkeypatch):
    from reswise.measure import progress

    lm = create_model("cifar_resnet20")
    data = load_dataset("imagefolder", str(make_imagefolder(tmp_path / "d", n_per_class=4)))
    ck = tmp_path / "progress.npz"
    sweep(lm, data, [16], batch_size=4, checkpoint_path=ck, keep_progress=True, backend="eager")
    loaded = []
    real_load = progress.Progress.load
    monkeypatch.setattr(
        progress.Progress, "load", lambda self: loaded.append(r := real_load(self)) or r
    )
    sweep(
        lm, data, [16], batch_size=4, checkpoint_path=ck, keep_progress=True, backend="onnxruntime"
    )
    sweep(
        lm, data, [16], batch_size=4, checkpoint_path=ck, keep_progress=True, backend="onnxruntime"
    )
    assert loaded[0] is None  # eager's progress: another configuration, evaluated afresh
    assert loaded[1] is not None and loaded[1]["done"] == 3  # its own: resumed (finished)


@pytest.mark.slow
@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason="ImageNet sample not present")
def test_onnxruntime_predicts_what_eager_does_for_efficientnet_lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    lm = create_model("efficientnet_lite0", pretrained=True)
    data = load_dataset("imagenet", str(IMAGENET_SAMPLE))
    data = data.subset(torch.arange(0, len(data), 5))  # 200 images, 200 classes
    ref = sweep(lm, data, [224, 112], fast=False, backend="eager")
    ort = sweep(lm, data, [224, 112], backend="onnxruntime")
    _agree(ref, ort)
