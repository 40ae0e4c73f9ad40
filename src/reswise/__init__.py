"""reswise: what a smaller input image saves a trained CNN (FLOPs, time) and costs (accuracy).

import reswise
lm = reswise.create_model("cifar_resnet56", pretrained=True)
data = reswise.load_dataset("imagefolder", "../shared/datasets/cifar10-jpeg/test")
result = reswise.sweep(lm, data, [32, 28, 24, 20, 16, 12])
print(result.rows)

Names are loaded on first use (PEP 562): ``import reswise.policies`` or ``reswise.records``
pulls in numpy only, so choosing from records (and a torch-free runtime) needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ReswiseError

# public name -> module that defines it
_LAZY = {
    "Records": "records",
    "SweepResult": "records",
    "SIGNALS": "records",
    "ResizePolicy": "data",
    "load_dataset": "data",
    "sweep": "evaluate",
    "FlopAnalysis": "flops",
    "flops_table": "flops",
    "create_model": "models",
    "list_models": "models",
    "model_info": "models",
    "register_model": "models",
    "SweepConfig": "pipeline",
    "run_sweep": "pipeline",
    "load_run": "pipeline",
    "save_run": "pipeline",
    "flops_report": "pipeline",
    "recalibrate_checkpoint": "pipeline",
    "adapt_checkpoint": "pipeline",
    "export_checked": "pipeline",
    "random_choice": "choices",
    "Budget": "choices",
    "select": "choices",
    "cascade": "choices",
    "cascade_headroom": "choices",
    "compare_policies": "choices",
    "pareto_front": "frontier",
    "choose_crops": "crops",
    "measure_latency": "latency",
    "AdaptiveClassifier": "adaptive",
    "load_policy": "policy_file",
    "export_policy": "export_cascade",
    "measure_policy_latency": "cascade_latency",
    "export_onnx": "export",
    "select_resolution": "policies",
    "search_cascade": "policies",
    "random_resolution": "policies",
    "oracle": "policies",
}

__all__ = ["ReswiseError", *sorted(_LAZY)]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'reswise' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
