"""Confidence intervals for accuracies and paired accuracy differences (per-sample 0/1 records)."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n, in percent."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (100 * (c - h), 100 * (c + h))


def paired_drop_ci(ref: np.ndarray, new: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """Normal-approximation CI (percentage points) of mean(ref - new) for paired 0/1 outcomes.

    Pairing matters: both accuracies are measured on the same images, so the variance of the
    drop is that of the per-image difference, far smaller than two independent intervals.
    """
    d = ref.astype(np.float64) - new.astype(np.float64)
    n = len(d)
    if n == 0:
        return (float("nan"), float("nan"))
    m = d.mean()
    se = d.std(ddof=1) / math.sqrt(n) if n > 1 else 0.0
    return (100 * (m - z * se), 100 * (m + z * se))
