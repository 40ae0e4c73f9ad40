"""reswise's extra checkpoint state: one encoder/decoder, decoded once by create_model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reswise.errors import ReswiseError
from reswise.models import create_model
from reswise.models.checkpoint import (
    PREFIX,
    ExtraState,
    checkpoint_state,
    save_checkpoint,
    split_checkpoint,
)
from reswise.models.cifar_resnet import CifarResNet


def _bn_at(model: torch.nn.Module, shift: float) -> dict[str, torch.Tensor]:
    return {k: v + shift for k, v in model.state_dict().items() if k.endswith("running_mean")}


def test_encode_decode_round_trip():
    model = CifarResNet(20)
    per_res = {24: _bn_at(model, 1.0), 16: {**_bn_at(model, 2.0), "linear.bias": torch.ones(10)}}
    state = checkpoint_state(model.state_dict(), per_res)
    assert f"{PREFIX}24.bn1.running_mean" in state and "bn1.running_mean" in state
    plain, extra = split_checkpoint(state)
    assert plain.keys() == model.state_dict().keys()
    assert all(torch.equal(plain[k], v) for k, v in model.state_dict().items())
    assert extra and extra.resolutions == [16, 24] and extra.get(32) is None
    for r, tensors in per_res.items():
        got = extra.get(r)
        assert got is not None and got.keys() == tensors.keys()
        assert all(torch.equal(got[k], t) for k, t in tensors.items())
    # a snapshot: changing the model afterwards does not change what was encoded
    before = state["bn1.running_mean"].clone()
    model.bn1.running_mean.add_(5.0)
    assert torch.equal(state["bn1.running_mean"], before)
    assert not ExtraState() and ExtraState().resolutions == []


@pytest.mark.parametrize(
    "key",
    [
        "reswise.bn.x24.bn1.running_mean",  # resolution is not a number
        "reswise.bn.24",  # no state_dict key
        "reswise.bn.24.",
        "reswise.bn.0.bn1.running_mean",
        "reswise.adapter.24.linear.weight",  # another reswise namespace: never silently dropped
    ],
)
def test_malformed_reswise_key_is_a_one_line_error(key):
    state = {"bn1.running_mean": torch.zeros(16), key: torch.zeros(16)}
    with pytest.raises(ReswiseError) as e:
        split_checkpoint(state)
    assert key in str(e.value) and "\n" not in str(e.value) and "re-save" in str(e.value)


def test_encoder_refuses_tensors_the_model_does_not_have():
    model = CifarResNet(20)
    with pytest.raises(ReswiseError, match=r"'nope\.running_mean' for 24x24 is not in the model"):
        checkpoint_state(model.state_dict(), {24: {"nope.running_mean": torch.zeros(16)}})
    with pytest.raises(ReswiseError, match=r"shape \(3,\)"):
        checkpoint_state(model.state_dict(), {24: {"bn1.running_mean": torch.zeros(3)}})


def test_create_model_decodes_the_extra_state_once(tmp_path):
    torch.manual_seed(0)
    model = CifarResNet(20)
    path = tmp_path / "bn.pt"
    save_checkpoint(model, {24: _bn_at(model, 1.0), 16: _bn_at(model, 2.0)}, path)
    lm = create_model("cifar_resnet20", checkpoint=path)
    assert isinstance(lm.extra, ExtraState)
    assert sorted(lm.extra.per_resolution) == [16, 24] and lm.extra.resolutions == [16, 24]
    at24 = lm.extra.get(24)
    assert at24 is not None
    assert torch.equal(at24["bn1.running_mean"], model.bn1.running_mean + 1.0)
    # the model itself holds the plain (native) state
    assert torch.equal(lm.model.bn1.running_mean, model.bn1.running_mean)
    assert not create_model("cifar_resnet20").extra  # no checkpoint: empty, typed


def test_create_model_refuses_bad_extra_state(tmp_path):
    state = dict(CifarResNet(20).state_dict())
    path = tmp_path / "bad.pt"
    torch.save({**state, "reswise.bn.24": torch.zeros(16)}, path)
    with pytest.raises(ReswiseError, match=r"'reswise\.bn\.24'"):
        create_model("cifar_resnet20", checkpoint=path)
    # per-resolution tensors for another architecture fail at load time, not mid-sweep
    torch.save({**state, "reswise.bn.24.layer1.3.bn1.running_mean": torch.zeros(16)}, path)
    with pytest.raises(ReswiseError, match=r"layer1\.3\.bn1\.running_mean.*not in the model"):
        create_model("cifar_resnet20", checkpoint=path)


def test_bn_recal_wrappers_keep_their_contract(tmp_path):
    from reswise.measure.bn_recal import load_bn_states, save_bn_checkpoint

    model = CifarResNet(20)
    path = tmp_path / "bn.pt"
    save_bn_checkpoint(model, {24: _bn_at(model, 1.0)}, path)
    sd = torch.load(path, weights_only=True)
    # plain keys and other reswise namespaces are ignored, as they always were
    back = load_bn_states({**sd, "reswise.other.x": torch.zeros(1)})
    assert sorted(back) == [24] and torch.equal(
        back[24]["bn1.running_mean"], sd[f"{PREFIX}24.bn1.running_mean"]
    )
    with pytest.raises(ReswiseError, match="reswise.bn.24x"):
        load_bn_states({"reswise.bn.24x.a": torch.zeros(1)})
    with pytest.raises(ReswiseError, match="not in the model"):
        save_bn_checkpoint(model, {24: {"nope": torch.zeros(1)}}, path)


def test_registry_has_no_import_loop_with_imagenet():
    import reswise.models._registry as reg

    source = Path(reg.__file__).read_text()
    assert "from .imagenet" not in source and "import imagenet" not in source
    ckpt_source = (Path(reg.__file__).parent / "checkpoint.py").read_text()
    assert "_registry" not in ckpt_source and "from . import" not in ckpt_source
    # a fresh interpreter can import the registry first and still resolve timm:<name>
    code = (
        "import reswise.models._registry as r, inspect; "
        "assert 'timm:' in r._RESOLVERS; "
        "assert 'from .imagenet' not in inspect.getsource(r)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resolvers_route_prefixed_names(monkeypatch):
    from reswise.models import _registry as reg

    monkeypatch.setattr(reg, "_RESOLVERS", dict(reg._RESOLVERS))
    info = reg.ModelInfo(name="toy:one", family="toy", task="cifar", input_size=8, num_classes=2)
    calls = []

    def create(rest, pretrained=False, checkpoint=None, **kwargs):
        calls.append((rest, pretrained, checkpoint, kwargs))
        return reg.LoadedModel(torch.nn.Identity(), info, "toy")

    reg.register_resolver("toy:", lambda rest: info, create)
    assert reg.model_info("toy:one") is info
    lm = create_model("toy:one", pretrained=True, width=None, depth=3)
    assert lm.info is info and calls == [("one", True, None, {"depth": 3})]
    with pytest.raises(ValueError, match="twice"):
        reg.register_resolver("toy:", lambda rest: info, create)
    with pytest.raises(ReswiseError, match="toy:<name>"):
        reg.model_info("no_such_model")


def test_recalibration_leaves_bn_that_forward_never_reaches_alone():
    from reswise.data import ResizePolicy
    from reswise.measure.bn_recal import recalibrate_all

    class WithUnusedBN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.unused = torch.nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)).mean((2, 3))

    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    states = recalibrate_all(WithUnusedBN(), images, [16, 8], ResizePolicy(), (0.5,) * 3,
                             (0.25,) * 3, None, batch_size=4)  # fmt: skip
    assert "bn.running_mean" in states[8] and not any(k.startswith("unused.") for k in states[8])


def test_class_names_ride_along_and_a_damaged_entry_is_one_line(tmp_path):
    m = CifarResNet(20)
    state = checkpoint_state(m.state_dict(), {24: _bn_at(m, 1.0)}, class_names=["ä", "b c"])
    plain, extra = split_checkpoint(state)
    assert extra.class_names == ("ä", "b c") and sorted(extra.per_resolution) == [24]
    assert "reswise.classes" not in plain
    assert not ExtraState(class_names=("a",))  # truthiness still means per-resolution state
    state["reswise.classes"] = torch.tensor([0xFF, 0xFE], dtype=torch.uint8)
    with pytest.raises(ReswiseError, match=r"^checkpoint key 'reswise\.classes' is not UTF-8"):
        split_checkpoint(state)
    with pytest.raises(ReswiseError, match="one line each"):
        checkpoint_state(m.state_dict(), {}, class_names=["a\nb"])
