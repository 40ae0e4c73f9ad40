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


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
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
    add_bn_args(p)
    p.add_argument(
        "--latency",
        action="store_true",
        help="add measured batch-1 latency per resolution (median of 30 runs)",
    )
    add_json(p)

    p = sub.add_parser("random", help="random resolution per image (from a sweep's records)")
    add_records_source(p)
    p.add_argument("--weights", help="probabilities per resolution, e.g. 0.5,0.25,0.25")

    p = sub.add_parser("select", help="cheapest resolution within an accuracy budget, with a bound")
    add_records_source(p)
    add_budget_args(p)
    p.add_argument("--test", default="bootstrap", choices=["bootstrap", "exact"],
                   help="paired bootstrap (default) or exact McNemar/Clopper-Pearson bound")  # fmt: skip

    p = sub.add_parser("cascade", help="confidence cascade of resolutions under a budget")
    add_records_source(p)
    add_budget_args(p)
    p.add_argument("--signal", default="auto", choices=["auto", "max_softmax", "margin", "entropy"])
    p.add_argument("--max-len", type=int, default=3, help="longest chain searched")
    p.add_argument("--headroom", action="store_true",
                   help="also show, in hindsight, what two-stage chains could save with each "
                        "confidence signal and with a perfect one (why the cascade saves what it does)")  # fmt: skip

    p = sub.add_parser("compare", help="fixed, random, selected, BN-recalibrated, cascade, oracle")
    add_records_source(p)
    add_budget_args(p)
    p.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="LABEL=RUN_DIR",
        help="rows from another run on the same images (e.g. adapted=runs/x_adapted)",
    )
    p.add_argument("--max-len", type=int, default=3)

    p = sub.add_parser("recalibrate", help="save a checkpoint with BN statistics per resolution")
    add_model_args(p)
    p.add_argument("--resolutions", required=True)
    p.add_argument("--calib-root", required=True, help="unlabeled images (not the eval set)")
    p.add_argument("--calib-size", type=int, default=2000)
    p.add_argument("--interpolation")
    p.add_argument("--no-antialias", action="store_true")
    p.add_argument("--crop-pct", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint file to write")
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
    p.add_argument("--largest-weight", type=float, default=0.0,
                   help="multi-resolution: share of the loss on the largest resolution, the rest "
                        "split evenly (default 0: all equal)")  # fmt: skip
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--no-channels-last", action="store_true",
                   help="NCHW tensors (faster for depthwise-heavy nets such as MobileNetV2 here)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="final state_dict (resume state beside it)")
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU when one is visible, else the CPU) | cpu | cuda")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    add_json(p)
    p = sub.add_parser("adapt", help="per-resolution adapters: BN + classifier tuned at each r")
    add_model_args(p)
    p.add_argument("--resolutions", required=True)
    p.add_argument("--train-root", required=True, help="labeled training images (not the eval set)")
    p.add_argument("--steps", type=int, default=400, help="SGD steps per resolution")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint: backbone + one adapter per resolution")
    add_json(p)

    p = sub.add_parser("reproduce", help="the study's tables beside reswise's measurements")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2].parent
                   / "shared" / "datasets" / "cifar10-jpeg" / "test"),
                   help="CIFAR-10 test images (ImageFolder)")  # fmt: skip
    p.add_argument("--limit", type=int)
    add_json(p)

    p = sub.add_parser("latency", help="measured latency per resolution beside FLOPs drop")
    add_model_args(p)
    p.add_argument("--resolutions", required=True)
    p.add_argument("--reference", type=int)
    p.add_argument("--batch-size", default="1", help="comma-separated, e.g. 1,32")
    p.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--no-fast", action="store_true", help="no BN folding / channels-last")
    add_json(p)

    p = sub.add_parser("export", help="ONNX export at a chosen resolution, checked against PyTorch")
    add_model_args(p)
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", required=True, help="the .onnx file")
    p.add_argument(
        "--bake-resize-from",
        type=int,
        metavar="S",
        help="the graph takes S x S images and resizes them itself",
    )
    p.add_argument("--check-root", help="ImageFolder of real images for the check")
    p.add_argument("--check-size", type=int, default=256, help="images used for the check")
    p.add_argument("--opset", type=int, default=17)
    add_json(p)
    for extra in EXTRA_PARSERS:
        extra(sub)
    return parser


