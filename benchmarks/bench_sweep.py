"""Sweep vs the naive way, measured in one run on the same model, data and resolutions.

    .venv/bin/python benchmarks/bench_sweep.py [--model cifar_resnet20] [--limit N]

Naive: for every resolution, a torchvision ImageFolder + PIL transform pipeline
(Resize((r, r)) -> ToTensor -> Normalize) + DataLoader (batch 128) and an eager forward pass.
reswise: decode every image once (cold cache, timed), then one pass that makes every
resolution from the decoded uint8 batch, with BN folded and channels-last.
Prints the times and the ratios; no assertion (speed is not a test).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from reswise import create_model, load_dataset, sweep

SHARED = Path(os.environ.get("SHARED", Path(__file__).resolve().parents[2] / "shared"))


def naive(lm, root: Path, resolutions: list[int], limit: int | None, workers: int) -> dict:
    from torchvision import datasets, transforms

    tops, fwd = {}, 0.0
    t0 = time.perf_counter()
    for r in resolutions:
        tf = transforms.Compose(
            [
                transforms.Resize((r, r)),
                transforms.ToTensor(),
                transforms.Normalize(lm.info.mean, lm.info.std),
            ]
        )
        ds = datasets.ImageFolder(str(root), transform=tf)
        if limit:
            ds = torch.utils.data.Subset(ds, range(0, len(ds), max(1, len(ds) // limit)))
        dl = torch.utils.data.DataLoader(ds, batch_size=128, num_workers=workers)
        correct = n = 0
        with torch.no_grad():
            for x, y in dl:
                t = time.perf_counter()
                pred = lm.model(x).argmax(1)
                fwd += time.perf_counter() - t
                correct += (pred == y).sum().item()
                n += len(y)
        tops[r] = 100.0 * correct / n
    return {"total_s": time.perf_counter() - t0, "forward_s": fwd, "top1": tops, "n": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cifar_resnet20")
    ap.add_argument("--data-root", default=str(SHARED / "datasets/cifar10-jpeg/test"))
    ap.add_argument("--resolutions", default="32,28,24,20,16,12")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the naive way")
    args = ap.parse_args()
    res = [int(r) for r in args.resolutions.split(",")]
    lm = create_model(args.model, pretrained=True)
    print(
        f"{args.model} ({lm.weights}), {args.data_root}, resolutions {res}, "
        f"{torch.get_num_threads()} threads"
    )

    base = naive(lm, Path(args.data_root), res, args.limit, args.workers)
    print(
        f"naive:   {base['total_s']:6.1f} s total, {base['forward_s']:6.1f} s in forward passes "
        f"(n={base['n']} per resolution)"
    )

    cache = tempfile.mkdtemp()
    os.environ["RESWISE_CACHE"] = cache  # cold cache: decoding is part of the measured time
    t0 = time.perf_counter()
    data = load_dataset("imagefolder", args.data_root)
    if args.limit:
        data = data.subset(torch.arange(0, len(data), max(1, len(data) // args.limit)))
    t_load = time.perf_counter() - t0
    result = sweep(lm, data, res)
    t_total = time.perf_counter() - t0
    fwd = result.timings["eval_s"]  # resize + normalise + forward + softmax
    shutil.rmtree(cache)
    print(
        f"reswise: {t_total:6.1f} s total ({t_load:.1f} s decoding once, cold cache), "
        f"{fwd:6.1f} s in resize + forward passes ({result.fast_path})"
    )
    print(f"speed-up over naive:                 {base['total_s'] / t_total:5.2f}x")
    print(f"total / own forward time:            {t_total / fwd:5.2f}x (target <= 1.15)")
    print(f"total (warm cache) / own forward:    {result.timings['total_s'] / fwd:5.2f}x")
    print(f"forward speed-up over naive forward: {base['forward_s'] / fwd:5.2f}x")
    for row in result.rows:
        r = row["resolution"]
        print(
            f"  {r:3d}: top-1 reswise {row['top1']:.2f} %, naive {base['top1'][r]:.2f} % "
            f"(naive resizes with PIL; reswise with torch's antialiased uint8 kernel)"
        )


if __name__ == "__main__":
    main()
