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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..pipeline import run_sweep
    from ..report import conditions, seed_table

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
        t = result.timings
        print(
            f"{t['total_s']:.1f} s in all, {t['eval_s']:.1f} s in resize + normalise + forward "
            f"({result.fast_path}); results in {result.directory}/"
        )
    d = result.to_dict()
    d["out"] = result.directory
    return d