EXTRA_PARSERS: list[Callable[[Any], None]] = []


def add_records_source(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from", dest="from_run", help="a finished sweep's run directory (no model pass)"
    )
    add_model_args(p, required=False)
    add_data_args(p, required=False)
    add_res_args(p, required=False)
    add_run_args(p)
    add_bn_args(p)
    add_json(p)


def add_budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-drop", type=float, default=1.0, help="top-1 points you accept to lose")
    p.add_argument("--confidence", type=float, default=0.95, help="one-sided, for the bound")
    p.add_argument("--calib-frac", type=float, default=0.5, help="share of images used to choose")


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


def run_sweep(args: argparse.Namespace) -> tuple[Any, Path]:
    """The sweep behind sweep/random/select/cascade/compare, with optional BN recalibration."""
    import numpy as np

    from . import distributed
    from .bn_recal import recalibrate_all
    from .data import parse_resolutions
    from .evaluate import summarize
    from .flops import flops_table

    res = parse_resolutions(args.resolutions)
    lm = load_model(args)
    data = load_data(args)
    out = default_out(args)
    out.mkdir(parents=True, exist_ok=True)
    policy = policy_for(args, lm.info)
    kw = dict(policy=policy, batch_size=args.batch_size, fast=not args.no_fast,
              device=args.device, progress=not args.no_progress)  # fmt: skip
    # weights that carry BN statistics per resolution (`reswise recalibrate`, `adapt`,
    # multi-resolution training) are evaluated with them: sweep() applies lm.extra's
    result = distributed.sweep(lm, data, res, args.reference,
                               checkpoint_path=out / "progress.npz", **kw)  # fmt: skip
    if getattr(args, "recalibrate_bn", False):
        calib, calib_desc, calib_split = load_calib(args, data)
        all_res = list(dict.fromkeys([args.reference or max(res), *res]))
        states = recalibrate_all(lm.model, calib, all_res, policy, lm.info.mean, lm.info.std,
                                 args.calib_size, seed=args.seed)  # fmt: skip
        bn = distributed.sweep(lm, data, res, args.reference, bn_states=states,
                               checkpoint_path=out / "progress_bn.npz", **kw)  # fmt: skip
        if result is not None and bn is not None:
            flops = flops_table(lm.model, bn.records.resolutions, bn.reference)
            fwd = np.array(bn.timings["forward_s_by_res"])
            ref_plain = result.records.correct(result.reference)
            result.bn = {
                "records": bn.records, "calib_root": calib_desc, "calib_split": calib_split,
                "calib_size": min(args.calib_size or len(calib), len(calib)),
                "rows": summarize(bn.records, bn.reference, flops, fwd, ref_correct=ref_plain),
            }  # fmt: skip
    if getattr(args, "latency", False) and result is not None:
        from .latency import measure_latency

        lat = measure_latency(lm, res, [1], reference=result.reference, device=args.device,
                              fast=not args.no_fast)  # fmt: skip
        by_res = {row["resolution"]: row for row in lat}
        for row in result.rows:
            m = by_res[row["resolution"]]
            row.update({"latency_ms": m["median_ms"], "latency_drop_pct": m["latency_drop_pct"],
                        "latency_disagrees": m["disagrees"]})  # fmt: skip
    return result, out


def load_calib(args: argparse.Namespace, data: Any) -> tuple[Any, str, dict[str, Any] | None]:
    """Unlabeled BN-calibration images: never the images a policy reports on.

    Returns the images, a description for reports, and, for ``--calib-split``, the split they
    came from (so a later ``--from RUN`` can check it reports on the other part).
    """
    import torch

    from .data import load_dataset
    from .policies import calib_heldout_split

    if args.calib_size is not None and args.calib_size <= 0:
        raise ReswiseError(f"--calib-size must be positive, got {args.calib_size}")
    if getattr(args, "calib_split", False):
        if args.calib_root:
            raise ReswiseError("give --calib-root DIR or --calib-split, not both")
        # the part policies choose on; labels are never read, the held-out part never touched
        frac = getattr(args, "calib_frac", 0.5)
        idx, _ = calib_heldout_split(len(data), frac, args.seed)
        desc = f"{args.data_root or args.dataset} (calibration part: {frac:.0%}, seed {args.seed})"
        split = {"calib_frac": frac, "seed": args.seed, "n": len(data)}
        return data.subset(torch.as_tensor(idx)), desc, split
    if not args.calib_root:
        raise ReswiseError(
            "--recalibrate-bn needs --calib-root DIR (unlabeled images, e.g. a train split) "
            "or --calib-split (the calibration part of the evaluation images)"
        )
    if args.data_root and Path(args.calib_root).resolve() == Path(args.data_root).resolve():
        raise ReswiseError(
            "--calib-root is the evaluation set; use other images (e.g. the train split) or "
            "--calib-split (only the calibration part of the evaluation images)"
        )
    return load_dataset("imagefolder", args.calib_root, on_corrupt="skip"), args.calib_root, None


