"""What this machine can do: the peak every speed figure is a share of, and which backends run.

    reswise doctor            # CPU, threads, library versions, measured GFLOP/s, backends
    peak = machine_peak()     # {"matmul_gflops": ..., "conv_gflops": ...}

The peak is measured, not taken from a datasheet: the best of a few timed calls of a large
fp32 matrix multiply and of a 3x3 convolution (channels-last, as the sweep runs them), with
the threads reswise would use. A forward that reaches a large share of the conv figure has
little left to gain from a faster backend; a small share means overhead dominates.
"""

from __future__ import annotations

import functools
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .inference import available_cpus, torch_threads


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx2``, ``avx512_vnni``, ``amx_bf16``...); empty off Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best_s(fn: Any, calls: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()  # first call: allocation, kernel selection
    sync()
    best = float("inf")
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def machine_peak(
    threads: int | None = None, device: str = "cpu", size: int = 2048, calls: int = 5
) -> dict[str, Any]:
    """Achieved GFLOP/s (multiply-adds counted as 2 FLOPs) of a matmul and of a conv."""
    with torch_threads(threads) as n, torch.inference_mode():
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)
        mm = 2 * size**3 / _best_s(lambda: a @ b, calls, device)
        conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device).eval()
        x = torch.randn(32, 64, 56, 56, device=device)
        if device == "cpu":
            conv = conv.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        cv = 2 * 32 * 64 * 64 * 9 * 56 * 56 / _best_s(lambda: conv(x), calls, device)
    return {
        "device": device,
        "threads": n,
        "matmul_gflops": mm / 1e9,
        "conv_gflops": cv / 1e9,
        "matmul": f"{size}x{size} fp32",
        "conv": "3x3, 64->64 channels, 56x56, batch 32, fp32",
    }


def _backends() -> dict[str, str]:
    out = {"eager": f"torch {torch.__version__}"}
    try:
        import onnxruntime

        out["onnxruntime"] = f"onnxruntime {onnxruntime.__version__} (CPU)"
    except ImportError:
        out["onnxruntime"] = "not installed: pip install 'reswise[onnx]'"
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    out["compile"] = (
        f"inductor, C++ compiler {cc}" if cc else "no C++ compiler found: inductor cannot build"
    )
    return out


def has_vnni() -> bool:
    """Whether this CPU has 8-bit dot-product instructions (AVX-512 VNNI or AVX-VNNI)."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def bf16_support(device: str = "cpu") -> str | None:
    """None when bf16 arithmetic is native here, else why not (``reswise doctor`` prints it)."""
    if device.startswith("cuda"):
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16 arithmetic"
    if {"avx512_bf16", "amx_bf16"} & cpu_flags():
        return None
    return (
        "this CPU has no bf16 instructions (avx512_bf16 or amx_bf16): torch would emulate them, "
        "slower than fp32, so a bf16 stage would only cost time; sweep on a machine that has them"
    )


def precisions(device: str = "cpu") -> dict[str, str]:
    """What ``sweep --precision`` can do here, per precision, in words."""
    why = bf16_support(device)
    if has_vnni():
        int8 = "yes, ONNX Runtime on the CPU: VNNI, 8-bit weights"
    else:
        int8 = (
            "yes, ONNX Runtime on the CPU: no VNNI, 7-bit weights (reduce_range) and int8 "
            "convolutions barely faster than fp32"
        )
    bf16 = "yes (avx512_bf16 or amx_bf16)" if device == "cpu" else "yes (this GPU)"
    return {"fp32": "yes", "int8": int8, "bf16": bf16 if why is None else f"no: {why}"}


def doctor(threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """The machine facts a speed report needs beside its images/s."""
    return {
        "cpu": cpu_name(),
        "cpus_available": available_cpus(),
        "torch": torch.__version__,
        "backends": _backends(),
        "precisions": precisions(device),
        "peak": machine_peak(threads or available_cpus(), device),
    }
