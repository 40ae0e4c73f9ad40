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
from ..records import Records, Stage, SweepResult, stage, stage_name, unstage
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
from .policies.costs import Costs, chain_text, costs, stage_detail
from .policies.results import Result
from .policies.split import check_inputs, flops_drop_pct


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
    plain: Records, recal: Records, calib: np.ndarray, reference: Stage
) -> tuple[Records, dict[Stage, bool]]:
    """Per stage, the recalibrated pass only where it wins on the calibration images.

    The reference keeps its shipped statistics: drops are measured against the model as it is.
    Stages the recalibrated pass lacks (int8 and bf16 ones: it has fp32 rows only) keep the
    plain pass. The result is keyed by stage (:func:`reswise.records.stage`).
    """
    use = {}
    rows = []
    have = set(recal.keys)
    for k in plain.keys:
        wins = (
            k != reference
            and k in have
            and recal.correct(k)[calib].mean() > plain.correct(k)[calib].mean()
        )
        use[k] = bool(wins)
        rows.append((recal, recal.row(k)) if wins else (plain, plain.row(k)))
    pick = lambda f: np.stack([getattr(src, f)[i] for src, i in rows])  # noqa: E731
    merged = Records(list(plain.resolutions), plain.indices, plain.labels,
                     pick("topk_idx"), pick("topk_prob"), pick("entropy"),
                     plain.crop_pct, plain.precision)  # fmt: skip
    return merged, use


