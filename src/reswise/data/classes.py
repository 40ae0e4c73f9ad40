"""Class folders matched to a model's classes by name, never silently by position.

An ImageFolder's labels are folder positions (sorted names). They mean the model's classes only
when the folders are exactly the model's classes in its order: a folder holding only ``cat``,
``dog``, ``frog`` would score ``cat`` as CIFAR-10's class 0 (airplane). :func:`align_labels`
maps folders to the model's classes by name (CIFAR-10 names, ImageNet wnids or their
human-readable names), by a user's class map, or, for models that carry no class names, keeps
positions and says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import ReswiseError
from .datasets import CIFAR10_CLASSES, Dataset, load_dataset

CIFAR10_NAMES: tuple[str, ...] = tuple(CIFAR10_CLASSES)
POSITIONAL = "labels mapped by folder position (the model carries no class names)"
ClassMap = str | Path | Mapping[str, str | int]


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in the standard class-index order (sorted, n01440764 first)."""
    text = resources.files(__package__).joinpath("imagenet_wnids.txt").read_text()
    wnids = tuple(text.split())
    assert len(wnids) == 1000, "imagenet_wnids.txt is damaged; reinstall reswise"
    return wnids


@lru_cache(maxsize=1)
def imagenet_names() -> tuple[str, ...]:
    """torchvision's human-readable ImageNet-1k names, same index order as the wnids."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", " ")


def _lookup(class_names: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Exact names -> index, and case/underscore-insensitive names -> index where unambiguous
    (ImageNet has 'Cardigan' the corgi and 'cardigan' the sweater)."""
    aliases = [(n, i) for i, n in enumerate(class_names)]
    if tuple(class_names) == imagenet_wnids():
        aliases += [(n, i) for i, n in enumerate(imagenet_names())]
    exact: dict[str, int | None] = {}
    loose: dict[str, int | None] = {}
    for n, i in aliases:
        exact[n] = i if exact.get(n, i) == i else None
        loose[_norm(n)] = i if loose.get(_norm(n), i) == i else None
    return (
        {n: i for n, i in exact.items() if i is not None},
        {n: i for n, i in loose.items() if i is not None},
    )


def _resolve(name: str, exact: dict[str, int], loose: dict[str, int]) -> int | None:
    return exact[name] if name in exact else loose.get(_norm(name))


