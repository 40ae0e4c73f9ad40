"""`latency` and `export`: how fast a resolution runs, and the file that ships it."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ReswiseError
from . import ship
from .common import (
    add_backend,
    add_json,
    add_model_args,
    add_threads,
    batch_sizes,
    model_from,
    pick,
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("latency", help="measured latency per resolution beside FLOPs drop")
    add_model_args(p, required=False)
    p.add_argument("--resolutions")
    ship.add_latency_flags(p)
    p.add_argument("--reference", type=int)
    p.add_argument("--batch-size", default="1", help="comma-separated, e.g. 1,32")
    p.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    add_backend(p)
    p.add_argument(
        "--runtime",
        dest="backend",
        choices=["torch", "onnxruntime"],
        help="old name of --backend (torch = eager)",
    )
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--no-fast", action="store_true", help="no BN folding / channels-last")
    add_json(p)
    p.set_defaults(func=run_latency)

    p = sub.add_parser("export", help="ONNX export at a chosen resolution, checked against PyTorch")
    add_model_args(p, required=False)
    p.add_argument("--resolution", type=int)
    ship.add_export_flags(p)
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", required=True, help="the .onnx file")
    p.add_argument(
        "--bake-resize-from",
        type=int,
        metavar="S",
        help="the graph takes S x S images and resizes them itself",
    )
    p.add_argument(
        "--check-root",
        help="real images for the check: class folders or a flat folder (labels unused)",
    )
    p.add_argument("--check-size", type=int, help="images used for the check (default 256 of them)")
    p.add_argument(
        "--check",
        action="store_true",
        help="fail unless the check runs on real images (--policy: the policy's own, or "
        "--check-root; one resolution: --check-root)",
    )
    p.add_argument("--opset", type=int, default=17)
    add_threads(p)
    add_json(p)
    p.set_defaults(func=run_export)


def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    from ..data import parse_resolutions
    from ..measure.latency import format_latency_table, measure_latency

    if args.policy:
        return ship.run_latency_policy(args)
    ship.require(args, "model", "resolutions")
    ship.refuse_unused(  # they pick the policy's held-out images
        args,
        ("data_root", "limit"),
        "{flag} is for --policy (the images a chosen cascade is timed on); timing --model at "
        "--resolutions uses no image: drop {flag}",
    )
    sizes = batch_sizes(args.batch_size)
    # timing does not depend on the weights' values
    lm = model_from(args, need_weights=False)
    kw = pick(args, "threads", "device", "backend", "warmup", "repeats", "reference")
    res = parse_resolutions(args.resolutions)
    rows = measure_latency(lm, res, sizes, fast=not args.no_fast, **kw)
    if not args.json:
        print(
            f"{lm.info.name} (backend {args.backend}, {args.device}), median of {args.repeats} timed "
            f"runs after {args.warmup} warm-up runs:"
        )
        print(format_latency_table(rows))
    return {"model": lm.info.name, "backend": args.backend, "device": args.device, "rows": rows}


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    from ..pipeline import export_checked

    if args.policy:
        return ship.run_export_policy(args)
    ship.require(args, "model", "resolution")
    if args.check and not args.check_root:
        raise ReswiseError(
            "--check needs --check-root DIR: without it the graph is checked on random noise, "
            "not on real images"
        )
    size = ship.check_size(args)
    if args.check_size is not None and not args.check_root:
        raise ReswiseError(
            "--check-size is the number of --check-root images the check uses: add "
            "--check-root DIR or drop --check-size"
        )
    lm = model_from(args)
    kw = pick(args, "bake_resize_from", "check_root", "opset")
    kw.update(check_size=size)
    out = export_checked(lm, args.resolution, args.out, **kw)
    if not args.json:
        print(
            f"wrote {out['out']} ({out['bytes']} bytes, sha256 {out['sha256'][:16]}…) at "
            f"{args.resolution}x{args.resolution}; ONNX Runtime vs PyTorch on {out['n_images']} "
            f"{out['check_data']}: max |logit diff| {out['max_abs_diff']:.2e}, top-1 agreement "
            f"{out['top1_agreement']:.4f}"
        )
    return out
