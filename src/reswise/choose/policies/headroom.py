"""Headroom of two-stage cascades: what each confidence signal could save, chosen in hindsight.

Not a policy either: thresholds are set on the very images they are measured on. It explains a
cascade's saving (how well a signal ranks the images a small resolution gets right) and bounds
what a held-out cascade can show.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...records import SIGNALS, Records, Stage, unstage
from .costs import costs
from .split import EPS, check_inputs, check_max_drop


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = int(positive.sum()), int((~positive).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    # 1-based ranks, averaged over ties: a tie group spanning ranks lo+1..hi gets (lo+hi+1)/2
    _, group, counts = np.unique(score, return_inverse=True, return_counts=True)
    hi = np.cumsum(counts)
    ranks = ((hi - counts + hi + 1) / 2.0)[group]
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def headroom(
    records: Records,
    flops: dict[Any, Any],
    reference: Stage,
    *,
    max_drop: float = 1.0,
    objective: str = "flops",
    times: dict[Any, float] | None = None,
) -> list[dict[str, Any]]:
    """Why a cascade saves what it saves: the two-stage chain [r, reference] for every r, in hindsight.

    A two-stage chain answers a share ``a`` of the images at r and sends the rest on to the
    reference, so each escalated image pays for both passes and the FLOPs saved are
    ``a - flops[r] / flops[reference]``. For each r this reports the largest ``a`` whose net
    top-1 loss on these images stays within ``max_drop`` points when images are accepted in
    order of each confidence signal (thresholds may only fall between distinct scores), and the
    ``a`` a perfect ranking would reach. Chosen on the same images it is measured on: an upper
    bound for what the held-out cascade can show, not a held-out figure.

    r is every stage cheaper than the reference; with ``objective="time"`` cost is measured
    ms per image (``times``) and the savings are keyed ``time_saved_pct`` instead of
    ``flops_drop_pct``; with precisions each row names its ``precision``.
    """
    check_inputs(records, flops, reference)
    check_max_drop(max_drop)
    price = costs(records, flops, reference, objective, times).cost
    saved = "time_saved_pct" if objective == "time" else "flops_drop_pct"
    n = len(records.labels)
    ok_ref = records.correct(reference).astype(np.int64)
    budget = int(np.floor(max_drop / 100.0 * n + EPS))
    rows = []
    for key in sorted(records.keys, key=lambda x: price[x]):
        if key == reference or price[key] >= price[reference]:
            continue
        ok = records.correct(key)
        d = ok_ref - ok.astype(np.int64)  # +1: accepting this image at r costs a point
        cost = price[key] / price[reference]
        r, p = unstage(key)
        row: dict[str, Any] = {"resolution": r}
        if records.precision is not None:
            row["precision"] = p
        row.update({"stage_cost_pct": 100.0 * cost, "top1": 100.0 * float(ok.mean())})
        for sig in SIGNALS:
            c = records.confidence(key, sig)
            order = np.argsort(-c, kind="stable")
            net = np.cumsum(d[order])
            cut = np.r_[c[order][1:] != c[order][:-1], True]  # a threshold can stop here
            k = np.nonzero((net <= budget) & cut)[0]
            accept = (k.max() + 1) / n if len(k) else 0.0
            row[sig] = {"auroc": _auroc(c, ok), "accept_pct": 100.0 * accept,
                        saved: 100.0 * (accept - cost)}  # fmt: skip
        harm, free, help_ = int((d > 0).sum()), int((d <= 0).sum()), int((d < 0).sum())
        perfect = (free + min(harm, budget + help_)) / n
        row["perfect"] = {"accept_pct": 100.0 * perfect, saved: 100.0 * (perfect - cost)}
        rows.append(row)
    return rows
