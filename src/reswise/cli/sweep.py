"""`reswise sweep`: accuracy, FLOPs and time per resolution, one pass over the data."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_sweep_args, sweep_config


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sweep", help="accuracy and FLOPs per resolution, one pass over the data")
    add_sweep_args(p)
    p.add_argument(
        "--latency",
        action="store_true",
        help="add measured batch-1 latency per resolution (median of 30 runs)",
    )
    p.add_argument(
        "--calib-frac",
        type=float,
        default=0.5,
        help="share of the images in the calibration part of the --seed split (--calib-split, "
        "--crop-pct auto); the rest is held out, as in the choosing commands",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..pipeline import run_sweep
    from ..records.report import conditions, seed_table

    result = run_sweep(sweep_config(args))
    if result is None:  # a non-zero rank of a distributed run
        return {}
    if not args.json:
        print(conditions(result))
        print(seed_table(result.rows))
        if result.bn:
            print(
                f"with BN statistics re-estimated per resolution on {result.bn.calib_size} "
                f"images of {result.bn.calib_root}:"
            )
            print(seed_table(result.bn.rows))
        if result.meta.get("crop_auto"):
            from ..choose.crops import crop_table

            print(crop_table(result))
        t = result.timings
        used = result.meta.get("backend_by_res", {})
        backends = ", ".join(f"{r}: {b}" for r, b in used.items())
        print(
            f"{t['total_s']:.1f} s in all, {t['eval_s']:.1f} s in resize + normalise + forward "
            f"({result.fast_path}; backend per resolution {backends or 'eager'}); results in "
            f"{result.directory}/"
        )
    d = result.to_dict()
    d["out"] = result.directory
    return d
