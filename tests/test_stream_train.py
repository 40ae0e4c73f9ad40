"""Training from a folder of variable-size images decodes per step (bounded memory) instead of
refusing the folder (issue: training any model)."""

from __future__ import annotations

import shutil

import pytest
import torch

from reswise import create_model, load_dataset
from reswise.data import FileImages, align_labels
from reswise.finetune import stream
from reswise.finetune.train import TrainConfig, train

from .conftest import SHARED

SAMPLE = SHARED / "datasets" / "imagenet-sample" / "val"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"{SAMPLE} not present")


def _folder(tmp_path, n_classes=3):
    root = tmp_path / "val"
    for wnid in sorted(p.name for p in SAMPLE.iterdir())[:n_classes]:
        shutil.copytree(SAMPLE / wnid, root / wnid)
    return root


def test_random_resized_crop_is_seeded_and_keeps_uint8():
    x = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    a = stream.random_resized_crop(x, 24, torch.Generator().manual_seed(1))
    b = stream.random_resized_crop(x, 24, torch.Generator().manual_seed(1))
    c = stream.random_resized_crop(x, 24, torch.Generator().manual_seed(2))
    assert a.shape == (3, 24, 24) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_variable_size_folder_trains_streaming_and_sweep_loads_the_weights(tmp_path, monkeypatch):
    lm = create_model("efficientnet_lite0", pretrained=True)
    data, _ = align_labels(load_dataset("imagefolder", _folder(tmp_path)), lm.info.class_names,
                           num_classes=lm.info.num_classes)  # fmt: skip
    assert isinstance(data, FileImages)  # variable sizes: never held in memory as one tensor
    reads = []
    real = stream.read_rgb8
    monkeypatch.setattr(stream, "read_rgb8", lambda p: reads.append(p) or real(p))
    cfg = TrainConfig(epochs=1, batch_size=2, lr=0.001, warmup_epochs=0.0,
                      train_resolutions=(96, 64), channels_last=False)  # fmt: skip
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    out = tmp_path / "lite0.pt"
    done = train(lm, data, cfg, out, progress=False, log=lambda m: None, workers=0)
    assert len(reads) == len(data)  # every image decoded once per epoch, on the step
    assert done["history"][0]["loss"] > 0
    assert any(not torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())
    back = create_model("efficientnet_lite0", checkpoint=str(out))
    assert back.extra.get(64)  # private BN for the smaller training resolution travels along
