"""A whole sweep, the naive way vs reswise, alternating in one script: cold and warm cache.

    .venv/bin/python benchmarks/bench_sweep.py                       # CIFAR-10, cifar_resnet20
    .venv/bin/python benchmarks/bench_imagenet.py                    # ImageNet sample, Lite0

Naive: for every resolution, a torchvision ImageFolder + PIL transforms (Resize ->
[CenterCrop] -> ToTensor -> Normalize) + DataLoader and the model's plain eager forward, as a
user would write it. reswise: ``reswise sweep`` as a separate process (start-up and imports
counted) with ``--backend auto``. Cold: an empty cache (``$RESWISE_CACHE``: no decoded images,
exported graphs, compiled code or backend decisions). Warm: the cache as the previous reswise
run left it (decoded CIFAR images, exported graphs, compiled code, decisions; ImageNet-size
images are decoded in every run, never cached). Each round
runs naive, cold, warm; the ratios are medians over ``--repeats`` rounds. Every run is a
separate process, so nothing compiled in one is reused in-memory by the next.

Also prints the forward's achieved GFLOP/s (FLOPs of every resolution x images / seconds in
resize + forward) and its share of this machine's measured peak (reswise.measure.doctor). No
assertion: speed is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("SHARED", Path(__file__).resolve().parents[2] / "shared"))


def naive(args: argparse.Namespace) -> dict:
    """The naive sweep, in this (child) process: returns its own seconds and top-1s."""
    import torch
    from torchvision import datasets, transforms

    from reswise import create_model

    lm = create_model(args.model, pretrained=True)
    info, net = lm.info, lm.model.eval().to(args.device)
    interp = transforms.InterpolationMode(info.interpolation)
    tops = {}
    t0 = time.perf_counter()
    for r in [int(x) for x in args.resolutions.split(",")]:
        if info.task == "imagenet":  # resize the short side, centre crop, as timm/torchvision do
            size = [transforms.Resize(int(r / info.crop_pct), interp), transforms.CenterCrop(r)]
        else:
            size = [transforms.Resize((r, r), interp)]
        tf = transforms.Compose(
            [*size, transforms.ToTensor(), transforms.Normalize(info.mean, info.std)]
        )
        ds = datasets.ImageFolder(args.data_root, transform=tf)
        if args.limit:
            ds = torch.utils.data.Subset(ds, range(0, len(ds), max(1, len(ds) // args.limit)))
        dl = torch.utils.data.DataLoader(
            ds,
            batch_size=args.naive_batch,
            num_workers=args.workers,
            pin_memory=args.device != "cpu",
        )
        correct = n = 0
        with torch.no_grad():
            for x, y in dl:
                pred = net(x.to(args.device, non_blocking=True)).argmax(1).cpu()
                correct += (pred == y).sum().item()
                n += len(y)
        tops[r] = 100.0 * correct / n
    return {"total_s": time.perf_counter() - t0, "top1": tops, "n": n}


def run_child(cmd: list[str], env: dict) -> tuple[float, dict]:
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def reswise_cmd(args: argparse.Namespace, out: str) -> list[str]:
    cmd = [sys.executable, "-m", "reswise", "sweep", "--model", args.model, "--pretrained",
           "--dataset", args.dataset, "--data-root", args.data_root,
           "--resolutions", args.resolutions, "--backend", args.backend, "--device", args.device,
           "--out", out, "--no-progress", "--json"]  # fmt: skip
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.limit:  # the same images as the naive subset
        cmd += ["--limit", str(args.limit)]
    return cmd


def main(defaults: dict | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cifar_resnet20")
    ap.add_argument("--dataset", default="imagefolder")
    ap.add_argument("--data-root", default=str(SHARED / "datasets/cifar10-jpeg/test"))
    ap.add_argument("--resolutions", default="32,28,24,20,16,12")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the naive way")
    ap.add_argument("--naive-batch", type=int, default=128)
    ap.add_argument("--batch-size", type=int, help="reswise's (default: its own)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-only", action="store_true", help=argparse.SUPPRESS)
    ap.set_defaults(**(defaults or {}))
    args = ap.parse_args()
    if args.naive_only:
        print(json.dumps(naive(args)))
        return
    from reswise.measure.doctor import cpu_name, machine_peak

    peak = machine_peak(device=args.device)
    where = cpu_name() if args.device == "cpu" else __import__("torch").cuda.get_device_name()
    print(f"{where}, {peak['threads']} threads; measured peak {peak['matmul_gflops']:.0f} "
          f"GFLOP/s matmul, {peak['conv_gflops']:.0f} GFLOP/s conv")  # fmt: skip
    print(f"{args.model} on {args.data_root}, resolutions {args.resolutions}, backend "
          f"{args.backend}, {args.repeats} alternating rounds")  # fmt: skip
    tmp = Path(tempfile.mkdtemp())
    naive_cmd = [sys.executable, __file__, "--naive-only"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if v is not None and k not in ("naive_only", "repeats")
    ]  # fmt: skip
    times: dict[str, list[float]] = {"naive": [], "cold": [], "warm": []}
    for i in range(args.repeats):
        wall, base = run_child(naive_cmd, dict(os.environ))
        times["naive"].append(wall)
        cache = tmp / f"cache{i}"
        env = {**os.environ, "RESWISE_CACHE": str(cache)}
        for kind in ("cold", "warm"):
            wall, run = run_child(reswise_cmd(args, str(tmp / f"{kind}{i}")), env)
            times[kind].append(wall)
        print(f"round {i + 1}: naive {times['naive'][-1]:.1f} s, reswise cold "
              f"{times['cold'][-1]:.1f} s, warm {times['warm'][-1]:.1f} s "
              f"(backends {run.get('backend_by_res')})", flush=True)  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items()}
    flop = sum(row["flops"] for row in run["rows"]) * base["n"]
    gflops = flop / run["timings"]["eval_s"] / 1e9
    print(f"median naive {med['naive']:.1f} s, reswise cold {med['cold']:.1f} s, warm "
          f"{med['warm']:.1f} s")  # fmt: skip
    print(f"naive / reswise: {med['naive'] / med['cold']:.2f}x cold (target >= 2.5), "
          f"{med['naive'] / med['warm']:.2f}x warm (target >= 3)")  # fmt: skip
    print(f"forward (resize + normalise + model + softmax), last warm run: {gflops:.1f} GFLOP/s "
          f"= {100 * gflops / peak['conv_gflops']:.0f} % of the measured conv peak, "
          f"{100 * gflops / peak['matmul_gflops']:.0f} % of the matmul peak")  # fmt: skip
    for row in run["rows"]:
        r = row["resolution"]
        print(f"  {r:3d}: top-1 reswise {row['top1']:.2f} %, naive {base['top1'][str(r)]:.2f} %")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
