"""Model registry; importing it registers every family."""

from . import cifar_mobilenet, cifar_nasnet, cifar_resnet, imagenet  # noqa: F401  (registration side effects)
from ._registry import (
    LoadedModel,
    ModelInfo,
    Weights,
    create_model,
    list_models,
    load_state_dict,
    model_info,
    register_model,
    register_resolver,
)

__all__ = [
    "LoadedModel",
    "ModelInfo",
    "Weights",
    "create_model",
    "list_models",
    "load_state_dict",
    "model_info",
    "register_model",
    "register_resolver",
]
