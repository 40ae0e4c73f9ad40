"""Datasets (decoded once, held as uint8) and resolution policies."""

from .datasets import (
    DATASETS,
    Dataset,
    FileImages,
    TensorImages,
    load_cifar10,
    load_dataset,
    load_imagefolder,
    save_cifar_batch,
)
from .policy import INTERPOLATIONS, ResizePolicy, normalizer, parse_resolutions, to_input

__all__ = [
    "DATASETS",
    "INTERPOLATIONS",
    "Dataset",
    "FileImages",
    "ResizePolicy",
    "TensorImages",
    "load_cifar10",
    "load_dataset",
    "load_imagefolder",
    "normalizer",
    "parse_resolutions",
    "save_cifar_batch",
    "to_input",
]
