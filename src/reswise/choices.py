"""Choosing from a finished run: one function per choosing command, numpy only.

    run = reswise.load_run("runs/r20")
    reswise.select(run, max_drop=1.0).to_dict()
    reswise.cascade(run, max_drop=1.0).to_dict()

Each takes the run object (records, BN-recalibrated records, FLOPs, reference) and returns the
policy's typed result; the CLI prints it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ReswiseError
from .policies import (
    calib_heldout_split,
    headroom,
    random_resolution,
    search_cascade,
    select_resolution,
)
from .records import Records, SweepResult, jsonable, write_atomic


def _check_bn_split(run: SweepResult, calib_frac: float, seed: int) -> None:
    """BN statistics taken from a split's calibration part are only fair on that split."""
    split = run.bn.calib_split if run.bn else None
    if split and (split["calib_frac"] != calib_frac or split["seed"] != seed):
        raise ReswiseError(
            f"{run.directory or 'the run'}'s BN statistics came from the calibration part of the "
            f"split with --calib-frac {split['calib_frac']} --seed {split['seed']}; pass those "
            "values, so the held-out part stays unseen"
        )


def choosing_records(run: SweepResult, calib_frac: float = 0.5, seed: int = 0) -> Records:
    """The records a policy chooses from: recalibrated passes only where they win on calibration."""
    from .compare import best_of

    _check_bn_split(run, calib_frac, seed)
    if run.bn is None:
        return run.records
    calib, _ = calib_heldout_split(run.n, calib_frac, seed)
    return best_of(run.records, run.bn.records, calib, run.reference)[0]


def random_choice(
    run: SweepResult,
    *,
    seed: int = 0,
    weights: list[float] | None = None,
    resolutions: list[int] | None = None,
) -> Any:
    """The study's random resolution per image, from ``resolutions`` (default: all swept)."""
    have = run.records.resolutions
    wanted = list(resolutions) if resolutions else list(have)
    missing = [r for r in wanted if r not in have]
    if missing:
        raise ReswiseError(
            f"resolution {missing[0]} is not in the sweep's records ({have}); "
            "rerun the sweep with it"
        )
    return random_resolution(
        run.records, run.flops, run.reference, seed=seed, weights=weights, choices=wanted
    )


def select(
    run: SweepResult,
    *,
    max_drop: float = 1.0,
    confidence: float = 0.95,
    calib_frac: float = 0.5,
    seed: int = 0,
    test: str = "bootstrap",
) -> Any:
    """Cheapest fixed resolution whose calibration drop bound is within ``max_drop``."""
    records = choosing_records(run, calib_frac, seed)
    return select_resolution(
        records,
        run.flops,
        run.reference,
        max_drop=max_drop,
        confidence=confidence,
        calib_frac=calib_frac,
        seed=seed,
        method=test,
    )


def cascade(
    run: SweepResult,
    *,
    max_drop: float = 1.0,
    confidence: float = 0.95,
    calib_frac: float = 0.5,
    seed: int = 0,
    signal: str = "auto",
    max_len: int = 3,
) -> Any:
    """Confidence cascade of resolutions under the budget, reported on held-out images."""
    records = choosing_records(run, calib_frac, seed)
    return search_cascade(
        records,
        run.flops,
        run.reference,
        max_drop=max_drop,
        confidence=confidence,
        signal=signal,
        calib_frac=calib_frac,
        seed=seed,
        max_len=max_len,
    )


def cascade_headroom(
    run: SweepResult, *, max_drop: float = 1.0, calib_frac: float = 0.5, seed: int = 0
) -> list[dict[str, Any]]:
    """Per cheaper resolution, what two-stage chains could save (in hindsight)."""
    records = choosing_records(run, calib_frac, seed)
    return headroom(records, run.flops, run.reference, max_drop=max_drop)


def compare_policies(
    run: SweepResult,
    *,
    max_drop: float = 1.0,
    confidence: float = 0.95,
    calib_frac: float = 0.5,
    seed: int = 0,
    max_len: int = 3,
    add: dict[str, SweepResult] | None = None,
    out: str | Path | None = None,
) -> Any:
    """Every policy on one split; writes compare.md / .json / .png into ``out`` when given."""
    from .compare import compare, compare_plot, compare_table

    _check_bn_split(run, calib_frac, seed)
    extras = {label: r.records for label, r in (add or {}).items()}
    result = compare(
        run.records,
        run.flops,
        run.reference,
        max_drop=max_drop,
        confidence=confidence,
        calib_frac=calib_frac,
        seed=seed,
        records_bn=run.bn.records if run.bn else None,
        max_len=max_len,
        extras=extras,
    )
    if out is not None:
        out = Path(out)
        d = result.to_dict()
        head = compare_header(run, d, max_drop, confidence, seed)
        text = head + compare_table(d["rows"]) + "\n\n![compare](compare.png)\n"
        write_atomic(out / "compare.md", text.encode())
        body = json.dumps({**d, **run_facts(run)}, indent=1, default=jsonable) + "\n"
        write_atomic(out / "compare.json", body.encode())
        compare_plot(
            d["rows"],
            out / "compare.png",
            f"{run.model} on {run.dataset}: held-out, n={d['n_heldout']}",
        )
    return result


def run_facts(run: SweepResult) -> dict[str, Any]:
    """What every choosing command's output says about the run it chose from."""
    return {"model": run.model, "weights": run.weights, "dataset": run.dataset}


def compare_header(
    run: SweepResult, d: dict[str, Any], max_drop: float, confidence: float, seed: int
) -> str:
    r = run.reference
    return (
        f"# reswise compare: {run.model}\n\nWeights {run.weights}, data `{run.dataset}`, "
        f"reference {r}x{r}. Policies choose on {d['n_calib']} calibration images; every "
        f"figure below is measured on the other {d['n_heldout']} (held-out) images, seed "
        f"{seed}. Budget: at most {max_drop} point(s) of top-1 at {confidence:.0%} one-sided "
        "confidence. CIs are paired 95% intervals of the held-out drop.\n\n"
    )
