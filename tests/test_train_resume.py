"""Ctrl-C or SIGTERM in the middle of an epoch saves the whole state (model, optimiser, step,
random generators, position in the epoch) and the rerun continues from that step, to the same
weights as a run that was never stopped (issue 22: training any model)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from reswise import create_model, load_dataset
from reswise.finetune import train as train_mod
from reswise.finetune.train import TrainConfig, train

from .conftest import make_imagefolder

# 24 images in batches of 5: 5 steps an epoch, the last one partial
CFG = TrainConfig(epochs=2, batch_size=5, lr=0.05, warmup_epochs=0.5, channels_last=False,
                  train_resolutions=(32, 24, 20, 16), sandwich_k=1, distill=True)  # fmt: skip


def _run(data, out):
    torch.manual_seed(0)
    lm = create_model("cifar_resnet20", pretrained=False)
    train(lm, data, CFG, out, progress=False, log=lambda m: None)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_run_stopped_mid_epoch_resumes_at_that_step_to_the_same_weights(
    tmp_path, monkeypatch, sig
):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=8))
    full = _run(data, tmp_path / "a.pt")
    steps: list[int] = []
    real = train_mod._step

    def step(*a):
        steps.append(1)
        if len(steps) == 7:  # second step of the second epoch
            os.kill(os.getpid(), sig)
        return real(*a)

    monkeypatch.setattr(train_mod, "_step", step)
    # a SIGTERM that training does not catch must not end the test session
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(data, tmp_path / "b.pt")
    finally:
        signal.signal(signal.SIGTERM, before)
    assert len(steps) == 7  # the running step finished, then the state was saved
    assert not (tmp_path / "b.pt").exists()
    steps.clear()
    again = _run(data, tmp_path / "b.pt")
    assert len(steps) == 10 - 7  # resumed mid-epoch: only the steps not yet taken
    assert again.keys() == full.keys()
    for k in full:
        assert torch.equal(full[k], again[k]), k


def test_a_run_stopped_while_evaluating_keeps_the_epoch_it_trained(tmp_path, monkeypatch):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=8))
    test = load_dataset("imagefolder", make_imagefolder(tmp_path / "t", n_per_class=2))
    steps: list[int] = []
    real_step, real_eval = train_mod._step, train_mod.held_out
    monkeypatch.setattr(train_mod, "_step", lambda *a: steps.append(1) or real_step(*a))

    def interrupted(*a):
        raise KeyboardInterrupt  # Ctrl-C while epoch 1 is being evaluated

    monkeypatch.setattr(train_mod, "held_out", interrupted)
    cfg = TrainConfig(epochs=2, batch_size=5, channels_last=False)

    def run():
        torch.manual_seed(0)
        lm = create_model("cifar_resnet20", pretrained=False)
        return train(lm, data, cfg, tmp_path / "m.pt", test_data=test, progress=False,
                     log=lambda m: None)  # fmt: skip

    with pytest.raises(KeyboardInterrupt):
        run()
    assert len(steps) == 5
    steps.clear()
    monkeypatch.setattr(train_mod, "held_out", real_eval)
    done = run()
    assert len(steps) == 5  # epoch 2 only: epoch 1's steps were kept, then evaluated
    assert [h["epoch"] for h in done["history"]] == [1, 2]
    assert all("test_top1" in h for h in done["history"])
