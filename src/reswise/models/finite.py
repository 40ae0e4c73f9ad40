"""Weights with NaN or Inf in them are broken: refuse them before they produce a number.

One NaN in a classifier weight makes every logit of every image NaN; the argmax of NaNs is some
fixed class, so a sweep reports that class's share (7.50 % measured) at every resolution and
exits 0. Checking every floating tensor once is milliseconds even for ResNet-101.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import chain

import torch
from torch import nn

from ..errors import ReswiseError
from .checkpoint import PREFIX, ExtraState


def _tensors(
    module_or_state: nn.Module | Mapping[str, torch.Tensor],
) -> Iterator[tuple[str, torch.Tensor]]:
    if not isinstance(module_or_state, nn.Module):
        yield from module_or_state.items()
        return
    # module by module, parameters then buffers: state_dict order, plus non-persistent buffers
    for prefix, mod in module_or_state.named_modules():
        own = chain(mod.named_parameters(recurse=False), mod.named_buffers(recurse=False))
        for name, t in own:
            yield (f"{prefix}.{name}" if prefix else name), t


def check_finite(module_or_state: nn.Module | Mapping[str, torch.Tensor], source: str) -> None:
    """Raise a one-line ReswiseError naming the first floating-point parameter or buffer that
    holds NaN or Inf, and how many such values it holds. ``source`` names the weights in the
    message (e.g. ``"checkpoint r20.pt"``)."""
    with torch.no_grad():
        for name, t in _tensors(module_or_state):
            if not isinstance(t, torch.Tensor) or t.is_meta:
                continue
            if not (t.is_floating_point() or t.is_complex()):
                continue
            finite = torch.isfinite(t)
            if bool(finite.all()):
                continue
            bad = t.numel() - int(finite.sum())
            raise ReswiseError(
                f"{source}: tensor '{name}' holds {bad} NaN/Inf value(s); the weights are "
                "broken, retrain or re-download them"
            )


def check_loaded(model: nn.Module, extra: ExtraState, source: str) -> None:
    """The model's own tensors, then its per-resolution state under its checkpoint key names."""
    check_finite(model, source)
    check_finite(
        {
            f"{PREFIX}{r}.{k}": t
            for r, ts in sorted(extra.per_resolution.items())
            for k, t in ts.items()
        },
        source,
    )
