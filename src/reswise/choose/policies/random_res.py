"""Random-resolution baseline: each image at a resolution drawn at random, no signal used.

A cascade or a chosen resolution should beat this at the same expected FLOPs; otherwise its
confidence signal is adding nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ReswiseError
from ...records import Records, Stage, stage_name, unstage
from ...records.stats import drop_summary
from .costs import as_stage, chain_text, costs, precisions
from .results import RandomResult
from .split import check_inputs, flops_drop_pct


def _probabilities(weights: list[float] | None, k: int) -> np.ndarray:
    if weights is None:
        return np.full(k, 1.0 / k)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (k,):
        raise ReswiseError(f"--weights needs one weight per resolution ({k}), got {len(w)}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ReswiseError(f"--weights must be finite and non-negative, got {list(weights)}")
    if w.sum() <= 0:
        raise ReswiseError("--weights are all zero; give at least one positive weight")
    return w / w.sum()


def random_assignment(
    n: int, choices: list[int], seed: int, weights: list[float] | None = None
) -> np.ndarray:
    """Resolution per image, drawn with a seeded numpy Generator (same seed, same draw)."""
    p = _probabilities(weights, len(choices))
    return np.asarray(choices)[_draw(n, p, seed)]


def _draw(n: int, p: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(len(p), size=n, p=p)


def random_resolution(
    records: Records,
    flops: dict[Any, Any],
    reference: Stage,
    *,
    seed: int,
    weights: list[float] | None = None,
    choices: list[Any] | None = None,
    idx: np.ndarray | None = None,
    times: dict[Any, float] | None = None,
) -> RandomResult:
    """Each image (of ``idx``, default all) at a random stage from ``choices`` (stage keys:
    24, (24, "int8") or "24/int8"; default every recorded stage)."""
    check_inputs(records, flops, reference)
    keys = list(records.keys) if choices is None else [as_stage(k) for k in choices]
    if not keys:
        raise ReswiseError("no resolutions to draw from; give at least one")
    bad = [k for k in keys if k not in records.keys]
    if bad:
        have = records.resolutions if records.precision is None else chain_text(records.keys)
        raise ReswiseError(f"resolution {stage_name(bad[0])} is not in the records ({have})")
    cost = costs(records, flops, reference, "flops", times)
    rec = records if idx is None else records.subset(np.asarray(idx))
    n = len(rec.labels)
    p = _probabilities(weights, len(keys))
    which = _draw(n, p, seed)  # the same draw as random_assignment(n, choices, seed, weights)
    correct = np.stack([rec.correct(k) for k in keys])[which, np.arange(n)]
    paid = np.array([cost.flops[k] for k in keys], np.float64)
    per_image = paid[which]
    expected = float(p @ paid)
    share = [float(np.mean(which == i)) if n else 0.0 for i in range(len(p))]
    return RandomResult(
        seed=int(seed),
        choices=[unstage(k)[0] for k in keys],
        precision=precisions(records, keys),
        weights=[float(v) for v in p],
        share_pct=[100.0 * a for a in share],
        mean_flops=float(per_image.mean()) if n else float("nan"),
        flops_drop_pct=flops_drop_pct(per_image.mean(), cost.flops, reference)
        if n
        else float("nan"),
        **cost.mean(keys, np.array(share) if n else np.array([np.nan])),
        expected_flops_drop_pct=flops_drop_pct(expected, cost.flops, reference),
        **drop_summary(rec.correct(reference), correct),
    )
