"""Typed results of the policies; numpy-free plain values only, so ``to_dict()`` is JSON-able.

Each result is a frozen dataclass whose fields are the keys of the dict the policy used to
return, in the same order: ``result.top1`` and ``result["top1"]`` both work, ``to_dict()``
gives the plain dict (nested results included) that the CLI writes as JSON. Keys added since
come last: ``min_certifiable_drop``, ``too_few_images`` and ``warning`` on the select and cascade
results (what the calibration images can certify at all; see :mod:`.split`).

Keys for precisions and measured times are *optional* (:func:`opt`): absent from ``to_dict()``
(and ``r["key"]`` raises KeyError) while None, so a run with fp32 rows only and no times gives
the same dicts as before. ``precision`` (the stage's, or one per ``chain`` entry) is set when
the records carry precisions; ``objective`` (``"flops"`` or ``"time"``: what was minimised),
``ms_per_image`` / ``mean_ms_per_image`` and ``time_saved_pct`` when the run has measured times
(ONNX Runtime, batch 64, against the fp32 reference); ``timed_on`` (the CPU, ``run.meta["cpu"]``)
when the choosing functions of :mod:`reswise.choose.choices` report times.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

OPTIONAL = "omit_when_none"


def opt() -> Any:
    """A key added since: left out of the output while None (see the module docstring)."""
    return field(default=None, metadata={OPTIONAL: True})


def plain(value: Any) -> Any:
    """Results, dicts, lists and tuples all the way down turned into dicts and lists (copies)."""
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Result(Mapping[str, Any]):
    """Read-only mapping view of a result dataclass: ``r["key"]``, ``keys()``, ``to_dict()``."""

    __slots__ = ()

    def _items(self) -> Iterator[tuple[str, Any]]:
        """(key, value) in output order; the dataclass fields unless a subclass says otherwise."""
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get(OPTIONAL):
                continue
            yield f.name, value

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items():
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items())

    def __len__(self) -> int:
        return sum(1 for _ in self._items())

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with the keys and values the policy's dict had: what JSON output writes."""
        return {k: plain(v) for k, v in self._items()}


@dataclass(frozen=True, kw_only=True)
class SelectCandidate(Result):
    """One stage as scored on the calibration images by :func:`select_resolution`."""

    resolution: int
    precision: str | None = opt()
    flops: int
    flops_drop_pct: float
    ms_per_image: float | None = opt()
    time_saved_pct: float | None = opt()
    calib_top1: float
    calib_drop_pct: float
    calib_upper_bound: float
    qualifies: bool


@dataclass(frozen=True, kw_only=True)
class SelectResult(Result):
    """The stage chosen on calibration images; its figures on the held-out images."""

    resolution: int
    precision: str | None = opt()
    reference: int
    max_drop: float
    confidence: float
    method: str
    objective: str | None = opt()
    flops: int
    flops_drop_pct: float
    ms_per_image: float | None = opt()
    time_saved_pct: float | None = opt()
    timed_on: dict[str, Any] | None = opt()
    calib_drop_pct: float
    calib_upper_bound: float
    n_calib: int
    n_heldout: int
    top1: float
    reference_top1: float
    acc_drop_pct: float
    acc_drop_ci: list[float]
    candidates: list[SelectCandidate]
    min_certifiable_drop: float  # 100 u(n_calib): no bound but the reference's is below it
    too_few_images: bool  # the floor exceeds max_drop: only the reference could qualify
    warning: str | None  # says so, and how many images the budget needs; None when fine


@dataclass(frozen=True, kw_only=True)
class CascadeEval(Result):
    """One cascade's accuracy and honest FLOPs on a set of images (:func:`evaluate_cascade`)."""

    chain: list[int]  # resolutions; with precision, chain[i] runs at precision[i]
    precision: list[str] | None = opt()
    thresholds: list[float]
    signal: str | None  # None for a single stage: no confidence is read
    mean_flops: float
    flops_drop_pct: float
    mean_ms_per_image: float | None = opt()
    time_saved_pct: float | None = opt()
    stage_share_pct: list[float]
    n: int
    top1: float
    reference_top1: float
    acc_drop_pct: float
    acc_drop_ci: list[float]


