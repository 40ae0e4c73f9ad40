"""Model registry; importing it registers every family."""

from . import cifar_mobilenet, cifar_nasnet, cifar_resnet, imagenet  # noqa: F401  (registration side effects)
from ._registry import (
    LoadedModel,
    ModelInfo,
    Weights,
    create_model,
    finish_loading,
    list_models,
    load_model,
    load_state_dict,
    model_info,
    register_model,
    register_resolver,
)
from .finite import check_finite

__all__ = [
    "LoadedModel",
    "ModelInfo",
    "Weights",
    "check_finite",
    "create_model",
    "finish_loading",
    "list_models",
    "load_model",
    "load_state_dict",
    "model_info",
    "register_model",
    "register_resolver",
]
