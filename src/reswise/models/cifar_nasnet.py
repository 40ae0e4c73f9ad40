"""NASNet-A for CIFAR-10 (Zoph et al. 2018, Fig. 4), following TF-slim ``nasnet.py``/``nasnet_utils.py``.

Layout (``build_nasnet_cifar``): 3x3 stem conv of ``stem_multiplier * F`` channels + BN, then N
normal cells, reduction cell, N normal cells, reduction cell, N normal cells; a cell with F
filters per branch outputs 6F (normal) or 4F (reduction) channels, and F doubles at each
reduction, so "NASNet-A (6 @ 768)" is N=6, F=32 (768 = 6 * 4 * 32). Head: ReLU, global average
pool, dropout, linear. The auxiliary head (training only) is left out; drop-path is off by
default.

Padding is TF's dynamic 'SAME' (out = ceil(in / stride), extra pixel bottom/right, pooling
ignores padded pixels), so every input size works and FLOPs scale with the input area.

``cifar_nasnet_a`` (N=2, F=8: "2 @ 192", 0.11M parameters, 20M MACs at 32x32) is the variant
that trains on 2 CPU cores: a training step (batch 128, 32x32, bf16 autocast, channels_last,
2 threads, idle machine) measured 0.68-0.71 s here, about 4.6 min per 50 000-image epoch
(ResNet-20: 0.13 s). F=16 took 1.33 s/step (8.6 min/epoch), N=1 F=12 0.75 s/step. Timings are
only meaningful on an idle machine: with another job on the 2 cores, 2-thread steps were 25x
slower.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.classes import CIFAR10_NAMES
from ._registry import ModelInfo, jpeg_weights, register_model

# Each block: (left op, left input, right op, right input), summed; the inputs index the cell's
# hidden states, 0 = this cell's input h_i, 1 = the one before it h_{i-1}, 2.. = earlier blocks.
NORMAL = (
    ("sep5", 0, "sep3", 1),
    ("sep5", 1, "sep3", 1),
    ("avg3", 0, "none", 1),
    ("avg3", 1, "avg3", 1),
    ("sep3", 0, "none", 0),
)
NORMAL_CONCAT = (1, 2, 3, 4, 5, 6)
REDUCTION = (
    ("sep5", 0, "sep7", 1),
    ("max3", 0, "sep7", 1),
    ("avg3", 0, "sep5", 1),
    ("none", 3, "avg3", 2),
    ("sep3", 2, "max3", 0),
)
REDUCTION_CONCAT = (3, 4, 5, 6)


def _same_pads(x: torch.Tensor, k: int, s: int) -> tuple[int, int, int, int]:
    """F.pad amounts for TF 'SAME': the odd pixel goes bottom/right."""
    ph, pw = (max((math.ceil(n / s) - 1) * s + k - n, 0) for n in x.shape[-2:])
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


class SamePad(nn.Module):
    def __init__(self, k: int, s: int, value: float = 0.0):
        super().__init__()
        self.k, self.s, self.value = k, s, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, _same_pads(x, self.k, self.s), value=self.value)


def _bn_conv1x1(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)]


class Depthwise(nn.Conv2d):
    """Depthwise conv; under CPU autocast a kernel over 3x3 runs in float32 instead of bfloat16.

    bf16 has no fast CPU kernel for the weight gradient of 5x5/7x7 depthwise convs: measured
    here 40 ms vs 15 ms (16 ch, 32x32, batch 128), 30% of a NASNet-A training step. The math
    and the parameters are the same either way.
    """

    def __init__(self, channels: int, k: int, stride: int):
        # for stride 1 (odd k) TF 'SAME' is the symmetric static padding, which is cheaper
        pad = 0 if stride > 1 else k // 2
        super().__init__(channels, channels, k, stride, pad, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size[0] > 3 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class SepConv(nn.Sequential):
    """ReLU, depthwise kxk, pointwise 1x1, BN (slim.separable_conv2d with depth_multiplier=1)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int):
        pad = [SamePad(k, stride)] if stride > 1 else []
        super().__init__(nn.ReLU(), *pad, Depthwise(cin, k, stride), *_bn_conv1x1(cin, cout))


