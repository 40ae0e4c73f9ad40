"""Multi-process sweeps under torchrun: shard the data, gather per-sample records on rank 0.

    torchrun --nproc_per_node 2 -m reswise sweep --model ... --resolutions 32,28,24

Each rank evaluates every world-th batch (``sweep(shard=(rank, world))``), so no sample is
evaluated twice or dropped; rank 0 merges the records in dataset order and recomputes the rows,
which are then identical to a single-process run. ``gloo`` on CPU, ``nccl`` on GPUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..records import Records, SweepResult, summarize
from .evaluate import sweep as local_sweep
from .flops import flops_table
from .inference import resolve_device


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def merge_records(parts: list[Records]) -> Records:
    """Concatenate shards and put samples back in dataset order."""
    idx = np.concatenate([p.indices for p in parts])
    order = np.argsort(idx, kind="stable")
    if len(np.unique(idx)) != len(idx):
        raise RuntimeError("a sample was evaluated on two ranks; sharding is broken")
    cat = lambda f, axis: np.concatenate([getattr(p, f) for p in parts], axis=axis)  # noqa: E731
    return Records(
        list(parts[0].resolutions),
        idx[order],
        cat("labels", 0)[order],
        cat("topk_idx", 1)[:, order],
        cat("topk_prob", 1)[:, order],
        cat("entropy", 1)[:, order],
    )


def sweep(
    model: Any,
    dataset: Any,
    resolutions: list[int],
    reference: int | None = None,
    checkpoint_path: str | Path | None = None,
    device: str = "cpu",
    **kw: Any,
) -> SweepResult | None:
    """``evaluate.sweep`` that shards itself across torchrun ranks; returns None off rank 0."""
    rank, size = world()
    # 'auto' is resolved here, once: picking the backend from the literal string chose gloo
    # and then put every rank on cuda:0
    device = str(resolve_device(device))
    if size == 1:
        return local_sweep(
            model,
            dataset,
            resolutions,
            reference,
            device=device,
            checkpoint_path=checkpoint_path,
            **kw,
        )
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):  # one GPU per rank, whichever index was asked for
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    try:
        ckpt = None
        if checkpoint_path:
            p = Path(checkpoint_path)
            ckpt = p.with_name(f"{p.stem}.rank{rank}{p.suffix}")
        kw["progress"] = kw.get("progress", False) and rank == 0
        part = local_sweep(
            model,
            dataset,
            resolutions,
            reference,
            device=device,
            checkpoint_path=ckpt,
            shard=(rank, size),
            **kw,
        )
        parts: list[Any] = [None] * size
        dist.all_gather_object(parts, (part.records, part.timings))
        if rank != 0:
            return None
        records = merge_records([p[0] for p in parts])
        fwd = np.max([p[1]["eval_s_by_res"] for p in parts], axis=0)  # ranks run in parallel
        net = model.model if hasattr(model, "model") else model
        flops = flops_table(net, records.resolutions, part.reference)
        part.records = records
        part.rows = summarize(records, part.reference, flops, fwd)
        part.timings = {
            "total_s": max(p[1]["total_s"] for p in parts),
            "eval_s": float(fwd.sum()),
            "eval_s_by_res": [float(f) for f in fwd],
            "world_size": size,
        }
        return part
    finally:
        dist.barrier()


def shutdown() -> None:
    """Called once at the end of a torchrun process (a sweep may run twice, e.g. with BN recal)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