def _row(policy: str, detail: str, d: Result | dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One table row: what every policy reports, plus ``extra`` (resolution, stage shares); and
    ``time_saved_pct`` when times were measured, ``precision`` when ``extra`` names one."""
    row = {
        "policy": policy, "detail": detail, "flops_drop_pct": d["flops_drop_pct"],
        "acc_drop_pct": d["acc_drop_pct"], "acc_drop_ci": d["acc_drop_ci"],
        "top1": d["top1"], **{k: v for k, v in extra.items() if v is not None},
    }  # fmt: skip
    if d.get("time_saved_pct") is not None:
        row["time_saved_pct"] = d["time_saved_pct"]
    return row


def _fixed_rows(
    rec: Records,
    keys: list[Stage],
    ref_held: np.ndarray,
    held: np.ndarray,
    cost: Costs,
    policy: str,
    suffix: str = "",
) -> list[dict[str, Any]]:
    """Each of the stages ``keys`` of ``rec`` on the held-out images, drops against
    ``ref_held``."""
    rows = []
    for k in keys:
        d: dict[str, Any] = drop_summary(ref_held, rec.correct(k)[held])
        d["flops_drop_pct"] = flops_drop_pct(cost.flops[k], cost.flops, cost.reference)
        d.update(cost.per_stage(k))
        prec = None if rec.precision is None else unstage(k)[1]
        rows.append(_row(policy, f"{stage_detail(k)}{suffix}", d, precision=prec))
    return rows


def _oracle_row(
    rec: Records, reference: Stage, held: np.ndarray, policy: str, kw: dict[str, Any]
) -> dict[str, Any]:
    return _row(policy, "cheapest right resolution", oracle(rec, reference=reference, idx=held,
                                                             **kw))  # fmt: skip


def _choose(
    rec: Records,
    reference: Stage,
    budget: dict[str, Any],
    max_len: int,
    prefix: str = "",
    suffix: str = "",
    held: np.ndarray | None = None,
) -> tuple[SelectResult, CascadeResult, list[dict[str, Any]]]:
    """The selected stage and the cascade chosen from ``rec``, and their rows (then the oracle
    bound's on ``held`` when given); policies named ``{prefix}selected{suffix}`` etc.
    ``budget`` holds the policies' keywords: flops, objective, times and the budget itself."""
    sel = select_resolution(rec, reference=reference, **budget)
    cas = search_cascade(rec, reference=reference, **budget, signal="auto", max_len=max_len)
    name = stage_detail(stage(sel.resolution, sel.precision or "fp32"))
    keys = [stage(r, p) for r, p in zip(cas.chain, cas.precision or ["fp32"] * len(cas.chain))]
    rows = [
        _row(f"{prefix}selected{suffix}", name, sel, resolution=sel.resolution,
             precision=sel.precision),
        _row(f"{prefix}cascade{suffix}", f"{chain_text(keys)} on {cas.signal}" if cas.signal else f"{chain_text(keys)}, one stage", cas,
             stage_share_pct=cas.stage_share_pct, precision=cas.precision),
    ]  # fmt: skip
    if held is not None:
        kw = {k: budget[k] for k in ("flops", "objective", "times")}
        rows.append(_oracle_row(rec, reference, held, f"{prefix}oracle (uses labels)", kw))
    return sel, cas, rows


def _check_run(label: str, rec: Records, records: Records, flops: dict[Any, Any],
               ref: Stage) -> None:  # fmt: skip
    """Another run compared beside ``records``: the same images, every stage counted."""
    if not np.array_equal(rec.indices, records.indices) or not np.array_equal(
        rec.labels, records.labels
    ):
        raise ReswiseError(
            f"run '{label}' was evaluated on other images; compare needs the same set"
        )
    extra = [k for k in rec.keys if k not in flops and unstage(k)[0] not in flops]
    if extra:  # its rows would need FLOPs the --from run never counted
        raise ReswiseError(
            f"run '{label}' has {extra[0]}, which the --from run did not sweep (with the "
            "--resolutions given): sweep both at the same resolutions"
        )
    if ref not in rec.keys:
        raise ReswiseError(
            f"run '{label}' lacks the reference {ref}: every row's drop is measured against it; "
            "sweep it with the --from run's reference too"
        )


def compare(
    records: Records,
    flops: dict[Any, Any],
    reference: Stage,
    *,
    max_drop: float = 1.0,
    confidence: float = 0.95,
    calib_frac: float = 0.5,
    seed: int = 0,
    records_bn: Records | None = None,
    max_len: int = 3,
    extras: dict[str, Records] | None = None,
    names: dict[str, str] | None = None,
    objective: str = "flops",
    times: dict[Any, float] | None = None,
    timed_on: dict[str, Any] | None = None,
) -> CompareResult:
    """All policies on one split; every row has flops_drop_pct, acc_drop_pct and acc_drop_ci
    (and time_saved_pct with ``times``: ms per image per stage, which the extras share).

    ``names``: the run each row comes from (``run_name``), keyed "" for ``records`` and by
    label for ``extras``; given, every row carries it as ``run`` and the table shows it.
    ``objective``: what the policies minimise, "flops" or "time".
    """
    check_inputs(records, flops, reference)
    cost = costs(records, flops, reference, objective, times)
    calib, held = calib_heldout_split(len(records.labels), calib_frac, seed)
    ref_held = records.correct(reference)[held]
    budget = {"max_drop": max_drop, "confidence": confidence, "calib_frac": calib_frac,
              "seed": seed, "flops": flops, "objective": objective, "times": times}  # fmt: skip
    keys = list(records.keys)
    rows = _fixed_rows(records, keys, ref_held, held, cost, "fixed")
    d = random_resolution(records, flops, reference, seed=seed, idx=held, times=times)
    over = records.resolutions if records.precision is None else chain_text(keys)
    rows.append(_row("random", f"uniform over {over}", d))
    sel, cas, chosen = _choose(records, reference, budget, max_len)
    rows += chosen
    sel_bn = cas_bn = use = None
    if records_bn is not None:
        # the reference stays un-recalibrated: drops are against the model as shipped
        bn_keys = [k for k in keys if k in records_bn.keys]
        rows += _fixed_rows(records_bn, bn_keys, ref_held, held, cost, "recalibrated",
                            " + BN recal")  # fmt: skip
        merged, used = best_of(records, records_bn, calib, reference)
        use = {k if isinstance(k, int) else stage_name(k): v for k, v in used.items()}
        sel_bn, cas_bn, chosen = _choose(merged, reference, budget, max_len, suffix=" + BN")
        rows += chosen
    kw = {"flops": flops, "objective": objective, "times": times}
    rows.append(_oracle_row(records, reference, held, "oracle (uses labels)", kw))
    _name_rows(rows, 0, names, "")
    extra_sel: dict[str, SelectResult] = {}
    extra_cas: dict[str, CascadeResult] = {}
    for label, rec in (extras or {}).items():
        _check_run(label, rec, records, flops, reference)
        first = len(rows)
        # drops of another model (adapted, multi-resolution trained) are against its own reference
        others = [k for k in rec.keys if k != reference]
        other_cost = costs(rec, flops, reference, objective, times)
        rows += _fixed_rows(rec, others, rec.correct(reference)[held], held, other_cost, label)
        extra_sel[label], extra_cas[label], chosen = _choose(
            rec, reference, budget, max_len, prefix=f"{label} ", held=held
        )
        rows += chosen
        _name_rows(rows, first, names, label)
    return CompareResult(
        selected=sel, cascade=cas, selected_bn=sel_bn, cascade_bn=cas_bn, bn_used=use,
        extra_selected=extra_sel, extra_cascade=extra_cas, reference=reference,
        max_drop=max_drop, confidence=confidence, n_calib=int(len(calib)),
        n_heldout=int(len(held)), seed=seed, rows=rows, objective=cost.label,
        timed_on=timed_on if times is not None else None,
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
    """Markdown: one row per policy; a Run column (model and weights) when rows name theirs,
    a Time Saved column when they carry measured times."""
    named = all("run" in r for r in rows)
    timed = any("time_saved_pct" in r for r in rows)
    lines = [
        ("| Run " if named else "")
        + "| Policy | Detail | FLOPs Drop (%) | "
        + ("Time Saved (%) | " if timed else "")
        + "Accuracy Drop (%) | 95% CI | Top-1 (%) |",
        ("|-----" if named else "")
        + "|--------|--------|----------------|"
        + ("----------------|" if timed else "")
        + "-------------------|--------|-----------|",
    ]
    for r in rows:
        lo, hi = r["acc_drop_ci"]
        cells = [r["policy"], r["detail"], f"{r['flops_drop_pct']:.2f}"]
        if timed:
            t = r.get("time_saved_pct")
            cells.append("-" if t is None else f"{t:.2f}")
        cells += [f"{r['acc_drop_pct']:.2f}", f"[{lo:.2f}, {hi:.2f}]", f"{r['top1']:.2f}"]
        lines.append("| " + " | ".join([r["run"], *cells] if named else cells) + " |")
    return "\n".join(lines)


def compare_plot(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    from ..records.report import plot

    series: dict[str, list[tuple[float, float, str]]] = {}
    for r in rows:
        # annotate the per-stage series (fixed, recalibrated, adapted ...) with "24", "24/int8"
        m = re.fullmatch(r"(\d+)x\d+(/\w+)?( \+ BN recal)?", r["detail"])
        label = m.group(1) + (m.group(2) or "") if m and " " not in r["policy"] else ""
        series.setdefault(r["policy"], []).append((r["flops_drop_pct"], r["acc_drop_pct"], label))
    plot(series, path, title)
