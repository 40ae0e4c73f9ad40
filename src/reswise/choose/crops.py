"""``--crop-pct auto``: the centre crop chosen per resolution, on a calibration split (FixRes).

Lowering the resolution with the crop fixed shrinks the objects along with the image (the
train/test object-size discrepancy of Touvron et al. 2019); a tighter crop at low resolution
gives back the apparent object size the network was trained on, with no retraining.

How it is chosen, so the reported figures stay honest:

* one ordinary sweep per crop of a grid (the model's default always in it), each kept in
  ``<out>/crops/<tag>/`` so the choice can be audited;
* per resolution, a candidate replaces the default only when its calibration gain passes a
  one-sided exact McNemar test (``reswise.records.stats.mcnemar_upper``) at 95 % with a Bonferroni
  correction over the candidates; among those that pass, the best on calibration wins;
* only calibration labels are read to choose; the held-out part reports the chosen crop
  beside the default with the paired 95 % CI of the gain;
* the run's records at each resolution are the chosen crop's (``Records.crop_pct``), the
  chosen crop per resolution is ``run.meta["crop_pct_by_res"]`` ({"r": crop}), the split is in
  ``run.meta["crop_auto"]["split"]`` and a later ``--from`` with another split is refused.

Numpy only at module level: the choosing modules import :func:`check_crop_split`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import ReswiseError
from ..records import Records, SweepResult, summarize
from ..records.stats import mcnemar_upper, paired_drop_ci
from .policies.split import calib_heldout_split

DEFAULT_GRID = (0.65, 0.75, 0.875, 1.0)
CONFIDENCE = 0.95  # one-sided, family-wise over the candidates (Bonferroni)
SAME = 0.02  # a grid value this close to the default is the default (0.875 vs 240/272, 260/292)
CROPS_DIR = "crops"


def crop_grid(default: float, grid: list[float] | str | None = None) -> list[float]:
    """The crops tried: ``grid`` (default :data:`DEFAULT_GRID`) with the model's default in it."""
    if isinstance(grid, str):
        try:
            grid = [float(t) for t in grid.split(",") if t.strip()]
        except ValueError:
            raise ReswiseError(
                f"--crop-grid must be comma-separated numbers, got '{grid}'"
            ) from None
    values = list(DEFAULT_GRID if grid is None else grid)
    bad = [c for c in values if not 0.05 < c <= 1.0]
    if bad:
        raise ReswiseError(f"--crop-grid values must be in (0.05, 1], got {bad[0]}")
    others = [c for c in values if abs(c - default) > SAME]
    if not others:
        raise ReswiseError(
            f"--crop-grid holds no crop but the model's default {default:g}; give others, "
            "e.g. --crop-grid 0.65,0.75,1.0"
        )
    return sorted({float(default), *others})


def crop_tag(crop: float) -> str:
    return f"crop_{crop:.4f}"


