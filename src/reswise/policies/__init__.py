"""Choosing resolutions from a sweep's per-sample records, without rerunning the model."""

from .cascade import evaluate_cascade, run_cascade, search_cascade
from .oracle import headroom, oracle
from .random_res import random_assignment, random_resolution
from .select import select_resolution
from .split import calib_heldout_split

__all__ = [
    "calib_heldout_split",
    "evaluate_cascade",
    "headroom",
    "oracle",
    "random_assignment",
    "random_resolution",
    "run_cascade",
    "search_cascade",
    "select_resolution",
]
