"""Per-resolution adapters (FixRes-style): BN affine + BN statistics + classifier, tuned at r.

The convolution weights stay frozen and shared; for each resolution only the small adapter is
trained on labeled *training* images at that resolution. The result is saved like BN
recalibration, with :func:`reswise.models.checkpoint.save_checkpoint`: per-resolution entries beside the
unchanged state_dict, so ``sweep``, ``select``, ``cascade`` and ``export`` pick up the adapter of
r whenever they run at r (``create_model`` decodes it into ``lm.extra``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import TensorImages, normalizer, to_input
from ..errors import ReswiseError
from ..models import LoadedModel
from .multires import bn_state_keys
from .train import augment


def adapter_keys(model: nn.Module) -> list[str]:
    """state_dict keys an adapter owns: every BN tensor and the last linear layer (classifier)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ReswiseError("the model has no nn.Linear classifier to adapt")
    head = linears[-1]
    return bn_state_keys(model) + [f"{head}.weight", f"{head}.bias"]


def adapter_size(model: nn.Module) -> dict[str, int]:
    """Parameters and bytes of one adapter next to the whole model's."""
    state = model.state_dict()
    keys = adapter_keys(model)
    return {
        "adapter_params": sum(state[k].numel() for k in keys if state[k].is_floating_point()),
        "adapter_bytes": sum(state[k].numel() * state[k].element_size() for k in keys),
        "model_params": sum(p.numel() for p in model.parameters()),
        "model_bytes": sum(t.numel() * t.element_size() for t in state.values()),
    }


def adapt_one(
    lm: LoadedModel,
    data: TensorImages,
    resolution: int,
    steps: int = 400,
    batch_size: int = 128,
    lr: float = 0.01,
    seed: int = 0,
    distill: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Train one adapter at ``resolution``; the caller's model is never modified.

    ``distill`` is the share of the loss spent on matching the unadapted model's softmax on the
    same image at its native size (KL); the rest is cross-entropy on the labels.
    """
    if not 0.0 <= distill <= 1.0:
        raise ReswiseError(f"distill must be a share between 0 and 1, got {distill}")
    teacher = copy.deepcopy(lm.model).eval().requires_grad_(False) if distill else None
    model = copy.deepcopy(lm.model)
    keys = set(adapter_keys(model))
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in keys)
        if name in keys:
            trainable.append(p)
    opt = torch.optim.SGD(trainable, lr=lr, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(seed + resolution)
    scale_shift = normalizer(lm.info.mean, lm.info.std)
    model.train()
    n = len(data)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, n, (batch_size,), generator=g)
        full = augment(data.images[idx], g)
        x = full
        if resolution != x.shape[-1]:
            # not lm.info.eval_policy(): bit-identical for whole-image bilinear (CIFAR) models,
            # but it centre-crops ImageNet-task ones, which would change what they train on
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True)
        logits = model(to_input(x, scale_shift))
        loss = F.cross_entropy(logits, data.labels[idx])
        if teacher is not None:
            with torch.no_grad():
                soft = teacher(to_input(full, scale_shift)).softmax(1)
            kl = F.kl_div(logits.log_softmax(1), soft, reduction="batchmean")
            loss = (1 - distill) * loss + distill * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in adapter_keys(model)}


def check_adapt(
    lm: LoadedModel, resolutions: list[int], steps: int, batch_size: int, lr: float
) -> None:
    """Refuse flags that would train nothing or write a useless file, before any image loads."""
    if steps <= 0:
        raise ReswiseError(f"--steps must be positive, got {steps}")
    if batch_size <= 0:
        raise ReswiseError(f"--batch-size must be positive, got {batch_size}")
    if not (math.isfinite(lr) and lr > 0):
        raise ReswiseError(f"--lr must be a positive number, got {lr}")
    native = lm.info.input_size
    if not [r for r in resolutions if r != native]:  # the file would hold no adapter at all
        raise ReswiseError(
            f"{native} is {lm.info.name}'s native resolution: the model answers there as it is; "
            "give the smaller resolutions to adapt"
        )


def adapt(
    lm: LoadedModel,
    data: TensorImages,
    resolutions: list[int],
    steps: int = 400,
    batch_size: int = 128,
    lr: float = 0.01,
    seed: int = 0,
    log: Any = None,
    distill: float = 0.0,
) -> dict[int, dict[str, torch.Tensor]]:
    """One adapter per resolution other than the model's native one (the model answers there;
    a list of nothing else is refused)."""
    if not isinstance(data, TensorImages):
        raise ReswiseError("adapters train on same-size images held in memory (e.g. a train split)")
    check_adapt(lm, resolutions, steps, batch_size, lr)
    out = {}
    for r in resolutions:
        if r == lm.info.input_size:  # a sweep's list includes it: the model stays as it is there
            continue
        out[r] = adapt_one(lm, data, r, steps, batch_size, lr, seed, distill)
        if log:
            log(f"adapter for {r}x{r}: {steps} steps done")
    return out
