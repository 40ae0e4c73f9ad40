"""`models`, `flops`, `recalibrate`, `adapt`, `train`, `reproduce`: commands about the model itself."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ReswiseError
from .common import (
    add_data_args,
    add_json,
    add_model_args,
    add_preprocess_args,
    add_res_args,
    add_threads,
    model_from,
    pick,
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("models", help="list registered models and their weights")
    p.add_argument("--filter", default="*", help="wildcard, e.g. 'cifar_*'")
    add_json(p)
    p.set_defaults(func=run_models)

    p = sub.add_parser("flops", help="MACs, FLOPs, params and FLOPs drop per resolution")
    p.add_argument("--model", required=True)
    add_res_args(p)
    p.add_argument("--by-operator", action="store_true", help="add per-operator FLOPs")
    add_json(p)
    p.set_defaults(func=run_flops)

    p = sub.add_parser("recalibrate", help="save a checkpoint with BN statistics per resolution")
    add_model_args(p)
    p.add_argument("--resolutions", required=True)
    p.add_argument(
        "--calib-root",
        required=True,
        help="images, class folders or a flat folder (not the eval set)",
    )
    p.add_argument("--calib-size", type=int, default=2000)
    add_preprocess_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint file to write")
    add_threads(p)
    add_json(p)
    p.set_defaults(func=run_recalibrate)

    p = sub.add_parser("adapt", help="per-resolution adapters: BN + classifier tuned at each r")
    add_model_args(p)
    p.add_argument("--resolutions", required=True)
    p.add_argument("--train-root", required=True, help="labeled training images (not the eval set)")
    p.add_argument("--steps", type=int, default=400, help="SGD steps per resolution")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint: backbone + one adapter per resolution")
    add_threads(p)
    add_json(p)
    p.set_defaults(func=run_adapt)

    _add_train(sub)

    p = sub.add_parser("reproduce", help="the study's tables beside reswise's measurements")
    p.add_argument(
        "--data-root",
        help="CIFAR-10 test images (ImageFolder); default $RESWISE_SHARED/datasets/"
        "cifar10-jpeg/test, with RESWISE_SHARED defaulting to the checkout's sibling shared/",
    )
    p.add_argument("--limit", type=int)
    add_threads(p)
    add_json(p)
    p.set_defaults(func=run_reproduce)


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model on an image folder, at one or several resolutions "
        "(resumable, torchrun-able; a new head when the folders are a new task)",
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--test-root", help="test set with class folders, scored after each epoch")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (batch 128)")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-resolutions", help="multi-resolution training, e.g. 32,24,16")
    p.add_argument(
        "--shared-bn",
        action="store_true",
        help="multi-resolution training with one BN set (default: private BN per resolution)",
    )
    p.add_argument(
        "--distill",
        action="store_true",
        help="smaller resolutions also learn the largest resolution's predictions",
    )
    p.add_argument(
        "--largest-weight",
        type=float,
        default=0.0,
        help="multi-resolution: share of the loss on the largest resolution, the rest split "
        "evenly (default 0: all equal)",
    )
    p.add_argument(
        "--sandwich-k",
        default="1",
        help="multi-resolution: per step the largest and smallest resolution plus K sampled from "
        "those between (default 1); 'all': every resolution every step",
    )
    p.add_argument(
        "--specialists",
        help="low-resolution specialists instead of training the model: one copy per "
        "resolution (e.g. 24,20,16), each distilled from the model at its native resolution on "
        "the same augmented images; the model stays as it is, labels are not needed (a flat "
        "folder of images works)",
    )
    p.add_argument(
        "--labels",
        action="store_true",
        help="specialists: also learn the folder labels (0.5 x KL + 0.5 x cross-entropy)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="specialists: softmax temperature of the distillation (default 1)",
    )
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    prec.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast where the device has it, also for families it is measured slower "
        "for (default: on, except EfficientNet-Lite)",
    )
    p.add_argument(
        "--no-channels-last",
        action="store_true",
        help="NCHW tensors (faster for depthwise-heavy nets such as MobileNetV2 here)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="final state_dict (resume state beside it)")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (a CUDA GPU when one is visible, else the CPU) | cpu | cuda",
    )
    p.add_argument("--no-progress", action="store_true")
    add_threads(p)
    add_json(p)
    p.set_defaults(func=run_train)


def _log(args: argparse.Namespace) -> Any:
    # with --json stdout is the one JSON object; flush: training runs for hours under nohup
    stream = sys.stderr if args.json else sys.stdout
    return lambda m: print(m, file=stream, flush=True)


def run_models(args: argparse.Namespace) -> dict[str, Any]:
    from ..models import list_models, model_info
    from ..models._registry import FETCH_OWN_WEIGHTS

    rows = []
    for name in list_models(args.filter):
        info = model_info(name)
        weights = [
            {
                "tag": w.tag,
                "dataset": w.dataset,
                "top1": w.top1,
                "input_size": w.input_size or info.input_size,  # where these weights were trained
                "crop_pct": w.crop_pct or info.crop_pct,
                "default": w.tag == info.default_weights,
            }
            for w in info.weights
        ]
        own = info.family in FETCH_OWN_WEIGHTS  # their ImageNet weights: bare --pretrained
        rows.append(
            {
                "model": name,
                "own_imagenet_weights": own,
                "task": info.task,
                "input_size": info.input_size,
                "mean": list(info.mean),
                "std": list(info.std),
                "crop_pct": info.crop_pct,
                "weights": weights,
            }
        )
    if not args.json:
        if not rows:  # an empty list looks like a broken install
            print(f"no registered model matches '{args.filter}'; `reswise models` lists them all")
        for r in rows:
            tags = [f"{x['tag']}{'*' if x['default'] else ''}" for x in r["weights"]]
            w = ", ".join(["ImageNet* (bare --pretrained)"] * r["own_imagenet_weights"] + tags)
            w = w or "-"
            print(f"{r['model']:24s} {r['task']:9s} {r['input_size']:4d}  weights: {w}")
    return {"models": rows}


def run_flops(args: argparse.Namespace) -> dict[str, Any]:
    from ..pipeline import flops_report

    out = flops_report(
        args.model, args.resolutions, reference=args.reference, by_operator=args.by_operator
    )
    if not args.json:
        print(f"{args.model}: FLOPs from torch.utils.flop_counter (conv + matmul, 2 FLOPs/MAC)")
        print("| Resolution | MMACs | GFLOPs | Params (M) | FLOPs Drop (%) |")
        print("|------------|-------|--------|------------|----------------|")
        for r in out["rows"]:
            print(
                f"| {r['resolution']} x {r['resolution']} | {r['macs'] / 1e6:.2f} | "
                f"{r['flops'] / 1e9:.4f} | {r['params'] / 1e6:.3f} | "
                f"{r['flops_drop_pct']:.2f} |"
            )
        if args.by_operator:
            _print_by_operator(out["rows"])
    return out


def _print_by_operator(rows: list[dict[str, Any]]) -> None:
    ops = sorted({op for r in rows for op in r["by_operator"]})
    print("\nFLOPs by operator (MFLOPs)")
    print(
        "| Operator | " + " | ".join(f"{r['resolution']} x {r['resolution']}" for r in rows) + " |"
    )
    print("|---|" + "---:|" * len(rows))
    for op in ops:
        cells = " | ".join(f"{r['by_operator'].get(op, 0) / 1e6:.3f}" for r in rows)
        print(f"| {op} | {cells} |")


def run_recalibrate(args: argparse.Namespace) -> dict[str, Any]:
    from ..pipeline import recalibrate_checkpoint
    from ..pipeline.sweep import refuse_unused_crop

    lm = model_from(args)
    refuse_unused_crop(lm.info.name, args.crop_pct, lm.info.task)
    policy = lm.info.eval_policy(
        crop_pct=args.crop_pct, interpolation=args.interpolation, antialias=not args.no_antialias
    )
    kw = pick(args, "calib_size", "seed")
    out = recalibrate_checkpoint(
        lm, args.calib_root, args.resolutions, args.out, policy=policy, **kw
    )
    if not args.json:
        print(
            f"wrote {args.out}: {lm.info.name} with BN statistics for {out['resolutions']} "
            f"from {out['calib_size']} images of {args.calib_root}"
        )
    return _say_carried(out, args)


def run_adapt(args: argparse.Namespace) -> dict[str, Any]:
    from ..pipeline import adapt_checkpoint

    lm = model_from(args)
    kw = pick(args, "steps", "batch_size", "lr", "seed")
    out = adapt_checkpoint(lm, args.train_root, args.resolutions, args.out, log=_log(args), **kw)
    if not args.json:
        print(
            f"wrote {args.out}: adapters for {out['resolutions']}, each "
            f"{out['adapter_params']} parameters ({out['adapter_bytes']} bytes) beside a "
            f"{out['model_params']}-parameter model ({out['model_bytes']} bytes)"
        )
    return _say_carried(out, args)


def _say_carried(out: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Say what became of the per-resolution state the weights carried."""
    replaced = ", ".join(f"{kind} at {r}" for r, kind in out["replaced"].items())
    if not args.json and (out["kept"] or replaced):
        print(f"  it keeps the weights' own state at {out['kept']}" + (
            f" and replaces the weights' {replaced}" if replaced else ""))  # fmt: skip
    return out


