"""The fused cascade graph (stages, signal and routing in one ONNX graph) against the per-stage
sessions that route in numpy, on real CIFAR-10 (JPEG copy) images and the multi-resolution
ResNet-20 cascade of test_adaptive."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from reswise.errors import ReswiseError

from .conftest import needs_shared
from .test_adaptive import shipped
from .test_runtime import exported

pytest.importorskip("onnxruntime")


def _pair(tmp_path: Path, signal: str, quantile: float) -> tuple[object, object, np.ndarray]:
    """Per-stage runner and fused session for ``signal``, thresholds at a confidence quantile
    of each stage on the images, and the images."""
    from reswise.records import confidence
    from reswise.ship.fused import fuse_cascade
    from reswise.ship.runtime import OnnxCascade, _session, softmax_stats

    out, _ = exported()
    x = shipped()[2].numpy()
    runner = OnnxCascade(out, threads=1)
    ts = []
    for sess in runner.sessions[:-1]:
        conf = confidence(*softmax_stats(sess.run(None, {"images": x})[0]), signal)
        ts.append(float(np.quantile(conf, quantile)))
    runner.signal, runner.thresholds = signal, ts
    files = [out / g["file"] for g in runner.policy["graphs"]["stages"]]
    path = fuse_cascade(files, ts, signal, runner.chain, tmp_path / f"{signal}.onnx")
    return runner, _session(path, 1), x


@needs_shared
@pytest.mark.parametrize("signal", ["max_softmax", "margin", "entropy"])
def test_fused_graph_routes_and_answers_as_the_stage_sessions(tmp_path: Path, signal: str):
    runner, fused, x = _pair(tmp_path, signal, 0.4)
    want_logits, want_res = runner(x)
    logits, res = fused.run(None, {"images": x})
    # every stage answers some of the 1 000 images, so every gather and scatter is exercised
    assert set(np.unique(want_res)) == set(runner.chain)
    # softmax in the graph vs numpy may differ by an ulp: only an image whose confidence sits on
    # its threshold may route differently, and none did here
    assert np.array_equal(res, want_res)
    assert res.dtype == np.int64 and logits.shape == want_logits.shape
    assert np.abs(logits - want_logits).max() < 1e-5
    # batches of one, and a batch whose images all stop at one stage
    for i in (0, 1, 2, 997):
        one_logits, one_res = fused.run(None, {"images": x[i : i + 1]})
        assert one_res[0] == want_res[i] and np.abs(one_logits[0] - want_logits[i]).max() < 1e-5
    for r in runner.chain:
        sel = x[want_res == r][:16]
        assert np.array_equal(fused.run(None, {"images": sel})[1], np.full(len(sel), r))


@needs_shared
def test_fused_graph_with_nobody_or_everybody_escalated(tmp_path: Path):
    from reswise.ship.fused import fuse_cascade
    from reswise.ship.runtime import _session

    runner, _, x = _pair(tmp_path, "max_softmax", 0.5)
    files = [runner._stages[0] / g["file"] for g in runner._stages[1]]
    x = x[:64]
    for ts, stage in (([0.0, 0.0], 0), ([1.5, 1.5], -1)):  # softmax lies in [0, 1]
        path = fuse_cascade(files, ts, "max_softmax", runner.chain, tmp_path / "edge.onnx")
        logits, res = _session(path, 1).run(None, {"images": x})
        want = runner.sessions[stage].run(None, {"images": x})[0]
        assert np.all(res == runner.chain[stage]) and np.abs(logits - want).max() < 1e-5


@needs_shared
def test_fused_graph_is_hash_checked_and_old_exports_say_so(tmp_path: Path):
    from reswise.ship.runtime import OnnxCascade

    out, _ = exported()
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "cascade.onnx").write_bytes(b"not a graph")
    OnnxCascade(copy)  # the per-stage runner does not read the fused graph
    with pytest.raises(ReswiseError, match="export it again"):
        OnnxCascade(copy, fused=True)
    # an export written before the fused graph existed loads, and says how to get one
    policy = json.loads((copy / "policy.json").read_text())
    del policy["graphs"]["fused"]
    (copy / "policy.json").write_text(json.dumps(policy))
    (copy / "cascade.onnx").unlink()
    OnnxCascade(copy)
    with pytest.raises(ReswiseError, match="without the fused graph"):
        OnnxCascade(copy, fused=True)


def test_fuse_refuses_mismatched_lengths_and_signals(tmp_path: Path):
    from reswise.ship.fused import fuse_cascade

    with pytest.raises(ReswiseError, match="2 stage graphs need 1 thresholds"):
        fuse_cascade(["a.onnx", "b.onnx"], [0.5, 0.6], "margin", [16, 32], tmp_path / "c.onnx")
    with pytest.raises(ReswiseError, match="unknown confidence signal 'top5'"):
        fuse_cascade(["a.onnx", "b.onnx"], [0.5], "top5", [16, 32], tmp_path / "c.onnx")


@needs_shared
def test_fused_graph_runs_batches_of_any_mix_without_warnings(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
):
    # stage graphs with inferred shapes (the int8 ones carry them) name their batch dimension
    # "batch"; copied into one graph, the later stages' tensors claimed the input's batch size,
    # so ONNX Runtime planned buffers for it and printed "Shape mismatch attempting to re-use
    # buffer" per tensor on every batch
    import onnx

    from reswise.ship.fused import fuse_cascade
    from reswise.ship.runtime import _session

    runner, _, x = _pair(tmp_path, "margin", 0.4)
    files = []
    for k, g in enumerate(runner._stages[1]):
        files.append(tmp_path / f"inferred_{k}.onnx")
        model = onnx.shape_inference.infer_shapes(onnx.load(str(runner._stages[0] / g["file"])))
        assert any(
            d.dim_param == "batch" for d in model.graph.value_info[0].type.tensor_type.shape.dim
        )
        onnx.save(model, str(files[-1]))
    path = fuse_cascade(files, runner.thresholds, "margin", runner.chain, tmp_path / "f.onnx")
    fused = _session(path, 1)
    capfd.readouterr()
    for s in (0, 64, 128):
        logits, res = fused.run(None, {"images": x[s : s + 64]})
        want_logits, want_res = runner(x[s : s + 64])
        assert np.array_equal(res, want_res) and np.abs(logits - want_logits).max() < 1e-5
    err = capfd.readouterr().err
    assert "Shape mismatch" not in err, err[:300]
