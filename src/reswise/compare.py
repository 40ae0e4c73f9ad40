"""One comparison of every way to choose the resolution, all reported on the same held-out images.

Rows: fixed resolutions, random resolution, the selected resolution, BN-recalibrated fixed
resolutions and selection, the confidence cascade (plain and over recalibrated passes) and the
oracle bound. Everything that chooses, chooses on the calibration part of the seeded split.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ReswiseError
from .evaluate import Records
from .policies import (
    calib_heldout_split,
    oracle,
    random_resolution,
    search_cascade,
    select_resolution,
)
from .policies.split import flops_drop_pct
from .stats import drop_summary


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


def compare(
    records: Records,
    flops: dict[int, int],
    reference: int,
    max_drop: float = 1.0,
    confidence: float = 0.95,
    calib_frac: float = 0.5,
    seed: int = 0,
    records_bn: Records | None = None,
    max_len: int = 3,
    extras: dict[str, Records] | None = None,
) -> dict[str, Any]:
    """All policies on one split; every row has flops_drop_pct, acc_drop_pct and acc_drop_ci."""
    calib, held = calib_heldout_split(len(records.labels), calib_frac, seed)
    ref_held = records.correct(reference)[held]
    rows: list[dict[str, Any]] = []

    def add(policy: str, detail: str, d: dict[str, Any], **extra: Any) -> None:
        rows.append({
            "policy": policy, "detail": detail, "flops_drop_pct": d["flops_drop_pct"],
            "acc_drop_pct": d["acc_drop_pct"], "acc_drop_ci": d["acc_drop_ci"],
            "top1": d["top1"], **extra,
        })  # fmt: skip

    for r in records.resolutions:
        d = drop_summary(ref_held, records.correct(r)[held])
        add(
            "fixed", f"{r}x{r}", {**d, "flops_drop_pct": flops_drop_pct(flops[r], flops, reference)}
        )
    d = random_resolution(records, flops, reference, seed=seed, idx=held)
    add("random", f"uniform over {records.resolutions}", d)
    sel = select_resolution(records, flops, reference, max_drop, confidence, calib_frac, seed)
    add("selected", f"{sel['resolution']}x{sel['resolution']}", sel, resolution=sel["resolution"])
    cas = search_cascade(records, flops, reference, max_drop, confidence, "auto", calib_frac,
                         seed, max_len)  # fmt: skip
    add(
        "cascade", f"{cas['chain']} on {cas['signal']}", cas, stage_share_pct=cas["stage_share_pct"]
    )
    out: dict[str, Any] = {"selected": sel, "cascade": cas}
    if records_bn is not None:
        for r in records.resolutions:
            # the reference stays un-recalibrated: drops are against the model as shipped
            d = drop_summary(ref_held, records_bn.correct(r)[held])
            add("recalibrated", f"{r}x{r} + BN recal",
                {**d, "flops_drop_pct": flops_drop_pct(flops[r], flops, reference)})  # fmt: skip
        merged, use = best_of(records, records_bn, calib, reference)
        sel_bn = select_resolution(merged, flops, reference, max_drop, confidence, calib_frac, seed)
        add("selected + BN", f"{sel_bn['resolution']}x{sel_bn['resolution']}", sel_bn,
            resolution=sel_bn["resolution"])  # fmt: skip
        cas_bn = search_cascade(merged, flops, reference, max_drop, confidence, "auto",
                                calib_frac, seed, max_len)  # fmt: skip
        add("cascade + BN", f"{cas_bn['chain']} on {cas_bn['signal']}", cas_bn,
            stage_share_pct=cas_bn["stage_share_pct"])  # fmt: skip
        out.update({"selected_bn": sel_bn, "cascade_bn": cas_bn, "bn_used": use})
    orc = oracle(records, flops, reference, idx=held)
    add("oracle (uses labels)", "cheapest right resolution", orc)
    for label, rec in (extras or {}).items():
        if not np.array_equal(rec.indices, records.indices) or not np.array_equal(
            rec.labels, records.labels
        ):
            raise ReswiseError(
                f"run '{label}' was evaluated on other images; compare needs the same set"
            )
        missing = [r for r in rec.resolutions if r not in flops]
        if missing or reference not in rec.resolutions:
            raise ReswiseError(f"run '{label}' lacks resolution {missing[:1] or [reference]}")
        # drops of another model (adapted, multi-resolution trained) are against its own reference
        ref_x = rec.correct(reference)[held]
        for r in rec.resolutions:
            if r != reference:
                d = drop_summary(ref_x, rec.correct(r)[held])
                add(label, f"{r}x{r}",
                    {**d, "flops_drop_pct": flops_drop_pct(flops[r], flops, reference)})  # fmt: skip
        sel_x = select_resolution(rec, flops, reference, max_drop, confidence, calib_frac, seed)
        add(f"{label} selected", f"{sel_x['resolution']}x{sel_x['resolution']}", sel_x,
            resolution=sel_x["resolution"])  # fmt: skip
        cas_x = search_cascade(rec, flops, reference, max_drop, confidence, "auto", calib_frac,
                               seed, max_len)  # fmt: skip
        add(f"{label} cascade", f"{cas_x['chain']} on {cas_x['signal']}", cas_x,
            stage_share_pct=cas_x["stage_share_pct"])  # fmt: skip
        add(f"{label} oracle (uses labels)", "cheapest right resolution",
            oracle(rec, flops, reference, idx=held))  # fmt: skip
        out[f"{label}_selected"], out[f"{label}_cascade"] = sel_x, cas_x
    out.update({
        "reference": reference, "max_drop": max_drop, "confidence": confidence,
        "n_calib": int(len(calib)), "n_heldout": int(len(held)), "seed": seed, "rows": rows,
    })  # fmt: skip
    return out


def compare_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| Policy | Detail | FLOPs Drop (%) | Accuracy Drop (%) | 95% CI | Top-1 (%) |",
        "|--------|--------|----------------|-------------------|--------|-----------|",
    ]
    for r in rows:
        lo, hi = r["acc_drop_ci"]
        lines.append(f"| {r['policy']} | {r['detail']} | {r['flops_drop_pct']:.2f} | "
                     f"{r['acc_drop_pct']:.2f} | [{lo:.2f}, {hi:.2f}] | {r['top1']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def compare_plot(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    from .report import plot

    series: dict[str, list[tuple[float, float, str]]] = {}
    for r in rows:
        # annotate the per-resolution series (fixed, recalibrated, adapted ...) with r
        per_res = re.fullmatch(r"\d+x\d+( \+ BN recal)?", r["detail"]) and " " not in r["policy"]
        label = r["detail"].split("x")[0] if per_res else ""
        series.setdefault(r["policy"], []).append((r["flops_drop_pct"], r["acc_drop_pct"], label))
    plot(series, path, title)
