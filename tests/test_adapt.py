"""Per-resolution adapters: frozen convolutions stay bit-identical; adapter r is the one used at r."""

from __future__ import annotations

import copy
import json

import numpy as np
import torch

from reswise import create_model, load_dataset, sweep
from reswise.data import ResizePolicy, normalizer, to_input
from reswise.errors import ReswiseError
from reswise.finetune.adapt import adapt, adapter_keys, adapter_size
from reswise.finetune.multires import PrivateBN
from reswise.finetune.train import TrainConfig, train
from reswise.measure.bn_recal import save_bn_checkpoint

from .conftest import make_imagefolder


def test_adapters_freeze_the_backbone_and_are_used_at_their_resolution(tmp_path):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=12))
    torch.manual_seed(0)
    lm = create_model("cifar_resnet20", pretrained=False)
    before = copy.deepcopy(lm.model.state_dict())
    states = adapt(lm, data, [32, 24, 16], steps=3, batch_size=16)
    assert sorted(states) == [16, 24]  # the native resolution keeps the model as it is
    assert set(states[16]) == set(adapter_keys(lm.model)) and "linear.weight" in states[16]
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the caller's model is untouched
    assert not torch.equal(states[16]["linear.weight"], before["linear.weight"])
    path = tmp_path / "adapted.pt"
    save_bn_checkpoint(lm.model, states, path)
    loaded = create_model("cifar_resnet20", checkpoint=path)
    for k, v in loaded.model.state_dict().items():  # frozen convolutions: bit-identical
        assert torch.equal(v, before[k]), k
    bn = loaded.extra.per_resolution
    res = sweep(loaded, data, [32, 24, 16], bn_states=bn)
    scale_shift = normalizer(lm.info.mean, lm.info.std)
    for r in (24, 16):
        m = copy.deepcopy(loaded.model)
        m.load_state_dict(bn[r], strict=False)
        with torch.no_grad():
            x = to_input(ResizePolicy("full")(data.images, r), scale_shift)
            top = m.eval()(x).softmax(1).topk(5, 1).indices.numpy()
        assert np.array_equal(res.records.topk_idx[res.records.row(r)], top)
    size = adapter_size(lm.model)
    assert 0 < size["adapter_params"] < size["model_params"] / 10


def test_adapter_resize_equals_the_eval_policy_only_for_whole_image_models():
    """Why adapt.py keeps its own resize: it matches eval_policy() bit for bit for CIFAR-task
    models (uint8 or the float batch augment() yields) but not for crop (ImageNet-task) ones."""
    import torch.nn.functional as F

    from reswise.models import model_info

    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    for x in (u8, u8.float() + torch.rand(u8.shape, generator=g)):
        adapt_resize = F.interpolate(x, size=(24, 24), mode="bilinear", antialias=True)
        for name in ("cifar_resnet20", "cifar_mobilenetv2_050", "cifar_nasnet_a"):
            assert torch.equal(model_info(name).eval_policy()(x, 24), adapt_resize), name
        assert not torch.equal(model_info("resnet18").eval_policy()(x, 24), adapt_resize)


def test_distilled_adapter_learns_from_the_frozen_model_and_leaves_it_alone(tmp_path):
    from reswise.finetune.adapt import adapt_one

    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=12))
    torch.manual_seed(0)
    lm = create_model("cifar_resnet20", pretrained=False)
    before = copy.deepcopy(lm.model.state_dict())
    plain = adapt_one(lm, data, 24, steps=3, batch_size=16)
    again = adapt_one(lm, data, 24, steps=3, batch_size=16, distill=0.0)
    taught = adapt_one(lm, data, 24, steps=3, batch_size=16, distill=1.0)
    assert all(torch.equal(plain[k], again[k]) for k in plain)  # 0 = the plain adapter
    assert not torch.equal(plain["linear.weight"], taught["linear.weight"])
    for k, v in lm.model.state_dict().items():  # the teacher is the caller's model, untouched
        assert torch.equal(v, before[k]), k
    for bad in (-0.1, 1.5):
        try:
            adapt_one(lm, data, 24, steps=1, batch_size=16, distill=bad)
        except ReswiseError as e:
            assert "distill" in str(e)
        else:
            raise AssertionError(bad)


def test_multires_training_keeps_private_bn_and_loads_as_a_plain_checkpoint(tmp_path):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=22))
    lm = create_model("cifar_resnet20", pretrained=False)
    cfg = TrainConfig(epochs=1, batch_size=16, train_resolutions=(32, 16), distill=True)
    train(lm, data, cfg, tmp_path / "m.pt", progress=False, log=lambda m: None)
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert "reswise.bn.16.bn1.weight" in state and "reswise.bn.32.bn1.weight" not in state
    assert not torch.equal(state["reswise.bn.16.bn1.running_mean"], state["bn1.running_mean"])
    again = create_model("cifar_resnet20", checkpoint=tmp_path / "m.pt")
    assert sorted(again.extra.per_resolution) == [16]
    wrapper = PrivateBN(again.model, [32, 16], 32)
    assert len(wrapper.overrides(16)) == len(wrapper.keys)


