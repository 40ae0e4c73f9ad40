"""What a training run does with the per-resolution state its starting weights carry.

Weights may carry state per resolution (BN statistics, private BN, adapters, specialists:
``reswise.models.checkpoint``). A run that trains the same kind of state at a resolution goes on
from the weights' own there (a long run in two sittings, or a longer second run), the rest
starts from the model; whatever the new file will not hold, the log names, so a run never drops
what the weights carried without a word.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import LoadedModel
from ..models.checkpoint import ExtraState
from .multires import PrivateBN
from .specialist import Specialists


def carried(lm: LoadedModel, kind: str) -> dict[int, dict[str, torch.Tensor]]:
    """The weights' per-resolution state of ``kind`` (``specialist``, ``adapter``, ``bn``)."""
    kinds = lm.extra.kinds(lm.model.state_dict().keys())
    return {r: ts for r, ts in lm.extra.per_resolution.items() if kinds[r] == kind}


def trainee(lm: LoadedModel, cfg: Any, res: list[int], native: int, multi: bool) -> nn.Module:
    """The network a run trains: specialists, the model with private BN per resolution, or the
    model itself; started from the weights' own state where they carry the same kind."""
    if cfg.specialists:  # copies of the model, which teaches them and is itself never trained
        return Specialists(lm.model, list(cfg.specialists), native, carried(lm, "specialist"),
                           lm.extra.made)  # fmt: skip
    if multi:  # the convolutions stay shared
        return PrivateBN(lm.model, res, native, carried(lm, "bn"))
    return lm.model


def carry_note(lm: LoadedModel, net: nn.Module) -> str | None:
    """One line on what became of the weights' per-resolution state, or None if they carry
    none."""
    if not lm.extra:
        return None
    keys = lm.model.state_dict().keys()
    trained = list(getattr(net, "extra", []))
    continued = list(getattr(net, "continued", []))
    what = "specialists" if isinstance(net, Specialists) else "private BN"
    flag = "--specialists" if isinstance(net, Specialists) else "--train-resolutions"

    def state(rs: list[int]) -> str:
        return ExtraState({r: lm.extra.per_resolution[r] for r in rs}).describe(keys)

    replaced = [r for r in lm.extra.resolutions if r in trained and r not in continued]
    dropped = [r for r in lm.extra.resolutions if r not in trained]
    parts = [f"{what} at {continued} go on from the weights' own"] if continued else []
    if replaced:
        parts.append(f"the weights' {state(replaced)} give way to {what} started from the model")
    if dropped:
        keep = f" (list {dropped} in {flag} to train them on)" if trained else ""
        parts.append(f"the weights' {state(dropped)} are not in the new file{keep}")
    return "; ".join(parts)
