"""A folder whose classes the model does not know trains a new head (one output per folder);
folders of classes it knows keep the head, mapped by name (issue 22: training any model)."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from reswise import create_model, load_dataset
from reswise.data.classes import CIFAR10_NAMES
from reswise.errors import ReswiseError
from reswise.finetune import head
from reswise.finetune import train as train_mod
from reswise.finetune.train import TrainConfig, train
from reswise.pipeline import SweepConfig, run_sweep

from .conftest import CIFAR_JPEG, IMAGENET_SAMPLE, needs_shared


def cifar_subset(root, split: str, per_class: int):
    """``per_class`` real CIFAR-10 (JPEG copy) images of every class, copied under ``root``."""
    for c in CIFAR10_NAMES:
        (root / c).mkdir(parents=True)
        for p in sorted((CIFAR_JPEG / split / c).iterdir())[:per_class]:
            shutil.copy(p, root / c / p.name)
    return root


def test_replace_head_swaps_the_last_linear_of_torchvision_and_timm_models():
    tv = create_model("mobilenet_v3_small", pretrained=False).model
    assert head.replace_head(tv, 5) == "classifier.3"
    assert tv.classifier[3].out_features == 5
    r18 = create_model("resnet18", pretrained=False).model
    assert head.replace_head(r18, 3) == "fc" and r18.fc.out_features == 3
    assert r18(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    tm = create_model("timm:resnet10t", pretrained=False).model
    head.replace_head(tm, 4)  # timm's own reset_classifier
    assert tm.get_classifier().out_features == 4
    with pytest.raises(ReswiseError, match="nn.Linear"):
        head.replace_head(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), 2)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "timm:resnet10t", "cifar_resnet20"])
def test_a_checkpoint_with_its_class_names_builds_the_head_with_that_many_outputs(name, tmp_path):
    from reswise.models.checkpoint import save_checkpoint

    m = create_model(name, pretrained=False).model
    head.replace_head(m, 3)
    save_checkpoint(m, {}, tmp_path / "m.pt", class_names=["a", "b", "c"])
    back = create_model(name, checkpoint=tmp_path / "m.pt")
    assert back.info.num_classes == 3 and back.info.class_names == ("a", "b", "c")
    assert back.model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


@needs_shared
def test_unknown_classes_train_a_new_head_that_sweep_loads_with_private_bn(tmp_path):
    lm = create_model("efficientnet_lite0", pretrained=True)
    data = load_dataset("imagefolder", cifar_subset(tmp_path / "train", "train", 20))
    test = load_dataset("imagefolder", cifar_subset(tmp_path / "test", "test", 10))
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.02, warmup_epochs=0.0,
                      train_resolutions=(64, 48), channels_last=False)  # fmt: skip
    out = tmp_path / "lite0_cifar.pt"
    done = train(lm, data, cfg, out, test_data=test, progress=False, log=lambda m: None)
    assert done["classes"] == list(CIFAR10_NAMES) and "new head: '_fc'" in done["labels"]
    top1 = done["history"][0]["test_top1"]
    assert set(top1) == {64, 48}  # every training resolution (not the untrained native 224)
    back = create_model("efficientnet_lite0", checkpoint=str(out))
    assert back.info.num_classes == 10 and back.info.class_names == CIFAR10_NAMES
    assert back.extra.get(48) and back.extra.get(64)  # private BN at each training resolution
    res = run_sweep(SweepConfig(model="efficientnet_lite0", checkpoint=str(out),
                                dataset="imagefolder", data_root=str(tmp_path / "test"),
                                resolutions="64,48", out=str(tmp_path / "run")))  # fmt: skip
    assert [r["resolution"] for r in res.rows] == [64, 48]
    assert res.records.topk_idx.max() <= 9  # ten outputs
    # the sweep scores what training measured: same weights, same BN per resolution
    for row in res.rows:
        assert row["top1"] == pytest.approx(top1[row["resolution"]], abs=1e-6)


@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason="imagenet sample not present")
def test_classes_the_model_knows_keep_the_head_and_map_by_name(tmp_path, monkeypatch):
    wnids = sorted(p.name for p in IMAGENET_SAMPLE.iterdir())[500:503]
    for w in wnids:
        shutil.copytree(IMAGENET_SAMPLE / w, tmp_path / "d" / w)
    lm = create_model("efficientnet_lite0", pretrained=True)
    seen: list[int] = []
    real = train_mod._step
    monkeypatch.setattr(train_mod, "_step",
                        lambda m, xb, yb, *a: seen.extend(yb.tolist()) or real(m, xb, yb, *a))  # fmt: skip
    cfg = TrainConfig(epochs=1, batch_size=3, lr=0.001, warmup_epochs=0.0,
                      train_resolutions=(64, 48), channels_last=False)  # fmt: skip
    data = load_dataset("imagefolder", tmp_path / "d")
    done = train(lm, data, cfg, tmp_path / "m.pt", progress=False, log=lambda m: None, workers=0)
    assert sorted(seen) == [500, 501, 502]  # ImageNet indices of the wnids, not folder positions
    assert len(done["classes"]) == 1000
    back = create_model("efficientnet_lite0", checkpoint=str(tmp_path / "m.pt"))
    assert back.info.num_classes == 1000 and back.info.class_names[500] == wnids[0]