def test_training_one_short_epoch_lowers_the_loss_and_resumes(tmp_path):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=22))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, warmup_epochs=0.2)
    torch.manual_seed(0)
    lm = create_model("cifar_resnet20", pretrained=False)
    full = train(lm, data, cfg, tmp_path / "full.pt", progress=False, log=lambda m: None)
    losses = [h["loss"] for h in full["history"]]
    assert losses[-1] < losses[0]

    logs: list[str] = []

    def stop_after_epoch_1(m: str) -> None:
        logs.append(m)
        if '"epoch": 2' in m:  # dies while epoch 2 is being reported, before its state is saved
            raise KeyboardInterrupt

    out = tmp_path / "m.pt"
    torch.manual_seed(0)
    lm1 = create_model("cifar_resnet20", pretrained=False)
    try:
        train(lm1, data, cfg, out, progress=False, log=stop_after_epoch_1)
    except KeyboardInterrupt:
        pass
    assert not out.exists() and out.with_suffix(".pt.state").is_file()
    lm2 = create_model("cifar_resnet20", pretrained=False)
    again = train(lm2, data, cfg, out, progress=False, log=logs.append)
    assert any("resuming" in m and "from epoch 1" in m for m in logs)
    assert [h["loss"] for h in again["history"]] == losses  # same run as the uninterrupted one
    for a, b in zip(lm.model.state_dict().values(), lm2.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_state_saved_before_a_config_field_existed_still_resumes(tmp_path):
    """Runs are hours long: a field added to TrainConfig later must not restart them."""
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=12))
    cfg = TrainConfig(epochs=3, batch_size=16, channels_last=False)
    out = tmp_path / "m.pt"

    def stop(m: str) -> None:
        if '"epoch": 2' in m:  # epoch 1's state is on disk by then
            raise KeyboardInterrupt

    try:
        train(
            create_model("cifar_resnet20", pretrained=False),
            data,
            cfg,
            out,
            progress=False,
            log=stop,
        )
    except KeyboardInterrupt:
        pass
    state_path = out.with_suffix(".pt.state")
    st = torch.load(state_path, weights_only=True)
    old = json.loads(st["config"])
    del old["channels_last"]  # as written by a version without the field (its default is True)
    st["config"] = json.dumps(old, sort_keys=True)
    torch.save(st, state_path)
    logs: list[str] = []
    train(create_model("cifar_resnet20", pretrained=False), data, TrainConfig(epochs=3,
          batch_size=16), out, progress=False, log=logs.append)  # fmt: skip
    assert any("resuming" in m for m in logs)
    # a real difference in config still starts afresh
    out.unlink()
    logs.clear()
    train(create_model("cifar_resnet20", pretrained=False), data, TrainConfig(epochs=3,
          batch_size=16, lr=0.05), out, progress=False, log=logs.append)  # fmt: skip
    assert any("another config" in m for m in logs)


def test_loss_weights_sum_to_one_and_reject_bad_shares():
    from reswise.errors import ReswiseError
    from reswise.finetune.train import loss_weights

    assert loss_weights(1, 0.5) == [1.0]
    assert loss_weights(4) == [0.25] * 4
    w = loss_weights(3, 0.5)
    assert w == [0.5, 0.25, 0.25] and sum(w) == 1.0
    for bad in (-0.1, 1.0):
        try:
            loss_weights(3, bad)
        except ReswiseError as e:
            assert "--largest-weight" in str(e)
        else:
            raise AssertionError(bad)


def test_training_device_flag_fails_cleanly_without_a_gpu(tmp_path, capsys):
    from reswise.cli import main

    if torch.cuda.is_available():
        import pytest

        pytest.skip("a GPU is visible here")
    root = make_imagefolder(tmp_path / "d", n_per_class=2)
    for dev, says in (("cuda", "no CUDA GPU"), ("tpu", "not a device")):
        argv = ["train", "--model", "cifar_resnet20", "--random-init", "--dataset"]
        argv += ["imagefolder", "--data-root", str(root), "--out", str(tmp_path / "m.pt")]
        assert main([*argv, "--device", dev]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.pt.state").exists()
    # sweep and latency share the one device check
    for argv in (
        ["sweep", "--model", "cifar_resnet20", "--random-init", "--dataset", "imagefolder",
         "--data-root", str(root), "--resolutions", "32", "--out", str(tmp_path / "s")],
        ["latency", "--model", "cifar_resnet20", "--resolutions", "32"],
    ):  # fmt: skip
        assert main([*argv, "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
