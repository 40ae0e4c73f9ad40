"""MobileNetV2 (Sandler et al. 2018) for 32x32 inputs, as in kuangliu/pytorch-cifar.

The CIFAR changes are the usual ones: the stem conv and the second stage use stride 1, so the
network's overall stride is 8 (a 4x4 map before pooling at 32x32) instead of 32. The blocks are
the paper's inverted residuals (ReLU6, no expansion conv when t=1, identity shortcut only when
shape is kept), and widths follow torchvision: scaled channels rounded to a multiple of 8, the
last 1280 only ever scaled up.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..data.classes import CIFAR10_NAMES
from ._registry import ModelInfo, jpeg_weights, register_model

# (expansion t, channels c, blocks n, first stride s); torchvision's table with s=1 for c=24
CIFAR_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: nearest multiple, never more than 10% below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)]
    return nn.Sequential(*layers, nn.BatchNorm2d(cout), *([nn.ReLU6(inplace=True)] if act else []))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            *([_conv_bn(cin, hidden, 1)] if expand != 1 else []),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, cout, 1, act=False),  # linear bottleneck
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.0):
        super().__init__()
        cin = make_divisible(32 * width_mult)
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, 1)]
        for t, c, n, s in CIFAR_CFG:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn(cin, self.num_features, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.num_features, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x).mean((2, 3))
        return self.classifier(x)


# first = default. The multires one runs at several sizes: shared convolutions, private BN per
# extra training resolution, stored in the same file.
_RESWISE = {
    "cifar_mobilenetv2_050": (
        jpeg_weights(
            "reswise_jpeg",
            "cifar_mobilenetv2_050-6c6d0a28.pt",
            "6c6d0a284c045cd6da4b3bbaa79d46c877c80912f834a94de00ef8a081db8b8f",
            87.38,
            "trained from scratch 30 epochs (H200 + CPU); card: cifar_mobilenetv2_050.md",
        ),
        jpeg_weights(
            "reswise_jpeg_multires",
            "cifar_mobilenetv2_050_multires-12893d8f.pt",
            "12893d8f53f83a37a12e474f9027441a02586b5502d517fc8f0556bf91691106",
            87.82,
            "reswise_jpeg fine-tuned 10 epochs at 32, 24, 20, 16 on a GPU (private BN, "
            "distilled); card: cifar_mobilenetv2_050_multires.md",
        ),
        jpeg_weights(
            "reswise_jpeg_specialists",
            "cifar_mobilenetv2_050_specialists-7ed45314.pt",
            "7ed453148d75c7c99620d2cde1a72a29bed869fd4fcf32365a2b6aec0dba738e",
            87.38,
            "reswise_jpeg unchanged at 32 + a specialist at 24 distilled from it without "
            "labels, 5 + 10 epochs on the CPU; card: cifar_mobilenetv2_050_specialists.md",
        ),
    ),
}


def _register(name: str, width: float) -> None:
    ws = _RESWISE.get(name, ())
    info = ModelInfo(
        name=name,
        family="cifar_mobilenet",
        task="cifar",
        input_size=32,
        num_classes=10,
        min_size=4,  # three stride-2 stages; smaller inputs are 1x1 before the last one
        weights=ws,
        default_weights=ws[0].tag if ws else None,
        class_names=CIFAR10_NAMES,
    )

    @register_model(info)
    def build(num_classes: int = 10, **kw) -> nn.Module:
        return CifarMobileNetV2(num_classes, **{"width_mult": width, **kw})


_register("cifar_mobilenetv2", 1.0)
_register("cifar_mobilenetv2_050", 0.5)
