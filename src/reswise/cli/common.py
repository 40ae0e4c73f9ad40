"""Argument groups shared by several commands, and the one place flags become API calls' inputs."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..errors import ReswiseError


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", required=required, help="registry name (see `reswise models`) or timm:<name>"
    )
    g.add_argument("--checkpoint", help="state_dict file to load (weights_only=True)")
    g.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=None,
        metavar="TAG",
        help="load the model's default weights (or the weights TAG); default for "
        "evaluation commands when no --checkpoint is given",
    )
    g.add_argument("--random-init", action="store_true", help="evaluate untrained weights")


def crop_pct_value(text: str) -> float | str:
    """``--crop-pct``: a number, or ``auto`` (chosen per resolution, reswise.choose.crops)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or 'auto', got '{text}'") from None


def add_preprocess_args(p: argparse.ArgumentParser, auto_crop: bool = False) -> None:
    g = p.add_argument_group("preprocessing (default: the weights' own)")
    g.add_argument(
        "--interpolation",
        help="bilinear (default, antialiased) | bicubic | nearest | nearest-exact | area",
    )
    g.add_argument("--no-antialias", action="store_true", help="plain bilinear/bicubic")
    if not auto_crop:
        g.add_argument(
            "--crop-pct", type=float, help="imagenet policy: short side = round(r/crop_pct)"
        )
        return
    g.add_argument(
        "--crop-pct",
        type=crop_pct_value,
        help="imagenet policy: short side = round(r/crop_pct); 'auto': chosen per resolution "
        "on the calibration part of the --calib-frac/--seed split (one sweep per crop)",
    )
    g.add_argument(
        "--crop-grid",
        help="crops --crop-pct auto tries (default 0.65,0.75,0.875,1.0 plus the model's own)",
    )


def add_data_args(
    p: argparse.ArgumentParser, required: bool = True, auto_crop: bool = False
) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=required, help="cifar10 | imagefolder | imagenet")
    g.add_argument("--data-root", help="dataset folder (cifar10: downloaded there when absent)")
    g.add_argument("--split", default="test", help="cifar10 split: test | train")
    g.add_argument("--limit", type=int, help="evaluate a seeded random subset of N images")
    g.add_argument(
        "--on-corrupt",
        default="skip",
        choices=["skip", "error"],
        help="unreadable images: skip and count them (default) or stop",
    )
    g.add_argument(
        "--class-map",
        metavar="FILE",
        help="JSON {folder: model class name or index}, for folders whose names the model's "
        "classes do not carry",
    )
    add_preprocess_args(p, auto_crop)


def add_res_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--resolutions", required=required, help="comma-separated, e.g. 32,28,24")
    p.add_argument(
        "--reference", type=int, help="resolution drops are measured against (default: the largest)"
    )


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, help="default: 128 up to 64 px, else 32")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    add_backend(p)
    p.add_argument(
        "--no-fast",
        action="store_true",
        help="skip BN folding and channels-last (results agree within 0.05 points)",
    )
    p.add_argument("--out", help="run directory (default runs/<model>_<data>)")
    p.add_argument(
        "--precision",
        help="stages beside fp32, e.g. fp32,int8 (ONNX Runtime int8, calibrated on the calibration "
        "part of the --calib-frac/--seed split; bf16 where the machine has it); every stage is "
        "also timed with ONNX Runtime for --objective time. With --from RUN: the precisions to "
        "choose among",
    )
    p.add_argument(
        "--quant",
        default="auto",
        choices=["auto", "minmax", "percentile", "entropy"],
        help="int8 calibration: auto (each method, with and without the first and last layer in "
        "float, chosen per stage by agreement with fp32 on the calibration part) or one method",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --limit subsets and splits")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--save-every-s",
        type=float,
        default=30.0,
        help="seconds between progress saves (a killed run resumes from the last one)",
    )
    add_threads(p)


