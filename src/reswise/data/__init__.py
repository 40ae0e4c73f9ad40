"""Datasets (decoded once, held as uint8), their labels matched to a model's classes, and
resolution policies."""

from .classes import align_labels, imagenet_names, imagenet_wnids
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
from .files import ImageTooLarge
from .policy import INTERPOLATIONS, ResizePolicy, normalizer, parse_resolutions, to_input

__all__ = [
    "DATASETS",
    "INTERPOLATIONS",
    "Dataset",
    "FileImages",
    "ImageTooLarge",
    "ResizePolicy",
    "TensorImages",
    "align_labels",
    "imagenet_names",
    "imagenet_wnids",
    "load_cifar10",
    "load_dataset",
    "load_imagefolder",
    "normalizer",
    "parse_resolutions",
    "save_cifar_batch",
    "to_input",
]
