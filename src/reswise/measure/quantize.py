"""int8 stages: ONNX Runtime static quantization, calibrated on the calibration half only.

    q = calibrate_stage(fp32_graph, calib_images, choose_images)  # float NCHW arrays
    sess = ort_session(q.graph, threads)

QDQ format, per-channel int8 weights, uint8 activations (ONNX Runtime's advice for x86 CPUs);
7-bit weights (``reduce_range``) on CPUs without VNNI, where 8-bit products can saturate.
Which calibration method (MinMax, percentile, entropy) and which layers stay float (none, or
the first convolution and the classifier: the layers int8 hurts most) is decided per stage by
top-1 agreement with the fp32 graph on calibration-half images: never the held-out ones, so
the held-out figures a chooser reports are not flattered by the choice.

The quantization parameters are the tensor ranges ONNX Runtime calibrates (its calibration
cache, JSON). With them and the fp32 graph, the int8 graph is rebuilt bit for bit without
images: that is what travels beside a policy file. Graphs and ranges are cached in
``<cache>/quant``, keyed by the fp32 graph, method, kept-float layers, settings and a hash of
the calibration pixels, so changing the held-out images cannot change them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReswiseError
from ..records import replacing, write_atomic
from .onnx import require_onnxruntime

METHODS = ("minmax", "percentile", "entropy")
KEEP_FLOAT = ("none", "ends")
CALIB_IMAGES = 256  # images the ranges are computed from (ONNX Runtime's examples use 100-500)
CHOOSE_IMAGES = 1000  # calibration-half images the method is chosen on


def _no_vnni() -> bool:
    """7-bit weights where the CPU has no 8-bit dot products (ONNX Runtime's advice)."""
    from .doctor import has_vnni  # here, not at the top: doctor imports torch

    return not has_vnni()


@dataclass(frozen=True)
class QuantSettings:
    """Everything besides the ranges that decides the int8 graph (travels with them)."""

    method: str = "minmax"
    keep_float: str = "none"
    per_channel: bool = True
    reduce_range: bool = field(default_factory=_no_vnni)
    percentile: float = 99.999

    def tag(self) -> str:
        rr = "rr" if self.reduce_range else "fr"
        return f"{self.method}-{self.keep_float}-{'pc' if self.per_channel else 'pt'}-{rr}"


@dataclass
class StageQuant:
    """The int8 graph of one stage, the ranges that rebuild it, and how it was chosen."""

    graph: Path
    ranges: Path
    settings: QuantSettings
    agreement: float  # top-1 agreement with fp32 on the choosing images
    tried: dict[str, float]  # settings tag -> agreement, every candidate
    calib_images: int
    choose_images: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "agreement": self.agreement,
            "tried": self.tried,
            "calib_images": self.calib_images,
            "choose_images": self.choose_images,
            "ranges_sha256": _sha(self.ranges.read_bytes()),
        }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quant_dir() -> Path:
    from .backends import cache_root

    return cache_root() / "quant"


