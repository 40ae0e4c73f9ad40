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


def test_shipped_weights_of_a_family_that_fetches_its_own_load_by_tag(tmp_path, monkeypatch):
    """A Lite0 fine-tuned on CIFAR-10 at 96 ships like the CIFAR models' weights: its tag loads
    the shipped file (10 outputs named as the file says, 96 native, whole image), not the
    ImageNet weights the family's builder fetches for ``pretrained=True``."""
    from reswise.models.checkpoint import checkpoint_state

    lite = reg._BUILDERS["efficientnet_lite0"]
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck")  # fmt: skip
    torch.manual_seed(0)
    net = lite(pretrained=False, num_classes=10)
    monkeypatch.setenv("RESWISE_WEIGHTS", str(tmp_path))
    (tmp_path / "cifar10-jpeg").mkdir()
    torch.save(checkpoint_state(net.state_dict(), {}, names), tmp_path / "cifar10-jpeg" / "l.pt")
    w = reg.jpeg_weights("c10", "l.pt", None, 90.0, "at 96", input_size=96, crop_pct=1.0)
    info = reg.model_info("efficientnet_lite0")
    monkeypatch.setitem(
        reg._INFO, "efficientnet_lite0", reg.dataclasses.replace(info, weights=(w,))
    )
    lm = reg.create_model("efficientnet_lite0", pretrained="c10")
    assert (lm.info.num_classes, lm.info.class_names) == (10, names)
    assert (lm.info.input_size, lm.info.crop_pct) == (96, 1.0)
    assert lm.weights == "efficientnet_lite0.c10"
    got = lm.model.state_dict()
    assert all(torch.equal(got[k], t) for k, t in net.state_dict().items())
    default = reg.create_model("efficientnet_lite0", pretrained=True)  # the family's own
    assert (default.info.num_classes, default.info.input_size) == (1000, 224)


def test_an_unknown_weights_tag_is_refused_for_families_that_fetch_their_own():
    """``--pretrained reswise_jpg`` (a typo) loaded Lite0's ImageNet weights without a word."""
    import pytest

    from reswise.errors import ReswiseError

    with pytest.raises(ReswiseError, match="no weights 'reswise_jpg'.*--pretrained"):
        reg.create_model("efficientnet_lite0", pretrained="reswise_jpg")


def test_a_native_only_tag_loads_one_file_without_its_per_resolution_state(tmp_path, monkeypatch):
    """One shipped file holds a model and its specialists: the model's tag loads the plain
    weights only (no specialist at 24 to sweep), the specialists' tag loads both."""
    from reswise.models.checkpoint import checkpoint_state

    torch.manual_seed(0)
    model, spec = CifarResNet(20), CifarResNet(20)
    monkeypatch.setenv("RESWISE_WEIGHTS", str(tmp_path))
    (tmp_path / "cifar10-jpeg").mkdir()
    state = checkpoint_state(model.state_dict(), {24: spec.state_dict()})
    torch.save(state, tmp_path / "cifar10-jpeg" / "both.pt")
    plain = reg.jpeg_weights("plain", "both.pt", None, 80.0, "the model", native_only=True)
    both = reg.jpeg_weights("both", "both.pt", None, 80.0, "model + specialist")
    info = reg.ModelInfo(name="zz_r20_both", family="cifar_resnet", task="cifar", input_size=32,
                         num_classes=10, weights=(plain, both), default_weights="plain")  # fmt: skip
    monkeypatch.setitem(reg._INFO, info.name, info)
    monkeypatch.setitem(reg._BUILDERS, info.name, lambda num_classes=10: CifarResNet(20))
    a, b = (reg.create_model(info.name, pretrained=t) for t in ("plain", "both"))
    assert not a.extra and b.extra.resolutions == [24]
    for k, t in model.state_dict().items():
        assert torch.equal(a.model.state_dict()[k], t) and torch.equal(b.model.state_dict()[k], t)
