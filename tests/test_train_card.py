"""After training, a model card beside the weights says the recipe, the data, the held-out top-1
of every epoch at every resolution, and the command that reproduces the run (issue 22)."""

from __future__ import annotations

import dataclasses
import re
import shlex

from reswise import create_model, load_dataset
from reswise.cli import build_parser
from reswise.cli.model_tools import train_config
from reswise.finetune.train import TrainConfig, train
from reswise.records import sha256_file

from .conftest import make_imagefolder


def test_training_writes_a_card_whose_command_reproduces_the_run(tmp_path):
    root = make_imagefolder(tmp_path / "train", n_per_class=4)
    test_root = make_imagefolder(tmp_path / "test", n_per_class=3, seed=1)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, warmup_epochs=0.5, seed=3,
                      train_resolutions=(32, 24, 16), sandwich_k=1, distill=True,
                      largest_weight=0.5, channels_last=False)  # fmt: skip
    lm = create_model("cifar_resnet20", pretrained=False)
    out = tmp_path / "w" / "r20_new.pt"
    done = train(lm, load_dataset("imagefolder", root), cfg, out,
                 test_data=load_dataset("imagefolder", test_root), progress=False,
                 log=lambda m: None)  # fmt: skip
    card_path = out.with_suffix(".md")
    assert done["card"] == str(card_path)
    card = card_path.read_text()
    assert sha256_file(out) in card
    assert str(root) in card and "12 images" in card and "3 classes" in card
    assert "sandwich" in card and "distill" in card and "private BN" in card
    assert "32 / 24 / 16" in card
    for rec in done["history"]:  # every epoch, every resolution, as the log has them
        row = " / ".join(f"{rec['test_top1'][r]:.2f}" for r in (32, 24, 16))
        assert f"epoch {rec['epoch']}: {row}" in card
    cmd = re.search(r"`(reswise train [^`]+)`", card).group(1)
    args = build_parser().parse_args(shlex.split(cmd)[1:])
    assert args.data_root == str(root) and args.test_root == str(test_root)
    assert args.out == str(out) and args.random_init
    again = train_config(args, init=cfg.init)
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_train_crop_pct_sets_the_heldout_crop_and_the_cards_command(tmp_path, monkeypatch):
    """`train --crop-pct 1.0` was parsed and ignored: held-out figures of a Lite0 fine-tuned on
    32 x 32 CIFAR images came from a 0.875 centre crop of the upscaled image, and the card's
    command could not reproduce them."""
    import reswise.finetune.train as ft
    from reswise.cli.model_tools import run_train

    root = make_imagefolder(tmp_path / "train", n_per_class=2)
    seen = {}

    def fake_train(lm, data, cfg, out, **kw):
        seen.update(crop=lm.info.crop_pct, flags=kw["data_flags"])
        return {"card": "x"}

    monkeypatch.setattr(ft, "train", fake_train)
    argv = ["train", "--model", "efficientnet_lite0", "--pretrained", "--dataset", "imagefolder",
            "--data-root", str(root), "--crop-pct", "1.0", "--out", str(tmp_path / "w.pt"),
            "--json", "--no-progress"]  # fmt: skip
    run_train(build_parser().parse_args(argv))
    assert seen["crop"] == 1.0
    assert seen["flags"][-2:] == ["--crop-pct", "1.0"]
    bad = build_parser().parse_args([a if a != "1.0" else "1.5" for a in argv])
    import pytest

    from reswise.errors import ReswiseError

    with pytest.raises(ReswiseError, match=r"--crop-pct must be in \(0, 1\], got 1.5"):
        run_train(bad)
