"""Choosing from a finished run: one function per choosing command, numpy only.

    run = reswise.load_run("runs/r20")
    reswise.select(run, max_drop=1.0).to_dict()
    reswise.cascade(run, max_drop=1.0).to_dict()

Each takes the run object (records, BN-recalibrated records, FLOPs, times, reference) and
returns the policy's typed result; the CLI prints it. ``objective="time"`` picks the cheapest in
the sweep's measured ms per image instead of FLOPs (refused in one line on a run without
times); results report ``flops_drop_pct`` always, and ``objective``, ``time_saved_pct`` and
``timed_on`` (the CPU, ``run.meta["cpu"]``) whenever the run has times.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ReswiseError
from ..records import (
    PRECISIONS,
    Records,
    Stage,
    SweepResult,
    jsonable,
    row_key,
    stage_name,
    unstage,
    write_atomic,
)
from ..records.report import dataset_label
from .crops import check_crop_split
from .policies import (
    calib_heldout_split,
    headroom,
    random_resolution,
    search_cascade,
    select_resolution,
)
from .policies.costs import as_stage


def _check_bn_split(run: SweepResult, calib_frac: float, seed: int) -> None:
    """BN statistics, crops and int8 calibration taken from a split's calibration part are
    only fair on that split."""
    check_crop_split(run, calib_frac, seed)
    check_quant_split(run, calib_frac, seed)
    split = run.bn.calib_split if run.bn else None
    if split and (split["calib_frac"] != calib_frac or split["seed"] != seed):
        raise ReswiseError(
            f"{run.directory or 'the run'}'s BN statistics came from the calibration part of the "
            f"split with --calib-frac {split['calib_frac']} --seed {split['seed']}; pass those "
            "values, so the held-out part stays unseen"
        )


def check_quant_split(run: SweepResult, calib_frac: float, seed: int) -> None:
    """int8 stages quantised on a split's calibration part are only fair on that split's
    held-out part (refused as :func:`check_crop_split` refuses crops)."""
    split = (run.meta.get("quant") or {}).get("calib_split")
    quantised = any(unstage(k)[1] != "fp32" for k in run.records.keys)
    if quantised and split and (split["calib_frac"] != calib_frac or split["seed"] != seed):
        raise ReswiseError(
            f"{run.directory or 'the run'}'s int8 stages were calibrated on the calibration part "
            f"of the split with --calib-frac {split['calib_frac']} --seed {split['seed']}; pass "
            "those values, so the held-out part stays unseen"
        )


def choosing_records(run: SweepResult, calib_frac: float = 0.5, seed: int = 0) -> Records:
    """The records a policy chooses from: recalibrated passes only where they win on calibration
    (the recalibrated pass has fp32 rows only: other precisions come from the plain pass)."""
    from .compare import best_of

    _check_bn_split(run, calib_frac, seed)
    if run.bn is None:
        return run.records
    calib, _ = calib_heldout_split(run.n, calib_frac, seed)
    return best_of(run.records, run.bn.records, calib, run.reference)[0]


def run_times(run: SweepResult) -> dict[Stage, float] | None:
    """ms per image of every stage as the sweep measured them, or None when it did not."""
    try:
        return run.cost("time")
    except ReswiseError:
        return None


def timed_stages(run: SweepResult) -> SweepResult:
    """``run`` as a chooser by time sees it: without its bf16 stages, which are swept in torch,
    not shipped, and so have no ONNX Runtime time to compare (its CPU provider has no bf16
    arithmetic). Leaving them out beats refusing the run: every other stage was timed."""
    have = {unstage(k)[1] for k in run.records.keys}
    if "bf16" not in have:
        return run
    return with_precisions(run, sorted(have - {"bf16"}, key=PRECISIONS.index))


def _timing(run: SweepResult, objective: str) -> dict[str, Any]:
    """The policies' ``objective`` and ``times`` keywords for ``run`` (``run.cost`` refuses
    ``objective="time"`` on a run without times, in one line)."""
    times = run.cost("time") if objective == "time" else run_times(run)
    return {"objective": objective, "times": times}


def timed(result: Any, run: SweepResult) -> Any:
    """``result`` with ``timed_on`` (``run.meta["cpu"]``) when it reports measured times."""
    names = {f.name for f in dataclasses.fields(result)}
    if "timed_on" not in names or result.get("time_saved_pct") is None or not run.meta.get("cpu"):
        return result
    return dataclasses.replace(result, timed_on=dict(run.meta["cpu"]))


def with_precisions(run: SweepResult, wanted: list[str] | None) -> SweepResult:
    """``run`` seen through ``--precision fp32,int8``: only stages at those precisions (and the
    fp32 reference, which every drop is measured against)."""
    if not wanted:
        return run
    bad = [p for p in wanted if p not in PRECISIONS]
    if bad:
        raise ReswiseError(f"unknown precision '{bad[0]}'; use {', '.join(PRECISIONS)}")
    have = sorted({unstage(k)[1] for k in run.records.keys}, key=PRECISIONS.index)
    missing = [p for p in wanted if p not in have]
    if missing:
        raise ReswiseError(
            f"precision {missing[0]} is not in the run's records ({', '.join(have)}); choose "
            "among those, or rerun the sweep with --precision"
        )
    keep = [k for k in run.records.keys if k == run.reference or unstage(k)[1] in wanted]
    rows = [next(r for r in run.rows if row_key(r) == k) for k in keep]
    bn = None
    if run.bn:
        bn_keep = [k for k in keep if k in run.bn.records.keys]
        bn_rows = [next(r for r in run.bn.rows if row_key(r) == k) for k in bn_keep]
        bn = dataclasses.replace(run.bn, records=run.bn.records.only(bn_keep), rows=bn_rows)
    return dataclasses.replace(run, records=run.records.only(keep), rows=rows, bn=bn)


def random_choice(
    run: SweepResult,
    *,
    seed: int = 0,
    weights: list[float] | None = None,
    resolutions: list[Any] | None = None,
) -> Any:
    """The study's random stage per image, from ``resolutions`` (default: every stage swept; a
    resolution stands for all its precisions, "24/int8" for that stage alone)."""
    have = run.records.resolutions
    keys: list[Stage] = [] if resolutions else list(run.records.keys)
    for w in resolutions or []:
        k = as_stage(w)  # a resolution: all its precisions; "24/int8": that stage
        found = [
            x for x in run.records.keys if (unstage(x)[0] == k if isinstance(k, int) else x == k)
        ]
        if not found:
            raise ReswiseError(
                f"resolution {stage_name(k)} is not in the sweep's records ({have}); "
                "rerun the sweep with it"
            )
        keys += [x for x in found if x not in keys]
    found = random_resolution(
        run.records, run.flops, run.reference, seed=seed, weights=weights, choices=keys,
        times=run_times(run),
    )  # fmt: skip
    return timed(found, run)


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


def _budget(budget: Budget | None, limits: dict[str, Any]) -> Budget:
    """``budget`` with the fields given as keywords (``max_drop=1.0``, ...) replaced."""
    return dataclasses.replace(budget or Budget(), **limits)


def select(
    run: SweepResult,
    budget: Budget | None = None,
    *,
    test: str = "bootstrap",
    objective: str = "flops",
    **limits: Any,
) -> Any:
    """Cheapest fixed stage whose calibration drop bound is within the budget; cheapest in
    FLOPs or, ``objective="time"``, in measured ms per image. ``limits`` (``max_drop=``,
    ``confidence=``, ``calib_frac=``, ``seed=``) override ``budget``'s fields."""
    budget = _budget(budget, limits)
    run = timed_stages(run) if objective == "time" else run
    found = select_resolution(
        budget.records(run), run.flops, run.reference, method=test, **budget.kwargs(),
        **_timing(run, objective),
    )  # fmt: skip
    return timed(found, run)


