"""Random-resolution baseline: each image at a resolution drawn at random, no signal used.

A cascade or a chosen resolution should beat this at the same expected FLOPs; otherwise its
confidence signal is adding nothing.
"""

from __future__ import annotations

import numpy as np

from ...errors import ReswiseError
from ...records import Records
from ...records.stats import drop_summary
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
    flops: dict[int, int],
    reference: int,
    *,
    seed: int,
    weights: list[float] | None = None,
    choices: list[int] | None = None,
    idx: np.ndarray | None = None,
) -> RandomResult:
    """Each image (of ``idx``, default all) at a random resolution from ``choices``."""
    check_inputs(records, flops, reference)
    choices = list(records.resolutions) if choices is None else list(choices)
    if not choices:
        raise ReswiseError("no resolutions to draw from; give at least one")
    bad = [r for r in choices if r not in records.resolutions]
    if bad:
        raise ReswiseError(f"resolution {bad[0]} is not in the records ({records.resolutions})")
    rec = records if idx is None else records.subset(np.asarray(idx))
    n = len(rec.labels)
    p = _probabilities(weights, len(choices))
    which = _draw(n, p, seed)  # the same draw as random_assignment(n, choices, seed, weights)
    correct = np.stack([rec.correct(r) for r in choices])[which, np.arange(n)]
    cost = np.array([flops[r] for r in choices], np.float64)
    per_image = cost[which]
    expected = float(p @ cost)
    return RandomResult(
        seed=int(seed),
        choices=[int(r) for r in choices],
        weights=[float(v) for v in p],
        share_pct=[float(100.0 * np.mean(which == i)) if n else 0.0 for i in range(len(p))],
        mean_flops=float(per_image.mean()) if n else float("nan"),
        flops_drop_pct=flops_drop_pct(per_image.mean(), flops, reference) if n else float("nan"),
        expected_flops_drop_pct=flops_drop_pct(expected, flops, reference),
        **drop_summary(rec.correct(reference), correct),
    )
