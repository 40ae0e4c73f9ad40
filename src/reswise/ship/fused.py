"""The whole cascade as one ONNX graph: every stage, the confidence signal and the routing.

    fuse_cascade(["stage_20.onnx", "stage_32.onnx"], thresholds=[0.9], signal="max_softmax",
                 resolutions=[20, 32], out="cascade.onnx")

Per-stage sessions cost one ``run`` call per stage plus numpy's softmax, boolean indexing and
scatter between them in Python. Here the stages are joined by ONNX's own ops: the signal is
computed from the stage's logits in the graph (``LogSoftmax``/``Exp``, as
:func:`reswise.ship.runtime.softmax_stats` computes it in numpy), ``NonZero`` picks the images
below the threshold, ``Gather`` hands them to the next stage and ``ScatterND`` writes each
stage's answers into the output. A stage reached by no image runs on an empty batch (ONNX
Runtime's kernels accept N = 0), so no ``If`` is needed. The stage graphs themselves are copied
in unchanged (names prefixed), so each stage's arithmetic is the exported stage's.

Numpy and onnx only; no torch (the runtime imports this module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReswiseError
from ..records import SIGNALS

INPUT, LOGITS, RESOLUTION = "images", "logits", "resolution"


def _stage(model: Any, prefix: str, own_batch: bool) -> Any:
    """A stage's graph with every name prefixed, so stages and the glue cannot collide.

    ``own_batch``: the stage's symbolic dimensions are prefixed too. A stage graph with inferred
    shapes (the int8 ones) calls its batch "batch", like the fused graph's input; a later stage
    runs on however many images escalate, and were its tensors declared of the input's batch
    size, ONNX Runtime would plan their buffers for that size and warn on every batch.
    """
    from onnx import compose

    staged = compose.add_prefix(model, prefix)
    if own_batch:
        g = staged.graph
        for v in [*g.input, *g.output, *g.value_info]:
            for d in v.type.tensor_type.shape.dim:
                if d.HasField("dim_param"):
                    d.dim_param = prefix + d.dim_param
    return staged


def _signal_nodes(h: Any, logits: str, signal: str, p: str) -> tuple[list[Any], str]:
    """Nodes computing the confidence of every row of ``logits`` (higher: more confident)."""
    nodes = [
        h.make_node("LogSoftmax", [logits], [f"{p}logp"], axis=1),
        h.make_node("Exp", [f"{p}logp"], [f"{p}prob"]),
    ]
    if signal == "max_softmax":
        # TopK, not ReduceMax: ReduceMax's axes moved from attribute to input at opset 18
        nodes += [
            h.make_node("TopK", [f"{p}prob", "fuse/one"], [f"{p}top", f"{p}topi"], axis=1),
            h.make_node("Squeeze", [f"{p}top", "fuse/axis1"], [f"{p}conf"]),
        ]
    elif signal == "margin":
        nodes += [
            h.make_node("TopK", [f"{p}prob", "fuse/k2"], [f"{p}top", f"{p}topi"], axis=1),
            h.make_node("Gather", [f"{p}top", "fuse/i0"], [f"{p}top1"], axis=1),
            h.make_node("Gather", [f"{p}top", "fuse/i1"], [f"{p}top2"], axis=1),
            h.make_node("Sub", [f"{p}top1", f"{p}top2"], [f"{p}conf"]),
        ]
    else:  # entropy; confidence = -entropy = sum p log p
        nodes += [
            h.make_node("Mul", [f"{p}prob", f"{p}logp"], [f"{p}plogp"]),
            h.make_node("ReduceSum", [f"{p}plogp", "fuse/axis1"], [f"{p}conf"], keepdims=0),
        ]
    return nodes, f"{p}conf"


def _opsets(models: list[Any]) -> dict[str, int]:
    """The highest version of each operator domain the stages import."""
    found: dict[str, int] = {}
    for m in models:
        for o in m.opset_import:
            found[o.domain] = max(found.get(o.domain, 0), int(o.version))
    found[""] = max(found.get("", 0), 13)  # ReduceSum with axes as input, ScatterND, NonZero
    return found


def _consts(resolutions: list[int], thresholds: list[float]) -> dict[str, np.ndarray]:
    consts = {
        "fuse/k2": np.array([2], np.int64),
        "fuse/i0": np.array(0, np.int64),
        "fuse/i1": np.array(1, np.int64),
        "fuse/axis1": np.array([1], np.int64),
        "fuse/zero": np.array([0], np.int64),
        "fuse/last": np.array([-1], np.int64),
        "fuse/one": np.array([1], np.int64),
    }
    for k, (r, t) in enumerate(zip(resolutions, [*thresholds, None])):
        consts[f"fuse/r{k}"] = np.array([r], np.int64)
        if t is not None:
            consts[f"fuse/t{k}"] = np.array(t, np.float32)
    return consts


def _answer_nodes(h: Any, k: int, logits: str, rows: str | None) -> list[Any]:
    """Stage k's logits and resolution written into the batch's outputs at ``rows``."""
    p = f"fuse/{k}/"
    if rows is None:  # the first stage answers for every image
        return [
            h.make_node("Identity", [logits], [f"{p}out"]),
            h.make_node("Shape", [logits], [f"{p}shape"]),
            h.make_node("Slice", [f"{p}shape", "fuse/zero", "fuse/one"], [f"{p}n"]),
            h.make_node("Expand", ["fuse/r0", f"{p}n"], [f"{p}res"]),
        ]
    q = f"fuse/{k - 1}/"
    return [
        h.make_node("Unsqueeze", [rows, "fuse/last"], [f"{p}where"]),
        h.make_node("ScatterND", [f"{q}out", f"{p}where", logits], [f"{p}out"]),
        h.make_node("Shape", [rows], [f"{p}m"]),
        h.make_node("Expand", [f"fuse/r{k}", f"{p}m"], [f"{p}r"]),
        h.make_node("ScatterND", [f"{q}res", f"{p}where", f"{p}r"], [f"{p}res"]),
    ]


def _route_nodes(
    h: Any, k: int, x: str, logits: str, rows: str | None, signal: str
) -> tuple[list[Any], str, str]:
    """The images stage k is not confident on, and their rows in the batch, for stage k + 1."""
    p = f"fuse/{k}/"
    nodes, conf = _signal_nodes(h, logits, signal, p)
    nodes += [
        h.make_node("Less", [conf, f"fuse/t{k}"], [f"{p}on"]),  # not confident: goes on
        h.make_node("NonZero", [f"{p}on"], [f"{p}nz"]),
        h.make_node("Squeeze", [f"{p}nz", "fuse/zero"], [f"{p}pick"]),
        h.make_node("Gather", [x, f"{p}pick"], [f"{p}x"], axis=0),
    ]
    if rows is None:
        return nodes, f"{p}x", f"{p}pick"
    nodes.append(h.make_node("Gather", [rows, f"{p}pick"], [f"{p}rows"], axis=0))
    return nodes, f"{p}x", f"{p}rows"


def _io(h: Any, first: Any) -> tuple[list[Any], list[Any]]:
    """The fused graph's inputs and outputs, shaped after the first stage's."""
    from onnx import TensorProto

    dims = first.graph.input[0].type.tensor_type.shape.dim
    n_classes = first.graph.output[0].type.tensor_type.shape.dim[1].dim_value or "classes"
    inputs = [
        h.make_tensor_value_info(
            INPUT, TensorProto.UINT8, ["batch", 3, *(d.dim_value for d in dims[2:])]
        )
    ]
    outputs = [
        h.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", n_classes]),
        h.make_tensor_value_info(RESOLUTION, TensorProto.INT64, ["batch"]),
    ]
    return inputs, outputs


def fuse_cascade(
    stage_files: list[str | Path],
    thresholds: list[float],
    signal: str,
    resolutions: list[int],
    out: str | Path,
) -> Path:
    """Write one graph ``images (uint8 N x 3 x H x W) -> logits (N x C), resolution (N)``
    from the exported stage graphs (each ``images -> logits``), routing as the runtime does:
    an image stops at the first stage whose confidence is at least that stage's threshold."""
    import onnx
    from onnx import helper as h
    from onnx import numpy_helper

    if len(stage_files) != len(resolutions) or len(thresholds) != len(stage_files) - 1:
        raise ReswiseError(
            f"{len(stage_files)} stage graphs need {len(stage_files) - 1} thresholds and "
            f"{len(stage_files)} resolutions, got {len(thresholds)} and {len(resolutions)}"
        )
    if signal not in SIGNALS:
        raise ReswiseError(f"unknown confidence signal '{signal}'; use {', '.join(SIGNALS)}")
    models = [onnx.load(str(f)) for f in stage_files]
    nodes: list[Any] = []
    inits: list[Any] = []
    value_info: list[Any] = []
    functions: list[Any] = []
    x, rows = INPUT, None  # this stage's images, and their rows in the batch (None: all)
    for k, model in enumerate(models):
        staged = _stage(model, f"s{k}/", own_batch=k > 0)
        graph = staged.graph
        nodes.append(h.make_node("Identity", [x], [graph.input[0].name]))
        nodes += list(graph.node)
        inits += list(graph.initializer)
        value_info += list(graph.value_info)
        functions += list(staged.functions)
        logits = graph.output[0].name
        nodes += _answer_nodes(h, k, logits, rows)
        if k < len(models) - 1:
            route, x, rows = _route_nodes(h, k, x, logits, rows, signal)
            nodes += route
    last = f"fuse/{len(models) - 1}/"
    nodes += [
        h.make_node("Identity", [f"{last}out"], [LOGITS]),
        h.make_node("Identity", [f"{last}res"], [RESOLUTION]),
    ]
    used = {name for n in nodes for name in n.input}
    consts = _consts(resolutions, thresholds)
    inits += [numpy_helper.from_array(v, k) for k, v in consts.items() if k in used]
    inputs, outputs = _io(h, models[0])
    graph = h.make_graph(nodes, "reswise_cascade", inputs, outputs, inits, value_info=value_info)
    fused = h.make_model(
        graph,
        opset_imports=[h.make_opsetid(d, v) for d, v in _opsets(models).items()],
        producer_name="reswise",
        functions=functions,
    )
    fused.ir_version = max(m.ir_version for m in models)
    onnx.checker.check_model(fused)
    out = Path(out)
    onnx.save(fused, str(out))
    return out
