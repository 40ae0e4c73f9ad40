"""Confidence cascade: run small first, escalate the images the network is unsure about.

An image starts at ``chain[0]``; if its confidence there is >= the stage's threshold it stops,
otherwise it runs again at the next stage; the last stage always answers. A stage is a
resolution or a (resolution, precision) pair, and a chain climbs in :func:`stage_order`:
resolution, then int8 < bf16 < fp32. Costs are counted honestly: an escalated image pays for
every pass it took, so a cascade only saves when most images stop early. What is minimised is
FLOPs, or with ``objective="time"`` the measured milliseconds per image of each stage.

The search certifies a setting as :func:`reswise.choose.policies.select.select_resolution` certifies a
resolution: n calibration images cannot bound a drop below 100 u(n) points, u(n) = 1 -
(1 - confidence)^(1/n) (the exact bound on the share of harmed images when none is harmed, about
3/n at 95 %). Every setting's bound but the reference alone's (exactly 0) is floored there: in
the fast normal screen (so it never admits what the final bootstrap check would reject) and in
that check, single resolutions included. When 100 u(n) > ``max_drop`` the reference alone is the
answer, with ``too_few_images`` set and a ``warning`` naming the images the budget needs.
"""

from __future__ import annotations

import itertools
from statistics import NormalDist
from typing import Any

import numpy as np

from ...errors import ReswiseError

# SIGNALS is records.SIGNALS (the one definition); importable from here for older code
from ...records import SIGNALS, Records, Stage, stage_name, stage_order, unstage
from ...records.stats import drop_summary, paired_bootstrap_upper
from .costs import Costs, as_stage, chain_text, costs, precisions, reached_shares
from .results import CascadeEval, CascadeResult
from .split import (
    EPS,
    calib_heldout_split,
    certify_floor,
    check_inputs,
    check_max_drop,
    flops_drop_pct,
)

KEEP = 3  # feasible settings kept per searched prefix, in case bootstrap rejects the best

# a searched setting: (mean cost, normal bound, chain length, chain, signal, thresholds); the
# normal bound is the raw one (it orders settings as before); admitting one compares its floored
# value with the budget, and the result reports the floored value
Setting = tuple[float, float, int, tuple[Stage, ...], str | None, tuple[float, ...]]


def _check_chain(
    records: Records, chain: list[Stage], thresholds: list[float], signal: str
) -> None:
    if not chain:
        raise ReswiseError("a cascade needs at least one resolution")
    missing = [k for k in chain if k not in records.keys]
    if missing:
        raise ReswiseError(f"cascade resolution {stage_name(missing[0])} is not in the records")
    if any(stage_order(a) >= stage_order(b) for a, b in zip(chain, chain[1:])):
        raise ReswiseError(
            f"cascade resolutions must be strictly ascending (at one resolution int8 < bf16 < "
            f"fp32), got {chain_text(chain)}"
        )
    if len(thresholds) != len(chain) - 1:
        raise ReswiseError(
            f"a {len(chain)}-stage cascade needs {len(chain) - 1} thresholds, got {len(thresholds)}"
        )
    if len(chain) > 1 and signal not in SIGNALS:
        raise ReswiseError(f"unknown confidence signal '{signal}'; use {', '.join(SIGNALS)}")


