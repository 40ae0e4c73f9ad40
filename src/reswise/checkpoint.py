"""reswise's extra state inside a checkpoint: one format, encoded and decoded only here.

Per-resolution tensors (BN statistics from ``reswise recalibrate``, adapters from ``reswise
adapt``, private BN from multi-resolution training) ride beside a plain state_dict as
``reswise.bn.<resolution>.<state_dict key>`` entries. The file stays an ordinary
``weights_only``-loadable state_dict: anything that drops the ``reswise.`` keys can load it at the
native resolution.

    state = checkpoint_state(model.state_dict(), {24: bn_at_24})
    plain, extra = split_checkpoint(state)  # extra.get(24) is bn_at_24

This module must not import ``reswise.models``: the model registry imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import ReswiseError

NAMESPACE = "reswise."  # every key reswise adds to a state_dict starts with this
PREFIX = NAMESPACE + "bn."


@dataclass
class ExtraState:
    """Per-resolution tensors decoded from a checkpoint: resolution -> {state_dict key: tensor}."""

    per_resolution: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.per_resolution)

    @property
    def resolutions(self) -> list[int]:
        return sorted(self.per_resolution)

    def get(self, resolution: int) -> dict[str, torch.Tensor] | None:
        """The tensors to load at ``resolution``, or None when it has none of its own."""
        return self.per_resolution.get(int(resolution))


def _decode_key(key: str) -> tuple[int, str]:
    if not key.startswith(PREFIX):
        raise ReswiseError(
            f"checkpoint key '{key}' is not a reswise format this version reads (only "
            f"{PREFIX}<resolution>.<key>); re-save the checkpoint with this reswise"
        )
    res, _, name = key[len(PREFIX) :].partition(".")
    if not res.isdigit() or int(res) <= 0 or not name:
        raise ReswiseError(
            f"checkpoint key '{key}' is not {PREFIX}<resolution>.<key>; re-save the checkpoint"
        )
    return int(res), name


def split_checkpoint(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], ExtraState]:
    """A loaded checkpoint -> (plain state_dict for ``load_state_dict``, decoded extra state).

    Every ``reswise.*`` key must decode: an unknown one is an error rather than silently dropped,
    since dropping it would evaluate the model without the state it was saved with.
    """
    plain: dict[str, torch.Tensor] = {}
    per_resolution: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        if not key.startswith(NAMESPACE):
            plain[key] = t
            continue
        res, name = _decode_key(key)
        per_resolution.setdefault(res, {})[name] = t
    return plain, ExtraState(per_resolution)


def check_fits(
    model_state: dict[str, torch.Tensor],
    per_resolution: dict[int, dict[str, torch.Tensor]],
    source: str = "per-resolution state",
) -> None:
    """Raise unless every per-resolution tensor names a ``model_state`` entry of the same shape."""
    for r, tensors in per_resolution.items():
        for name, t in tensors.items():
            if name not in model_state:
                raise ReswiseError(
                    f"{source}: tensor '{name}' for {r}x{r} is not in the model's state_dict; "
                    "recalibrate or adapt this model, not another"
                )
            if tuple(t.shape) != tuple(model_state[name].shape):
                raise ReswiseError(
                    f"{source}: tensor '{name}' for {r}x{r} has shape {tuple(t.shape)}, the "
                    f"model's has {tuple(model_state[name].shape)}; recalibrate or adapt this model"
                )


def checkpoint_state(
    model_state: dict[str, torch.Tensor],
    per_resolution: dict[int, dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Encode: ``model_state`` plus ``reswise.bn.<r>.<key>`` entries, all detached CPU copies.

    Copies, so the result is a snapshot that later training steps cannot change.
    """
    for r in per_resolution:
        if int(r) <= 0:
            raise ReswiseError(f"per-resolution state needs positive resolutions, got {r}")
    check_fits(model_state, per_resolution)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model_state.items()}
    for r, tensors in per_resolution.items():
        for name, t in tensors.items():
            state[f"{PREFIX}{int(r)}.{name}"] = t.detach().to("cpu", copy=True)
    return state


def save_checkpoint(
    model: nn.Module,
    per_resolution: dict[int, dict[str, torch.Tensor]],
    path: str | Path,
) -> None:
    """Write ``model``'s state_dict with its per-resolution tensors (``weights_only`` loadable)."""
    model = getattr(model, "model", model)  # a LoadedModel works too
    torch.save(checkpoint_state(model.state_dict(), per_resolution), Path(path))
