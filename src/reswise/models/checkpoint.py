"""reswise's extra state inside a checkpoint: one format, encoded and decoded only here.

Per-resolution tensors (BN statistics from ``reswise recalibrate``, adapters from ``reswise
adapt``, private BN from multi-resolution training) ride beside a plain state_dict as
``reswise.bn.<resolution>.<state_dict key>`` entries. The file stays an ordinary
``weights_only``-loadable state_dict: anything that drops the ``reswise.`` keys can load it at the
native resolution. The class names the weights predict may ride along as ``reswise.classes``
(UTF-8 bytes, one name per line), so a checkpoint keeps saying what its outputs mean.

    state = checkpoint_state(model.state_dict(), {24: bn_at_24}, class_names=names)
    plain, extra = split_checkpoint(state)  # extra.get(24) is bn_at_24, extra.class_names names

This module must not import ``reswise.models``: the model registry imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ReswiseError
from ..records.files import replacing

NAMESPACE = "reswise."  # every key reswise adds to a state_dict starts with this
PREFIX = NAMESPACE + "bn."
CLASSES_KEY = NAMESPACE + "classes"
MADE_KEY = NAMESPACE + "made"  # how the per-resolution state was made, one line (UTF-8)


@dataclass
class ExtraState:
    """Per-resolution tensors decoded from a checkpoint: resolution -> {state_dict key: tensor}."""

    per_resolution: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None  # what the outputs mean, when the file says
    made: str | None = None  # how the per-resolution state was made, when the file says

    def __bool__(self) -> bool:  # "has per-resolution state": class names alone change no layer
        return bool(self.per_resolution)

    @property
    def resolutions(self) -> list[int]:
        return sorted(self.per_resolution)

    def get(self, resolution: int) -> dict[str, torch.Tensor] | None:
        """The tensors to load at ``resolution``, or None when it has none of its own."""
        return self.per_resolution.get(int(resolution))

    def kinds(self, model_keys: set[str] | list[str]) -> dict[int, str]:
        """Per resolution, what its state is for a model with state_dict keys ``model_keys``:
        ``specialist`` (every tensor of its own), ``adapter`` (BN and some weights) or ``bn``."""
        return {r: state_kind(ts, model_keys) for r, ts in sorted(self.per_resolution.items())}

    def describe(self, model_keys: set[str] | list[str]) -> str:
        """One phrase for what the weights carry per resolution, e.g. 'specialists for [16, 20]'."""
        names = {"specialist": "specialists", "adapter": "adapters", "bn": "BN statistics"}
        by_kind: dict[str, list[int]] = {}
        for r, kind in self.kinds(model_keys).items():
            by_kind.setdefault(names[kind], []).append(r)
        return "; ".join(f"per-resolution {k} for {rs}" for k, rs in by_kind.items())


def state_kind(tensors: dict[str, torch.Tensor], model_keys: set[str] | list[str]) -> str:
    """``specialist`` when ``tensors`` replace every entry of the model's state_dict (BN's
    step counters aside), ``adapter`` when they replace any weight that is not BatchNorm's,
    else ``bn``: told from the keys alone, so files written before the kinds had names read
    the same."""
    needed = {k for k in model_keys if not k.endswith("num_batches_tracked")}
    if needed and needed <= set(tensors):
        return "specialist"
    bn_like = ("running_mean", "running_var", "num_batches_tracked")
    bn_params = {k.rsplit(".", 1)[0] for k in tensors if k.endswith(bn_like)}
    weights = [
        k for k in tensors if not k.endswith(bn_like) and k.rsplit(".", 1)[0] not in bn_params
    ]
    return "adapter" if weights else "bn"


def encode_class_names(names: tuple[str, ...] | list[str]) -> torch.Tensor:
    """Class names as a uint8 tensor, so the file stays a ``weights_only`` state_dict."""
    names = [str(n) for n in names]
    if not names or any(not n or "\n" in n for n in names):
        raise ReswiseError(
            "class names for a checkpoint must be non-empty, one line each; check the names passed"
        )
    return _encode_text("\n".join(names))


def _encode_text(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8).clone()


def _decode_text(t: torch.Tensor, key: str) -> str:
    try:
        if t.dtype != torch.uint8 or t.dim() != 1:
            raise ValueError
        return bytes(t.numpy().tobytes()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise ReswiseError(
            f"checkpoint key '{key}' is not UTF-8 text; re-save the checkpoint"
        ) from None


def decode_class_names(t: torch.Tensor) -> tuple[str, ...]:
    return tuple(_decode_text(t, CLASSES_KEY).split("\n"))


def peek_class_names(path: str | Path) -> tuple[str, ...] | None:
    """The class names a checkpoint file carries, read before any model is built (a new task's
    head has as many outputs as names); None when it carries none or cannot be read (loading
    it then says why). Memory-mapped: a large file is not read whole twice."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    for key in ("state_dict", "model", "model_state_dict"):  # the containers loading unwraps
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    t = obj.get(CLASSES_KEY) if isinstance(obj, dict) else None
    return decode_class_names(t) if isinstance(t, torch.Tensor) else None


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
    names = made = None
    for key, t in state.items():
        if not key.startswith(NAMESPACE):
            plain[key] = t
        elif key == CLASSES_KEY:
            names = decode_class_names(t)
        elif key == MADE_KEY:
            made = _decode_text(t, MADE_KEY)
        else:
            res, name = _decode_key(key)
            per_resolution.setdefault(res, {})[name] = t
    return plain, ExtraState(per_resolution, names, made)


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
    class_names: tuple[str, ...] | list[str] | None = None,
    made: str | None = None,
) -> dict[str, torch.Tensor]:
    """Encode: ``model_state`` plus ``reswise.bn.<r>.<key>`` entries, all detached CPU copies,
    plus ``reswise.classes`` when ``class_names`` are given and ``reswise.made`` (how the
    per-resolution state was made, one line) when ``made`` is.

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
    if class_names is not None:
        state[CLASSES_KEY] = encode_class_names(class_names)
    if made:
        state[MADE_KEY] = _encode_text(" ".join(made.split()))
    return state


def save_checkpoint(
    model: nn.Module,
    per_resolution: dict[int, dict[str, torch.Tensor]],
    path: str | Path,
    class_names: tuple[str, ...] | list[str] | None = None,
    made: str | None = None,
) -> None:
    """Write ``model``'s state_dict with its per-resolution tensors (``weights_only`` loadable)
    and ``made``, how they were made, when given.

    A LoadedModel works too and brings its weights' class names unless ``class_names`` is given.
    """
    if class_names is None:
        class_names = getattr(getattr(model, "info", None), "class_names", None)
    model = getattr(model, "model", model)
    state = checkpoint_state(model.state_dict(), per_resolution, class_names, made)
    with replacing(Path(path)) as tmp:  # never half a checkpoint at ``path`` (a full disk)
        torch.save(state, tmp)
