"""reswise: what a smaller input image saves a trained CNN (FLOPs, time) and costs (accuracy).

import reswise
lm = reswise.create_model("cifar_resnet56", pretrained=True)
data = reswise.load_dataset("imagefolder", "../shared/datasets/cifar10-jpeg/test")
result = reswise.sweep(lm, data, [32, 28, 24, 20, 16, 12])
print(result.rows)
"""

from .data import ResizePolicy, load_dataset
from .errors import ReswiseError
from .evaluate import Records, SweepResult, sweep
from .flops import FlopAnalysis, flops_table
from .models import create_model, list_models, model_info, register_model

__all__ = [
    "FlopAnalysis",
    "Records",
    "ResizePolicy",
    "ReswiseError",
    "SweepResult",
    "create_model",
    "flops_table",
    "list_models",
    "load_dataset",
    "model_info",
    "register_model",
    "sweep",
]
__version__ = "0.1.0"
