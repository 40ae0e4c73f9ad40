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
    jsonable,
    save_npz,
    sha256_file,
    summarize,
    write_atomic,
)

__all__ = [
    "SIGNALS",
    "BNPass",
    "Records",
    "SweepResult",
    "confidence",
    "jsonable",
    "save_npz",
    "sha256_file",
    "summarize",
    "write_atomic",
]
