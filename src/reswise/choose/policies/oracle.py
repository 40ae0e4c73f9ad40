"""Oracle bound: every image at the cheapest resolution that classifies it correctly.

Not a policy: it looks at the labels to decide, so no deployable method can reach it. It says
how much a perfect per-image resolution choice could save, an upper bound for cascades.
"""

from __future__ import annotations

import numpy as np

from ...records import Records
from ...records.stats import drop_summary
from .results import OracleResult
from .split import check_inputs, flops_drop_pct


def oracle(
    records: Records, flops: dict[int, int], reference: int, *, idx: np.ndarray | None = None
) -> OracleResult:
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
    return OracleResult(
        mean_flops=float(cost.mean()) if n else float("nan"),
        flops_drop_pct=flops_drop_pct(cost.mean(), flops, reference) if n else float("nan"),
        none_right_pct=float(100.0 * np.mean(~any_right)) if n else float("nan"),
        resolutions=[int(r) for r in order],
        share_pct=[
            float(100.0 * np.mean(any_right & (first == i))) if n else 0.0
            for i in range(len(order))
        ],
        **drop_summary(rec.correct(reference), any_right),
    )
