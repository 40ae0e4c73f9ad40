"""Export a policy file's cascade: one ONNX graph per stage, resize from the native size inside.

    reswise export --policy policy.json --format onnx --out shipped/

Each graph takes the native-size uint8 batch ``N x 3 x S x S`` and does what the sweep did: the
resize, the normalisation, the network with the stage's BN. ONNX ``Resize`` has no mode equal to
torch's antialiased uint8 resize (the records' resize), so the graph does not use it: the resize
is separable and linear, so it is two ``MatMul``s by constant matrices holding torch's own
fixed-point weights (int16 with the kernel's precision), rounded after each pass exactly as
torch's kernel rounds (horizontal pass first, then vertical). :func:`resize_mismatch` measures it
against :class:`reswise.data.ResizePolicy` on the check images; pixel-identical is what the
export reports as ``resize_exact``. ``reswise.runtime`` runs the result without torch.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import ResizePolicy
from ..errors import ReswiseError
from ..measure.onnx import prepare_model, require_onnxruntime
from ..models import LoadedModel
from .adaptive import AdaptiveClassifier, load_model_for, resize_policy, stage_bn
from .policy_file import load_policy, sha256_file, write_atomic

MAX_PRECISION = 22  # torch's uint8 resize: weights scaled by 2**p, p < 22, fitting int16


def axis_weights(n_in: int, n_out: int, mode: str, antialias: bool) -> tuple[torch.Tensor, int]:
    """``n_out x n_in`` integer weights of torch's uint8 resize along one axis, and their
    precision p (output = floor(weights @ x / 2**p + 0.5), clamped to 0..255).

    The float weights are torch's own (its resize applied to the unit vectors); they are then
    scaled and rounded as its uint8 kernel does (UpSampleKernel: compute_index_ranges_int16_weights).
    """
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)
    kw: dict[str, Any] = {}
    if mode in ("bilinear", "bicubic"):
        kw = {"align_corners": False, "antialias": antialias}
    w = F.interpolate(basis, size=(1, n_out), mode=mode, **kw).reshape(n_in, n_out).T
    w_max, p = float(w.max()), 0
    while p < MAX_PRECISION and int(0.5 + w_max * (1 << (p + 1))) < (1 << 15):
        p += 1
    v = w * (1 << p)
    return torch.where(v < 0, torch.trunc(v - 0.5), torch.trunc(v + 0.5)).float(), p


def resize_plan(
    policy: ResizePolicy, h: int, w: int, r: int
) -> list[tuple[torch.Tensor, int] | None]:
    """(weights, precision) for the width pass and the height pass of resizing h x w to r x r
    (None: that axis keeps its size), centre crop included for the ``crop`` policy."""
    if policy.kind == "full":
        sizes, offsets = (r, r), (0, 0)
    else:
        s = round(r / policy.crop_pct)
        nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        sizes = (nh, nw)
        offsets = (int(round((nh - r) / 2.0)), int(round((nw - r) / 2.0)))
    if (h, w) == sizes:  # ResizePolicy does not resize at all then
        return [None, None]
    plan: list[tuple[torch.Tensor, int] | None] = []
    for n_in, n_out, off in ((w, sizes[1], offsets[1]), (h, sizes[0], offsets[0])):
        if n_in == n_out and off == 0 and n_out == r:
            plan.append(None)
            continue
        wts, p = axis_weights(n_in, n_out, policy.interpolation, policy.antialias)
        plan.append((wts[off : off + r], p))
    return plan


class StageGraph(nn.Module):
    """uint8 ``N x 3 x H x W`` in, logits out: the records' resize (two integer MatMuls, rounded
    like torch's kernel), the normalisation, then ``net``."""

    def __init__(
        self, net: nn.Module, plan: list[Any], mean: list[float], std: list[float]
    ) -> None:
        super().__init__()
        self.net = net
        self.passes = []
        for i, step in enumerate(plan):  # i = 0: width (x @ W^T), 1: height (W @ x)
            if step is not None:
                wts, p = step
                self.register_buffer(f"w{i}", wts.T.contiguous() if i == 0 else wts)
                self.passes.append((i, 2.0**-p))
        s = torch.tensor(std).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * s))
        self.register_buffer("shift", -torch.tensor(mean).view(1, -1, 1, 1) / s)

    def resized(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        for i, inv in self.passes:
            w = getattr(self, f"w{i}")
            y = torch.matmul(x, w) if i == 0 else torch.matmul(w, x)
            x = torch.clamp(torch.floor(y * inv + 0.5), 0.0, 255.0)  # integer sums: exact in fp32
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.resized(x) * self.scale + self.shift)


def resize_mismatch(graph: StageGraph, resize: ResizePolicy, images: torch.Tensor, r: int) -> float:
    """Share of pixels where the graph's resize differs from the sweep's (0.0: identical)."""
    want = resize(images, r).float()
    return float((graph.resized(images) != want).float().mean())


