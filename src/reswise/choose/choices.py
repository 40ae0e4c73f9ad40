"""Choosing from a finished run: one function per choosing command, numpy only.

    run = reswise.load_run("runs/r20")
    reswise.select(run, max_drop=1.0).to_dict()
    reswise.cascade(run, max_drop=1.0).to_dict()

Each takes the run object (records, BN-recalibrated records, FLOPs, reference) and returns the
policy's typed result; the CLI prints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ReswiseError
from ..records import Records, SweepResult, jsonable, write_atomic
from ..records.report import dataset_label
from .crops import check_crop_split
from .policies import (
    calib_heldout_split,
    headroom,
    random_resolution,
    search_cascade,
    select_resolution,
)


def _check_bn_split(run: SweepResult, calib_frac: float, seed: int) -> None:
    """BN statistics (and crops) taken from a split's calibration part are only fair on that split."""
    check_crop_split(run, calib_frac, seed)
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


@dataclass(frozen=True)
class Budget:
    """What a choice must meet, and the seeded split it is chosen and reported on."""

    max_drop: float = 1.0  # top-1 points one accepts to lose
    confidence: float = 0.95  # one-sided, for the bound
    calib_frac: float = 0.5  # share of the images used to choose; the rest report
    seed: int = 0

    def records(self, run: SweepResult) -> Records:
        return choosing_records(run, self.calib_frac, self.seed)

    def kwargs(self) -> dict[str, Any]:
        return {
            "max_drop": self.max_drop,
            "confidence": self.confidence,
            "calib_frac": self.calib_frac,
            "seed": self.seed,
        }


def select(run: SweepResult, budget: Budget = Budget(), *, test: str = "bootstrap") -> Any:
    """Cheapest fixed resolution whose calibration drop bound is within the budget."""
    return select_resolution(
        budget.records(run), run.flops, run.reference, method=test, **budget.kwargs()
    )


def cascade(
    run: SweepResult, budget: Budget = Budget(), *, signal: str = "auto", max_len: int = 3
) -> Any:
    """Confidence cascade of resolutions under the budget, reported on held-out images."""
    return search_cascade(
        budget.records(run),
        run.flops,
        run.reference,
        signal=signal,
        max_len=max_len,
        **budget.kwargs(),
    )


def cascade_headroom(run: SweepResult, budget: Budget = Budget()) -> list[dict[str, Any]]:
    """Per cheaper resolution, what two-stage chains could save (in hindsight)."""
    return headroom(budget.records(run), run.flops, run.reference, max_drop=budget.max_drop)


def compare_policies(
    run: SweepResult,
    budget: Budget = Budget(),
    *,
    max_len: int = 3,
    add: dict[str, SweepResult] | None = None,
    out: str | Path | None = None,
) -> Any:
    """Every policy on one split; writes compare.md / .json / .png into ``out`` when given.

    ``add`` holds runs of other models on the same images (checked by their fingerprint).
    """
    from .compare import compare, compare_plot, compare_table, run_name

    _check_bn_split(run, budget.calib_frac, budget.seed)
    for label, other in (add or {}).items():
        check_same_images(run, other, label)
    extras = {label: r.records for label, r in (add or {}).items()}
    records_bn = run.bn.records if run.bn else None
    result = compare(
        run.records,
        run.flops,
        run.reference,
        records_bn=records_bn,
        max_len=max_len,
        extras=extras,
        names={"": run_name(run), **{label: run_name(r) for label, r in (add or {}).items()}},
        **budget.kwargs(),
    )
    if out is not None:
        out = Path(out)
        d = result.to_dict()
        text = compare_header(run, d, budget) + compare_table(d["rows"])
        write_atomic(out / "compare.md", (text + "\n\n![compare](compare.png)\n").encode())
        body = json.dumps({**d, **run_facts(run)}, indent=1, default=jsonable) + "\n"
        write_atomic(out / "compare.json", body.encode())
        title = f"{run.model} on {dataset_label(run.dataset)}: held-out, n={d['n_heldout']}"
        compare_plot(d["rows"], out / "compare.png", title)
    return result


def check_same_images(run: SweepResult, other: SweepResult, label: str) -> None:
    """Paired figures need the same images: runs are matched by their images' fingerprint."""
    mine, theirs = run.meta.get("images_fingerprint"), other.meta.get("images_fingerprint")
    if mine is None or theirs is None:
        old = other.directory if theirs is None else run.directory
        raise ReswiseError(
            f"run {old} records no images fingerprint (made before reswise checked it); rerun "
            "its sweep so the runs can be paired safely"
        )
    if mine != theirs:
        raise ReswiseError(
            f"run '{label}' ({other.directory}) was evaluated on other images than "
            f"{run.directory} (fingerprints {theirs[:12]} vs {mine[:12]}); sweep both on the "
            "same --data-root, --limit and --seed"
        )


def run_facts(run: SweepResult) -> dict[str, Any]:
    """What every choosing command's output says about the run it chose from."""
    return {"model": run.model, "weights": run.weights, "dataset": run.dataset}


def compare_header(run: SweepResult, d: dict[str, Any], budget: Budget) -> str:
    r = run.reference
    return (
        f"# reswise compare: {run.model}\n\nWeights {run.weights}, data `{run.dataset}`, "
        f"reference {r}x{r}. Policies choose on {d['n_calib']} calibration images; every "
        f"figure below is measured on the other {d['n_heldout']} (held-out) images, seed "
        f"{budget.seed}. Budget: at most {budget.max_drop} point(s) of top-1 at "
        f"{budget.confidence:.0%} one-sided confidence. CIs are paired 95% intervals of the "
        "held-out drop.\n\n"
    )
