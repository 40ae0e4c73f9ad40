"""One comparison of every way to choose the resolution, all reported on the same held-out images.

Rows: fixed resolutions, random resolution, the selected resolution, BN-recalibrated fixed
resolutions and selection, the confidence cascade (plain and over recalibrated passes) and the
oracle bound. Everything that chooses, chooses on the calibration part of the seeded split.
Rows name the run they come from by model and weights (``run_name``): runs of one model with
other weights look alike otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReswiseError
from ..records import Records, SweepResult
from ..records.stats import drop_summary
from .policies import (
    CascadeResult,
    CompareResult,
    SelectResult,
    calib_heldout_split,
    oracle,
    random_resolution,
    search_cascade,
    select_resolution,
)
from .policies.results import Result
from .policies.split import flops_drop_pct


def weights_name(run: SweepResult) -> str:
    """The weights a run was made with, short: a model's own weights by their tag
    ("reswise_jpeg" of "cifar_resnet20.reswise_jpeg"), else the checkpoint path or "random init"."""
    name = run.weights.split(" + ")[0]  # not "+ per-resolution BN statistics for [...]"
    return name[len(run.model) + 1 :] if name.startswith(f"{run.model}.") else name


def run_name(run: SweepResult) -> str:
    """The model and its weights, e.g. "cifar_resnet20 (reswise_jpeg)": what tells two runs
    of one model apart in a table."""
    return f"{run.model} ({weights_name(run)})"


def best_of(
    plain: Records, recal: Records, calib: np.ndarray, reference: int
) -> tuple[Records, dict[int, bool]]:
    """Per resolution, the recalibrated pass only where it wins on the calibration images.

    The reference keeps its shipped statistics: drops are measured against the model as it is.
    """
    use = {}
    rows = []
    for r in plain.resolutions:
        wins = r != reference and recal.correct(r)[calib].mean() > plain.correct(r)[calib].mean()
        use[r] = bool(wins)
        rows.append(recal if wins else plain)
    pick = lambda f: np.stack([getattr(src, f)[i] for i, src in enumerate(rows)])  # noqa: E731
    merged = Records(list(plain.resolutions), plain.indices, plain.labels,
                     pick("topk_idx"), pick("topk_prob"), pick("entropy"))  # fmt: skip
    return merged, use


def _row(policy: str, detail: str, d: Result | dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One table row: what every policy reports, plus ``extra`` (resolution, stage shares)."""
    return {
        "policy": policy, "detail": detail, "flops_drop_pct": d["flops_drop_pct"],
        "acc_drop_pct": d["acc_drop_pct"], "acc_drop_ci": d["acc_drop_ci"],
        "top1": d["top1"], **extra,
    }  # fmt: skip


def _fixed_rows(
    rec: Records,
    resolutions: list[int],
    ref_held: np.ndarray,
    held: np.ndarray,
    flops: dict[int, int],
    reference: int,
    policy: str,
    suffix: str = "",
) -> list[dict[str, Any]]:
    """Each of ``resolutions`` of ``rec`` on the held-out images, drops against ``ref_held``."""
    rows = []
    for r in resolutions:
        d = drop_summary(ref_held, rec.correct(r)[held])
        d["flops_drop_pct"] = flops_drop_pct(flops[r], flops, reference)
        rows.append(_row(policy, f"{r}x{r}{suffix}", d))
    return rows


def _oracle_row(
    rec: Records, flops: dict[int, int], reference: int, held: np.ndarray, policy: str
) -> dict[str, Any]:
    return _row(policy, "cheapest right resolution", oracle(rec, flops, reference, idx=held))


def _choose(
    rec: Records,
    flops: dict[int, int],
    reference: int,
    budget: dict[str, Any],
    max_len: int,
    prefix: str = "",
    suffix: str = "",
    held: np.ndarray | None = None,
) -> tuple[SelectResult, CascadeResult, list[dict[str, Any]]]:
    """The selected resolution and the cascade chosen from ``rec``, and their rows (then the
    oracle bound's on ``held`` when given); policies named ``{prefix}selected{suffix}`` etc."""
    sel = select_resolution(rec, flops, reference, **budget)
    cas = search_cascade(rec, flops, reference, **budget, signal="auto", max_len=max_len)
    rows = [
        _row(f"{prefix}selected{suffix}", f"{sel.resolution}x{sel.resolution}", sel,
             resolution=sel.resolution),
        _row(f"{prefix}cascade{suffix}", f"{cas.chain} on {cas.signal}", cas,
             stage_share_pct=cas.stage_share_pct),
    ]  # fmt: skip
    if held is not None:
        rows.append(_oracle_row(rec, flops, reference, held, f"{prefix}oracle (uses labels)"))
    return sel, cas, rows


def _check_run(label: str, rec: Records, records: Records, flops: dict[int, int], ref: int) -> None:
    """Another run compared beside ``records``: the same images, every resolution counted."""
    if not np.array_equal(rec.indices, records.indices) or not np.array_equal(
        rec.labels, records.labels
    ):
        raise ReswiseError(
            f"run '{label}' was evaluated on other images; compare needs the same set"
        )
    missing = [r for r in rec.resolutions if r not in flops]
    if missing or ref not in rec.resolutions:
        raise ReswiseError(f"run '{label}' lacks resolution {missing[:1] or [ref]}")


