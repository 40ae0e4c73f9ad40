"""Shared convolutions, private BatchNorm per resolution (RS-Net / SAN style).

:class:`PrivateBN` keeps, for every resolution other than the native one, its own copy of every
BatchNorm's affine parameters and running statistics, and runs the shared network with them via
``torch.func.functional_call``; the native resolution uses the model's own BN. The per-resolution
copies are saved in :mod:`reswise.models.checkpoint`'s per-resolution format, which ``sweep``/``export``
already load at resolution r, so a multi-resolution checkpoint is an ordinary checkpoint that
anyone can load at the native resolution.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..data import to_input
from ..errors import ReswiseError
from ..models.checkpoint import checkpoint_state


def bn_state_keys(model: nn.Module) -> list[str]:
    """state_dict keys of every BatchNorm parameter and buffer."""
    keys = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for k in m.state_dict():
                keys.append(f"{name}.{k}" if name else k)
    return keys


def continued(start: dict[int, Any] | None, extra: list[int]) -> list[int]:
    """The resolutions of ``extra`` whose state a run takes from the starting weights' own
    (``start``) instead of from the model, largest first (private BN and specialists alike)."""
    return sorted((r for r in (start or {}) if r in extra), reverse=True)


class PrivateBN(nn.Module):
    """``model`` plus one private BN set per extra resolution; ``forward(x, r)``."""

    def __init__(
        self,
        model: nn.Module,
        resolutions: list[int],
        native: int,
        start: dict[int, dict[str, torch.Tensor]] | None = None,
    ):
        super().__init__()
        self.model = model
        self.native = native
        self.extra = [r for r in resolutions if r != native]
        state = model.state_dict()
        self.keys = bn_state_keys(model)
        param_names = {n for n, _ in model.named_parameters()}
        self.bn_params = nn.ParameterDict()
        self._buffers_by_res: dict[int, dict[str, torch.Tensor]] = {}
        for r in self.extra:
            bufs = {}
            for k in self.keys:
                t = state[k].detach().clone()
                if k in param_names:
                    self.bn_params[self._slot(r, k)] = nn.Parameter(t)
                else:
                    bufs[k] = t
                    self.register_buffer(self._slot(r, k), t)
            self._buffers_by_res[r] = bufs
        # BN the weights already carry for a resolution goes on from where it is
        self.continued = continued(start, self.extra)
        with torch.no_grad():
            for r in self.continued:
                for k, t in self.overrides(r).items():
                    if k in start[r]:
                        t.copy_(start[r][k])

    @staticmethod
    def _slot(r: int, key: str) -> str:
        return f"r{r}__{key.replace('.', '__')}"

    def overrides(self, r: int) -> dict[str, torch.Tensor]:
        """The BN tensors to use at resolution r (parameters and buffers)."""
        out = {k: self.bn_params[self._slot(r, k)] for k in self.keys if self._slot(r, k) in
               self.bn_params}  # fmt: skip
        out.update({k: getattr(self, self._slot(r, k)) for k in self._buffers_by_res[r]})
        return out

    def forward(self, x: torch.Tensor, r: int) -> torch.Tensor:
        if r == self.native:
            return self.model(x)
        return functional_call(self.model, self.overrides(r), (x,), strict=False)

    def checkpoint_state(
        self, class_names: tuple[str, ...] | list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Plain state_dict (native BN) + the private BN of every other resolution, encoded."""
        per_res = {r: self.overrides(r) for r in self.extra}
        return checkpoint_state(self.model.state_dict(), per_res, class_names)


def loss_weights(n: int, largest: float = 0.0) -> list[float]:
    """Loss weight per training resolution, largest first; they sum to 1."""
    if n == 1:
        return [1.0]
    if not 0.0 <= largest < 1.0:
        raise ReswiseError(f"--largest-weight must be in [0, 1), got {largest}")
    if largest == 0.0:
        return [1.0 / n] * n
    return [largest] + [(1.0 - largest) / (n - 1)] * (n - 1)


def sandwich(res_cycle: list[int], k: int | None, g: torch.Generator) -> list[int]:
    """This step's resolutions, largest first: the largest, the smallest and ``k`` drawn
    uniformly without replacement from those strictly between (all of them when ``k`` is None
    or covers them). Drawn on the CPU generator, so a resumed run draws the same."""
    if k is not None and k < 0:
        raise ReswiseError(f"--sandwich-k must be 0 or more, got {k}")
    inner = res_cycle[1:-1]
    if k is None or k >= len(inner):
        return list(res_cycle)
    pick = torch.randperm(len(inner), generator=g)[:k].sort().values.tolist()
    return [res_cycle[0], *(inner[i] for i in pick), res_cycle[-1]]


def resize(x: torch.Tensor, r: int) -> torch.Tensor:
    """A float batch resized to r x r (bilinear + antialias) as the sweep evaluates it: the
    resize of every multi-resolution and specialist step."""
    if x.shape[-1] == r and x.shape[-2] == r:
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)


def multires_step(
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    plan: Any,  # train._Plan
    step_res: list[int],
    weights: list[float],
) -> torch.Tensor:
    """Forward and backward at each of this step's resolutions (largest first, so it can teach).

    Under DDP every backward all-reduces: gradients accumulate into ``.grad`` already averaged,
    which stays exact for the parameters one resolution leaves unused (no_sync would make
    their reduction depend on which resolution came last).
    """
    cfg, dev = plan.cfg, plan.dev
    loss = torch.zeros((), device=dev)
    teacher = None
    for r, w in zip(step_res, weights):
        x = to_input(resize(xb, r), plan.scale_shift, channels_last=cfg.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=plan.amp is not None):
            logits = (model(x, r) if plan.multi else model(x)).float()
        li = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
        if cfg.distill and teacher is not None:
            kl = F.kl_div(logits.log_softmax(1), teacher, reduction="batchmean")
            li = 0.5 * li + 0.5 * kl
        if teacher is None:
            teacher = logits.detach().softmax(1)
        (li * w).backward()
        loss += li.detach() * w  # no .item(): a GPU keeps running ahead
    return loss
