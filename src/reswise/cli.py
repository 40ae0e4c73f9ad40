"""Command line: a thin shell over the Python API. Every command takes --json.

    reswise sweep --model cifar_resnet56 --dataset imagefolder \
        --data-root ../shared/datasets/cifar10-jpeg/test --resolutions 32,28,24,20,16,12

Bad input raises ReswiseError, printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ReswiseError

COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {}


def command(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        COMMANDS[name] = fn
        return fn

    return wrap


# ---------------------------------------------------------------- argument groups
def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", required=True, help="registry name (see `reswise models`) or timm:<name>"
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


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, help="cifar10 | imagefolder | imagenet")
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
        "--interpolation",
        help="bilinear (default, antialiased) | bicubic | nearest | nearest-exact | area",
    )
    g.add_argument("--no-antialias", action="store_true", help="plain bilinear/bicubic")
    g.add_argument("--crop-pct", type=float, help="imagenet policy: short side = round(r/crop_pct)")


def add_res_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--resolutions", required=required, help="comma-separated, e.g. 32,28,24")
    p.add_argument(
        "--reference", type=int, help="resolution drops are measured against (default: the largest)"
    )


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, help="default: 128 up to 64 px, else 32")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument(
        "--no-fast",
        action="store_true",
        help="skip BN folding and channels-last (results agree within 0.05 points)",
    )
    p.add_argument("--out", help="run directory (default runs/<model>_<data>)")
    p.add_argument("--seed", type=int, default=0, help="seed for --limit subsets and splits")
    p.add_argument("--no-progress", action="store_true")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reswise",
        description="What does a smaller input image save a trained CNN (FLOPs, time) and cost "
        "(accuracy)?",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list registered models and their weights")
    p.add_argument("--filter", default="*", help="wildcard, e.g. 'cifar_*'")
    add_json(p)

    p = sub.add_parser("flops", help="MACs, FLOPs, params and FLOPs drop per resolution")
    p.add_argument("--model", required=True)
    add_res_args(p)
    p.add_argument("--by-operator", action="store_true", help="add per-operator FLOPs")
    add_json(p)

    p = sub.add_parser("sweep", help="accuracy and FLOPs per resolution, one pass over the data")
    add_model_args(p)
    add_data_args(p)
    add_res_args(p)
    add_run_args(p)
    add_json(p)

    p = sub.add_parser("random", help="random resolution per image (from a sweep's records)")
    add_model_args(p)
    add_data_args(p)
    add_res_args(p)
    add_run_args(p)
    p.add_argument("--weights", help="probabilities per resolution, e.g. 0.5,0.25,0.25")
    p.add_argument("--from", dest="from_run", help="reuse a finished sweep's run directory")
    add_json(p)

    p = sub.add_parser("train", help="train or fine-tune a CIFAR-size model (resumable)")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--test-root", help="ImageFolder test set evaluated after each epoch")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (batch 128)")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-resolutions", help="multi-resolution training, e.g. 32,24,16")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="final state_dict (resume state beside it)")
    p.add_argument("--no-progress", action="store_true")
    add_json(p)
    for extra in EXTRA_PARSERS:
        extra(sub)
    return parser


EXTRA_PARSERS: list[Callable[[Any], None]] = []


# ---------------------------------------------------------------- shared loading
def load_model(args: argparse.Namespace, need_weights: bool = True) -> Any:
    from .models import create_model, model_info

    info = model_info(args.model)
    pretrained = getattr(args, "pretrained", None)
    if getattr(args, "random_init", False):
        pretrained = False
    elif pretrained is None and not getattr(args, "checkpoint", None) and need_weights:
        has = info.weights or info.family in ("torchvision", "efficientnet_lite", "timm")
        if not has:
            raise ReswiseError(
                f"model '{args.model}' has no pretrained weights here; pass --checkpoint FILE "
                "(or --random-init to evaluate untrained weights)"
            )
        pretrained = True
    return create_model(
        args.model, pretrained=pretrained or False, checkpoint=getattr(args, "checkpoint", None)
    )


def policy_for(args: argparse.Namespace, info: Any) -> Any:
    from .data import ResizePolicy

    kind = "crop" if args.dataset == "imagenet" or info.task == "imagenet" else "full"
    if args.dataset == "imagefolder" and info.task == "imagenet":
        kind = "crop"
    return ResizePolicy(
        kind,
        args.crop_pct if args.crop_pct is not None else info.crop_pct,
        args.interpolation or info.interpolation,
        antialias=not args.no_antialias,
    )


def load_data(args: argparse.Namespace) -> Any:
    from .data import load_dataset

    return load_dataset(
        args.dataset,
        args.data_root,
        split=args.split,
        limit=args.limit,
        on_corrupt=args.on_corrupt,
        seed=args.seed,
    )


def default_out(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    data = Path(args.data_root).name if args.data_root else args.dataset
    return Path("runs") / f"{args.model.replace(':', '_')}_{data}"


def run_sweep(args: argparse.Namespace) -> tuple[Any, Any]:
    from .data import parse_resolutions

    res = parse_resolutions(args.resolutions)
    lm = load_model(args)
    data = load_data(args)
    out = default_out(args)
    out.mkdir(parents=True, exist_ok=True)
    from . import distributed

    result = distributed.sweep(
        lm,
        data,
        res,
        args.reference,
        policy=policy_for(args, lm.info),
        batch_size=args.batch_size,
        fast=not args.no_fast,
        device=args.device,
        progress=not args.no_progress,
        checkpoint_path=out / "progress.npz",
    )
    return result, out


# ---------------------------------------------------------------- commands
@command("models")
def cmd_models(args: argparse.Namespace) -> dict[str, Any]:
    from .models import list_models, model_info

    rows = []
    for name in list_models(args.filter):
        info = model_info(name)
        rows.append(
            {
                "model": name,
                "task": info.task,
                "input_size": info.input_size,
                "mean": list(info.mean),
                "std": list(info.std),
                "crop_pct": info.crop_pct,
                "weights": [
                    {
                        "tag": w.tag,
                        "dataset": w.dataset,
                        "top1": w.top1,
                        "default": w.tag == info.default_weights,
                    }
                    for w in info.weights
                ],
            }
        )
    if not args.json:
        for r in rows:
            w = ", ".join(f"{x['tag']}{'*' if x['default'] else ''}" for x in r["weights"]) or "-"
            print(f"{r['model']:24s} {r['task']:9s} {r['input_size']:4d}  weights: {w}")
    return {"models": rows}


@command("flops")
def cmd_flops(args: argparse.Namespace) -> dict[str, Any]:
    from .data import parse_resolutions
    from .evaluate import check_resolutions
    from .flops import FlopAnalysis, flops_table
    from .models import create_model

    res = parse_resolutions(args.resolutions)
    lm = create_model(args.model, pretrained=False)
    reference = args.reference or max(res)
    check_resolutions(lm.info, [*res, reference])
    rows = flops_table(lm.model, res, reference)
    if args.by_operator:
        for r in rows:
            r["by_operator"] = FlopAnalysis(lm.model, r["resolution"]).by_operator()
    if not args.json:
        print(f"{args.model}: FLOPs from torch.utils.flop_counter (conv + matmul, 2 FLOPs/MAC)")
        print("| Resolution | MMACs | GFLOPs | Params (M) | FLOPs Drop (%) |")
        print("|------------|-------|--------|------------|----------------|")
        for r in rows:
            print(
                f"| {r['resolution']} x {r['resolution']} | {r['macs'] / 1e6:.2f} | "
                f"{r['flops'] / 1e9:.4f} | {r['params'] / 1e6:.3f} | {r['flops_drop_pct']:.2f} |"
            )
    return {"model": args.model, "reference": reference, "rows": rows}


@command("sweep")
def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from .report import conditions, seed_table, write_run

    result, out = run_sweep(args)
    if result is None:  # a non-zero rank of a distributed run
        return {}
    files = write_run(result, out)
    if not args.json:
        print(conditions(result))
        print(seed_table(result.rows))
        t = result.timings
        print(
            f"{t['total_s']:.1f} s in all, {t['forward_s']:.1f} s in resize + forward "
            f"({result.fast_path}); results in {out}/"
        )
    d = result.to_dict()
    d["files"] = files
    return d


@command("random")
def cmd_random(args: argparse.Namespace) -> dict[str, Any]:
    from .data import parse_resolutions
    from .policies.random_res import random_resolution
    from .report import load_run

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ReswiseError(
                f"--weights must be comma-separated numbers, got '{args.weights}'"
            ) from None
    if args.from_run:
        meta, records = load_run(args.from_run)
        reference = meta["reference"]
        flops = {r["resolution"]: r["flops"] for r in meta["rows"]}
        model, dataset = meta["model"], meta["dataset"]
    else:
        result, out = run_sweep(args)
        if result is None:
            return {}
        from .report import write_run

        write_run(result, out)
        records, reference = result.records, result.reference
        flops = {r["resolution"]: r["flops"] for r in result.rows}
        model, dataset = result.model, result.dataset
    wanted = parse_resolutions(args.resolutions)
    missing = [r for r in wanted if r not in records.resolutions]
    if missing:
        raise ReswiseError(
            f"resolution {missing[0]} is not in the sweep's records "
            f"({records.resolutions}); rerun the sweep with it"
        )
    out = random_resolution(
        records, flops, reference, seed=args.seed, weights=weights, choices=wanted
    )
    out.update({"model": model, "dataset": dataset, "reference": reference, "seed": args.seed})
    if not args.json:
        print(
            f"random resolution from {wanted} (seed {args.seed}) on {model} / {dataset}, "
            f"n={out['n']}: FLOPs drop {out['flops_drop_pct']:.2f} %, accuracy drop "
            f"{out['acc_drop_pct']:.2f} points (95% CI {out['acc_drop_ci'][0]:.2f} .. "
            f"{out['acc_drop_ci'][1]:.2f})"
        )
    return out


@command("train")
def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_dataset, parse_resolutions
    from .train import TrainConfig, train

    lm = load_model(args, need_weights=False)
    data = load_data(args)
    test = load_dataset("imagefolder", args.test_root) if args.test_root else None
    if args.epochs <= 0:
        raise ReswiseError(f"--epochs must be positive, got {args.epochs}")
    cfg = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        batch_size=args.batch_size,
        seed=args.seed,
        train_resolutions=tuple(parse_resolutions(args.train_resolutions))
        if args.train_resolutions
        else (),
        bf16=not args.fp32,
        init=lm.weights,
    )
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    return train(lm, data, cfg, args.out, test_data=test, progress=not args.no_progress, log=log)


# ---------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except ReswiseError as e:
        print(f"reswise: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reswise: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if getattr(args, "json", False) and result:
        print(json.dumps(result, default=_jsonable))
    return 0


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