def compare(
    records: Records,
    flops: dict[int, int],
    reference: int,
    *,
    max_drop: float = 1.0,
    confidence: float = 0.95,
    calib_frac: float = 0.5,
    seed: int = 0,
    records_bn: Records | None = None,
    max_len: int = 3,
    extras: dict[str, Records] | None = None,
    names: dict[str, str] | None = None,
) -> CompareResult:
    """All policies on one split; every row has flops_drop_pct, acc_drop_pct and acc_drop_ci.

    ``names``: the run each row comes from (``run_name``), keyed "" for ``records`` and by
    label for ``extras``; given, every row carries it as ``run`` and the table shows it.
    """
    calib, held = calib_heldout_split(len(records.labels), calib_frac, seed)
    ref_held = records.correct(reference)[held]
    budget = {"max_drop": max_drop, "confidence": confidence, "calib_frac": calib_frac,
              "seed": seed}  # fmt: skip
    res = list(records.resolutions)
    rows = _fixed_rows(records, res, ref_held, held, flops, reference, "fixed")
    d = random_resolution(records, flops, reference, seed=seed, idx=held)
    rows.append(_row("random", f"uniform over {records.resolutions}", d))
    sel, cas, chosen = _choose(records, flops, reference, budget, max_len)
    rows += chosen
    sel_bn = cas_bn = use = None
    if records_bn is not None:
        # the reference stays un-recalibrated: drops are against the model as shipped
        rows += _fixed_rows(records_bn, res, ref_held, held, flops, reference, "recalibrated",
                            " + BN recal")  # fmt: skip
        merged, use = best_of(records, records_bn, calib, reference)
        sel_bn, cas_bn, chosen = _choose(merged, flops, reference, budget, max_len, suffix=" + BN")
        rows += chosen
    rows.append(_oracle_row(records, flops, reference, held, "oracle (uses labels)"))
    _name_rows(rows, 0, names, "")
    extra_sel: dict[str, SelectResult] = {}
    extra_cas: dict[str, CascadeResult] = {}
    for label, rec in (extras or {}).items():
        _check_run(label, rec, records, flops, reference)
        first = len(rows)
        # drops of another model (adapted, multi-resolution trained) are against its own reference
        others = [r for r in rec.resolutions if r != reference]
        rows += _fixed_rows(
            rec, others, rec.correct(reference)[held], held, flops, reference, label
        )
        extra_sel[label], extra_cas[label], chosen = _choose(
            rec, flops, reference, budget, max_len, prefix=f"{label} ", held=held
        )
        rows += chosen
        _name_rows(rows, first, names, label)
    return CompareResult(
        selected=sel, cascade=cas, selected_bn=sel_bn, cascade_bn=cas_bn, bn_used=use,
        extra_selected=extra_sel, extra_cascade=extra_cas, reference=reference,
        max_drop=max_drop, confidence=confidence, n_calib=int(len(calib)),
        n_heldout=int(len(held)), seed=seed, rows=rows,
    )  # fmt: skip


def _name_rows(rows: list[dict[str, Any]], first: int, names: dict[str, str] | None,
               key: str) -> None:  # fmt: skip
    """Rows from ``first`` on come from the run ``names[key]``."""
    if names is None:
        return
    if key not in names:
        raise ReswiseError(
            f"no run name for '{key or 'the main run'}' in names {sorted(names)}; name the main "
            'run (key "") and every label of extras'
        )
    for r in rows[first:]:
        r["run"] = names[key]


def compare_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per policy; a Run column (model and weights) when rows name theirs."""
    named = all("run" in r for r in rows)
    lines = [
        ("| Run " if named else "")
        + "| Policy | Detail | FLOPs Drop (%) | Accuracy Drop (%) | 95% CI | Top-1 (%) |",
        ("|-----" if named else "")
        + "|--------|--------|----------------|-------------------|--------|-----------|",
    ]
    for r in rows:
        lo, hi = r["acc_drop_ci"]
        cells = [r["policy"], r["detail"], f"{r['flops_drop_pct']:.2f}"]
        cells += [f"{r['acc_drop_pct']:.2f}", f"[{lo:.2f}, {hi:.2f}]", f"{r['top1']:.2f}"]
        lines.append("| " + " | ".join([r["run"], *cells] if named else cells) + " |")
    return "\n".join(lines)


def compare_plot(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    from ..records.report import plot

    series: dict[str, list[tuple[float, float, str]]] = {}
    for r in rows:
        # annotate the per-resolution series (fixed, recalibrated, adapted ...) with r
        per_res = re.fullmatch(r"\d+x\d+( \+ BN recal)?", r["detail"]) and " " not in r["policy"]
        label = r["detail"].split("x")[0] if per_res else ""
        series.setdefault(r["policy"], []).append((r["flops_drop_pct"], r["acc_drop_pct"], label))
    plot(series, path, title)
