"""Choosing resolutions from a sweep's per-sample records, without rerunning the model.

numpy only: importing this package loads no torch. Every policy returns a typed, frozen result
(:mod:`.results`) that also reads like the dict it used to be (``r["top1"]``, ``r.to_dict()``).
"""

from .cascade import evaluate_cascade, run_cascade, search_cascade
from .headroom import headroom
from .oracle import oracle
from .random_res import random_assignment, random_resolution
from .results import (
    CascadeEval,
    CascadeResult,
    CompareResult,
    OracleResult,
    RandomResult,
    Result,
    SelectCandidate,
    SelectResult,
)
from .select import select_resolution
from .split import calib_heldout_split

__all__ = [
    "CascadeEval",
    "CascadeResult",
    "CompareResult",
    "OracleResult",
    "RandomResult",
    "Result",
    "SelectCandidate",
    "SelectResult",
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
