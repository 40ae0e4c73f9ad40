"""Multi-resolution steps follow the sandwich rule (largest + smallest + k sampled between), and
the last partial batch of an epoch counts (issue: training any model)."""

from __future__ import annotations

import collections

import pytest
import torch

from reswise import create_model, load_dataset
from reswise.errors import ReswiseError
from reswise.finetune.train import TrainConfig, sandwich, train

from .conftest import make_imagefolder


def test_sandwich_takes_the_ends_and_k_distinct_resolutions_between():
    g = torch.Generator().manual_seed(0)
    res = [32, 28, 24, 20, 16]
    seen = collections.Counter()
    for _ in range(600):
        step = sandwich(res, 1, g)
        assert step[0] == 32 and step[-1] == 16 and len(step) == 3
        assert step == sorted(step, reverse=True)  # largest first: it teaches the others
        seen[step[1]] += 1
    assert set(seen) == {28, 24, 20}
    assert min(seen.values()) > 600 / 3 * 0.75  # uniform over the three between
    two = sandwich(res, 2, g)
    assert len(two) == 4 and len(set(two)) == 4
    assert sandwich(res, 9, g) == res and sandwich(res, None, g) == res
    assert sandwich([32, 16], 1, g) == [32, 16] and sandwich([32], 1, g) == [32]
    with pytest.raises(ReswiseError, match="--sandwich-k"):
        sandwich(res, -1, g)


def test_a_folder_smaller_than_one_batch_still_takes_a_step(tmp_path):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=2))
    assert len(data) < 16
    torch.manual_seed(0)
    lm = create_model("cifar_resnet20", pretrained=False)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=16, warmup_epochs=0.0, channels_last=False)
    train(lm, data, cfg, tmp_path / "m.pt", progress=False, log=lambda m: None)
    moved = [k for k, v in lm.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") and "conv" in k for k in moved)


def test_multires_training_with_the_sandwich_is_resumable_and_records_k(tmp_path):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=3))
    cfg = TrainConfig(epochs=2, batch_size=8, train_resolutions=(32, 24, 20, 16),
                      sandwich_k=1, channels_last=False)  # fmt: skip
    torch.manual_seed(0)
    full = train(create_model("cifar_resnet20", pretrained=False), data, cfg, tmp_path / "a.pt",
                 progress=False, log=lambda m: None)  # fmt: skip
    assert full["config"]["sandwich_k"] == 1

    def stop(m: str) -> None:
        if '"epoch": 2' in m:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    try:
        train(create_model("cifar_resnet20", pretrained=False), data, cfg, tmp_path / "b.pt",
              progress=False, log=stop)  # fmt: skip
    except KeyboardInterrupt:
        pass
    again = train(create_model("cifar_resnet20", pretrained=False), data, cfg, tmp_path / "b.pt",
                  progress=False, log=lambda m: None)  # fmt: skip
    assert again["history"][-1]["loss"] == pytest.approx(full["history"][-1]["loss"], rel=1e-5)
