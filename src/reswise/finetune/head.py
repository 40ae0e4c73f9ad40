"""Which outputs a training folder's labels mean: the model's own classes, or a new head.

Folders that are all classes the model knows (ImageNet wnids or names, CIFAR-10 names) keep the
head and map by name, as a sweep does; any other folder is a new task, and the classifier is
replaced by one with one output per folder, whose names then travel in the saved weights (a
checkpoint with class names builds its head with that many outputs). Weights that carry no
class names (random init, a bare checkpoint) keep their head and train folder i as output i
while the folders fit in it.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..data import Dataset, align_labels
from ..errors import ReswiseError
from ..models import LoadedModel
from ..models.checkpoint import ExtraState


def replace_head(model: nn.Module, n: int, expected: int | None = None) -> str:
    """Give ``model`` a fresh classifier with ``n`` outputs; return the replaced module's name.

    timm models reset their own (they know where it is); otherwise the last ``nn.Linear`` is the
    classifier (torchvision's ``fc``/``classifier[-1]``, EfficientNet-Lite's ``_fc``, the CIFAR
    models' ``linear``). ``expected``: the outputs that layer should have, as a check.
    """
    reset = getattr(model, "reset_classifier", None)
    if callable(reset) and callable(getattr(model, "get_classifier", None)):
        reset(n)
        found = model.get_classifier()
        return next((k for k, m in model.named_modules() if m is found), "classifier")
    linears = [(k, m) for k, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ReswiseError(
            f"{type(model).__name__} has no nn.Linear classifier to replace for a new task; "
            "train on folders named after the model's classes or use a model with a linear head"
        )
    name, old = linears[-1]
    if expected is not None and old.out_features != expected:
        raise ReswiseError(
            f"the last nn.Linear of {type(model).__name__} ('{name}') has {old.out_features} "
            f"outputs, not the model's {expected} classes; train on folders named after the "
            "model's classes"
        )
    new = nn.Linear(old.in_features, n, bias=old.bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, new)  # Sequential children are named "0", "1"..
    return name


def fit_task(lm: LoadedModel, data: Dataset) -> tuple[Dataset, tuple[str, ...] | None, str]:
    """``data`` with labels that index ``lm``'s outputs, the outputs' class names, and how.

    Changes ``lm`` in place for a new task: its head, ``info`` (class count and names) and
    ``extra`` (per-resolution tensors of the old head no longer fit).
    """
    info = lm.info
    if data.label_mapping:  # the caller mapped the labels already
        names = data.label_names
        if names is None and len(data.classes) == info.num_classes:
            names = tuple(data.classes)
        return data, names, data.label_mapping
    if info.class_names is None and len(data.classes) <= info.num_classes:
        # weights that do not say what their outputs mean (random init, a bare checkpoint):
        # folder i trains output i, as a sweep scores them
        data, how = align_labels(data, None, num_classes=info.num_classes)
        same = len(data.classes) == info.num_classes
        return data, tuple(data.classes) if same else None, how
    if info.class_names is not None:
        try:
            data, how = align_labels(data, info.class_names, num_classes=info.num_classes)
            return data, info.class_names, how
        except ReswiseError:  # folders the model does not know, or more than it has: new task
            pass
    names = tuple(data.classes)
    where = replace_head(lm.model, len(names), info.num_classes)
    lm.info = dataclasses.replace(info, num_classes=len(names), class_names=names)
    keep = {
        r: {k: t for k, t in ts.items() if not k.startswith(where + ".")}
        for r, ts in lm.extra.per_resolution.items()
    }
    lm.extra = ExtraState({r: ts for r, ts in keep.items() if ts}, names)
    data, _ = align_labels(data, names)
    return data, names, f"new head: '{where}' replaced by {len(names)} outputs, one per folder"