def choose_crops(
    by_crop: dict[float, Records],
    default: float,
    *,
    calib_frac: float = 0.5,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[dict[str, Any]]:
    """Per resolution, the crop chosen on the calibration part and its held-out report.

    ``by_crop`` maps each crop to records of the same images at the same resolutions. Only the
    calibration part's labels decide; the held-out part is read afterwards, to report.
    """
    base = by_crop[default]
    calib, held = calib_heldout_split(len(base.labels), calib_frac, seed)
    others = [c for c in by_crop if c != default]
    # Bonferroni: the default is replaced when any of len(others) tests passes
    conf = 1.0 - (1.0 - confidence) / max(len(others), 1)
    out = []
    for r in base.resolutions:
        right = {c: rec.correct(r) for c, rec in by_crop.items()}
        calib_top1 = {c: 100.0 * float(right[c][calib].mean()) for c in by_crop}
        bounds = {}
        for c in others:
            # upper bound on (default - candidate) below 0: the candidate gains, one-sided
            bounds[c] = mcnemar_upper(right[default][calib], right[c][calib], conf)
        passed = [c for c in others if bounds[c] < 0.0]
        chosen = default
        if passed:
            chosen = max(passed, key=lambda c: (calib_top1[c], -abs(c - default)))
        gain_lo, gain_hi = paired_drop_ci(right[chosen][held], right[default][held])
        out.append(
            {
                "resolution": r,
                "crop_pct": chosen,
                "default_crop_pct": default,
                "calib_top1_by_crop": {f"{c:g}": v for c, v in calib_top1.items()},
                "calib_gain_lower_bound": {f"{c:g}": -b for c, b in bounds.items()},
                "heldout_top1_by_crop": {
                    f"{c:g}": 100.0 * float(right[c][held].mean()) for c in by_crop
                },
                "heldout_default_top1": 100.0 * float(right[default][held].mean()),
                "heldout_top1": 100.0 * float(right[chosen][held].mean()),
                "heldout_gain": 100.0
                * float(right[chosen][held].mean() - right[default][held].mean()),
                "heldout_gain_ci": [gain_lo, gain_hi],
            }
        )
    return out


def check_crop_split(run: SweepResult, calib_frac: float, seed: int) -> None:
    """Crops chosen on a split's calibration part are only fair on that split's held-out part."""
    split = (run.meta.get("crop_auto") or {}).get("split")
    if split and (split["calib_frac"] != calib_frac or split["seed"] != seed):
        raise ReswiseError(
            f"{run.directory or 'the run'}'s crops were chosen on the calibration part of the "
            f"split with --calib-frac {split['calib_frac']} --seed {split['seed']}; pass those "
            "values, so the held-out part stays unseen"
        )


def crop_pct_by_res(run: SweepResult) -> dict[int, float] | None:
    """The crop each resolution was evaluated with, when it varies (``--crop-pct auto``)."""
    found = run.meta.get("crop_pct_by_res")
    return None if found is None else {int(r): float(c) for r, c in found.items()}


def same_images(runs: dict[float, SweepResult]) -> SweepResult:
    first = next(iter(runs.values()))
    for c, run in runs.items():
        rec, ref = run.records, first.records
        if (
            run.meta.get("images_fingerprint") != first.meta.get("images_fingerprint")
            or rec.resolutions != ref.resolutions
            or not np.array_equal(rec.indices, ref.indices)
            or not np.array_equal(rec.labels, ref.labels)
        ):
            raise ReswiseError(
                f"the sweep at crop {c:g} saw other images or resolutions than the others; "
                "delete the run folder and sweep again"
            )
    return first


def assemble(
    runs: dict[float, SweepResult],
    default: float,
    choice: list[dict[str, Any]],
    split: dict[str, Any],
) -> SweepResult:
    """One run whose records at each resolution come from the chosen crop's sweep."""
    base = runs[default]
    same_images(runs)
    rec = base.records
    chosen = [row["crop_pct"] for row in choice]
    rows_of = [runs[c].records.row(r) for c, r in zip(chosen, rec.resolutions)]
    records = Records(
        list(rec.resolutions),
        rec.indices,
        rec.labels,
        np.stack([runs[c].records.topk_idx[i] for c, i in zip(chosen, rows_of)]),
        np.stack([runs[c].records.topk_prob[i] for c, i in zip(chosen, rows_of)]),
        np.stack([runs[c].records.entropy[i] for c, i in zip(chosen, rows_of)]),
        np.asarray(chosen, np.float64),
    )
    seconds = np.array(
        [runs[c].timings["eval_s_by_res"][i] for c, i in zip(chosen, rows_of)], np.float64
    )
    rows = summarize(records, base.reference, base.rows, seconds)
    for row, old, c in zip(rows, base.rows, chosen):
        row["crop_pct"] = c
        row.update({k: v for k, v in old.items() if k.startswith("latency")})
    by_res = {str(r): c for r, c in zip(rec.resolutions, chosen)}
    policy = base.policy.replace(f"round(r / {default})", "round(r / crop_pct(r))")
    meta = dict(base.meta)
    meta["crop_pct_by_res"] = by_res
    meta["crop_auto"] = {
        "grid": sorted(runs),
        "default": default,
        "split": split,
        "test": f"exact McNemar, one-sided, {CONFIDENCE:.0%} family-wise (Bonferroni)",
        "runs": {f"{c:g}": f"{CROPS_DIR}/{crop_tag(c)}" for c in runs},
        "per_resolution": choice,
    }
    timings = {
        "total_s": sum(run.timings["total_s"] for run in runs.values()),
        "eval_s": float(seconds.sum()),
        "eval_s_by_res": [float(s) for s in seconds],
    }
    return dataclasses.replace(
        base,
        policy=f"{policy}; crop_pct per resolution chosen on the calibration part: {by_res}",
        rows=rows,
        records=records,
        timings=timings,
        meta=meta,
        bn=None,
    )


def crop_table(run: SweepResult) -> str:
    """Held-out top-1 of the default crop and of the chosen one, with the gain's paired CI."""
    auto = run.meta["crop_auto"]
    split = auto["split"]
    first = auto["per_resolution"][0]
    n_held = split["n"] - int(round(split["n"] * split["calib_frac"]))
    crops = list(first["heldout_top1_by_crop"])
    lines = [
        f"crop per resolution chosen on the calibration part ({split['calib_frac']:.0%}, seed "
        f"{split['seed']}; {auto['test']}); held-out n = {n_held}, gain = chosen - default "
        f"({auto['default']:g}) with its paired 95% CI:",
        "",
        "| Resolution | chosen crop | default top-1 (%) | chosen top-1 (%) | gain (points) | "
        "95% CI of gain | " + " | ".join(f"top-1 at {c} (%)" for c in crops) + " |",
        "|---:|---:|---:|---:|---:|---|" + "---:|" * len(crops),
    ]
    for row in auto["per_resolution"]:
        lo, hi = row["heldout_gain_ci"]
        cells = " | ".join(f"{row['heldout_top1_by_crop'][c]:.1f}" for c in crops)
        lines.append(
            f"| {row['resolution']} | {row['crop_pct']:g} | {row['heldout_default_top1']:.1f} | "
            f"{row['heldout_top1']:.1f} | {row['heldout_gain']:+.1f} | [{lo:+.1f}, {hi:+.1f}] | "
            f"{cells} |"
        )
    return "\n".join(lines)
