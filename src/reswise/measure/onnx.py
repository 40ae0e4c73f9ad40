"""Export a model to ONNX at one resolution, and prove the file computes what PyTorch computes.

    from reswise.measure.onnx import export_onnx
    info = export_onnx(lm, 24, "r56_24.onnx", check_images=data.images[:64])

Uses PyTorch's TorchScript-based exporter (``dynamo=False``): the newer torch.export-based one
needs the ``onnxscript`` package, which ``reswise[onnx]`` does not install. The check runs ONNX
Runtime and PyTorch on the same real images and compares logits; a file that fails it is kept
(for inspection) but the call raises.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import normalizer, to_input
from ..errors import ReswiseError
from ..models import LoadedModel
from ..models._registry import sha256_file
from ..records import replacing
from .inference import check_resolutions

TOLERANCE = 1e-4  # max |logit difference| between ONNX Runtime and PyTorch for `ok`
MIN_OPSET = 11  # Resize with half_pixel coordinates (PyTorch's align_corners=False) needs 11
INSTALL_HINT = "pip install 'reswise[onnx]'"


def require_onnxruntime() -> Any:
    """Import onnx and onnxruntime, or say which extra installs them."""
    try:
        import onnx  # noqa: F401  (the exporter and the checker need it)
        import onnxruntime
    except ImportError:
        raise ReswiseError(
            f"ONNX export and timing need the optional extra: {INSTALL_HINT}"
        ) from None
    return onnxruntime


class BakedResize(nn.Module):
    """Resize any-size float input to ``size`` x ``size`` (bilinear), then run ``model``.

    ``antialias=False`` on purpose: ONNX ``Resize`` (opset 11+) has no antialiasing mode that
    matches PyTorch's, while plain bilinear with half-pixel centres maps onto it exactly. When
    downsizing by more than ~2x, plain bilinear aliases; resize before the graph in that case.
    """

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(
            x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False
        )
        return self.model(x)


def prepare_model(model: nn.Module, bn_state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` with per-resolution BN buffers loaded (the caller's is untouched)."""
    net = copy.deepcopy(model).eval()
    if bn_state:
        own = net.state_dict()
        bad = [k for k in bn_state if k not in own or own[k].shape != bn_state[k].shape]
        if bad:
            raise ReswiseError(
                f"bn_state key '{bad[0]}' does not fit the model ({len(bad)} such keys); "
                "pass the BN buffers recalibrated for this model"
            )
        net.load_state_dict(bn_state, strict=False)
    return net


def export_graph(
    model: nn.Module,
    resolution: int,
    out: str | Path,
    bake_resize_from: int | None = None,
    opset: int = 17,
) -> Path:
    """Write ``model`` (already in eval mode) as ONNX: input ``1x3xRxR``, dynamic batch axis.

    With ``bake_resize_from=S`` the graph takes ``Nx3xHxW`` float input (traced at S x S, height
    and width dynamic) and resizes it to R x R inside. No check is made here.
    """
    require_onnxruntime()
    if opset < MIN_OPSET:
        raise ReswiseError(f"opset {opset} is too old for this export; use --opset {MIN_OPSET}+")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net, size = model, resolution
    axes: dict[str, dict[int, str]] = {"input": {0: "batch"}, "logits": {0: "batch"}}
    if bake_resize_from is not None:
        # the exporter re-applies the root's training flag to every child afterwards, and a fresh
        # wrapper starts in training mode: eval() it or BN would switch to batch statistics
        net, size = BakedResize(model, resolution).eval(), bake_resize_from
        axes["input"].update({2: "height", 3: "width"})
    param = next(model.parameters(), None)
    example = torch.zeros(1, 3, size, size, device=param.device if param is not None else "cpu")
    # written beside ``out`` and renamed once whole: a full disk or Ctrl-C leaves no half graph
    # (in the backend cache, a later run would load it)
    try:
        with replacing(out, ".onnx") as tmp:
            quiet_export(net, example, tmp, opset, axes)
    except RuntimeError as e:
        raise ReswiseError(
            f"ONNX export at {resolution}x{resolution} failed ({str(e).splitlines()[0][:120]}); "
            "try another --opset"
        ) from None
    return out


