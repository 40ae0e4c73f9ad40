"""Records: what a sweep measured per image, and the run object that holds them (numpy only).

The hinge of the house: ``measure`` writes records, ``choose`` reads them, ``ship`` cites them.
``core`` holds the records and the run; ``stats`` the intervals they carry; ``rundir`` the run
folder (one writer, atomic files); ``report`` the tables and plots made from a run.
"""

from .core import (
    SIGNALS,
    BNPass,
    Records,
    SweepResult,
    confidence,
    row_key,
    summarize,
)
from .files import jsonable, replacing, save_npz, sha256_file, write_atomic
from .stages import (
    PRECISIONS,
    Stage,
    parse_stage,
    stage,
    stage_name,
    stage_order,
    unstage,
)

__all__ = [
    "Stage",
    "PRECISIONS",
    "SIGNALS",
    "BNPass",
    "Records",
    "SweepResult",
    "confidence",
    "jsonable",
    "parse_stage",
    "replacing",
    "row_key",
    "save_npz",
    "sha256_file",
    "stage",
    "stage_name",
    "stage_order",
    "summarize",
    "unstage",
    "write_atomic",
]
