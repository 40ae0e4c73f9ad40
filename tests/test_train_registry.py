"""Trained weights register with their own native input size (a Lite0 fine-tuned at 96 is a
96-pixel model), and ``reswise models --json`` lists it per weights entry (issue 22)."""

from __future__ import annotations

import json

import torch

from reswise.cli import main
from reswise.models import _registry as reg
from reswise.models.cifar_resnet import CifarResNet


def test_weights_carry_their_input_size_into_models_json_and_the_loaded_model(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("RESWISE_WEIGHTS", str(tmp_path))
    (tmp_path / "cifar10-jpeg").mkdir()
    torch.save(CifarResNet(20).state_dict(), tmp_path / "cifar10-jpeg" / "r20_at_24.pt")
    at24 = reg.jpeg_weights("at24", "r20_at_24.pt", None, 80.0, "trained at 24", input_size=24)
    info = reg.ModelInfo(name="zz_r20_test", family="cifar_resnet", task="cifar", input_size=32,
                         num_classes=10, weights=(at24,), default_weights="at24")  # fmt: skip
    monkeypatch.setitem(reg._INFO, info.name, info)
    monkeypatch.setitem(
        reg._BUILDERS, info.name, lambda num_classes=10: CifarResNet(20, num_classes)
    )
    assert main(["models", "--filter", "*", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    (w,) = rows["zz_r20_test"]["weights"]
    assert w["input_size"] == 24 and w["dataset"] == "CIFAR-10 (JPEG copy)"
    assert rows["zz_r20_test"]["input_size"] == 32  # the architecture's own
    # weights without their own size take the model's
    assert {x["input_size"] for x in rows["cifar_resnet20"]["weights"]} == {32}
    lm = reg.create_model("zz_r20_test", pretrained="at24")
    assert lm.info.input_size == 24  # sweeps take 24 as the reference resolution
    assert reg.create_model("zz_r20_test", pretrained=False).info.input_size == 32
