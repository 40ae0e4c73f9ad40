"""The public API does not move when modules do: every name and module path that README and
docs show still works, and the old paths are the very modules of their new homes."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import reswise

NAMES = [
    "run_sweep",
    "SweepConfig",
    "load_run",
    "select",
    "cascade",
    "cascade_headroom",
    "compare_policies",
    "random_choice",
    "flops_report",
    "measure_latency",
    "export_checked",
    "recalibrate_checkpoint",
    "adapt_checkpoint",
    "create_model",
    "load_dataset",
    "sweep",
    "FlopAnalysis",
    "AdaptiveClassifier",
    "Records",
    "SweepResult",
    "Budget",
    "load_policy",
    "export_policy",
    "measure_policy_latency",
    "ReswiseError",
]

# old path -> new home; each old one was shown in README or a model card
PATHS = {
    "reswise.runtime": "reswise.ship.runtime",
    "reswise.pipeline": "reswise.pipeline",
    "reswise.reproduce": "reswise.measure.reproduce",
    "reswise.policies": "reswise.choose.policies",
    "reswise.policies.split": "reswise.choose.policies.split",
    "reswise.records": "reswise.records",
    "reswise.choices": "reswise.choose.choices",
    "reswise.policy_file": "reswise.ship.policy_file",
    "reswise.export_cascade": "reswise.ship.export",
    "reswise.adapt": "reswise.finetune.adapt",
    "reswise.doctor": "reswise.measure.doctor",
}


@pytest.mark.parametrize("name", NAMES)
def test_every_documented_name_is_on_the_package(name):
    assert callable(getattr(reswise, name)) or isinstance(getattr(reswise, name), type)
    assert name in dir(reswise)


@pytest.mark.parametrize("old,new", PATHS.items())
def test_old_module_paths_are_the_new_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    module = importlib.import_module(old)
    assert module.__spec__.name == new  # the alias did not overwrite the module's own spec


def test_from_old_paths_import_names():
    from reswise.adapt import adapt_one
    from reswise.policies import calib_heldout_split
    from reswise.runtime import OnnxCascade

    from reswise.records import confidence

    assert all(callable(f) for f in (adapt_one, calib_heldout_split, confidence, OnnxCascade))


def test_unknown_names_and_paths_still_fail():
    with pytest.raises(AttributeError):
        reswise.not_a_name  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("reswise.not_a_module")


@pytest.mark.parametrize(
    "code",
    [
        "import reswise.runtime",
        "from reswise.runtime import OnnxCascade",
        "import reswise.policies.cascade",
        "from reswise import select, cascade, Records",
        "import reswise; reswise.choices; reswise.policy_file",
    ],
)
def test_old_paths_stay_torch_free(code):
    check = f"{code}\nimport sys; assert 'torch' not in sys.modules, 'torch imported'"
    p = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
