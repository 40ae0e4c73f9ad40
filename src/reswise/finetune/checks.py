"""What ``train`` refuses before any work: flags, memory, destination.

A run that will fail should fail in its first second, not after an hour of training: every
number a flag gives is checked for range and finiteness, the largest training resolution for
memory (the sweep's estimate, scaled to what a training step keeps), and ``--out`` with its
resume state for being writable files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ReswiseError
from ..measure.inference import available_memory, layer_outputs
from ..records.rundir import check_destination
from .specialist import check_specialists


def _positive(value: float, flag: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ReswiseError(f"{flag} must be a positive number, got {value}")


def check_flags(cfg: Any, native: int) -> None:
    """Refuse a config no run can train with (``native``: the model's input size)."""
    if cfg.epochs <= 0:
        raise ReswiseError(f"--epochs must be positive, got {cfg.epochs}")
    if cfg.batch_size <= 0:
        raise ReswiseError(f"--batch-size must be positive, got {cfg.batch_size}")
    _positive(cfg.lr, "--lr")
    if not (math.isfinite(cfg.warmup_epochs) and 0 <= cfg.warmup_epochs <= cfg.epochs):
        raise ReswiseError(
            f"--warmup-epochs must be between 0 and --epochs ({cfg.epochs}), got {cfg.warmup_epochs}"
        )
    if not (math.isfinite(cfg.label_smoothing) and 0 <= cfg.label_smoothing < 1):
        raise ReswiseError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ReswiseError(f"weight decay must be 0 or more, got {cfg.weight_decay}")
    if cfg.specialists and cfg.train_resolutions:
        raise ReswiseError(
            "--specialists and --train-resolutions are two ways to train for smaller images; "
            "pick one (specialists leave the model untouched and need no labels)"
        )
    if cfg.specialists:
        check_specialists(cfg.specialists, native)
        _positive(cfg.temperature, "--temperature")
    if not (math.isfinite(cfg.largest_weight) and 0 <= cfg.largest_weight < 1):
        raise ReswiseError(f"--largest-weight must be in [0, 1), got {cfg.largest_weight}")
    _check_unused(cfg)
    bad = [r for r in cfg.train_resolutions if r <= 0]
    if bad:
        raise ReswiseError(f"--train-resolutions must be positive, got {bad[0]}")


def _check_unused(cfg: Any) -> None:
    """Refuse flags that the run's recipe would ignore (they ran without effect, exit 0)."""
    d = type(cfg)()
    multi_only = {"--distill": cfg.distill, "--shared-bn": not cfg.private_bn,
                  "--sandwich-k": cfg.sandwich_k != d.sandwich_k,
                  "--largest-weight": cfg.largest_weight != d.largest_weight}  # fmt: skip
    used = [flag for flag, on in multi_only.items() if on]
    if used and len(cfg.train_resolutions) < 2:
        instead = "specialists always learn the model's outputs" if cfg.specialists else \
            "this run trains at one resolution"  # fmt: skip
        raise ReswiseError(
            f"{used[0]} is for multi-resolution training (--train-resolutions 32,24,16); "
            f"{instead}: drop {used[0]}"
        )
    if cfg.specialists and not cfg.specialist_labels and cfg.label_smoothing != d.label_smoothing:
        raise ReswiseError(
            "--label-smoothing smooths the labels' cross-entropy, but these specialists use no "
            "labels; add --labels (class folders) or drop --label-smoothing"
        )
    if not cfg.specialists and cfg.temperature != d.temperature:
        raise ReswiseError(
            "--temperature goes with --specialists (the distillation's softmax temperature); "
            "drop it or add --specialists"
        )


def check_batches(cfg: Any, n: int, world: int) -> None:
    """Every batch of the ``n`` images can be shared by the ``world`` processes."""
    if 0 < n % cfg.batch_size < world or cfg.batch_size < world:
        raise ReswiseError(
            f"a batch of {min(n % cfg.batch_size or cfg.batch_size, cfg.batch_size)} images "
            f"cannot be shared by {world} processes; pick --batch-size so that every batch of "
            f"the {n} images has at least {world}"
        )


def training_values(net: nn.Module, resolution: int) -> int:
    """Values a training step keeps per image at ``resolution``: every layer's output, kept
    for backward (gradients live one layer at a time), and the input."""
    return int(sum(layer_outputs(net, resolution))) + 3 * resolution * resolution


def check_train_memory(net: nn.Module, resolutions: list[int], batch_size: int) -> None:
    """Refuse, before any work, a training resolution whose step cannot fit in memory (one
    resolution's graph is alive at a time: each backward frees its own)."""
    r = max(resolutions)
    need = 4 * batch_size * training_values(net, r)
    avail = available_memory()
    if need > 0.8 * avail:
        fits = int(0.8 * avail // (need / batch_size))
        hint = f"--batch-size {fits}" if fits >= 1 else "a smaller resolution"
        raise ReswiseError(
            f"training at {r}x{r} needs about {need / 2**30:.1f} GiB for a batch of "
            f"{batch_size} but {avail / 2**30:.1f} GiB are free; use {hint}"
        )


def state_path(out: Path) -> Path:
    """The resumable state beside the weights ``out``."""
    return out.with_suffix(out.suffix + ".state")


def check_out(out: str | Path) -> None:
    """``--out`` and its resume state can be written (a folder or a path under a file cannot)."""
    out = Path(out)
    if out.with_suffix(".md") == out:  # the card is written beside the weights under that name
        raise ReswiseError(
            f"--out {out}: the model card is written beside the weights as {out.stem}.md and "
            f"would replace them; give the weights another name, e.g. {out.with_suffix('.pt')}"
        )
    check_destination(out, "--out")
    check_destination(state_path(out), "--out")


def preflight(lm: Any, cfg: Any, out: str | Path, n: int | None = None) -> None:
    """Everything ``train`` can refuse before touching the data: flags, memory (for batches of
    ``cfg.batch_size``, or of ``n`` images when the data holds fewer), ``--out``."""
    native = lm.info.input_size
    check_flags(cfg, native)
    if cfg.specialists and lm.weights == "random init":  # they would learn a random model's noise
        raise ReswiseError(
            "--specialists distil the model's own outputs, but it has random weights; give "
            "the trained model (--pretrained TAG or --checkpoint FILE)"
        )
    check_out(out)
    res = [*(cfg.train_resolutions or [native]), *cfg.specialists]
    check_train_memory(lm.model, res, min(cfg.batch_size, n or cfg.batch_size))
