"""Running a model for inference: the device check, BN folding, and the shapes it can take.

One place for what sweep, latency, export, adapt and train all need before the first forward.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ReswiseError
from ..models import ModelInfo


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first CUDA GPU when there is one, else the CPU; a clear error otherwise.

    One check for every command that takes ``--device`` (sweep, latency, train).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ReswiseError(f"--device {name!r} is not a device; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReswiseError("--device cuda but no CUDA GPU is visible here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ReswiseError(f"--device {name!r} is not supported; use auto, cpu or cuda")
    return dev


def fold_for_inference(model: nn.Module, channels_last: bool = True) -> tuple[nn.Module, str]:
    """Fold BatchNorm into the preceding convolutions (torch.fx) and use channels-last.

    Returns a new module and a description of what was applied. A model torch.fx cannot trace
    (data-dependent Python in ``forward``) keeps its BatchNorm and runs eagerly.
    """
    from torch.fx.experimental.optimization import fuse

    applied = []
    try:
        fast = fuse(copy.deepcopy(model).eval())
        applied.append("conv-bn folded")
    except Exception:  # torch.fx raises many types for untraceable code
        fast = copy.deepcopy(model).eval()
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
        applied.append("channels-last")
    return fast, ", ".join(applied) or "eager"


def default_batch_size(resolution: int) -> int:
    """Measured here: small batches keep activations in cache (128 beats 500 by ~1.5x at 32x32)."""
    return 128 if resolution <= 64 else 32


def check_resolutions(info: ModelInfo | None, resolutions: list[int]) -> None:
    if info is None:
        return
    small = [r for r in resolutions if r < info.min_size]
    if small:
        raise ReswiseError(
            f"resolution {small[0]} is too small for {info.name}: its downsampling needs at least "
            f"{info.min_size}x{info.min_size}; use resolutions >= {info.min_size}"
        )


def available_memory() -> int:
    """Bytes this process can still allocate (MemAvailable, bounded by a cgroup limit)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def layer_outputs(net: nn.Module, resolution: int) -> list[float]:
    """Elements per image of every leaf layer's output at ``resolution``, in call order.

    Measured with forward hooks at a small probe size and scaled by area, so a request for a
    huge resolution is judged before anything of that size is allocated.
    """
    probe = min(resolution, 64)
    sizes: list[int] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output[0].numel())

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    param = next(net.parameters(), None)
    x = torch.zeros(1, 3, probe, probe, device=param.device if param is not None else "cpu")
    was_training = net.training
    try:
        with torch.inference_mode():
            net.eval()(x)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    scale = (resolution / probe) ** 2
    return [n * scale for n in sizes]


def activation_elements(net: nn.Module, resolution: int) -> tuple[int, int]:
    """Largest single activation and the input, in elements per image, at ``resolution``."""
    return int(max(layer_outputs(net, resolution), default=0)), 3 * resolution * resolution


def check_memory(
    info: ModelInfo | None, net: nn.Module, resolutions: list[int], batch_size: int
) -> None:
    """Refuse, before any work, a resolution whose batch cannot fit in memory.

    Estimate per batch: the float input plus three of the largest activation alive at once
    (a layer's input, its output and a residual), 4 bytes each; measured against what the
    machine can still allocate, with a fifth kept free.
    """
    r = max(resolutions)
    act, inp = activation_elements(net, r)
    need = 4 * batch_size * (inp + 3 * act)
    avail = available_memory()
    if need > 0.8 * avail:
        per_image = 4 * (inp + 3 * act)
        fits = int(0.8 * avail // per_image)
        hint = f"--batch-size {fits}" if fits >= 1 else "a smaller resolution"
        raise ReswiseError(
            f"resolution {r} needs about {need / 2**30:.1f} GiB for a batch of {batch_size} "
            f"({act / 1e6:.1f} M values in the largest activation per image) but "
            f"{avail / 2**30:.1f} GiB are free; use {hint}"
        )


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run with ``n`` intra-op threads (None: leave as is), restoring the previous count after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, bounded by a cgroup CPU quota.

    torch's own default counts the machine's cores, which oversubscribes a container or a
    ``taskset`` and makes threads wait on each other.
    """
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n
