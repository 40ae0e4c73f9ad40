"""`latency --policy` and `export --policy`: the shipped cascade, timed and exported."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ReswiseError
from .common import batch_sizes


def add_latency_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("a chosen cascade (instead of --model/--resolutions)")
    g.add_argument("--policy", metavar="POLICY.json", help="time this policy file's cascade")
    g.add_argument("--data-root", help="the images the policy's sweep ran on (held-out part used)")
    g.add_argument("--limit", type=int, help="time only the first N held-out images")


def add_export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        metavar="POLICY.json",
        help="export this policy file's cascade: one graph per stage into the folder --out",
    )


# flags of the one-resolution commands that a policy decides itself (model, weights, resolutions)
MODEL_FLAGS = ("model", "checkpoint", "pretrained", "random_init")
UNUSED_BY_EXPORT = (*MODEL_FLAGS, "resolution", "bake_resize_from")
UNUSED_BY_LATENCY = (*MODEL_FLAGS, "resolutions", "reference", "no_fast")


def refuse_unused(args: argparse.Namespace, names: tuple[str, ...], why: str = "") -> None:
    """Flags this path would parse and ignore are refused, not ignored: by default those that
    --policy decides itself; ``why`` says otherwise (``{flag}`` stands for the flag)."""
    # identity, not equality: a flag given as 0 is given (0 == False)
    given = [
        n for n in names if getattr(args, n, None) is not None and getattr(args, n) is not False
    ]
    if given:
        flag = f"--{given[0].replace('_', '-')}"
        raise ReswiseError(
            why.format(flag=flag)
            or f"{flag} is not used with --policy (the policy file names the model, its weights "
            f"and the stages' resolutions); drop {flag}, or run {args.command} without --policy"
        )


def require(args: argparse.Namespace, *names: str) -> None:
    """Flags a command needs when it is not given --policy."""
    for name in names:
        if getattr(args, name, None) is None:
            raise ReswiseError(f"give --{name.replace('_', '-')} (or --policy POLICY.json)")


def run_latency_policy(args: argparse.Namespace) -> dict[str, Any]:
    from ..ship.latency import (
        POLICY_BACKENDS,
        format_policy_latency,
        measure_policy_latency,
        stages_text,
    )

    refuse_unused(args, UNUSED_BY_LATENCY)
    if not args.data_root:
        raise ReswiseError("--policy needs --data-root DIR: the images its sweep ran on")
    backend = {"auto": POLICY_BACKENDS, "torch": ("eager",)}.get(args.backend, (args.backend,))
    if args.device != "cpu" and args.backend == "auto":
        backend = ("eager",)
    sizes = batch_sizes(args.batch_size)
    out = measure_policy_latency(
        args.policy,
        args.data_root,
        batch_sizes=sizes,
        backends=backend,
        device=args.device,
        threads=args.threads,
        limit=args.limit,
        warmup=args.warmup,
    )
    if not args.json:
        held = out["policy_heldout"]
        print(
            f"{out['model']} cascade {stages_text(out)} on {out['signal']} vs the fixed "
            f"reference (fp32), "
            f"{out['n_images']} held-out images, {out['device']}, {out['threads']} threads "
            f"(policy file: held-out top-1 {held['top1']:.2f} %, FLOPs saved "
            f"{held['flops_drop_pct']:.1f} %):"
        )
        print(format_policy_latency(out))
    return out


def check_size(args: argparse.Namespace) -> int:
    """How many images an export is checked on (``--check-size``, 256 when not given)."""
    size = 256 if args.check_size is None else args.check_size
    if size <= 0:
        raise ReswiseError(f"--check-size must be positive, got {size}")
    return size


def run_export_policy(args: argparse.Namespace) -> dict[str, Any]:
    from ..pipeline import export_policy_checked

    refuse_unused(args, UNUSED_BY_EXPORT)
    size = check_size(args)
    out = export_policy_checked(
        args.policy, args.out, check_root=args.check_root, check_size=size,
        opset=args.opset, require_check=args.check,
    )  # fmt: skip
    images, root = out.get("n_check_images"), out.get("check_root")
    if not args.json:
        print(
            f"wrote {', '.join(f['file'] for f in out['files'].values())} and policy.json to {out['out']}"
        )
        if out.get("check_skipped"):
            print(f"not checked on real images: {out['check_skipped']}")
        if images is not None:
            print(
                f"checked on {out['n_check_images']} images of {root}: resize identical to the "
                f"sweep's: {out['resize_exact']} (pixels differing per stage "
                f"{out['resize_mismatch_pixels']}); ONNX Runtime vs torch module: predictions "
                f"{out['prediction_agreement']:.4f}, resolutions {out['resolution_agreement']:.4f},"
                f" max |logit diff| {out['max_abs_logit_diff']:.2e}"
            )
            fused = out["fused"]
            print(
                f"fused graph (cascade.onnx) vs torch module: predictions "
                f"{fused['prediction_agreement']:.4f}, resolutions "
                f"{fused['resolution_agreement']:.4f}, max |logit diff| "
                f"{fused['max_abs_logit_diff']:.2e}"
            )
    return out