class Pool(nn.Module):
    """3x3 max/avg pool, 'SAME' padding that the average does not count; 1x1+BN if widths differ."""

    def __init__(self, kind: str, cin: int, cout: int, stride: int):
        super().__init__()
        self.kind, self.stride = kind, stride
        self.proj = nn.Sequential(*_bn_conv1x1(cin, cout)) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        if s == 1 and self.kind == "max":
            y = F.max_pool2d(x, 3, 1, 1)
        elif s == 1:
            y = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        elif self.kind == "max":
            y = F.max_pool2d(F.pad(x, _same_pads(x, 3, s), value=-math.inf), 3, s)
        else:  # asymmetric padding: divide by the count of real pixels in each window
            pads = _same_pads(x, 3, s)
            count = F.avg_pool2d(F.pad(x.new_ones(1, 1, *x.shape[-2:]), pads), 3, s)
            y = F.avg_pool2d(F.pad(x, pads), 3, s) / count
        return self.proj(y)


def _op(name: str, cin: int, cout: int, stride: int) -> nn.Module:
    if name.startswith("sep"):  # TF 'separable_kxk_2': the separable conv is applied twice
        k = int(name[3:])
        return nn.Sequential(SepConv(cin, cout, k, stride), SepConv(cout, cout, k, 1))
    if name in ("avg3", "max3"):
        return Pool(name[:3], cin, cout, stride)
    if stride > 1 or cin != cout:  # 'none' (identity) that must still match shape
        return nn.Sequential(nn.ReLU(), *_bn_conv1x1(cin, cout, stride))
    return nn.Identity()


