"""reswise: what a smaller input image saves a trained CNN (FLOPs, time) and costs (accuracy).

import reswise
lm = reswise.create_model("cifar_resnet56", pretrained=True)
data = reswise.load_dataset("imagefolder", "../shared/datasets/cifar10-jpeg/test")
result = reswise.sweep(lm, data, [32, 28, 24, 20, 16, 12])
print(result.rows)

The house follows the journey: ``data``/``models`` (inputs) -> ``measure`` (the sweep, records)
-> ``choose`` (resolutions, numpy only) -> ``ship`` (policy file, ONNX stages, torch-free
runtime), with ``finetune`` beside. Names are loaded on first use (PEP 562): ``import
reswise.choose`` or ``reswise.records`` pulls in numpy only. Module paths of earlier releases
(``reswise.runtime``, ``reswise.policies``, ...) are aliases of their new homes, resolved on
import by a finder below, so they too load nothing until asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

from .errors import ReswiseError

# public name -> module that defines it
_LAZY = {
    "Records": "records",
    "SweepResult": "records",
    "SIGNALS": "records",
    "ResizePolicy": "data",
    "load_dataset": "data",
    "sweep": "measure.evaluate",
    "FlopAnalysis": "measure.flops",
    "flops_table": "measure.flops",
    "measure_latency": "measure.latency",
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
    "random_choice": "choose.choices",
    "Budget": "choose.choices",
    "select": "choose.choices",
    "cascade": "choose.choices",
    "cascade_headroom": "choose.choices",
    "compare_policies": "choose.choices",
    "pareto_front": "choose.frontier",
    "choose_crops": "choose.crops",
    "select_resolution": "choose.policies",
    "search_cascade": "choose.policies",
    "random_resolution": "choose.policies",
    "oracle": "choose.policies",
    "AdaptiveClassifier": "ship.adaptive",
    "load_policy": "ship.policy_file",
    "export_policy": "ship.export",
    "measure_policy_latency": "ship.latency",
    "export_onnx": "measure.onnx",
}

# module paths that README showed before the stages had folders -> where they live now
_MOVED = {
    "adapt": "finetune.adapt",
    "adaptive": "ship.adaptive",
    "cascade_latency": "ship.latency",
    "choices": "choose.choices",
    "doctor": "measure.doctor",
    "export_cascade": "ship.export",
    "policies": "choose.policies",
    "policy_file": "ship.policy_file",
    "reproduce": "measure.reproduce",
    "runtime": "ship.runtime",
}

__all__ = ["ReswiseError", *sorted(_LAZY)]
__version__ = "0.1.0"


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import reswise.runtime`` (and ``reswise.policies.split``) gives the very module object
    of its new home, so there is one module per file and no stub files to keep in step."""

    def _target(self, fullname: str) -> str | None:
        head, _, tail = fullname.partition(".")[2].partition(".")
        if not fullname.startswith(f"{__name__}.") or head not in _MOVED:
            return None
        return f"{__name__}.{_MOVED[head]}" + (f".{tail}" if tail else "")

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        real = self._target(fullname)
        return importlib.util.spec_from_loader(fullname, self) if real else None

    def create_module(self, spec: Any) -> ModuleType:
        module = importlib.import_module(self._target(spec.name))
        spec.loader_state = module.__spec__  # the import system stamps the alias spec on it
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state  # give the module back its own spec


if not any(isinstance(f, _Aliases) for f in sys.meta_path):
    sys.meta_path.insert(0, _Aliases())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _MOVED:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'reswise' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_MOVED])