def run_cascade(
    records: Records,
    flops: dict[Any, Any],
    chain: list[Any],
    thresholds: list[float],
    signal: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: answered correctly, cost paid (all passes; ``flops`` holds the cost of each
    stage of ``chain``, e.g. FLOPs or ms), index in ``chain`` of the stage that answered."""
    n = len(records.labels)
    active = np.ones(n, bool)
    correct = np.zeros(n, bool)
    cost = np.zeros(n, np.float64)
    stage = np.zeros(n, np.int64)
    for i, r in enumerate(chain):
        cost[active] += flops[r]
        last = i == len(chain) - 1
        stop = active if last else active & (records.confidence(r, signal) >= thresholds[i])
        correct[stop] = records.correct(r)[stop]
        stage[stop] = i
        active &= ~stop
    return correct, cost, stage


def evaluate_cascade(
    records: Records,
    flops: dict[Any, Any],
    reference: Stage,
    chain: list[Any],
    thresholds: list[float],
    signal: str = "max_softmax",
    *,
    idx: np.ndarray | None = None,
    times: dict[Any, float] | None = None,
) -> CascadeEval:
    """Accuracy and honest FLOPs (and ms, with ``times``) of one cascade on the images ``idx``
    (default all). ``chain`` holds stage keys: 24, (24, "int8"), or "24/int8"."""
    check_inputs(records, flops, reference)
    keys, thresholds = [as_stage(k) for k in chain], [float(t) for t in thresholds]
    _check_chain(records, keys, thresholds, signal)
    cost = costs(records, flops, reference, "flops", times)
    rec = records if idx is None else records.subset(np.asarray(idx))
    correct, paid, stage = run_cascade(rec, cost.flops, keys, thresholds, signal)
    n = len(correct)
    fl = cost.flops
    return CascadeEval(
        chain=[unstage(k)[0] for k in keys],
        precision=precisions(records, keys),
        thresholds=thresholds,
        signal=signal if len(keys) > 1 else None,
        mean_flops=float(paid.mean()) if n else float("nan"),
        flops_drop_pct=flops_drop_pct(paid.mean(), fl, reference) if n else float("nan"),
        **cost.mean(keys, reached_shares(stage, len(keys))),
        stage_share_pct=[
            float(100.0 * np.mean(stage == i)) if n else 0.0 for i in range(len(keys))
        ],
        **drop_summary(rec.correct(reference), correct),
    )


def _normal_upper(b: np.ndarray, c: np.ndarray, n: int, z: float) -> np.ndarray:
    """Normal upper bound (points) of the paired drop from the discordant counts b and c."""
    m = (b - c) / n
    var = np.maximum((b + c) / n - m * m, 0.0) * (n / (n - 1) if n > 1 else 0.0)
    return 100.0 * (m + z * np.sqrt(var / n))


def _candidates(conf: np.ndarray, k: int) -> np.ndarray:
    # observed values only ("lower"), so a threshold means the same thing on float32 records
    return np.unique(np.quantile(conf, np.linspace(0.0, 1.0, max(k, 2)), method="lower"))


def _search_chain(
    chain: tuple[Stage, ...],
    conf: dict[Stage, np.ndarray],
    right: dict[Stage, np.ndarray],
    ref: np.ndarray,
    flops: dict[Stage, Any],
    n_thresholds: int,
    z: float,
    max_drop: float,
    floor: float,
) -> tuple[list[tuple[float, float, tuple[float, ...]]], int]:
    """Feasible (mean cost, normal bound, thresholds) of one chain, and the settings tried.

    ``flops`` is the cost minimised per stage: FLOPs, or ms per image.

    Feasible: the normal bound, floored at ``floor`` (points), is within ``max_drop``.

    Earlier stages go over a grid (about ``n_thresholds`` combinations in all); for each, every
    threshold of the second-to-last stage is scored at once with cumulative sums over the
    images sorted by confidence.
    """
    n = len(ref)
    pre, pen, last = chain[:-2], chain[-2], chain[-1]
    k_pre = max(3, round(n_thresholds ** (1.0 / len(pre)))) if pre else 0
    grids = [_candidates(conf[r], k_pre) for r in pre]
    t_pen = _candidates(conf[pen], n_thresholds)
    order = np.argsort(-conf[pen], kind="stable")
    pos = n - np.searchsorted(np.sort(conf[pen]), t_pen, side="left")  # images with conf >= t
    b = {r: ref & ~right[r] for r in chain}
    c = {r: ~ref & right[r] for r in chain}
    db = (b[pen].astype(np.int64) - b[last])[order]
    dc = (c[pen].astype(np.int64) - c[last])[order]
    found: list[tuple[float, float, tuple[float, ...]]] = []
    tried = 0
    for ts in itertools.product(*grids):
        active = np.ones(n, bool)
        paid, b0, c0 = 0.0, 0, 0
        for r, t in zip(pre, ts):
            paid += flops[r] * active.sum()
            stop = active & (conf[r] >= t)
            b0, c0 = b0 + (stop & b[r]).sum(), c0 + (stop & c[r]).sum()
            active &= ~stop
        n_e = active.sum()
        e = active[order]
        cum = [np.concatenate([[0], np.cumsum(v)]) for v in (e, db * e, dc * e)]
        stops = cum[0][pos]
        bb = b0 + (b[last] & active).sum() + cum[1][pos]
        cc = c0 + (c[last] & active).sum() + cum[2][pos]
        mean = (paid + flops[pen] * n_e + flops[last] * (n_e - stops)) / n
        ub = _normal_upper(bb, cc, n, z)
        tried += len(t_pen)
        ok = np.flatnonzero(np.maximum(ub, floor) <= max_drop + EPS)
        for j in ok[np.lexsort((ub[ok], mean[ok]))][:KEEP]:
            found.append((float(mean[j]), float(ub[j]), (*map(float, ts), float(t_pen[j]))))
    return found, tried


def _check_search(max_drop: float, max_len: int, confidence: float, signal: str) -> tuple[str, ...]:
    """The search's arguments checked; the signals to search."""
    check_max_drop(max_drop)
    if max_len < 1:
        raise ReswiseError(f"--max-len must be >= 1, got {max_len}")
    if not 0.0 < confidence < 1.0:
        raise ReswiseError(f"--confidence must be in (0, 1), got {confidence}")
    if signal != "auto" and signal not in SIGNALS:
        raise ReswiseError(
            f"unknown confidence signal '{signal}'; use auto or {', '.join(SIGNALS)}"
        )
    return SIGNALS if signal == "auto" else (signal,)


def _tie(key: Stage) -> tuple[int, int]:
    """Chains tied in everything else: lower resolutions first, then the higher precision (a
    precision that saves nothing in the objective is not worth its rounding)."""
    r, p = stage_order(key)
    return r, -p


def _order(f: Setting) -> tuple:
    """Cheapest first; then the lower normal bound, the shorter chain, the chain (:func:`_tie`),
    the signal."""
    return (f[0], f[1], f[2], tuple(map(_tie, f[3])), SIGNALS.index(f[4]) if f[4] else -1)


def _screen(
    cal: Records,
    flops: dict[Stage, Any],
    reference: Stage,
    signals: tuple[str, ...],
    max_drop: float,
    confidence: float,
    max_len: int,
    n_thresholds: int,
) -> tuple[list[Setting], int]:
    """Settings other than the reference alone whose normal bound, floored at what the images
    can certify, is within budget, in :func:`_order`, and the number of settings tried (the
    reference alone included). ``flops`` is the cost minimised per stage."""
    n = len(cal.labels)
    z = NormalDist().inv_cdf(confidence)
    floor, _, _ = certify_floor(n, max_drop, confidence)
    ref = cal.correct(reference)
    right = {r: cal.correct(r) for r in cal.keys}
    res = sorted(cal.keys, key=stage_order)
    ends = [r for r in res if r == reference or right[r].mean() >= ref.mean()]
    found: list[Setting] = []
    tried = 0
    for r in res:
        tried += 1
        if r == reference:
            continue  # drop exactly 0: the fallback _confirm always has
        bb, cc = np.sum(ref & ~right[r]), np.sum(~ref & right[r])
        ub = float(_normal_upper(np.array(bb), np.array(cc), n, z))
        if max(ub, floor) <= max_drop + EPS:
            found.append((float(flops[r]), ub, 1, (r,), None, ()))
    for s in signals:
        conf = {r: cal.confidence(r, s).astype(np.float64) for r in res}
        for e in ends:
            # searched chains climb in resolution, one precision each: what a policy file ships
            lower = [r for r in res if unstage(r)[0] < unstage(e)[0]]
            for length in range(2, max_len + 1):
                for pre in itertools.combinations(lower, length - 1):
                    if len({unstage(k)[0] for k in pre}) < len(pre):
                        continue
                    chain = (*pre, e)
                    hits, k = _search_chain(
                        chain, conf, right, ref, flops, n_thresholds, z, max_drop, floor
                    )
                    tried += k
                    found += [(m, u, length, chain, s, ts) for m, u, ts in hits]
    found.sort(key=_order)
    return found, tried


def _confirm(
    found: list[Setting],
    cal: Records,
    flops: dict[Stage, Any],
    reference: Stage,
    confidence: float,
    seed: int,
    max_drop: float,
    floor: float,
) -> tuple[Setting, np.ndarray, float]:
    """The first setting in order whose paired bootstrap bound, floored at ``floor``, is within
    budget, its per-image correctness on the calibration images and that (floored) bound.

    The reference alone has a drop of exactly 0 against itself, so it is within any budget:
    settings ordered after it are never tried, and it is the answer when nothing before it passes.
    """
    ref = cal.correct(reference)
    ref_alone: Setting = (float(flops[reference]), 0.0, 1, (reference,), None, ())
    for f in found:
        if _order(f) > _order(ref_alone):
            break
        correct, _, _ = run_cascade(cal, flops, list(f[3]), list(f[5]), f[4] or "max_softmax")
        boot = max(paired_bootstrap_upper(ref, correct, confidence, seed=seed), floor)
        if boot <= max_drop + EPS:
            return f, correct, boot
    return ref_alone, ref, 0.0


def _calib_savings(cal: Records, cost: Costs, win: Setting) -> tuple[float, float | None]:
    """FLOPs and time saved on the calibration images by the winning setting: its searched
    mean is one of them (the objective's), the other is counted here."""
    mean, _, _, chain, s, ts = win
    keys = list(chain)
    _, paid, stage = run_cascade(cal, cost.flops, keys, list(ts), s or "max_softmax")
    fl = mean if cost.objective == "flops" else float(paid.mean())
    ms = cost.mean(keys, reached_shares(stage, len(keys)))["mean_ms_per_image"]
    if cost.objective == "time":
        ms = mean
    return flops_drop_pct(fl, cost.flops, cost.reference), None if ms is None else cost.saved(ms)


def search_cascade(
    records: Records,
    flops: dict[Any, Any],
    reference: Stage,
    *,
    max_drop: float,
    confidence: float = 0.95,
    signal: str = "auto",
    calib_frac: float = 0.5,
    seed: int = 0,
    max_len: int = 3,
    n_thresholds: int = 50,
    objective: str = "flops",
    times: dict[Any, float] | None = None,
) -> CascadeResult:
    """Cheapest cascade (or fixed stage) whose calibration drop bound is <= ``max_drop``.

    Searched on the calibration images: chains strictly ascending in resolution (each stage at
    one precision: the chains a policy file ships), 1 to ``max_len`` stages, ending at the reference or a stage at least as
    accurate; every signal (``"auto"``) or the given one; thresholds from the quantiles of
    calibration confidences. Cheapest by ``objective``: FLOPs, or ``"time"`` (``times``: ms per
    image per stage). A fast normal bound screens settings; the paired bootstrap bound confirms
    the winner; both are floored at 100 u(n_calib) (see the module docstring). Reported on the
    held-out images.
    """
    check_inputs(records, flops, reference)
    signals = _check_search(max_drop, max_len, confidence, signal)
    cost = costs(records, flops, reference, objective, times)
    calib, held = calib_heldout_split(len(records.labels), calib_frac, seed)
    cal = records.subset(calib)
    floor, too_few, warning = certify_floor(len(calib), max_drop, confidence)
    found, tried = _screen(
        cal, cost.cost, reference, signals, max_drop, confidence, max_len, n_thresholds
    )
    win, correct, boot = _confirm(
        found, cal, cost.cost, reference, confidence, seed, max_drop, floor
    )
    _, nub, _, chain, s, ts = win
    if chain != (reference,):
        nub = max(nub, floor)
    cal_fig = drop_summary(cal.correct(reference), correct)
    cal_flops, cal_time = _calib_savings(cal, cost, win)
    held_fig = evaluate_cascade(
        records, cost.flops, reference, list(chain), list(ts), s or "max_softmax", idx=held,
        times=cost.times,
    )  # fmt: skip
    return CascadeResult(
        chain=held_fig.chain,
        precision=held_fig.precision,
        thresholds=held_fig.thresholds,
        signal=s,
        objective=cost.label,
        mean_flops=held_fig.mean_flops,
        flops_drop_pct=held_fig.flops_drop_pct,
        mean_ms_per_image=held_fig.mean_ms_per_image,
        time_saved_pct=held_fig.time_saved_pct,
        stage_share_pct=held_fig.stage_share_pct,
        top1=held_fig.top1,
        reference_top1=held_fig.reference_top1,
        acc_drop_pct=held_fig.acc_drop_pct,
        acc_drop_ci=held_fig.acc_drop_ci,
        reference=int(reference),
        max_drop=float(max_drop),
        confidence=float(confidence),
        n_calib=int(len(calib)),
        calib_flops_drop_pct=cal_flops,
        calib_time_saved_pct=cal_time,
        calib_top1=cal_fig["top1"],
        calib_drop_pct=cal_fig["acc_drop_pct"],
        calib_upper_bound=float(boot),
        calib_normal_upper=float(nub),
        settings_searched=int(tried),
        n_heldout=held_fig.n,
        min_certifiable_drop=floor,
        too_few_images=too_few,
        warning=warning,
    )