def _write_graph(graph: StageGraph, size: tuple[int, int], out: Path, opset: int) -> None:
    example = torch.zeros(1, 3, *size, dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
            torch.onnx.export(
                graph,
                (example,),
                str(out),
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
    except RuntimeError as e:
        raise ReswiseError(
            f"ONNX export of {out.name} failed ({str(e).splitlines()[0][:120]}); try another --opset"
        ) from None


def build_graphs(policy: dict[str, Any], lm: LoadedModel) -> dict[str, StageGraph]:
    """One StageGraph per stage (``stage_<r>``) and one for the fixed reference (``reference``)."""
    pre = policy["preprocessing"]
    size = pre["input_size"]
    bn = stage_bn(policy, lm)
    ref = int(policy["reference"])
    stages = [(f"stage_{r}", r, bn.get(r)) for r in policy["chain"]]
    stages.append(("reference", ref, lm.extra.get(ref) or {}))
    graphs = {}
    for name, r, state in stages:
        net = prepare_model(lm.model, state).cpu()
        plan = resize_plan(resize_policy(pre, r), size, size, r)
        graphs[name] = StageGraph(net, plan, pre["mean"], pre["std"]).eval()
    return graphs


def export_policy(
    policy_path: str | Path,
    out: str | Path,
    *,
    lm: LoadedModel | None = None,
    check_images: torch.Tensor | None = None,
    opset: int = 17,
) -> dict[str, Any]:
    """Write ``out/``: ``stage_<r>.onnx`` per stage, ``reference.onnx`` (the fixed reference,
    for timing against) and ``policy.json`` (the policy plus a ``graphs`` section).

    ``check_images`` (uint8 ``N x 3 x S x S``, real images): the graphs' resize is compared with
    the sweep's pixel for pixel, and ONNX Runtime's cascade with :class:`AdaptiveClassifier`.
    """
    ort = require_onnxruntime()
    policy = load_policy(policy_path)
    lm = load_model_for(policy, lm)
    out = Path(out)
    if out.is_file():
        raise ReswiseError(f"--out {out} is a file; give a folder for the graphs and policy")
    out.mkdir(parents=True, exist_ok=True)
    size = int(policy["preprocessing"]["input_size"])
    graphs = build_graphs(policy, lm)
    files = {}
    for name, graph in graphs.items():
        _write_graph(graph, (size, size), out / f"{name}.onnx", opset)
        files[name] = {"file": f"{name}.onnx", "sha256": sha256_file(out / f"{name}.onnx")}
    shipped = {k: v for k, v in policy.items() if k != "path"}
    shipped["graphs"] = {
        "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "size": [size, size]},
        "stages": [files[f"stage_{r}"] for r in policy["chain"]],
        "reference": files["reference"],
        "opset": opset,
        "onnxruntime": ort.__version__,
    }
    write_atomic(out / "policy.json", (json.dumps(shipped, indent=1) + "\n").encode())
    if check_images is not None:  # the runner reads policy.json: checked once it is written
        shipped["graphs"]["check"] = check_export(policy, lm, graphs, check_images, out)
        write_atomic(out / "policy.json", (json.dumps(shipped, indent=1) + "\n").encode())
    bn_file = policy.get("bn_file")
    if bn_file:  # not needed by the graphs (baked in), kept so the policy file stays whole
        shutil.copyfile(Path(policy["path"]).with_name(bn_file["name"]), out / bn_file["name"])
    return {"out": str(out), "files": files, **shipped["graphs"].get("check", {})}


def check_export(
    policy: dict[str, Any],
    lm: LoadedModel,
    graphs: dict[str, StageGraph],
    images: torch.Tensor,
    out: Path,
) -> dict[str, Any]:
    """The exported cascade against the torch module on real images: resize pixels, predictions,
    resolution per image, largest logit difference."""
    from .runtime import OnnxCascade

    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ReswiseError("check images must be a uint8 tensor N x 3 x H x W")
    pre = policy["preprocessing"]
    mismatch = {
        str(r): resize_mismatch(graphs[f"stage_{r}"], resize_policy(pre, r), images, r)
        for r in policy["chain"]
    }
    module = AdaptiveClassifier(policy, lm)
    want = module(images)
    runner = OnnxCascade(out)
    logits, res = runner(images.numpy())
    return {
        "n_check_images": int(len(images)),
        "resize_mismatch_pixels": mismatch,
        "resize_exact": all(v == 0.0 for v in mismatch.values()),
        "prediction_agreement": float(np.mean(logits.argmax(1) == want.logits.argmax(1).numpy())),
        "resolution_agreement": float(np.mean(res == want.resolution.numpy())),
        "max_abs_logit_diff": float(np.abs(logits - want.logits.numpy()).max()),
    }
