"""Two sweeps at once on one machine: each with default settings and its own --out.

    .venv/bin/python benchmarks/bench_contention.py [--limit N] [--repeats 3]

Runs `reswise sweep` (cifar_resnet20, CIFAR-10 (JPEG copy) test images, 32..12) as separate
processes: alone, then two started together, alternating, and prints the median times and the
ratio "slowest of the pair / alone" (target <= 2.5 on a 2-core machine). The same is measured
with OpenMP's own default wait policy (spin a while, then sleep: what reswise ran with before
it set OMP_WAIT_POLICY=PASSIVE; an empty value in the environment keeps it), under which a busy
neighbour made a 60 s sweep take 625 s. Nothing else should run on the machine meanwhile; no
assertion (speed is not a test).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("RESWISE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def sweep_cmd(data: str, out: str, limit: int | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "reswise",
        "sweep",
        "--model",
        "cifar_resnet20",
        "--dataset",
        "imagefolder",
        "--data-root",
        data,
        "--resolutions",
        "32,28,24,20,16,12",
        "--out",
        out,
        "--no-progress",
        "--json",
    ]
    return cmd + (["--limit", str(limit)] if limit else [])


def timed(cmds: list[list[str]], env: dict[str, str]) -> list[float]:
    """Start every command at once; seconds each took."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in cmds]
    done = []
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"sweep failed: {' '.join(p.args)}")
        done.append(time.perf_counter() - t0)
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=str(SHARED / "datasets/cifar10-jpeg/test"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; cifar_resnet20, {args.data_root}, limit {args.limit}")
    tmp = tempfile.mkdtemp()
    timed([sweep_cmd(args.data_root, f"{tmp}/warm", args.limit)], dict(os.environ))  # decode cache
    for policy, value in (("PASSIVE (reswise default)", "PASSIVE"), ("OpenMP default", "")):
        env = {**os.environ, "OMP_WAIT_POLICY": value}
        alone, pair = [], []
        for i in range(args.repeats):  # alternating, so drift hits both alike
            a = sweep_cmd(args.data_root, f"{tmp}/a{i}", args.limit)
            b = sweep_cmd(args.data_root, f"{tmp}/b{i}", args.limit)
            alone.append(timed([a], env)[0])
            pair.append(max(timed([a, b], env)))
        t1, t2 = statistics.median(alone), statistics.median(pair)
        print(
            f"{policy:28s} alone {t1:6.1f} s   two at once {t2:6.1f} s   ratio {t2 / t1:4.2f}x"
            f"   (alone runs {[round(t, 1) for t in alone]}, pairs {[round(t, 1) for t in pair]})"
        )


if __name__ == "__main__":
    main()
