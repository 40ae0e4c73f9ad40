"""When training runs under bfloat16 autocast: where the device computes it natively, and by
default only for model families measured faster under it."""

from __future__ import annotations

from typing import Any

import torch

# families whose training step is slower under bf16 autocast even where the CPU computes bf16
# natively (depthwise convolutions): EfficientNet-Lite0 at 96, batch 64, images/s bf16 / fp32 =
# 0.66 for a specialist step, 0.80 multi-resolution (AMD EPYC, AVX-512 bf16; 0.78 vs 0.61-0.66
# s per step on an Intel Xeon with AMX); ResNet-20: 1.45 (benchmarks/bench_train.py)
BF16_SLOWER = ("efficientnet_lite",)


def bf16_pays(family: str) -> bool:
    """Whether ``train`` turns bf16 autocast on by default for a model of ``family``."""
    return family not in BF16_SLOWER


def _cpu_has_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast_dtype(dev: torch.device, cfg: Any) -> torch.dtype | None:
    """bfloat16 when ``cfg.bf16`` and the device computes it natively, else None (fp32).

    No float16 fallback: it would need a gradient scaler, and fp32 is the safe default.
    """
    if not cfg.bf16:
        return None
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if dev.type == "cpu" and _cpu_has_bf16() else None
