"""Training shows images/s and the time left, and autocasts to bfloat16 only where the device
supports it, on a GPU as on the CPU (issue 22)."""

from __future__ import annotations

import re

import torch

from reswise import create_model, load_dataset
from reswise.finetune import autocast as autocast_mod
from reswise.finetune.train import TrainConfig, autocast_dtype, train

from .conftest import make_imagefolder


def test_the_progress_bar_counts_images_per_second_and_the_time_left(tmp_path, capsys):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=4))
    cfg = TrainConfig(epochs=1, batch_size=4, channels_last=False)
    train(create_model("cifar_resnet20", pretrained=False), data, cfg, tmp_path / "m.pt",
          progress=True, log=lambda m: None)  # fmt: skip
    err = capsys.readouterr().err
    assert "img/s" in err and "/12 [" in err  # 12 images, not 3 steps
    assert re.search(r"\d\d:\d\d<\d\d:\d\d", err)  # elapsed<left


def test_bf16_autocast_only_where_the_device_has_it(monkeypatch):
    cfg = TrainConfig()
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda, cfg) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda, cfg) is None  # fp16 would need a gradient scaler: fp32 instead
    monkeypatch.setattr(autocast_mod, "_cpu_has_bf16", lambda: False)
    assert autocast_dtype(cpu, cfg) is None
    monkeypatch.setattr(autocast_mod, "_cpu_has_bf16", lambda: True)
    assert autocast_dtype(cpu, cfg) == torch.bfloat16
    assert autocast_dtype(cpu, TrainConfig(bf16=False)) is None


def test_the_result_says_which_precision_trained(tmp_path, monkeypatch):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=2))
    monkeypatch.setattr(autocast_mod, "_cpu_has_bf16", lambda: False)
    cfg = TrainConfig(epochs=1, batch_size=8, channels_last=False)
    done = train(create_model("cifar_resnet20", pretrained=False), data, cfg, tmp_path / "m.pt",
                 progress=False, log=lambda m: None)  # fmt: skip
    assert done["autocast"] == "off"
