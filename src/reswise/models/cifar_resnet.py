"""CIFAR ResNets of He et al. 2016 (section 4.2): 3 stages of 16/32/64 channels, option-A shortcuts.

The state_dict keys match the widely used checkpoints in ``../shared/weights/cifar10-resnet``
(``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv1|bn1|conv2|bn2``, ``linear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.classes import CIFAR10_NAMES
from ._registry import ModelInfo, Weights, jpeg_weights, register_model

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad planes//4 channels on each side."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = OptionAShortcut(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _he2016(depth: int, sha: str, top1: float) -> Weights:
    fname = f"resnet{depth}-{sha[:8]}.th"
    return Weights(
        tag="he2016",
        filename=fname,
        sha256=sha,
        url=_AKAMASTER + fname,
        subdir="cifar10-resnet",
        dataset="CIFAR-10 (original)",
        top1=top1,
        notes="akamaster/pytorch_resnet_cifar10, trained on original CIFAR-10 (BSD-2-Clause)",
    )


_SHAS = {
    20: ("12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.73),
    32: ("d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 92.63),
    56: ("4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 93.39),
}


# first = default. The multires ones are built to run at several sizes: shared convolutions,
# private BN per extra training resolution, stored in the same file.
_RESWISE = {
    20: (
        jpeg_weights(
            "reswise_jpeg",
            "cifar_resnet20-b7e33cc6.pt",
            "b7e33cc6754f2c05e5bd3c64ee408b984bd275a0bd62d29761cdaa51d90a47cf",
            88.95,
            "he2016 weights fine-tuned 10 epochs on cifar10-jpeg/train; card: cifar_resnet20.md",
        ),
        jpeg_weights(
            "reswise_jpeg_multires",
            "cifar_resnet20_multires-ded8ef9c.pt",
            "ded8ef9c92fd3673a4243cdf12ea40664ce4e595d2578a79d91af5751566a56f",
            88.81,
            "reswise_jpeg fine-tuned 10 epochs at 32, 24, 20 (private BN, distilled); "
            "card: cifar_resnet20_multires.md",
        ),
        jpeg_weights(
            "reswise_jpeg_multires_v2",
            "cifar_resnet20_multires_v2-216c788a.pt",
            "216c788a0b1986a03473c160fe287745eff7786a4e607ae1e70c455368d5c7d1",
            88.87,
            "reswise_jpeg fine-tuned 30 epochs at 32, 24, 20, 16 on a GPU (private BN, "
            "distilled); card: cifar_resnet20_multires_v2.md",
        ),
        jpeg_weights(
            "reswise_jpeg_specialists",
            "cifar_resnet20_specialists-6ba75fbb.pt",
            "6ba75fbb865a3cdf8b61e23d473df3a6838402fd8fe5914c00d5c356e0d92517",
            88.95,
            "reswise_jpeg unchanged at 32 + specialists at 24, 20, 16 distilled from it without "
            "labels, 15 epochs on the CPU; card: cifar_resnet20_specialists.md",
        ),
    ),
}


def _register(depth: int) -> None:
    weights = _RESWISE.get(depth, ())
    weights += (_he2016(depth, *_SHAS[depth]),) if depth in _SHAS else ()
    info = ModelInfo(
        name=f"cifar_resnet{depth}",
        family="cifar_resnet",
        task="cifar",
        input_size=32,
        num_classes=10,
        min_size=4,  # two stride-2 stages; smaller inputs collapse to 1x1 before stage 3
        weights=weights,
        default_weights=weights[0].tag if weights else None,
        class_names=CIFAR10_NAMES,
    )

    @register_model(info)
    def build(num_classes: int = 10) -> nn.Module:
        return CifarResNet(depth, num_classes)


for _d in (20, 32, 44, 56, 110):
    _register(_d)
