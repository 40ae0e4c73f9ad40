"""Stages and what they cost: the keys choosers work over, and the objective they minimise.

A stage is a resolution (fp32) or a ``(resolution, precision)`` pair (:func:`reswise.records.stage`).
Every chooser minimises one per-stage cost per image: FLOPs (``objective="flops"``, the default)
or measured milliseconds (``objective="time"``: ONNX Runtime, batch 64, as the sweep timed
them; ``SweepResult.cost("time")``). Whatever it minimises, a result reports the FLOPs saved,
and the time saved too whenever times are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ReswiseError
from ...records import Records, Stage, parse_stage, stage, stage_name, unstage

OBJECTIVES = ("flops", "time")


def as_stage(key: Any) -> Stage:
    """A stage key from what callers write: 24, (24, "int8"), [24, "int8"] (JSON) or "24/int8"."""
    if isinstance(key, (tuple, list)):
        return stage(int(key[0]), str(key[1]))
    if isinstance(key, str):
        return parse_stage(key)
    return int(key)


def chain_text(keys: list[Stage]) -> str:
    """``[24, 32]`` (as ``str(list)`` of fp32 resolutions) or ``[24/int8, 32]``."""
    return "[" + ", ".join(stage_name(k) for k in keys) + "]"


def stage_detail(key: Stage) -> str:
    """How tables name one fixed stage: ``24x24``, ``24x24/int8``."""
    r, p = unstage(key)
    return f"{r}x{r}" if p == "fp32" else f"{r}x{r}/{p}"


def precisions(records: Records, keys: list[Stage]) -> list[str] | None:
    """The precision of each of ``keys``, or None when the records carry no precisions."""
    return None if records.precision is None else [unstage(k)[1] for k in keys]


@dataclass(frozen=True)
class Costs:
    """Per-stage FLOPs (reported always), ms per image (when timed) and what is minimised."""

    flops: dict[Stage, Any]
    times: dict[Stage, float] | None
    objective: str
    reference: Stage

    @property
    def cost(self) -> dict[Stage, Any]:
        """What the chooser minimises, per stage."""
        return self.times if self.objective == "time" and self.times else self.flops

    @property
    def label(self) -> str | None:
        """The ``objective`` a result reports: only when times were given (or asked for)."""
        return self.objective if self.times is not None else None

    def saved(self, mean_ms: float) -> float:
        return float(100.0 * (1.0 - mean_ms / self.times[self.reference]))

    def per_stage(self, key: Stage) -> dict[str, float | None]:
        """``ms_per_image`` and ``time_saved_pct`` of one stage (None without times)."""
        if self.times is None:
            return {"ms_per_image": None, "time_saved_pct": None}
        ms = float(self.times[key])
        return {"ms_per_image": ms, "time_saved_pct": self.saved(ms)}

    def mean(self, keys: list[Stage], reached: np.ndarray) -> dict[str, float | None]:
        """``mean_ms_per_image`` and ``time_saved_pct`` of a mix of stages: ``reached[i]`` is
        the share of images that paid for ``keys[i]`` (a cascade: all stages up to its own)."""
        if self.times is None or not np.all(np.isfinite(reached)):
            return {"mean_ms_per_image": None, "time_saved_pct": None}
        ms = float(sum(float(a) * self.times[k] for a, k in zip(reached, keys)))
        return {"mean_ms_per_image": ms, "time_saved_pct": self.saved(ms)}


def stage_flops(records: Records, flops: dict[Any, Any]) -> dict[Stage, Any]:
    """FLOPs of every recorded stage; a precision's falls back to its resolution's (a precision
    changes the time, not the FLOPs), so ``{32: f, 24: g}`` serves int8 rows too."""
    out = {}
    for k in records.keys:
        r = unstage(k)[0]
        if k not in flops and r not in flops:
            raise ReswiseError(
                f"no FLOPs count for resolution {stage_name(k)}; pass flops for every swept "
                "resolution"
            )
        out[k] = flops[k] if k in flops else flops[r]
    return out


def costs(
    records: Records,
    flops: dict[Any, Any],
    reference: Stage,
    objective: str = "flops",
    times: dict[Any, float] | None = None,
) -> Costs:
    """The per-stage costs of ``records`` and the objective, checked."""
    if objective not in OBJECTIVES:
        raise ReswiseError(f"unknown objective '{objective}'; use flops or time")
    if times is None and objective == "time":
        raise ReswiseError(
            "--objective time needs measured times per stage; rerun the sweep with --precision "
            "(it times every stage) or use --objective flops"
        )
    if times is not None:
        missing = [k for k in records.keys if k not in times or not times[k] > 0]
        if missing:
            raise ReswiseError(
                f"the run has no measured time for stage {stage_name(missing[0])}; rerun the "
                "sweep with --precision (it times every stage) or use --objective flops"
            )
        times = {k: float(times[k]) for k in records.keys}
    return Costs(stage_flops(records, flops), times, objective, reference)


def reached_shares(stage_of: np.ndarray, length: int) -> np.ndarray:
    """Per stage of a chain, the share of images that ran it (all up to the one answering)."""
    n = len(stage_of)
    if not n:
        return np.full(length, np.nan)
    return np.array([np.mean(stage_of >= i) for i in range(length)], np.float64)
