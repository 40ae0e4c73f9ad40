"""Calibration / held-out split, and the input checks and budget tolerance every policy shares.

Policies choose on the calibration part only and report on the held-out part only, so the
reported accuracy drop is not flattered by the choice.
"""

from __future__ import annotations

import numpy as np

from ..errors import ReswiseError
from ..records import Records

EPS = 1e-9  # a bound equal to the budget up to float noise qualifies


def calib_heldout_split(
    n: int, calib_frac: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded permutation of range(n) into disjoint, sorted calibration and held-out indices."""
    if not 0.0 < calib_frac < 1.0:
        raise ReswiseError(f"--calib-frac must be in (0, 1), got {calib_frac}")
    if n < 2:
        raise ReswiseError(f"a calibration/held-out split needs at least 2 images, got {n}")
    k = min(max(int(round(n * calib_frac)), 1), n - 1)  # both parts non-empty
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:k]), np.sort(perm[k:])


def check_inputs(records: Records, flops: dict[int, int], reference: int) -> None:
    """The reference and every recorded resolution must have records and a FLOPs count."""
    if reference not in records.resolutions:
        raise ReswiseError(
            f"reference resolution {reference} is not in the records ({records.resolutions}); "
            "rerun the sweep with it"
        )
    missing = [r for r in records.resolutions if r not in flops]
    if missing:
        raise ReswiseError(
            f"no FLOPs count for resolution {missing[0]}; pass flops for every swept resolution"
        )
    if len(records.labels) == 0:
        raise ReswiseError("the records hold no images; run the sweep on a non-empty dataset")


def check_max_drop(max_drop: float) -> None:
    """A budget in points of top-1: non-negative (NaN is refused too: no bound could meet it)."""
    if not max_drop >= 0:
        raise ReswiseError(f"--max-drop must be >= 0 points, got {max_drop}")


def flops_drop_pct(mean_flops: float, flops: dict[int, int], reference: int) -> float:
    return float(100.0 * (1.0 - mean_flops / flops[reference]))
