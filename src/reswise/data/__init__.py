"""Datasets (decoded once, held as uint8), their labels matched to a model's classes, and
resolution policies.

Names load on first use (PEP 562), so a torch-free module (``reswise.ship.runtime``) can use the
numpy + Pillow decoding here without this package pulling in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "align_labels": "classes",
    "imagenet_names": "classes",
    "imagenet_wnids": "classes",
    "load_data": "classes",
    "DATASETS": "datasets",
    "Dataset": "datasets",
    "FileImages": "datasets",
    "TensorImages": "datasets",
    "load_cifar10": "datasets",
    "load_dataset": "datasets",
    "load_imagefolder": "datasets",
    "save_cifar_batch": "datasets",
    "ImageTooLarge": "files",
    "INTERPOLATIONS": "policy",
    "ResizePolicy": "policy",
    "normalizer": "policy",
    "parse_resolutions": "policy",
    "to_input": "policy",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'reswise.data' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