def _examples(class_names: Sequence[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in class_names[:3])
    if tuple(class_names) == imagenet_wnids():
        shown += ", ... or names: " + ", ".join(f"'{n}'" for n in imagenet_names()[:3])
    return shown + ", ..."


def _split_hint(dataset: Dataset, unknown: list[str], exact: dict, loose: dict) -> str:
    """'test'/'train' folders that hold the model's classes: the root is one level too high."""
    for f in unknown:
        sub = Path(dataset.name) / f
        try:
            names = [d.name for d in sub.iterdir() if d.is_dir()] if sub.is_dir() else []
        except OSError:
            names = []
        if names and all(_resolve(n, exact, loose) is not None for n in names):
            return f"; '{f}' holds the model's classes: use --data-root {sub}"
    return ""


def _by_name(dataset: Dataset, class_names: Sequence[str]) -> list[int]:
    exact, loose = _lookup(class_names)
    index = [_resolve(f, exact, loose) for f in dataset.classes]
    unknown = [f for f, i in zip(dataset.classes, index, strict=True) if i is None]
    if unknown:
        shown = ", ".join(f"'{f}'" for f in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise ReswiseError(
            f"{len(unknown)} of {len(dataset.classes)} class folders in {dataset.name or 'the data'} "
            f"are not among the model's {len(class_names)} class names ({shown}; valid: "
            f"{_examples(class_names)}){_split_hint(dataset, unknown, exact, loose)}; rename "
            'them or pass --class-map FILE (JSON {"folder": "class name or index"})'
        )
    return [int(i) for i in index if i is not None]


def _refuse_repeated_keys(path: Path) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A json ``object_pairs_hook``: JSON keeps the last of two equal keys, so a folder listed
    twice would silently take its second class."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ReswiseError(
                    f"class map {path} gives folder '{key}' twice ({out[key]!r} and {value!r}); "
                    "keep one entry per folder"
                )
            out[key] = value
        return out

    return hook


def _read_map(class_map: ClassMap) -> tuple[dict[str, str | int], str]:
    if isinstance(class_map, Mapping):
        return dict(class_map), "the class map given"
    path = Path(class_map)
    try:
        obj = json.loads(path.read_text(), object_pairs_hook=_refuse_repeated_keys(path))
    except OSError as e:
        raise ReswiseError(
            f"class map {path} cannot be read ({e.strerror or e}); check the path"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReswiseError(
            f'class map {path} is not valid JSON ({e}); write {{"folder": "class name or index"}}'
        ) from None
    if not isinstance(obj, dict):
        raise ReswiseError(
            f'class map {path} must be one JSON object {{"folder": "class name or index"}}, '
            f"not a {type(obj).__name__}"
        )
    return obj, f"class map {path}"


def _by_map(
    dataset: Dataset, class_map: ClassMap, class_names: Sequence[str] | None, n: int | None
) -> tuple[list[int], str]:
    mapping, where = _read_map(class_map)
    missing = [f for f in dataset.classes if f not in mapping]
    if missing:
        shown = ", ".join(f"'{f}'" for f in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ReswiseError(
            f"{where} has no entry for {len(missing)} class folder(s) ({shown}); "
            "add every folder of the data root to it"
        )
    exact, loose = _lookup(class_names) if class_names is not None else ({}, {})
    index = []
    for f in dataset.classes:
        target = mapping[f]
        i = None
        if isinstance(target, str):
            i = _resolve(target, exact, loose)
            if i is None and target.strip().isdigit():
                i = int(target)
        elif isinstance(target, int) and not isinstance(target, bool):
            i = target
        if i is None or i < 0 or (n is not None and i >= n):
            valid = f"0..{n - 1}" if n is not None else "a class index"
            if class_names is not None:
                valid += f" or a class name ({_examples(class_names)})"
            raise ReswiseError(
                f"{where} maps folder '{f}' to {target!r}, which is not a class of the model; "
                f"use {valid}"
            )
        index.append(i)
    _refuse_merged(dataset.classes, index, class_names, where)
    return index, f"labels mapped by {where} ({len(index)} folders)"


def _refuse_merged(
    folders: Sequence[str], index: list[int], class_names: Sequence[str] | None, where: str
) -> None:
    """Two folders mapped to one class: labels merged behind the user's back, and a typo in
    the map quietly counted as the model's errors (such a map was taken, and a 90.00 % model
    scored 80.25 % on CIFAR-10)."""
    seen: dict[int, str] = {}
    for folder, i in zip(folders, index, strict=True):
        if i in seen:
            name = f" ('{class_names[i]}')" if class_names is not None else ""
            raise ReswiseError(
                f"{where} maps folders '{seen[i]}' and '{folder}' both to class {i}{name}; give "
                "each folder its own class, or merge the two folders into one first"
            )
        seen[i] = folder


def align_labels(
    dataset: Dataset,
    class_names: Sequence[str] | None,
    class_map: ClassMap | None = None,
    *,
    num_classes: int | None = None,
) -> tuple[Dataset, str]:
    """``dataset`` with labels remapped to the model's class indices, and how (one line).

    ``class_names`` are the model's (``LoadedModel.info.class_names``; None when it carries
    none); ``class_map`` a JSON file (or a dict) ``{folder: class name or index}`` that wins over
    names; ``num_classes`` the model's output count, needed only when ``class_names`` is None.
    A new object is returned: ``classes`` stay the folder names, ``label_names`` and
    ``label_mapping`` say what the labels now mean.
    """
    if dataset.label_mapping:
        raise ReswiseError(f"the data's labels are already mapped ({dataset.label_mapping})")
    if class_map is not None and not dataset.classes:
        raise ReswiseError(
            f"--class-map maps class folders, but {dataset.name} is a flat folder of images; "
            "drop --class-map (or give DIR/<class>/<image>)"
        )
    names = tuple(class_names) if class_names is not None else None
    n = len(names) if names is not None else num_classes
    folders = len(dataset.classes)
    if n is not None and folders > n:
        raise ReswiseError(
            f"the data has {folders} class folders but the model predicts {n} classes; "
            "labels cannot line up: check --data-root (DIR/<class>/<image>) and --model"
        )
    if class_map is not None:
        index, how = _by_map(dataset, class_map, names, n)
    elif names is not None:
        index = _by_name(dataset, names)
        how = f"labels mapped by class name ({folders} folders onto the model's {n} classes)"
    else:
        index, how = list(range(folders)), POSITIONAL
    labels = torch.tensor(index, dtype=torch.int64)[dataset.labels.long()]
    return dataclasses.replace(dataset, labels=labels, label_names=names, label_mapping=how), how


def load_data(cfg: Any, lm: Any = None, unlabelled: bool = False) -> Dataset:
    """The images ``cfg`` names (a SweepConfig, or any object with its data fields), with
    labels mapped onto ``lm``'s classes by name when the weights carry class names
    (``lm``: a :class:`reswise.models.LoadedModel`; typed loosely so data needs no models).
    ``unlabelled``: a flat folder of images is accepted (label-free training)."""
    data = load_dataset(
        cfg.dataset,
        cfg.data_root,
        split=cfg.split,
        limit=cfg.limit,
        on_corrupt=cfg.on_corrupt,
        seed=cfg.seed,
        unlabelled=unlabelled,
    )
    if lm is None:
        return data
    data, _ = align_labels(
        data, lm.info.class_names, getattr(cfg, "class_map", None), num_classes=lm.info.num_classes
    )
    return data
