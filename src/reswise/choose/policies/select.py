"""Choose one fixed stage: the cheapest whose accuracy drop is bounded on calibration images.

A stage is a resolution, or a resolution at a precision (``(24, "int8")``); cheapest in FLOPs
or, with ``objective="time"``, in measured milliseconds per image.

The bound is one-sided at ``confidence``: the paired bootstrap by default (``method="bootstrap"``)
or the exact McNemar / Clopper-Pearson bound (``method="exact"``, the CLI's ``--test exact``).
The figures reported come from the held-out images, which played no part in the choice.

The rule, from the bound itself: with n calibration images, even when no image is harmed, the
exact one-sided bound on the share of harmed images is the Clopper-Pearson bound for 0 successes
in n trials, u(n) = 1 - (1 - confidence)^(1/n) (about 3/n at 95 %), i.e. 100 u(n) points of
top-1. So every candidate's bound is floored at 100 u(n) (the reference keeps exactly 0: it is
compared with itself), and when 100 u(n) > ``max_drop`` only the reference qualifies: the result
has ``too_few_images`` set and a ``warning`` naming the images the budget needs (the smallest n
with 100 u(n) <= ``max_drop``). 1 or 10 calibration images certify nothing within 1 point.
"""

from __future__ import annotations

from operator import neg
from typing import Any

from ...errors import ReswiseError
from ...records import Records, Stage, stage_order, unstage
from ...records.stats import drop_summary, mcnemar_upper, paired_bootstrap_upper
from .costs import costs
from .results import SelectCandidate, SelectResult
from .split import (
    EPS,
    calib_heldout_split,
    certify_floor,
    check_inputs,
    check_max_drop,
    flops_drop_pct,
)

METHODS = ("bootstrap", "exact")


def upper_bound(ref: Any, new: Any, confidence: float, method: str, seed: int = 0) -> float:
    if method == "bootstrap":
        return paired_bootstrap_upper(ref, new, confidence, seed=seed)
    if method == "exact":
        return mcnemar_upper(ref, new, confidence)
    raise ReswiseError(f"unknown test '{method}'; use bootstrap or exact")


def select_resolution(
    records: Records,
    flops: dict[Any, Any],
    reference: Stage,
    *,
    max_drop: float,
    confidence: float = 0.95,
    calib_frac: float = 0.5,
    seed: int = 0,
    method: str = "bootstrap",
    objective: str = "flops",
    times: dict[Any, float] | None = None,
) -> SelectResult:
    """Cheapest stage whose calibration drop upper bound is <= ``max_drop`` points; cheapest by
    ``objective``: FLOPs, or ``"time"`` (``times``: ms per image per stage). Every bound but the
    reference's is at least 100 u(n_calib) (see the module docstring)."""
    check_inputs(records, flops, reference)
    if method not in METHODS:
        raise ReswiseError(f"unknown test '{method}'; use bootstrap or exact")
    check_max_drop(max_drop)
    cost = costs(records, flops, reference, objective, times)
    calib, held = calib_heldout_split(len(records.labels), calib_frac, seed)
    floor, too_few, warning = certify_floor(len(calib), max_drop, confidence)
    ref_c = records.correct(reference)
    candidates = {}
    for k in records.keys:
        c = records.correct(k)
        # the reference compared with itself has a drop of exactly 0: it always qualifies
        ub = (
            0.0
            if k == reference
            else max(upper_bound(ref_c[calib], c[calib], confidence, method, seed), floor)
        )
        s = drop_summary(ref_c[calib], c[calib])
        r, p = unstage(k)
        candidates[k] = SelectCandidate(
            resolution=r,
            precision=None if records.precision is None else p,
            flops=int(cost.flops[k]),
            flops_drop_pct=flops_drop_pct(cost.flops[k], cost.flops, reference),
            **cost.per_stage(k),
            calib_top1=s["top1"],
            calib_drop_pct=s["acc_drop_pct"],
            calib_upper_bound=float(ub),
            qualifies=bool(k == reference or ub <= max_drop + EPS),
        )
    # ties in cost go to the better calibration accuracy, then the larger resolution, then the
    # higher precision
    ok = [k for k, c in candidates.items() if c.qualifies]
    key = min(
        ok, key=lambda k: (cost.cost[k], -candidates[k].calib_top1, *map(neg, stage_order(k)))
    )
    best = candidates[key]
    held_fig = drop_summary(ref_c[held], records.correct(key)[held])
    return SelectResult(
        resolution=best.resolution,
        precision=best.precision,
        reference=int(reference),
        max_drop=float(max_drop),
        confidence=float(confidence),
        method=method,
        objective=cost.label,
        flops=best.flops,
        flops_drop_pct=best.flops_drop_pct,
        ms_per_image=best.ms_per_image,
        time_saved_pct=best.time_saved_pct,
        calib_drop_pct=best.calib_drop_pct,
        calib_upper_bound=best.calib_upper_bound,
        n_calib=int(len(calib)),
        n_heldout=int(len(held)),
        top1=held_fig["top1"],
        reference_top1=held_fig["reference_top1"],
        acc_drop_pct=held_fig["acc_drop_pct"],
        acc_drop_ci=held_fig["acc_drop_ci"],
        candidates=list(candidates.values()),
        min_certifiable_drop=floor,
        too_few_images=too_few,
        warning=warning,
    )
