"""Measured latency per resolution and batch size, beside the FLOPs drop it is supposed to follow.

    rows = measure_latency(lm.model, [32, 24, 16], batch_sizes=[1, 32], threads=1)
    print(format_latency_table(rows))

FLOPs fall with the square of the side; time often does not (per-call overhead, memory-bound
layers, kernels tuned for other shapes). Each row says whether the two drops differ by more
than ``DISAGREE_POINTS`` percentage points, and the summary line names those places.
Only the forward pass is timed: preprocessing and host-to-device copies are not included.
Every backend of :mod:`reswise.measure.backends` can be timed; ``auto`` reports the fastest per cell.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import parse_resolutions
from ..errors import ReswiseError
from ..models import LoadedModel
from .backends import MIN_BATCHES_TO_PROBE, check_backend, make_runner, pick_runner
from .flops import flops_table
from .inference import check_resolutions, fold_for_inference, resolve_device, torch_threads

DISAGREE_POINTS = 10.0  # latency drop vs FLOPs drop, in percentage points


def time_calls(
    run: Callable[[], object],
    warmup: int,
    repeats: int,
    min_time_s: float = 0.0,
    sync: Callable[[], None] = lambda: None,
) -> np.ndarray:
    """Milliseconds per call: at least ``repeats`` calls and at least ``min_time_s`` in total."""
    for _ in range(warmup):  # first calls pay for allocation, kernel selection, cache fills
        run()
    sync()
    times: list[float] = []
    gc_was_on = gc.isenabled()
    gc.disable()  # a collection inside one timed call would be charged to that resolution
    try:
        start = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - start < min_time_s:
            sync()
            t = time.perf_counter()
            run()
            sync()  # CUDA calls return before the work is done
            times.append(time.perf_counter() - t)
    finally:
        if gc_was_on:
            gc.enable()
    return np.asarray(times) * 1e3


def _check_args(device: str, batch_sizes: Sequence[int], threads: int | None, repeats: int) -> None:
    if not batch_sizes or any(b <= 0 for b in batch_sizes):
        raise ReswiseError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if threads is not None and threads <= 0:
        raise ReswiseError(f"threads must be a positive integer, got {threads}")
    if repeats <= 0:
        raise ReswiseError(f"repeats must be at least 1, got {repeats}")


def _inputs(resolution: int, batch: int, device: str, channels_last: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(resolution * 1000 + batch)
    x = torch.randn(batch, 3, resolution, resolution, generator=g).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _time_grid(
    net: nn.Module,
    name: str,
    grid: list[tuple[int, int]],
    device: str,
    fast: bool,
    backend: str,
    timing: dict[str, Any],
) -> tuple[dict[tuple[int, int], np.ndarray], dict[tuple[int, int], str], str]:
    """Milliseconds per call for every (resolution, batch), and the backend that ran each."""
    if fast:
        folded, desc = fold_for_inference(net, channels_last=device == "cpu")
    else:
        folded, desc = copy.deepcopy(net).eval(), "eager"
    folded.to(device)
    base = copy.deepcopy(net).eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out, used = {}, {}
    for r, bs in grid:
        kw = {"name": name, "resolution": r, "batch": bs, "device": device}
        if backend == "auto":  # a latency table is of the fastest way to run the model
            runner = pick_runner(folded, base, n_batches=MIN_BATCHES_TO_PROBE, **kw)
        else:
            runner = make_runner(backend, folded, base, **kw)
        x = _inputs(r, bs, device, runner.channels_last)
        with torch.inference_mode():
            out[(r, bs)] = time_calls(lambda x=x, f=runner: f(x), sync=sync, **timing)
        used[(r, bs)] = runner.backend
    return out, used, desc


def measure_latency(
    model: nn.Module | LoadedModel,
    resolutions: list[int],
    batch_sizes: Sequence[int] = (1,),
    threads: int | None = None,
    device: str = "cpu",
    backend: str = "auto",
    warmup: int = 5,
    repeats: int = 30,
    min_time_s: float = 0.0,
    reference: int | None = None,
    fast: bool = True,
    runtime: str | None = None,
) -> list[dict[str, Any]]:
    """One flat row per (resolution, batch size): latency percentiles and drops vs ``reference``.

    ``reference`` (default: the largest resolution) is measured too if not listed. ``threads``
    sets torch's intra-op threads for the call (restored after) and ONNX Runtime's
    ``intra_op_num_threads``, so every backend gets the same. ``backend`` is one of
    :data:`reswise.measure.backends.BACKENDS` (``runtime`` is its old name: ``torch`` = ``eager``);
    ``auto`` times the candidates per cell and reports the fastest, naming it in the row.
    ``fast`` folds BN into convolutions and uses channels-last on CPU (ONNX Runtime does its
    own graph fusion). Each cell gets ``warmup`` untimed calls, then at least ``repeats``
    timed calls and at least ``min_time_s`` seconds of them.
    """
    device = str(resolve_device(device))  # auto | cpu | cuda[:N], one check for all commands
    backend = check_backend(runtime or backend, device)
    _check_args(device, batch_sizes, threads, repeats)
    net = model.model if isinstance(model, LoadedModel) else model
    name = model.info.name if isinstance(model, LoadedModel) else net.__class__.__name__
    resolutions = parse_resolutions(list(resolutions))
    reference = reference if reference is not None else max(resolutions)
    res = list(dict.fromkeys([*resolutions, reference]))
    check_resolutions(model.info if isinstance(model, LoadedModel) else None, res)
    flops = {f["resolution"]: f["flops_drop_pct"] for f in flops_table(net, res, reference)}
    grid = [(r, bs) for r in res for bs in batch_sizes]
    timing = {"warmup": warmup, "repeats": repeats, "min_time_s": min_time_s}
    with torch_threads(threads) as n_threads:
        times, used, desc = _time_grid(net, name, grid, device, fast, backend, timing)
    median = {k: float(np.median(v)) for k, v in times.items()}
    rows = []
    for r, bs in grid:
        t = times[(r, bs)]
        p10, p25, p75, p90 = np.percentile(t, [10, 25, 75, 90])
        lat_drop = 100.0 * (1.0 - median[(r, bs)] / median[(reference, bs)])
        rows.append(
            {
                "resolution": r,
                "batch_size": bs,
                "backend": used[(r, bs)],
                "device": device,
                "threads": n_threads,
                "fast_path": desc if used[(r, bs)] != "onnxruntime" else "onnxruntime graph",
                "runs": len(t),
                "median_ms": median[(r, bs)],
                "p10_ms": float(p10),
                "p90_ms": float(p90),
                "iqr_ms": float(p75 - p25),
                "per_image_ms": median[(r, bs)] / bs,
                "latency_drop_pct": lat_drop,
                "flops_drop_pct": flops[r],
                "disagrees": bool(abs(lat_drop - flops[r]) > DISAGREE_POINTS),
            }
        )
    return rows


def latency_summary(rows: list[dict[str, Any]]) -> str:
    """One plain-English line: where the time saved and the FLOPs saved part ways."""
    bad = [r for r in rows if r["disagrees"]]
    if not bad:
        return (
            f"Latency drop tracks FLOPs drop within {DISAGREE_POINTS:g} points everywhere measured."
        )
    parts = []
    for r in bad:
        lat, fl = r["latency_drop_pct"], r["flops_drop_pct"]
        how = "FLOPs overstate the time saved" if lat < fl else "time falls more than FLOPs"
        parts.append(
            f"{r['resolution']}x{r['resolution']} batch {r['batch_size']} "
            f"(time {-lat:+.0f}%, FLOPs {-fl:+.0f}%: {how})"
        )
    return (
        f"Latency and FLOPs disagree by more than {DISAGREE_POINTS:g} points at "
        + "; ".join(parts)
        + "."
    )


def format_latency_table(rows: list[dict[str, Any]], summary: bool = True) -> str:
    """Markdown table of latency rows, followed by :func:`latency_summary` unless ``summary=False``."""
    head = (
        "| res | batch | backend | threads | median ms | p10-p90 ms | ms/image "
        "| latency drop % | FLOPs drop % | disagree |"
    )
    lines = [head, "|" + "---:|" * 9 + ":---|"]
    for r in rows:
        lines.append(
            f"| {r['resolution']} | {r['batch_size']} | {r['backend']} ({r['device']}) "
            f"| {r['threads']} | {r['median_ms']:.3f} | {r['p10_ms']:.3f}-{r['p90_ms']:.3f} "
            f"| {r['per_image_ms']:.3f} | {r['latency_drop_pct']:.1f} | {r['flops_drop_pct']:.1f} "
            f"| {'yes' if r['disagrees'] else ''} |"
        )
    text = "\n".join(lines)
    return text + "\n\n" + latency_summary(rows) if summary else text