def _count(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ReswiseError(f"{flag} takes a whole number or 'all', got '{text}'") from None


def train_config(args: argparse.Namespace, init: str, lm_family: str = "") -> Any:
    """The TrainConfig the train flags ask for (``init``: where the starting weights came from;
    ``lm_family``: the model's family, which decides the bf16 default)."""
    from ..data import parse_resolutions
    from ..finetune.autocast import bf16_pays
    from ..finetune.train import TrainConfig

    res = args.train_resolutions
    same = pick(args, "epochs", "lr", "warmup_epochs", "label_smoothing", "batch_size", "seed")
    return TrainConfig(
        **same,
        # "" is a flag given empty, not a flag left out: refused, never ordinary training
        train_resolutions=tuple(parse_resolutions(res, "--train-resolutions"))
        if res is not None
        else (),
        bf16=args.bf16 or (not args.fp32 and bf16_pays(lm_family)),
        channels_last=not args.no_channels_last,
        private_bn=not args.shared_bn,
        init=init,
        sandwich_k=None if args.sandwich_k == "all" else _count(args.sandwich_k, "--sandwich-k"),
        specialists=tuple(parse_resolutions(args.specialists, "--specialists"))
        if args.specialists is not None
        else (),
        specialist_labels=args.labels,
        **pick(args, "distill", "largest_weight", "temperature"),
    )


def _data_flags(args: argparse.Namespace) -> list[str]:
    """The data flags as given, for the model card's command."""
    flags = ["--dataset", args.dataset] + (
        ["--data-root", args.data_root] if args.data_root else []
    )
    if args.dataset == "cifar10":
        flags += ["--split", args.split]
    flags += ["--limit", str(args.limit)] if args.limit else []
    # the held-out crop (1.0: whole image) decides the card's figures
    return flags + (["--crop-pct", str(args.crop_pct)] if args.crop_pct is not None else [])


def _with_crop(info: Any, crop: float) -> Any:
    import dataclasses

    from ..pipeline.sweep import refuse_unused_crop

    if not 0.0 < crop <= 1.0:
        raise ReswiseError(f"--crop-pct must be in (0, 1], got {crop}")
    refuse_unused_crop(info.name, crop, info.task)
    return dataclasses.replace(info, crop_pct=float(crop))


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    from ..data import load_dataset
    from ..finetune.checks import preflight
    from ..finetune.train import train
    from ..measure.distributed import world
    from ..measure.inference import resolve_device
    from ..pipeline import load_data

    device = resolve_device(args.device)  # before the data: a wrong flag fails in a second
    lm = model_from(args, need_weights=False)
    if args.crop_pct is not None:  # the held-out evaluation's crop (1.0: whole image)
        lm.info = _with_crop(lm.info, args.crop_pct)
    cfg = train_config(args, lm.weights, lm.info.family)
    if args.labels and not cfg.specialists:
        raise ReswiseError("--labels goes with --specialists (ordinary training always uses them)")
    preflight(lm, cfg, args.out)  # flags, memory, --out: before the data, a bad one costs a second
    # --class-map maps the folders onto the model's classes as the sweep does (same refusals);
    # specialists learn the model's outputs: a flat folder is enough (--labels then refused)
    data = load_data(args, lm if args.class_map else None, unlabelled=bool(cfg.specialists))
    test = (
        load_dataset("imagefolder", args.test_root, flag="--test-root") if args.test_root else None
    )
    out = train(
        lm,
        data,
        cfg,
        args.out,
        test_data=test,
        progress=not args.no_progress,
        log=_log(args),
        device=device,
        data_flags=_data_flags(args),
    )
    if not args.json and world()[0] == 0:
        print(f"wrote {args.out} and its model card {out['card']}")
    return out if world()[0] == 0 else {}  # under torchrun rank 0 alone prints the result


def run_reproduce(args: argparse.Namespace) -> dict[str, Any]:
    from ..measure.reproduce import format_reproduction, reproduce
    from ..pipeline import default_data_root

    rep = reproduce(args.data_root or default_data_root("cifar10-jpeg", "test"), args.limit)
    if not args.json:
        print(format_reproduction(rep))
    return rep
