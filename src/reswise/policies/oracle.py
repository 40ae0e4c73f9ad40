"""Oracle bound: every image at the cheapest resolution that classifies it correctly.

Not a policy: it looks at the labels to decide, so no deployable method can reach it. It says
how much a perfect per-image resolution choice could save, an upper bound for cascades.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluate import Records
from ..stats import drop_summary
from .cascade import SIGNALS
from .split import check_inputs, flops_drop_pct


def oracle(
    records: Records, flops: dict[int, int], reference: int, idx: np.ndarray | None = None
) -> dict[str, Any]:
    """Per image the smallest-FLOPs resolution that is right (top-1); the reference if none is."""
    check_inputs(records, flops, reference)
    rec = records if idx is None else records.subset(np.asarray(idx))
    n = len(rec.labels)
    # cheapest first; equal FLOPs keep the order of records.resolutions
    order = sorted(rec.resolutions, key=lambda r: flops[r])
    right = np.stack([rec.correct(r) for r in order])  # [R, N]
    any_right = right.any(axis=0)
    first = right.argmax(axis=0)  # index of the first True in cheapest-first order
    cost = np.array([flops[r] for r in order], np.float64)[first]
    cost[~any_right] = flops[reference]  # nothing helps these images: they run at the reference
    out: dict[str, Any] = {
        "uses_labels": True,
        "note": "bound, not a policy: chooses with the labels; images no resolution gets right "
        "run at the reference",
        "mean_flops": float(cost.mean()) if n else float("nan"),
        "flops_drop_pct": flops_drop_pct(cost.mean(), flops, reference) if n else float("nan"),
        "none_right_pct": float(100.0 * np.mean(~any_right)) if n else float("nan"),
        "resolutions": [int(r) for r in order],
        "share_pct": [
            float(100.0 * np.mean(any_right & (first == i))) if n else 0.0
            for i in range(len(order))
        ],
    }
    out.update(drop_summary(rec.correct(reference), any_right))
    return out


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
    records: Records, flops: dict[int, int], reference: int, max_drop: float = 1.0
) -> list[dict[str, Any]]:
    """Why a cascade saves what it saves: the two-stage chain [r, reference] for every r, in hindsight.

    A two-stage chain answers a share ``a`` of the images at r and sends the rest on to the
    reference, so each escalated image pays for both passes and the FLOPs saved are
    ``a - flops[r] / flops[reference]``. For each r this reports the largest ``a`` whose net
    top-1 loss on these images stays within ``max_drop`` points when images are accepted in
    order of each confidence signal (thresholds may only fall between distinct scores), and the
    ``a`` a perfect ranking would reach. Chosen on the same images it is measured on: an upper
    bound for what the held-out cascade can show, not a held-out figure.
    """
    check_inputs(records, flops, reference)
    n = len(records.labels)
    ok_ref = records.correct(reference).astype(np.int64)
    budget = int(np.floor(max_drop / 100.0 * n + 1e-9))
    rows = []
    for r in sorted(records.resolutions, key=lambda x: flops[x]):
        if r == reference or flops[r] >= flops[reference]:
            continue
        ok = records.correct(r)
        d = ok_ref - ok.astype(np.int64)  # +1: accepting this image at r costs a point
        cost = flops[r] / flops[reference]
        row: dict[str, Any] = {"resolution": int(r), "stage_cost_pct": 100.0 * cost,
                               "top1": 100.0 * float(ok.mean())}  # fmt: skip
        for sig in SIGNALS:
            c = records.confidence(r, sig)
            order = np.argsort(-c, kind="stable")
            net = np.cumsum(d[order])
            cut = np.r_[c[order][1:] != c[order][:-1], True]  # a threshold can stop here
            k = np.nonzero((net <= budget) & cut)[0]
            accept = (k.max() + 1) / n if len(k) else 0.0
            row[sig] = {"auroc": _auroc(c, ok), "accept_pct": 100.0 * accept,
                        "flops_drop_pct": 100.0 * (accept - cost)}  # fmt: skip
        harm, free, help_ = int((d > 0).sum()), int((d <= 0).sum()), int((d < 0).sum())
        perfect = (free + min(harm, budget + help_)) / n
        row["perfect"] = {"accept_pct": 100.0 * perfect, "flops_drop_pct": 100.0 * (perfect - cost)}
        rows.append(row)
    return rows