def add_bn_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("BatchNorm recalibration")
    g.add_argument("--recalibrate-bn", action="store_true",
                   help="also evaluate with BN statistics re-estimated per resolution")  # fmt: skip
    g.add_argument("--calib-root", help="unlabeled images for BN statistics (not the eval set)")
    g.add_argument("--calib-size", type=int, default=2000, help="images used (default 2000)")
    g.add_argument("--calib-split", action="store_true",
                   help="BN statistics from the calibration part of the evaluation images' seeded "
                        "split (labels unused; the held-out part is never seen)")  # fmt: skip


def get_records(args: argparse.Namespace) -> dict[str, Any]:
    """Per-sample records from a finished run (--from) or from a fresh sweep."""
    from .report import load_run, load_run_bn, write_run

    if getattr(args, "from_run", None):
        meta, records = load_run(args.from_run)
        check_bn_split(meta.get("bn_recalibration", {}).get("calib_split"), args)
        return {"model": meta["model"], "dataset": meta["dataset"], "reference": meta["reference"],
                "flops": {r["resolution"]: r["flops"] for r in meta["rows"]}, "records": records,
                "records_bn": load_run_bn(args.from_run), "out": Path(args.from_run),
                "n": meta["n"], "weights": meta["weights"]}  # fmt: skip
    for need in ("model", "dataset", "resolutions"):
        if not getattr(args, need, None):
            raise ReswiseError(f"give --from RUN_DIR, or --{need} (and the other sweep flags)")
    result, out = run_sweep(args)
    if result is None:
        return {}
    write_run(result, out)
    return {"model": result.model, "dataset": result.dataset, "reference": result.reference,
            "flops": {r["resolution"]: r["flops"] for r in result.rows},
            "records": result.records, "records_bn": result.bn["records"] if result.bn else None,
            "out": out, "n": result.n, "weights": result.weights}  # fmt: skip


def check_bn_split(split: dict[str, Any] | None, args: argparse.Namespace) -> None:
    """BN statistics taken from a split's calibration part are only fair on that split."""
    if not split:
        return
    frac = getattr(args, "calib_frac", 0.5)
    if split["calib_frac"] != frac or split["seed"] != args.seed:
        raise ReswiseError(
            f"{args.from_run}'s BN statistics came from the calibration part of the split with "
            f"--calib-frac {split['calib_frac']} --seed {split['seed']}; pass those values, so the "
            "held-out part stays unseen"
        )


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
        if result.bn:
            print(f"with BN statistics re-estimated per resolution on {result.bn['calib_size']} "
                  f"images of {result.bn['calib_root']}:")  # fmt: skip
            print(seed_table(result.bn["rows"]))
        t = result.timings
        print(
            f"{t['total_s']:.1f} s in all, {t['forward_s']:.1f} s in resize + forward "
            f"({result.fast_path}); results in {out}/"
        )
    d = result.to_dict()
    d["files"] = files
    return d


def _pct(x: float) -> str:
    return f"{x:.2f}"


def _subset_resolutions(src: dict[str, Any], wanted_text: str | None) -> list[int]:
    from .data import parse_resolutions

    have = src["records"].resolutions
    if not wanted_text:
        return have
    wanted = parse_resolutions(wanted_text)
    missing = [r for r in wanted if r not in have]
    if missing:
        raise ReswiseError(f"resolution {missing[0]} is not in the sweep's records ({have}); "
                           "rerun the sweep with it")  # fmt: skip
    return wanted


def choosing_records(args: argparse.Namespace, src: dict[str, Any]) -> Any:
    """The records a policy chooses from: recalibrated passes only where they win on calibration."""
    from .compare import best_of
    from .policies import calib_heldout_split

    records = src["records"]
    if src["records_bn"] is None:
        return records
    calib, _ = calib_heldout_split(len(records.labels), args.calib_frac, args.seed)
    return best_of(records, src["records_bn"], calib, src["reference"])[0]


