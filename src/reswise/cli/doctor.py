"""`doctor`: the machine's measured peak and which backends can run here."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_json, add_threads


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "doctor", help="measured peak GFLOP/s (matmul, conv) and the backends available here"
    )
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    add_threads(p)
    add_json(p)
    p.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> dict[str, Any]:
    from ..measure.doctor import doctor
    from ..measure.inference import resolve_device

    out = doctor(args.threads, str(resolve_device(args.device)))
    if not args.json:
        peak = out["peak"]
        print(f"CPU: {out['cpu']} ({out['cpus_available']} usable), torch {out['torch']}")
        print(
            f"peak on {peak['device']} with {peak['threads']} threads: "
            f"{peak['matmul_gflops']:.1f} GFLOP/s matmul ({peak['matmul']}), "
            f"{peak['conv_gflops']:.1f} GFLOP/s conv ({peak['conv']})"
        )
        for name, what in out["backends"].items():
            print(f"backend {name}: {what}")
        for name, what in out["precisions"].items():
            print(f"precision {name}: {what}")
    return out
