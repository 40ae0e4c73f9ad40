"""One function per job, each what a CLI command does, callable from Python alone.

    import reswise
    run = reswise.run_sweep(reswise.SweepConfig(model="cifar_resnet20", dataset="imagefolder",
                            data_root="../shared/datasets/cifar10-jpeg/test",
                            resolutions=[32, 28, 24, 20, 16, 12], out="runs/r20"))
    reswise.select(run, max_drop=1.0).to_dict()

Data flows one way: images -> records (``run_sweep``, here) -> choices (``reswise.choose.choices``)
-> files. The CLI parses flags into these calls and prints what they return; nothing here reads
flags or prints.
"""

from .sweep import (
    SweepConfig,
    default_data_root,
    load_calib,
    load_data,
    load_model,
    load_run,
    policy_for,
    run_auto_crop,
    run_sweep,
    save_run,
)
from .tools import (
    adapt_checkpoint,
    export_checked,
    export_policy_checked,
    flops_report,
    recalibrate_checkpoint,
)

__all__ = [
    "SweepConfig",
    "adapt_checkpoint",
    "default_data_root",
    "export_checked",
    "export_policy_checked",
    "flops_report",
    "load_calib",
    "load_data",
    "load_model",
    "load_run",
    "policy_for",
    "recalibrate_checkpoint",
    "run_auto_crop",
    "run_sweep",
    "save_run",
]