@command("random")
def cmd_random(args: argparse.Namespace) -> dict[str, Any]:
    from .policies import random_resolution

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ReswiseError(
                f"--weights must be comma-separated numbers, got '{args.weights}'"
            ) from None
    src = get_records(args)
    if not src:
        return {}
    wanted = _subset_resolutions(src, args.resolutions)
    out = random_resolution(src["records"], src["flops"], src["reference"], seed=args.seed,
                            weights=weights, choices=wanted)  # fmt: skip
    out.update({k: src[k] for k in ("model", "dataset", "reference")})
    if not args.json:
        lo, hi = out["acc_drop_ci"]
        print(f"random resolution from {wanted} (seed {args.seed}) on {src['model']} / "
              f"{src['dataset']}, n={out['n']}: FLOPs drop {_pct(out['flops_drop_pct'])} %, "
              f"accuracy drop {_pct(out['acc_drop_pct'])} points (95% CI {lo:.2f} .. {hi:.2f})")  # fmt: skip
    return out


@command("select")
def cmd_select(args: argparse.Namespace) -> dict[str, Any]:
    from .policies import select_resolution

    src = get_records(args)
    if not src:
        return {}
    records = choosing_records(args, src)
    out = select_resolution(records, src["flops"], src["reference"], args.max_drop,
                            args.confidence, args.calib_frac, args.seed, args.test)  # fmt: skip
    out.update({k: src[k] for k in ("model", "dataset")})
    if not args.json:
        lo, hi = out["acc_drop_ci"]
        r = out["resolution"]
        print(f"selected {r}x{r} for {src['model']}: FLOPs drop {_pct(out['flops_drop_pct'])} %, "
              f"held-out accuracy drop {_pct(out['acc_drop_pct'])} points (95% CI {lo:.2f} .. "
              f"{hi:.2f}); calibration bound {_pct(out['calib_upper_bound'])} <= {args.max_drop} "
              f"at {args.confidence:.0%} ({args.test}); {out['n_calib']} calibration / "
              f"{out['n_heldout']} held-out images")  # fmt: skip
    return out


@command("cascade")
def cmd_cascade(args: argparse.Namespace) -> dict[str, Any]:
    from .policies import headroom, search_cascade

    src = get_records(args)
    if not src:
        return {}
    records = choosing_records(args, src)
    out = search_cascade(records, src["flops"], src["reference"], args.max_drop, args.confidence,
                         args.signal, args.calib_frac, args.seed, args.max_len)  # fmt: skip
    out.update({k: src[k] for k in ("model", "dataset")})
    if not args.json:
        lo, hi = out["acc_drop_ci"]
        shares = ", ".join(f"{r}: {p:.1f} %" for r, p in zip(out["chain"], out["stage_share_pct"]))
        print(f"cascade {out['chain']} on {out['signal']} (thresholds "
              f"{[round(t, 4) for t in out['thresholds']]}) for {src['model']}: expected FLOPs "
              f"drop {_pct(out['flops_drop_pct'])} %, held-out accuracy drop "
              f"{_pct(out['acc_drop_pct'])} points (95% CI {lo:.2f} .. {hi:.2f}); answered at "
              f"{shares}")  # fmt: skip
    if args.headroom:
        out["headroom"] = headroom(records, src["flops"], src["reference"], args.max_drop)
        if not args.json:
            print(headroom_table(out["headroom"], args.max_drop, len(records.labels)))
    return out


def headroom_table(rows: list[dict[str, Any]], max_drop: float, n: int) -> str:
    from .policies.cascade import SIGNALS

    head = " | ".join(f"{s}: AUROC, answered at r, FLOPs saved" for s in SIGNALS)
    lines = [f"\ntwo-stage chains [r, reference] within {max_drop} point(s), thresholds chosen "
             f"in hindsight on all {n} images (an upper bound, not a held-out figure):\n",
             f"| r | pass cost % | top-1 % | {head} | perfect ranking: answered at r, FLOPs saved |",
             "|---:|---:|---:|" + "---|" * (len(SIGNALS) + 1)]  # fmt: skip
    for row in rows:
        cells = [f"{row[s]['auroc']:.3f}, {row[s]['accept_pct']:.1f} %, "
                 f"{row[s]['flops_drop_pct']:.1f} %" for s in SIGNALS]  # fmt: skip
        perf = f"{row['perfect']['accept_pct']:.1f} %, {row['perfect']['flops_drop_pct']:.1f} %"
        lines.append(f"| {row['resolution']} | {row['stage_cost_pct']:.1f} | {row['top1']:.2f} | "
                     + " | ".join(cells) + f" | {perf} |")  # fmt: skip
    return "\n".join(lines)