@dataclass(frozen=True, kw_only=True)
class CascadeResult(Result):
    """The cascade chosen on calibration images; held-out figures, calibration ones as calib_*."""

    chain: list[int]
    precision: list[str] | None = opt()
    thresholds: list[float]
    signal: str | None
    objective: str | None = opt()
    mean_flops: float
    flops_drop_pct: float
    mean_ms_per_image: float | None = opt()
    time_saved_pct: float | None = opt()
    timed_on: dict[str, Any] | None = opt()
    stage_share_pct: list[float]
    top1: float
    reference_top1: float
    acc_drop_pct: float
    acc_drop_ci: list[float]
    reference: int
    max_drop: float
    confidence: float
    n_calib: int
    calib_flops_drop_pct: float
    calib_time_saved_pct: float | None = opt()
    calib_top1: float
    calib_drop_pct: float
    calib_upper_bound: float
    calib_normal_upper: float
    settings_searched: int
    n_heldout: int
    min_certifiable_drop: float  # as in SelectResult
    too_few_images: bool
    warning: str | None


@dataclass(frozen=True, kw_only=True)
class RandomResult(Result):
    """Each image at a resolution drawn at random (:func:`random_resolution`)."""

    seed: int
    choices: list[int]
    precision: list[str] | None = opt()
    weights: list[float]
    share_pct: list[float]
    mean_flops: float
    flops_drop_pct: float
    mean_ms_per_image: float | None = opt()
    time_saved_pct: float | None = opt()
    timed_on: dict[str, Any] | None = opt()
    expected_flops_drop_pct: float
    n: int
    top1: float
    reference_top1: float
    acc_drop_pct: float
    acc_drop_ci: list[float]


ORACLE_NOTE = (
    "bound, not a policy: chooses with the labels; images no resolution gets right run at the "
    "reference"
)


@dataclass(frozen=True, kw_only=True)
class OracleResult(Result):
    """Every image at the cheapest resolution that gets it right: a bound, it reads the labels."""

    uses_labels: bool = True
    note: str = ORACLE_NOTE
    objective: str | None = opt()
    mean_flops: float
    flops_drop_pct: float
    mean_ms_per_image: float | None = opt()
    time_saved_pct: float | None = opt()
    none_right_pct: float
    resolutions: list[int]
    precision: list[str] | None = opt()
    share_pct: list[float]
    n: int
    top1: float
    reference_top1: float
    acc_drop_pct: float
    acc_drop_ci: list[float]


@dataclass(frozen=True, kw_only=True)
class CompareResult(Result):
    """Every policy on one split (:func:`reswise.choose.compare.compare`); ``rows`` is the table.

    Output keys are those of the old dict: ``selected_bn``, ``cascade_bn`` and ``bn_used`` only
    with a recalibrated pass, ``{label}_selected`` and ``{label}_cascade`` per extra run.
    """

    selected: SelectResult
    cascade: CascadeResult
    selected_bn: SelectResult | None = None
    cascade_bn: CascadeResult | None = None
    # per stage: recalibrated pass used; keys are resolutions (fp32) or names like "24/int8"
    bn_used: dict[int | str, bool] | None = None
    extra_selected: dict[str, SelectResult]
    extra_cascade: dict[str, CascadeResult]
    reference: int
    max_drop: float
    confidence: float
    n_calib: int
    n_heldout: int
    seed: int
    rows: list[dict[str, Any]]
    objective: str | None = None  # optional keys, as in the other results
    timed_on: dict[str, Any] | None = None

    def _items(self) -> Iterator[tuple[str, Any]]:
        yield "selected", self.selected
        yield "cascade", self.cascade
        if self.selected_bn is not None:
            yield "selected_bn", self.selected_bn
            yield "cascade_bn", self.cascade_bn
            yield "bn_used", self.bn_used
        for label, sel in self.extra_selected.items():
            yield f"{label}_selected", sel
            yield f"{label}_cascade", self.extra_cascade[label]
        for key in ("reference", "max_drop", "confidence", "n_calib", "n_heldout", "seed", "rows"):
            yield key, getattr(self, key)
        for key in ("objective", "timed_on"):
            if getattr(self, key) is not None:
                yield key, getattr(self, key)