def cascade(
    run: SweepResult,
    budget: Budget | None = None,
    *,
    signal: str = "auto",
    max_len: int = 3,
    objective: str = "flops",
    **limits: Any,
) -> Any:
    """Confidence cascade of stages under the budget, reported on held-out images; cheapest
    in FLOPs or in measured time (``objective``); ``limits`` as in :func:`select`."""
    budget = _budget(budget, limits)
    run = timed_stages(run) if objective == "time" else run
    found = search_cascade(
        budget.records(run),
        run.flops,
        run.reference,
        signal=signal,
        max_len=max_len,
        **budget.kwargs(),
        **_timing(run, objective),
    )
    return timed(found, run)


def cascade_headroom(
    run: SweepResult, budget: Budget | None = None, *, objective: str = "flops", **limits: Any
) -> list[dict[str, Any]]:
    """Per stage cheaper than the reference, what two-stage chains could save (in hindsight)."""
    budget = _budget(budget, limits)
    run = timed_stages(run) if objective == "time" else run
    return headroom(
        budget.records(run), run.flops, run.reference, max_drop=budget.max_drop,
        **_timing(run, objective),
    )  # fmt: skip


def compare_policies(
    run: SweepResult,
    budget: Budget | None = None,
    *,
    max_len: int = 3,
    add: dict[str, SweepResult] | None = None,
    out: str | Path | None = None,
    objective: str = "flops",
    **limits: Any,
) -> Any:
    """Every policy on one split; writes compare.md / .json / .png into ``out`` when given.

    ``add`` holds runs of other models on the same images (checked by their fingerprint);
    they share ``run``'s FLOPs and times. ``objective`` and ``limits`` as in :func:`select`.
    """
    from .compare import compare, compare_plot, compare_table, run_name

    budget = _budget(budget, limits)
    run = timed_stages(run) if objective == "time" else run
    _check_bn_split(run, budget.calib_frac, budget.seed)
    for label, other in (add or {}).items():
        check_same_images(run, other, label)
        check_quant_split(other, budget.calib_frac, budget.seed)
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
        **_timing(run, objective),
        timed_on=run.meta.get("cpu"),
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
    timing = ""
    if d.get("objective"):
        cpu = (d.get("timed_on") or {}).get("name", "the sweep's machine")
        cheap = "measured time" if d["objective"] == "time" else "FLOPs"
        timing = (
            f"Policies pick the cheapest in {cheap}; time saved is from ONNX Runtime ms per "
            f"image at batch 64 on {cpu}. "
        )
    return (
        f"# reswise compare: {run.model}\n\nWeights {run.weights}, data `{run.dataset}`, "
        f"reference {r}x{r}. Policies choose on {d['n_calib']} calibration images; every "
        f"figure below is measured on the other {d['n_heldout']} (held-out) images, seed "
        f"{budget.seed}. Budget: at most {budget.max_drop} point(s) of top-1 at "
        f"{budget.confidence:.0%} one-sided confidence. {timing}CIs are paired 95% intervals "
        "of the held-out drop.\n\n"
    )
