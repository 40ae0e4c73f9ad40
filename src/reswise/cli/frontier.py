"""`reswise frontier`: which model at which resolution, from several runs on the same images."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ReswiseError
from .common import add_json


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "frontier",
        help="accuracy-vs-FLOPs Pareto front over (model, weights, resolution, crop) of runs",
    )
    p.add_argument(
        "--from",
        dest="from_runs",
        action="append",
        required=True,
        metavar="RUN_DIR",
        help="a finished sweep on the same images as the others (repeat for each model)",
    )
    p.add_argument(
        "--budget-flops",
        type=flops_value,
        help="answer 'which model at which resolution' within this many FLOPs (2 per MAC), "
        "e.g. 8e8 or 800M",
    )
    p.add_argument(
        "--objective",
        default="flops",
        choices=["flops", "time"],
        help="the cost axis: FLOPs, or time (ONNX Runtime ms per image the sweeps measured with "
        "--precision; every run timed on the same CPU)",
    )
    p.add_argument(
        "--budget-ms",
        type=float,
        help="with --objective time: the best point within this many ms per image",
    )
    p.add_argument("--out", default="runs/frontier", help="folder for frontier.md/.json/.png")
    add_json(p)
    p.set_defaults(func=run)


def flops_value(text: str) -> float:
    """'8e8', '800M', '0.8G' -> FLOPs."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:].upper(), 1.0)
    try:
        return float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number like 8e8 or 800M, got '{text}'"
        ) from None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from ..choose.frontier import pareto_front, write_frontier
    from ..records import SweepResult
    from ..records.report import dataset_label
    from ..records.rundir import check_writable

    check_writable(Path(args.out))  # before any work: not after the runs are read and compared
    runs = []
    for d in args.from_runs:
        r = SweepResult.load(d)
        r.directory = d
        runs.append(r)
    if len({r.directory for r in runs}) < len(runs):
        raise ReswiseError("a run is given twice with --from; give each run once")
    result = pareto_front(
        runs, budget_flops=args.budget_flops, objective=args.objective, budget_ms=args.budget_ms
    )
    title = f"{dataset_label(runs[0].dataset)}: {result.part}, n = {result.n}"
    files = write_frontier(result, args.out, title)
    if not args.json:
        print(result.table())
        print(f"\nwritten: {files['md']}, {files['png']}")
    return {**result.to_dict(), "files": files}