class FactorizedReduction(nn.Module):
    """Halve the size without dropping pixels: two 1x1 convs on the two offset sub-grids."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__()
        self.stride = stride
        if stride == 1:
            self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        else:
            self.path1 = nn.Conv2d(cin, cout // 2, 1, bias=False)
            self.path2 = nn.Conv2d(cin, cout - cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return self.bn(self.conv(x))
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))  # odd sizes: last row/col meets a zero
        y = torch.cat([self.path1(x[:, :, ::2, ::2]), self.path2(shifted[:, :, ::2, ::2])], 1)
        return self.bn(y)


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if p <= 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class Cell(nn.Module):
    """One NASNet-A cell; ``prev_channels`` is None for the first cell (h_{i-1} := h_i, as TF)."""

    def __init__(
        self,
        reduction: bool,
        prev_channels: int | None,
        channels: int,
        filters: int,
        prev_is_larger: bool,
    ):
        super().__init__()
        spec, concat = (REDUCTION, REDUCTION_CONCAT) if reduction else (NORMAL, NORMAL_CONCAT)
        self.spec, self.concat, self.drop_prob = spec, concat, 0.0
        # bring h_{i-1} to h_i's size and F filters (TF _reduce_prev_layer)
        self.adjust: nn.Module = nn.Identity()
        if prev_is_larger:
            self.adjust = nn.Sequential(nn.ReLU(), FactorizedReduction(prev_channels, filters))
        elif prev_channels is not None and prev_channels != filters:
            self.adjust = nn.Sequential(nn.ReLU(), *_bn_conv1x1(prev_channels, filters))
        self.base = nn.Sequential(nn.ReLU(), *_bn_conv1x1(channels, filters))
        widths = [filters, channels if prev_channels is None else filters] + [filters] * len(spec)
        stride = 2 if reduction else 1
        self.ops = nn.ModuleList(
            _op(op, widths[i], filters, stride if i < 2 else 1)
            for left_op, left, right_op, right in spec
            for op, i in ((left_op, left), (right_op, right))
        )
        # concatenated states still at the input's size or width (TF _combine_unused_states)
        self.fix = nn.ModuleDict(
            {
                str(i): FactorizedReduction(widths[i], filters, stride)
                for i in concat
                if i < 2 and (reduction or widths[i] != filters)
            }
        )
        self.out_channels = filters * len(concat)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        states = [self.base(x), x if prev is None else self.adjust(prev)]
        for b, (left_op, left, right_op, right) in enumerate(self.spec):
            h = 0
            for j, (name, i) in enumerate(((left_op, left), (right_op, right))):
                y = self.ops[2 * b + j](states[i])
                h = h + (y if name == "none" else _drop_path(y, self.drop_prob, self.training))
            states.append(h)
        out = [
            self.fix[str(i)](states[i]) if str(i) in self.fix else states[i] for i in self.concat
        ]
        return torch.cat(out, 1)


class NASNetCifar(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        num_cells: int = 6,
        num_filters: int = 32,
        stem_multiplier: float = 3.0,
        filter_scaling_rate: float = 2.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if num_cells < 1:
            raise ValueError(f"NASNet needs at least one normal cell per stage, got {num_cells}")
        stem = int(num_filters * stem_multiplier)
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem))
        cells: list[Cell] = []
        prev, cur, scaling = None, stem, 1.0
        for stage in range(3):
            kinds = ([True] if stage else []) + [False] * num_cells
            if stage:
                scaling *= filter_scaling_rate
            for reduction in kinds:
                larger = bool(cells) and cells[-1].spec is REDUCTION
                cells.append(Cell(reduction, prev, cur, int(num_filters * scaling), larger))
                prev, cur = cur, cells[-1].out_channels
        self.cells = nn.ModuleList(cells)
        for i, c in enumerate(cells):  # TF drop_connect 'v2': deeper cells drop more
            c.drop_prob = drop_path * (i + 1) / len(cells)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(cur, num_classes)
        self.num_features = cur
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        prev, x = None, self.stem(x)
        for cell in self.cells:
            prev, x = x, cell(x, prev)
        return F.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1)
        return self.linear(self.dropout(x))


_CONFIGS = {
    "cifar_nasnet_a": {"num_cells": 2, "num_filters": 8},  # CPU-trainable, see above
    "cifar_nasnet_a_6_768": {"num_cells": 6, "num_filters": 32},  # the paper's 3.3M model
}


# Weights reswise trained on ../shared/datasets/cifar10-jpeg/train (card beside the file); first
# = default. The multires one runs at several sizes: private BN per extra training resolution.
_RESWISE = {
    "cifar_nasnet_a": (
        jpeg_weights(
            "reswise_jpeg",
            "cifar_nasnet_a-45a747d4.pt",
            "45a747d4ec4e5e9e3d3bf525348b90db571a83cdb6fb1f357a7d1754cf9dbf81",
            86.30,
            "trained from scratch 30 epochs (CPU + H200); card: cifar_nasnet_a.md",
        ),
        jpeg_weights(
            "reswise_jpeg_multires",
            "cifar_nasnet_a_multires-34496f2b.pt",
            "34496f2b0e4520de5f408ef77454a1099de74bad290d756260f5af3cbabfc55c",
            86.71,
            "reswise_jpeg fine-tuned 8 epochs at 32, 24, 20, 16 (H200 + CPU; private BN, "
            "distilled); card: cifar_nasnet_a_multires.md",
        ),
        jpeg_weights(
            "reswise_jpeg_specialists",
            "cifar_nasnet_a_specialists-e4aaab3e.pt",
            "e4aaab3e42641af83c4b4f7f107a0ae2a6d3d5347ef96a76fdc19785f2c3fa06",
            86.30,
            "reswise_jpeg unchanged at 32 + a specialist at 20 distilled from it without labels, "
            "9 epochs on the CPU; card: cifar_nasnet_a_specialists.md",
        ),
    ),
}


def _register(name: str, defaults: dict[str, int]) -> None:
    ws = _RESWISE.get(name, ())
    info = ModelInfo(
        name=name,
        family="cifar_nasnet",
        task="cifar",
        input_size=32,
        num_classes=10,
        min_size=4,  # two reductions; smaller inputs are 1x1 before the last stage
        weights=ws,
        default_weights=ws[0].tag if ws else None,
        class_names=CIFAR10_NAMES,
    )

    @register_model(info)
    def build(num_classes: int = 10, **kw) -> nn.Module:
        return NASNetCifar(num_classes, **{**defaults, **kw})


for _name, _cfg in _CONFIGS.items():
    _register(_name, _cfg)
