"""Confidence intervals for accuracies and paired accuracy differences (per-sample 0/1 records).

Choosing a resolution needs a one-sided upper bound on its accuracy drop: ``select`` uses the
paired bootstrap (:func:`paired_bootstrap_upper`) by default; ``--test exact`` picks the exact
McNemar bound (:func:`mcnemar_upper`).

What n images can certify at all (:func:`min_certifiable_drop`): even when none of n paired
images is harmed (right at the reference, wrong at the candidate), the exact one-sided upper
bound on the share of harmed images is the Clopper-Pearson bound for 0 successes in n trials,
u(n) = 1 - (1 - confidence)^(1/n), about 3/n at 95 %: 100 u(n) points of top-1. A smaller bound
certifies nothing (the bootstrap's and the conditional McNemar bound are 0 when no image
differs, from 1 image as from a million), so the policies floor every candidate's bound at
100 u(n). The floor ignores evidence that a candidate helps (images only it gets right): it is
conservative by design. :func:`images_needed` inverts it: the smallest n with 100 u(n) <= a
budget.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ReswiseError

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n, in percent: inside [0, 100] and holding k/n.

    At 0 of n or n of n the closed form lands a hair off the end in floating point (5e-15,
    99.99999999999999), outside the point itself: plots then got negative error bars.
    """
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    lo = 0.0 if k == 0 else max(0.0, min(100 * (c - h), 100 * p))
    hi = 100.0 if k == n else min(100.0, max(100 * (c + h), 100 * p))
    return (lo, hi)


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


# One-sided upper bounds on an accuracy drop, used to choose a resolution under a budget.
# `select` uses the paired bootstrap by default; `--test exact` picks the McNemar bound.


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ReswiseError(f"--confidence must be in (0, 1), got {confidence}")


def paired_bootstrap_upper(
    ref: np.ndarray, new: np.ndarray, confidence: float, n_boot: int = 2000, seed: int = 0
) -> float:
    """One-sided upper confidence bound (points) of mean(ref - new), paired bootstrap over images.

    Resampling n images with replacement only changes how often each distinct per-image
    difference occurs, so the counts are drawn from a multinomial: the same distribution as
    index resampling at O(n_boot) instead of O(n_boot * n). Never below the point estimate.
    """
    _check_confidence(confidence)
    d = ref.astype(np.float64) - new.astype(np.float64)
    n = len(d)
    if n == 0:
        return float("nan")
    vals, counts = np.unique(d, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=n_boot)
    means = draws @ vals / n
    return float(100.0 * max(np.quantile(means, confidence), d.mean()))


def _cp_upper_bisect(k: int, m: int, confidence: float) -> float:
    """Clopper-Pearson upper bound: the p with P(X <= k | m, p) = 1 - confidence (bisection)."""
    if k >= m:
        return 1.0
    alpha = 1.0 - confidence
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, m + 1)))])
    i = np.arange(k + 1)
    log_comb = log_fact[m] - log_fact[i] - log_fact[m - i]

    def log_cdf(p: float) -> float:
        t = log_comb + i * math.log(p) + (m - i) * math.log1p(-p)
        top = t.max()
        return float(top + math.log(np.exp(t - top).sum()))

    lo, hi, log_alpha = k / m, 1.0, math.log(alpha)
    for _ in range(100):  # the CDF falls as p rises; 100 halvings reach float precision
        mid = 0.5 * (lo + hi)
        if mid <= 0.0 or mid >= 1.0 or lo == hi:
            break
        if log_cdf(mid) > log_alpha:
            lo = mid
        else:
            hi = mid
    return hi


def clopper_pearson_upper(k: int, m: int, confidence: float) -> float:
    """Exact one-sided upper bound on a binomial proportion k/m (scipy when installed)."""
    _check_confidence(confidence)
    if m <= 0:
        return 1.0
    if k >= m:
        return 1.0
    try:
        from scipy.stats import beta
    except ImportError:
        return _cp_upper_bisect(k, m, confidence)
    return float(beta.ppf(confidence, k + 1, m - k))


def min_certifiable_drop(n: int, confidence: float) -> float:
    """100 u(n) points, u(n) = 1 - (1 - confidence)^(1/n): the smallest drop n images can certify.

    The exact (Clopper-Pearson) one-sided upper bound on the share of harmed images when none of
    the n is harmed; 100 (nothing certified) for n <= 0.
    """
    _check_confidence(confidence)
    if n <= 0:
        return 100.0
    return float(-100.0 * math.expm1(math.log1p(-confidence) / n))


def images_needed(max_drop: float, confidence: float) -> int | None:
    """The smallest n with ``min_certifiable_drop(n) <= max_drop``; None when none is (budget 0).

    100 u(n) <= D  <=>  n >= ln(1 - confidence) / ln(1 - D / 100); the closed form is then
    checked against :func:`min_certifiable_drop` itself, so the two never disagree by float noise.
    """
    _check_confidence(confidence)
    if not max_drop > 0:
        return None
    if max_drop >= 100.0:
        return 1
    n = max(1, math.ceil(math.log1p(-confidence) / math.log1p(-max_drop / 100.0)))
    while n > 1 and min_certifiable_drop(n - 1, confidence) <= max_drop:
        n -= 1
    while min_certifiable_drop(n, confidence) > max_drop:
        n += 1
    return n


def mcnemar_upper(ref: np.ndarray, new: np.ndarray, confidence: float) -> float:
    """Exact (McNemar / Clopper-Pearson) one-sided upper bound (points) of the paired drop.

    Only discordant pairs carry information: b = ref right & new wrong, c = ref wrong & new
    right. Given m = b + c, b ~ Binomial(m, q) and the drop is m (2q - 1) / n, so the exact upper
    bound on q gives one on the drop. It is conditional on m: with c = 0 it equals the point
    estimate b / n, so it is less conservative than the bootstrap when few pairs disagree.
    """
    _check_confidence(confidence)
    r, w = ref.astype(bool), new.astype(bool)
    n = len(r)
    if n == 0:
        return float("nan")
    b, c = int((r & ~w).sum()), int((~r & w).sum())
    if b + c == 0:
        return 0.0
    q = clopper_pearson_upper(b, b + c, confidence)
    return float(100.0 * (b + c) * (2.0 * q - 1.0) / n)


def drop_summary(ref: np.ndarray, new: np.ndarray) -> dict[str, float | int | list[float]]:
    """Top-1 of both, the drop in points and its two-sided 95% paired CI, as plain floats."""
    n = len(ref)
    if n == 0:
        nan = float("nan")
        return {
            "n": 0,
            "top1": nan,
            "reference_top1": nan,
            "acc_drop_pct": nan,
            "acc_drop_ci": [nan, nan],
        }
    t_ref, t_new = 100.0 * float(np.mean(ref)), 100.0 * float(np.mean(new))
    return {
        "n": int(n),
        "top1": t_new,
        "reference_top1": t_ref,
        "acc_drop_pct": t_ref - t_new,
        "acc_drop_ci": [float(v) for v in paired_drop_ci(ref, new)],
    }