def add_backend(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument(
        "--backend",
        default=default,
        choices=["auto", "eager", "compile", "onnxruntime"],
        help="how the forward runs (default auto: the fastest on a probe batch per resolution, "
        "or the choice cached in ~/.cache/reswise)",
    )


def batch_sizes(text: str) -> list[int]:
    """``--batch-size 1,64`` of the timing commands."""
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise ReswiseError(f"--batch-size must be comma-separated integers, got '{text}'") from None


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        help="intra-op threads (default: the CPUs this process may use, affinity and cgroup "
        "quota counted)",
    )


def add_bn_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("BatchNorm recalibration")
    g.add_argument(
        "--recalibrate-bn",
        action="store_true",
        help="also evaluate with BN statistics re-estimated per resolution",
    )
    g.add_argument(
        "--calib-root",
        help="images for BN statistics, class folders or a flat folder (not the eval set)",
    )
    g.add_argument("--calib-size", type=int, default=2000, help="images used (default 2000)")
    g.add_argument(
        "--calib-split",
        action="store_true",
        help="BN statistics from the calibration part of the evaluation images' seeded split "
        "(labels unused; the held-out part is never seen)",
    )


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_sweep_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """Every flag of a sweep: `sweep` needs them, the choosing commands take them instead of --from."""
    add_model_args(p, required)
    add_data_args(p, required, auto_crop=True)
    add_res_args(p, required)
    add_run_args(p)
    add_bn_args(p)
    add_json(p)


def sweep_config(args: argparse.Namespace) -> Any:
    """The SweepConfig the flags describe (flag names are its field names)."""
    from ..pipeline import SweepConfig

    names = {f.name for f in dataclasses.fields(SweepConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names}
    kw.update(antialias=not args.no_antialias, fast=not args.no_fast, progress=not args.no_progress)
    return SweepConfig(**kw)


def records_source(args: argparse.Namespace) -> Any:
    """The run a choosing command works from: ``--from RUN`` or a fresh sweep from the flags."""
    from ..pipeline import load_run, run_sweep

    if args.from_run:
        run = load_run(args.from_run)
        check_from_flags(args, run)
        return run.restrict(parse_resolutions_or_none(args), args.reference)
    for need in ("model", "dataset", "resolutions"):
        if not getattr(args, need, None):
            raise ReswiseError(f"give --from RUN_DIR, or --{need} (and the other sweep flags)")
    return run_sweep(sweep_config(args))


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ReswiseError(f"{flag} must be comma-separated numbers, got '{text}'") from None


def model_from(args: argparse.Namespace, need_weights: bool = True) -> Any:
    """The model the --model/--checkpoint/--pretrained/--random-init flags name."""
    from ..pipeline import load_model

    return load_model(
        args.model,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        random_init=args.random_init,
        need_weights=need_weights,
    )


def pick(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Flags passed on under their own names."""
    return {n: getattr(args, n) for n in names}


def parse_resolutions_or_none(args: argparse.Namespace) -> list[int] | None:
    from ..data import parse_resolutions

    return parse_resolutions(args.resolutions) if args.resolutions else None


def check_from_flags(args: argparse.Namespace, run: Any) -> None:
    """Sweep flags given with --from: naming the run's own model/data is fine, anything else
    would be silently ignored, so it is refused."""
    from pathlib import Path

    facts = {"model": run.model, "dataset": run.meta.get("dataset_kind"), "data_root": run.dataset}
    for dest, flag, default in args.sweep_only:
        value = getattr(args, dest)
        if value == default:
            continue
        if dest in facts:
            have = facts[dest]
            same = have is None or (
                Path(value).resolve() == Path(have).resolve()
                if dest == "data_root"
                else value == have
            )
            if same:
                continue
            raise ReswiseError(
                f"{flag} {value} disagrees with {args.from_run}, which was made with {have}; "
                "drop it, or drop --from to sweep again"
            )
        raise ReswiseError(
            f"{flag} has no effect with --from RUN (the run's records were made with their own "
            "settings); drop it, or drop --from to sweep again"
        )
