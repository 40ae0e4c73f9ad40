"""BatchNorm recalibration per resolution (precise-BN style), on unlabeled images.

A network trained at one resolution sees different activation statistics at another, and its
BatchNorm running statistics no longer fit. Re-estimating them at the new resolution costs
forward passes only (no labels, no gradients). The statistics here are the exact population
mean and (unbiased) variance of each BN input over all images, combined across batches with
Chan's formula, so unequal batch sizes do not bias them (PyTorch's momentum=None averages
per-batch statistics, which misses the spread between batch means).

Use images the evaluation does not score (e.g. training images): recalibrating on the test
images would let the test set shape the model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import Dataset, ResizePolicy, normalizer, to_input
from ..errors import ReswiseError
from ..models.checkpoint import PREFIX, save_checkpoint, split_checkpoint

Images = Dataset | torch.Tensor


class _Moments:
    """Running mean and sum of squared deviations of one BN input, per channel, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.batches = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double()
        dims = [0, *range(2, x.dim())]
        k = x.numel() // x.shape[1]
        bm = x.mean(dims)
        bm2 = ((x - bm.view(1, -1, *([1] * (x.dim() - 2)))) ** 2).sum(dims)
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = bm, bm2
        else:
            delta, tot = bm - self.mean, self.count + k
            self.mean = self.mean + delta * k / tot
            self.m2 = self.m2 + bm2 + delta * delta * self.count * k / tot
        self.count += k
        self.batches += 1


def _bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _prepare(model: nn.Module) -> tuple[nn.Module, dict[str, _Moments]]:
    """A copy in eval mode whose BN layers (only) train with fresh cumulative statistics."""
    net = copy.deepcopy(model).eval()
    moments = {}
    for name, bn in _bn_layers(net):
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
        moments[name] = _Moments()
        bn.register_forward_pre_hook(moments[name])
    return net, moments


def _pick(n_total: int, n: int | None, seed: int) -> np.ndarray:
    # a random subset: image folders are sorted by class, and one-class batches skew BN
    n = n_total if n is None else min(n, n_total)
    if n <= 0:
        raise ReswiseError("BN recalibration needs at least one image; check --calib-size")
    return np.random.default_rng(seed).permutation(n_total)[:n]


def _get(images: Images, idx: np.ndarray) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ReswiseError(
                "BN recalibration images must be a uint8 tensor N x 3 x H x W (raw pixels)"
            )
        return images[torch.as_tensor(idx)]
    return images.get(torch.as_tensor(idx))


def recalibrate_all(
    model: nn.Module,
    images: Images,
    resolutions: list[int],
    policy: ResizePolicy,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    calib_size: int | None,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[int, dict[str, torch.Tensor]]:
    """BN buffers per resolution from the same ``calib_size`` images, each decoded once."""
    if batch_size <= 0:
        raise ReswiseError(f"batch_size must be positive, got {batch_size}")
    model = getattr(model, "model", model)  # a LoadedModel works too
    if not _bn_layers(model):
        raise ReswiseError(
            "the model has no BatchNorm layers with running statistics to recalibrate"
        )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    nets = {r: _prepare(model) for r in resolutions}
    scale_shift = normalizer(mean, std)
    idx = _pick(len(images), calib_size, seed)
    with torch.no_grad():
        for a in range(0, len(idx), batch_size):
            batch = _get(images, idx[a : a + batch_size])  # decoded once for every resolution
            for r in resolutions:
                nets[r][0](to_input(policy(batch, r), scale_shift).to(device))
    out: dict[int, dict[str, torch.Tensor]] = {}
    for r, (net, moments) in nets.items():
        state = {}
        for name, bn in _bn_layers(net):
            mo = moments[name]
            if mo.mean is None or mo.m2 is None:
                # a BN layer forward() never reaches (an unused branch) has no statistics to
                # fit and cannot change the output: it keeps the model's own buffers
                continue
            var = mo.m2 / max(mo.count - 1, 1)  # unbiased, as PyTorch stores running_var
            state[f"{name}.running_mean"] = mo.mean.to(bn.running_mean.dtype).cpu()
            state[f"{name}.running_var"] = var.to(bn.running_var.dtype).cpu()
            state[f"{name}.num_batches_tracked"] = torch.tensor(mo.batches, dtype=torch.long)
        out[int(r)] = state
    return out


def recalibrate_bn(
    model: nn.Module,
    images: Images,
    resolution: int,
    policy: ResizePolicy,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_batches: int | None,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """BN buffers (running_mean, running_var, num_batches_tracked) re-estimated at ``resolution``.

    Uses ``num_batches`` batches of a seeded random subset (None: every image). The model itself
    is never modified: the work happens on a copy.
    """
    n = None if num_batches is None else num_batches * batch_size
    states = recalibrate_all(model, images, [resolution], policy, mean, std, n, batch_size, seed)
    return states[int(resolution)]


def save_bn_checkpoint(
    model: nn.Module, bn_states: dict[int, dict[str, torch.Tensor]], path: str | Path
) -> None:
    """The model's state_dict plus ``reswise.bn.<res>.<buffer>`` tensors (weights_only loadable).

    The format belongs to :mod:`reswise.models.checkpoint`; this name stays for existing callers.
    """
    save_checkpoint(model, bn_states, path)


def load_bn_states(state_dict: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Per-resolution BN buffers from ``reswise.bn.<res>.<buffer>`` keys (others ignored).

    A model loaded with ``create_model`` already carries these decoded in ``lm.extra``.
    """
    ours = {k: v for k, v in state_dict.items() if k.startswith(PREFIX)}
    return split_checkpoint(ours)[1].per_resolution
