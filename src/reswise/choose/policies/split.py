"""Calibration / held-out split, and the input checks, budget tolerance and floor every policy
shares.

Policies choose on the calibration part only and report on the held-out part only, so the
reported accuracy drop is not flattered by the choice.

The floor (:func:`certify_floor`): n calibration images cannot certify a drop below
100 u(n) points, u(n) = 1 - (1 - confidence)^(1/n) (:func:`reswise.records.stats.min_certifiable_drop`,
about 300/n points at 95 %), the exact bound on the share of harmed images when none is harmed.
Every candidate's bound but the reference's (exactly 0: it is compared with itself) is at least
that; when it exceeds the budget only the reference qualifies, and the result says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ReswiseError
from ...records import Records, Stage, stage_name, unstage
from ...records.stats import images_needed, min_certifiable_drop

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


def check_inputs(records: Records, flops: dict[Any, Any], reference: Stage) -> None:
    """The reference and every recorded stage must have records and a FLOPs count (a
    precision's may be its resolution's: :func:`.costs.stage_flops`)."""
    if reference not in records.keys:
        raise ReswiseError(
            f"reference resolution {reference} is not in the records ({records.resolutions}); "
            "rerun the sweep with it"
        )
    missing = [k for k in records.keys if k not in flops and unstage(k)[0] not in flops]
    if missing:
        raise ReswiseError(
            f"no FLOPs count for resolution {stage_name(missing[0])}; pass flops for every "
            "swept resolution"
        )
    if len(records.labels) == 0:
        raise ReswiseError("the records hold no images; run the sweep on a non-empty dataset")


def check_max_drop(max_drop: float) -> None:
    """A budget in points of top-1: non-negative (NaN is refused too: no bound could meet it)."""
    if not max_drop >= 0:
        raise ReswiseError(f"--max-drop must be >= 0 points, got {max_drop}")


def flops_drop_pct(mean_flops: float, flops: dict[Any, Any], reference: Stage) -> float:
    return float(100.0 * (1.0 - mean_flops / flops[reference]))


def _points(floor: float, max_drop: float) -> str:
    """The floor with the fewest decimals (1 to 6) that still reads above the budget."""
    digits = next((d for d in range(1, 7) if round(floor, d) > max_drop), 6)
    return f"{floor:.{digits}f}"


def too_few_warning(n_calib: int, floor: float, max_drop: float, confidence: float) -> str:
    """What ``n_calib`` images cannot certify, and how many a ``max_drop`` budget needs."""
    images = f"{n_calib} calibration image{'' if n_calib == 1 else 's'}"
    budget = f"a {float(max_drop)}-point budget"
    head = (
        f"{images} can certify no drop below {_points(floor, max_drop)} points at "
        f"{100 * confidence:g} %; the reference was kept."
    )
    need = images_needed(max_drop, confidence)
    if need is None:
        return f"{head} No number of calibration images certifies {budget}: every bound is above 0"
    return (
        f"{head} Use >= {need} calibration images for {budget} (more data or a larger --calib-frac)"
    )


def certify_floor(
    n_calib: int, max_drop: float, confidence: float
) -> tuple[float, bool, str | None]:
    """(floor in points, too few images, warning or None): what ``n_calib`` images can certify.

    Too few when the floor exceeds ``max_drop`` (beyond :data:`EPS`): then no setting but the
    reference can qualify, whatever the records say.
    """
    floor = min_certifiable_drop(n_calib, confidence)
    if floor <= max_drop + EPS:
        return floor, False, None
    return floor, True, too_few_warning(n_calib, floor, max_drop, confidence)
