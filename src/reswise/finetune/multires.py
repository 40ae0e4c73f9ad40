"""Shared convolutions, private BatchNorm per resolution (RS-Net / SAN style).

:class:`PrivateBN` keeps, for every resolution other than the native one, its own copy of every
BatchNorm's affine parameters and running statistics, and runs the shared network with them via
``torch.func.functional_call``; the native resolution uses the model's own BN. The per-resolution
copies are saved in :mod:`reswise.models.checkpoint`'s per-resolution format, which ``sweep``/``export``
already load at resolution r, so a multi-resolution checkpoint is an ordinary checkpoint that
anyone can load at the native resolution.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..models.checkpoint import checkpoint_state


def bn_state_keys(model: nn.Module) -> list[str]:
    """state_dict keys of every BatchNorm parameter and buffer."""
    keys = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for k in m.state_dict():
                keys.append(f"{name}.{k}" if name else k)
    return keys


class PrivateBN(nn.Module):
    """``model`` plus one private BN set per extra resolution; ``forward(x, r)``."""

    def __init__(self, model: nn.Module, resolutions: list[int], native: int):
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
