"""Typed results of the policies; numpy-free plain values only, so ``to_dict()`` is JSON-able.

Each result is a frozen dataclass whose fields are the keys of the dict the policy used to
return, in the same order: ``result.top1`` and ``result["top1"]`` both work, ``to_dict()``
gives the plain dict (nested results included) that the CLI writes as JSON. Keys added since
come last: ``min_certifiable_drop``, ``too_few_images`` and ``warning`` on the select and cascade
results (what the calibration images can certify at all; see :mod:`.split`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any


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
            yield f.name, getattr(self, f.name)

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
    """One resolution as scored on the calibration images by :func:`select_resolution`."""

    resolution: int
    flops: int
    flops_drop_pct: float
    calib_top1: float
    calib_drop_pct: float
    calib_upper_bound: float
    qualifies: bool


@dataclass(frozen=True, kw_only=True)
class SelectResult(Result):
    """The resolution chosen on calibration images; its figures on the held-out images."""

    resolution: int
    reference: int
    max_drop: float
    confidence: float
    method: str
    flops: int
    flops_drop_pct: float
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

    chain: list[int]
    thresholds: list[float]
    signal: str | None  # None for a single stage: no confidence is read
    mean_flops: float
    flops_drop_pct: float
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
    thresholds: list[float]
    signal: str | None
    mean_flops: float
    flops_drop_pct: float
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
    weights: list[float]
    share_pct: list[float]
    mean_flops: float
    flops_drop_pct: float
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
    mean_flops: float
    flops_drop_pct: float
    none_right_pct: float
    resolutions: list[int]
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
    bn_used: dict[int, bool] | None = None  # per resolution: recalibrated pass used
    extra_selected: dict[str, SelectResult]
    extra_cascade: dict[str, CascadeResult]
    reference: int
    max_drop: float
    confidence: float
    n_calib: int
    n_heldout: int
    seed: int
    rows: list[dict[str, Any]]

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
