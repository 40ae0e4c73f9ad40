"""Oracle bound: every image at the cheapest stage (resolution, precision) that classifies it
correctly.

Not a policy: it looks at the labels to decide, so no deployable method can reach it. It says
how much a perfect per-image resolution choice could save, an upper bound for cascades.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...records import Records, Stage, unstage
from ...records.stats import drop_summary
from .costs import costs, precisions
from .results import OracleResult
from .split import check_inputs, flops_drop_pct


def oracle(
    records: Records,
    flops: dict[Any, Any],
    reference: Stage,
    *,
    idx: np.ndarray | None = None,
    objective: str = "flops",
    times: dict[Any, float] | None = None,
) -> OracleResult:
    """Per image the cheapest stage that is right (top-1); the reference if none is. Cheapest
    in FLOPs, or with ``objective="time"`` in ms per image (``times``)."""
    check_inputs(records, flops, reference)
    cost = costs(records, flops, reference, objective, times)
    rec = records if idx is None else records.subset(np.asarray(idx))
    n = len(rec.labels)
    # cheapest first; equal costs keep the order of records.keys
    order = sorted(rec.keys, key=lambda k: cost.cost[k])
    right = np.stack([rec.correct(k) for k in order])  # [R, N]
    any_right = right.any(axis=0)
    first = right.argmax(axis=0)  # index of the first True in cheapest-first order
    paid = np.array([cost.flops[k] for k in order], np.float64)[first]
    paid[~any_right] = cost.flops[reference]  # nothing helps these: they run at the reference
    share = [float(np.mean(any_right & (first == i))) if n else 0.0 for i in range(len(order))]
    ref_share = float(np.mean(~any_right)) if n else 0.0
    keys = [*order, reference]
    return OracleResult(
        objective=cost.label,
        mean_flops=float(paid.mean()) if n else float("nan"),
        flops_drop_pct=flops_drop_pct(paid.mean(), cost.flops, reference) if n else float("nan"),
        **cost.mean(keys, np.array([*share, ref_share]) if n else np.array([np.nan])),
        none_right_pct=float(100.0 * np.mean(~any_right)) if n else float("nan"),
        resolutions=[unstage(k)[0] for k in order],
        precision=precisions(records, order),
        share_pct=[100.0 * a for a in share],
        **drop_summary(rec.correct(reference), any_right),
    )