@command("compare")
def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from .compare import compare, compare_plot, compare_table

    src = get_records(args)
    if not src:
        return {}
    from .report import load_run

    extras = {}
    for item in args.add:
        label, sep, run = item.partition("=")
        if not sep or not label or not run:
            raise ReswiseError(f"--add takes LABEL=RUN_DIR, got '{item}'")
        extras[label] = load_run(run)[1]
    out = compare(src["records"], src["flops"], src["reference"], args.max_drop, args.confidence,
                  args.calib_frac, args.seed, src["records_bn"], args.max_len, extras)  # fmt: skip
    out.update({k: src[k] for k in ("model", "dataset", "weights")})
    table = compare_table(out["rows"])
    run = Path(src["out"])
    head = (f"# reswise compare: {src['model']}\n\nWeights {src['weights']}, data "
            f"`{src['dataset']}`, reference {src['reference']}x{src['reference']}. Policies choose "
            f"on {out['n_calib']} calibration images; every figure below is measured on the other "
            f"{out['n_heldout']} (held-out) images, seed {args.seed}. Budget: at most "
            f"{args.max_drop} point(s) of top-1 at {args.confidence:.0%} one-sided confidence. "
            f"CIs are paired 95% intervals of the held-out drop.\n\n")  # fmt: skip
    (run / "compare.md").write_text(head + table + "\n\n![compare](compare.png)\n")
    (run / "compare.json").write_text(json.dumps(out, indent=1, default=_jsonable) + "\n")
    compare_plot(
        out["rows"], run / "compare.png", f"{src['model']}: held-out, n={out['n_heldout']}"
    )
    if not args.json:
        print(head + table)
        print(f"\nwritten: {run / 'compare.md'}, {run / 'compare.png'}")
    return out


@command("recalibrate")
def cmd_recalibrate(args: argparse.Namespace) -> dict[str, Any]:
    from .bn_recal import recalibrate_all, save_bn_checkpoint
    from .data import ResizePolicy, load_dataset, parse_resolutions

    res = parse_resolutions(args.resolutions)
    lm = load_model(args)
    kind = "crop" if lm.info.task == "imagenet" else "full"
    policy = ResizePolicy(kind, args.crop_pct or lm.info.crop_pct,
                          args.interpolation or lm.info.interpolation, not args.no_antialias)  # fmt: skip
    calib = load_dataset("imagefolder", args.calib_root)
    states = recalibrate_all(lm.model, calib, res, policy, lm.info.mean, lm.info.std,
                             args.calib_size, seed=args.seed)  # fmt: skip
    save_bn_checkpoint(lm.model, states, args.out)
    from .models._registry import sha256_file

    out = {"model": lm.info.name, "weights": lm.weights, "resolutions": res, "out": args.out,
           "calib_root": args.calib_root, "calib_size": min(args.calib_size, len(calib)),
           "sha256": sha256_file(args.out)}  # fmt: skip
    if not args.json:
        print(f"wrote {args.out}: {lm.info.name} with BN statistics for {res} from "
              f"{out['calib_size']} images of {args.calib_root}")  # fmt: skip
    return out


@command("adapt")
def cmd_adapt(args: argparse.Namespace) -> dict[str, Any]:
    from .adapt import adapt, adapter_size
    from .bn_recal import save_bn_checkpoint
    from .data import load_dataset, parse_resolutions
    from .models._registry import sha256_file

    res = parse_resolutions(args.resolutions)
    lm = load_model(args)
    data = load_dataset("imagefolder", args.train_root)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else (lambda m: print(m, flush=True))
    states = adapt(lm, data, res, args.steps, args.batch_size, args.lr, args.seed, log=log)
    save_bn_checkpoint(lm.model, states, args.out)
    out = {"model": lm.info.name, "weights": lm.weights, "resolutions": sorted(states),
           "steps": args.steps, "train_root": args.train_root, "out": args.out,
           "sha256": sha256_file(args.out), **adapter_size(lm.model)}  # fmt: skip
    if not args.json:
        print(f"wrote {args.out}: adapters for {sorted(states)}, each {out['adapter_params']} "
              f"parameters ({out['adapter_bytes']} bytes) beside a {out['model_params']}-parameter "
              f"model ({out['model_bytes']} bytes)")  # fmt: skip
    return out