def preprocessed(fp32: Path) -> Path:
    """The fp32 graph with ONNX Runtime's pre-quantization pass (BatchNorm folded, shapes
    inferred): quantizing before BN is folded would round every convolution's output twice."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = quant_dir() / f"{fp32.stem}.pre.onnx"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with _quiet(), replacing(out, ".onnx") as tmp:
            quant_pre_process(str(fp32), str(tmp), skip_symbolic_shape=True)
    return out


@contextlib.contextmanager
def _quiet() -> Any:
    """The quantizer logs every tensor it cannot quantize at INFO/WARNING."""
    log = logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)
    try:  # the histogram collectors print their progress on stdout
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def _excluded(graph: Path, keep_float: str) -> list[str]:
    import onnx

    if keep_float == "none":
        return []
    nodes = onnx.load(str(graph), load_external_data=False).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    heads = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    return convs[:1] + heads[-1:]


class _Reader:
    """ONNX Runtime's calibration data reader over float NCHW batches; ranges of batches (its
    ``CalibStridedMinMax``) let the calibrator fold one batch at a time into the ranges and
    histograms: all at once took 21 GB for EfficientNet-Lite0 at 224 on 256 images."""

    def __init__(self, images: np.ndarray, most: int = 32) -> None:
        # equal batches: the histogram methods stack a call's activations into one array
        batch = max(b for b in range(1, min(most, len(images)) + 1) if len(images) % b == 0)
        self.batches = [images[i : i + batch] for i in range(0, len(images), batch)]
        self.it = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.it = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self.it, None)
        return None if b is None else {"input": np.ascontiguousarray(b, np.float32)}


def quantize_graph(
    fp32: Path, out: Path, ranges: Path, settings: QuantSettings, images: np.ndarray | None = None
) -> Path:
    """Write the int8 graph of ``fp32`` to ``out``: from ``ranges`` when that file exists
    (no images needed), else calibrate on ``images`` and write the ranges there too."""
    require_onnxruntime()
    from onnxruntime import quantization as q

    if images is None and not ranges.is_file():
        raise ReswiseError(f"quantization ranges {ranges} are missing; export the policy again")
    method = {
        "minmax": q.CalibrationMethod.MinMax,
        "percentile": q.CalibrationMethod.Percentile,
        "entropy": q.CalibrationMethod.Entropy,
    }[settings.method]
    pre = preprocessed(fp32)
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {
        "CalibPercentile": settings.percentile,
        "CalibTensorRangeSymmetric": False,
        "CalibStridedMinMax": 1,  # one batch per collection (see _Reader), any method
    }
    with _quiet(), replacing(out, ".onnx") as tmp:
        q.quantize_static(
            str(pre),
            str(tmp),
            calibration_data_reader=None if images is None else _Reader(images),
            quant_format=q.QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            nodes_to_exclude=_excluded(pre, settings.keep_float),
            calibrate_method=method,
            calibration_cache_path=str(ranges),
            extra_options=extra,
        )
    return out


def _top1(sess: Any, images: np.ndarray, batch: int = 64) -> np.ndarray:
    out = [
        sess.run(None, {"input": np.ascontiguousarray(images[i : i + batch], np.float32)})[0]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out).argmax(1)


def calibrate_stage(
    fp32: Path,
    calib: np.ndarray,
    choose: np.ndarray,
    *,
    threads: int = 1,
    methods: tuple[str, ...] = METHODS,
    keep_float: tuple[str, ...] = KEEP_FLOAT,
) -> StageQuant:
    """The int8 graph of one stage, its settings chosen on calibration-half images.

    ``calib``: the images the ranges come from; ``choose``: the images every candidate is
    scored on (top-1 agreement with fp32). Both must come from the calibration half.
    """
    from .backends import ort_session

    bad = [m for m in methods if m not in METHODS] + [k for k in keep_float if k not in KEEP_FLOAT]
    if bad:
        raise ReswiseError(f"unknown quantization option '{bad[0]}'; use {METHODS} / {KEEP_FLOAT}")
    if len(calib) == 0 or len(choose) == 0:
        raise ReswiseError("int8 calibration needs images in the calibration half; use more images")
    ref = _top1(ort_session(fp32, threads), choose)
    key = _sha(np.ascontiguousarray(calib, np.float32).tobytes())[:16]
    tried: dict[str, float] = {}
    best: tuple[float, int, QuantSettings, Path, Path] | None = None
    for i, (m, k) in enumerate((m, k) for k in keep_float for m in methods):
        s = QuantSettings(method=m, keep_float=k)
        stem = quant_dir() / f"{fp32.stem}-{s.tag()}-c{key}"
        # not with_suffix: the stem holds torch's version, dots included
        graph, ranges = Path(f"{stem}.int8.onnx"), Path(f"{stem}.ranges.json")
        if not graph.is_file():
            quantize_graph(fp32, graph, ranges, s, None if ranges.is_file() else calib)
        agree = float(np.mean(_top1(ort_session(graph, threads), choose) == ref))
        tried[s.tag()] = agree
        # the first candidate wins ties: no float layers and MinMax are the cheapest and simplest
        if best is None or agree > best[0]:
            best = (agree, i, s, graph, ranges)
    assert best is not None
    agree, _, s, graph, ranges = best
    return StageQuant(graph, ranges, s, agree, tried, len(calib), len(choose))


def rebuild_int8(fp32: Path, stage: dict[str, Any]) -> Path:
    """The int8 graph a sweep measured, rebuilt from the fp32 graph and the stage's kept
    parameters (``settings``, ``ranges``: the calibration cache's JSON, ``graph_sha256``),
    with no image; refused unless it is that graph byte for byte (another torch or ONNX Runtime
    may name tensors otherwise, and ranges matched to no tensor would go unquantized)."""
    import json

    settings = QuantSettings(**stage["settings"])
    body = json.dumps(stage["ranges"], sort_keys=True).encode()
    stem = quant_dir() / f"{fp32.stem}-{settings.tag()}-r{_sha(body)[:16]}"
    graph, ranges = Path(f"{stem}.int8.onnx"), Path(f"{stem}.ranges.json")
    if not graph.is_file():
        ranges.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(ranges, body)
        quantize_graph(fp32, graph, ranges, settings)
    from ..records import sha256_file

    if sha256_file(graph) != stage["graph_sha256"]:
        raise ReswiseError(
            "the int8 graph rebuilt from the policy's quantization parameters differs from the one "
            "the sweep measured (another torch or ONNX Runtime?); sweep again with this install"
        )
    return graph


def with_normalize(int8: Path, mean: tuple[float, ...], std: tuple[float, ...]) -> Path:
    """``int8`` behind ONNX Mul + Add nodes that normalise resized pixels (float 0..255, input
    ``pixels``): the one normalisation arithmetic of every int8 stage. torch's (``addcmul``)
    differs from ONNX Runtime's Mul + Add by an ulp on half the pixels, and an ulp across a
    quantisation step moved int8 logits by up to 0.07."""
    import onnx
    from onnx import compose, helper, numpy_helper

    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    scale = (np.float32(1.0) / (np.float32(255.0) * s)).astype(np.float32)
    shift = (-np.asarray(mean, np.float32).reshape(1, -1, 1, 1) / s).astype(np.float32)
    tag = _sha(scale.tobytes() + shift.tobytes())[:12]
    out = Path(f"{str(int8).removesuffix('.int8.onnx')}-n{tag}.int8.onnx")
    if out.is_file():
        return out
    net = onnx.load(str(int8))
    norm = helper.make_graph(
        [helper.make_node("Mul", ["pixels", "norm_scale"], ["scaled"]),
         helper.make_node("Add", ["scaled", "norm_shift"], ["x"])],
        "normalize",
        [helper.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT, ["batch", 3, None, None])],
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3, None, None])],
        [numpy_helper.from_array(scale, "norm_scale"), numpy_helper.from_array(shift, "norm_shift")],
    )  # fmt: skip
    first = helper.make_model(norm, opset_imports=list(net.opset_import))
    first.ir_version = net.ir_version
    joined = compose.merge_models(first, net, io_map=[("x", "input")])
    with replacing(out, ".onnx") as tmp:
        onnx.save(joined, str(tmp))
    return out