def quiet_export(
    net: nn.Module,
    example: torch.Tensor,
    out: Path,
    opset: int,
    axes: dict[str, dict[int, str]],
    names: tuple[str, str] = ("input", "logits"),
) -> None:
    """torch's TorchScript-based exporter (``dynamo=False``), one input and one output named
    ``names``, its warnings silenced."""
    with warnings.catch_warnings():
        # the legacy exporter warns about its own deprecation and about slice folding
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(out),
            dynamo=False,
            opset_version=opset,
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_axes=axes,
        )


def _check_input(lm: LoadedModel, images: torch.Tensor, size: int, baked: bool) -> torch.Tensor:
    """Real uint8 images -> the normalised float batch the exported graph takes."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise ReswiseError("check_images must be a uint8 tensor N x 3 x H x W (e.g. data.images)")
    if images.shape[1] != 3 or len(images) == 0:
        raise ReswiseError(
            f"check_images must hold N >= 1 RGB images, got shape {tuple(images.shape)}"
        )
    info = lm.info
    if not baked or tuple(images.shape[-2:]) != (size, size):
        images = info.eval_policy()(images, size)  # baked graphs are fed the original size S
    return to_input(images, normalizer(info.mean, info.std))


def export_onnx(
    lm: LoadedModel,
    resolution: int,
    out: str | Path,
    bake_resize_from: int | None = None,
    check_images: torch.Tensor | None = None,
    opset: int = 17,
    bn_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Export ``lm.model`` at ``resolution`` to ``out`` and check it against PyTorch.

    ``bn_state``: BatchNorm buffers (e.g. recalibrated at this resolution) loaded before export;
    ``None`` takes the checkpoint's own state for this resolution from ``lm.extra`` (BN
    recalibration, adapters, multi-resolution BN) when it has some, ``{}`` exports without it.
    The result's ``per_resolution_bn`` says whether any was loaded.
    ``bake_resize_from=S``: the graph takes the original S x S image (any size works: height and
    width are dynamic) and resizes it to R x R with bilinear interpolation, ``antialias=False``
    (what ONNX ``Resize`` reproduces exactly); the float image is normalised before the resize.
    ``check_images``: a uint8 batch ``N x 3 x H x W``, normalised with the model's mean/std and
    resized to R with its resize policy (or to S when baked); without it, 8 random images are
    used, which proves the arithmetic but not accuracy. Raises :class:`ReswiseError` when the
    max |logit difference| reaches ``TOLERANCE`` (the file is kept).
    """
    ort = require_onnxruntime()
    if resolution <= 0 or (bake_resize_from is not None and bake_resize_from <= 0):
        raise ReswiseError(f"resolution must be positive, got {resolution}/{bake_resize_from}")
    check_resolutions(lm.info, [resolution])
    if bn_state is None:
        bn_state = lm.extra.get(resolution)
    net = prepare_model(lm.model, bn_state).cpu()
    path = export_graph(net, resolution, out, bake_resize_from, opset)

    size = bake_resize_from if bake_resize_from is not None else resolution
    check_data = "given images"
    if check_images is None:
        g = torch.Generator().manual_seed(0)
        check_images = torch.randint(0, 256, (8, 3, size, size), generator=g, dtype=torch.uint8)
        check_data = "random uint8 noise"
    x = _check_input(lm, check_images, size, bake_resize_from is not None)
    reference = BakedResize(net, resolution).eval() if bake_resize_from is not None else net
    with torch.inference_mode():
        want = reference(x).float().numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    diff = float(np.abs(got - want).max())
    result = {
        "out": str(path),
        "resolution": resolution,
        "bake_resize_from": bake_resize_from,
        "opset": opset,
        "max_abs_diff": diff,
        "top1_agreement": float((got.argmax(1) == want.argmax(1)).mean()),
        "n_images": len(x),
        "check_data": check_data,
        "per_resolution_bn": bool(bn_state),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "ok": diff < TOLERANCE,
    }
    if not result["ok"]:
        raise ReswiseError(
            f"ONNX check failed: max |logit diff| {diff:.2e} >= {TOLERANCE:g} vs PyTorch "
            f"(top-1 agreement {result['top1_agreement']:.3f}); {path} is kept for inspection, "
            "try another --opset or export without the baked resize"
        )
    return result