@command("reproduce")
def cmd_reproduce(args: argparse.Namespace) -> dict[str, Any]:
    from .reproduce import format_reproduction, reproduce

    rep = reproduce(args.data_root, args.limit)
    if not args.json:
        print(format_reproduction(rep))
    return rep


@command("latency")
def cmd_latency(args: argparse.Namespace) -> dict[str, Any]:
    from .data import parse_resolutions
    from .evaluate import check_resolutions
    from .latency import format_latency_table, measure_latency

    res = parse_resolutions(args.resolutions)
    try:
        batch_sizes = [int(b) for b in args.batch_size.split(",")]
    except ValueError:
        raise ReswiseError(
            f"--batch-size must be comma-separated integers, got '{args.batch_size}'"
        ) from None
    lm = load_model(args, need_weights=False)  # timing does not depend on the weights' values
    check_resolutions(lm.info, [*res, *([args.reference] if args.reference else [])])
    rows = measure_latency(lm, res, batch_sizes, threads=args.threads, device=args.device,
                           runtime=args.runtime, warmup=args.warmup, repeats=args.repeats,
                           reference=args.reference, fast=not args.no_fast)  # fmt: skip
    if not args.json:
        print(f"{lm.info.name} ({args.runtime}, {args.device}), median of {args.repeats} timed "
              f"runs after {args.warmup} warm-up runs:")  # fmt: skip
        print(format_latency_table(rows))
    return {"model": lm.info.name, "runtime": args.runtime, "device": args.device, "rows": rows}


@command("export")
def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from .bn_recal import load_bn_states
    from .data import load_dataset
    from .evaluate import check_resolutions
    from .export import export_onnx

    lm = load_model(args)
    check_resolutions(lm.info, [args.resolution])
    bn = load_bn_states(lm.extra.get("extra_state", {})).get(args.resolution)
    images = None
    if args.check_root:
        data = load_dataset("imagefolder", args.check_root, limit=args.check_size, seed=0)
        got = data.get(torch.arange(len(data)))
        if isinstance(got, list):
            from .data import ResizePolicy

            size = args.bake_resize_from or lm.info.input_size
            kind = "crop" if lm.info.task == "imagenet" else "full"
            got = ResizePolicy(kind, lm.info.crop_pct)(got, size)
        images = got
    out = export_onnx(lm, args.resolution, args.out, bake_resize_from=args.bake_resize_from,
                      check_images=images, opset=args.opset, bn_state=bn)  # fmt: skip
    out.update({"model": lm.info.name, "weights": lm.weights, "per_resolution_bn": bn is not None})
    if not args.json:
        print(f"wrote {out['out']} ({out['bytes']} bytes, sha256 {out['sha256'][:16]}…) at "
              f"{args.resolution}x{args.resolution}; ONNX Runtime vs PyTorch on {out['n_images']} "
              f"{out['check_data']}: max |logit diff| {out['max_abs_diff']:.2e}, top-1 agreement "
              f"{out['top1_agreement']:.4f}")  # fmt: skip
    return out


@command("train")
def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_dataset, parse_resolutions
    from .evaluate import resolve_device
    from .train import TrainConfig, train

    device = resolve_device(args.device)  # before the data: a wrong flag fails in a second
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
        channels_last=not args.no_channels_last,
        private_bn=not args.shared_bn,
        distill=args.distill,
        largest_weight=args.largest_weight,
        init=lm.weights,
    )
    # flush: training runs for hours under nohup, its log must be readable as it goes
    log = (
        (lambda m: print(m, file=sys.stderr, flush=True))
        if args.json
        else (lambda m: print(m, flush=True))
    )
    return train(
        lm, data, cfg, args.out, test_data=test, progress=not args.no_progress, log=log,
        device=device,
    )  # fmt: skip


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
    finally:
        if "torch.distributed" in sys.modules:
            from .distributed import shutdown

            shutdown()
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
