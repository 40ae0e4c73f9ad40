"""Per-resolution state the starting weights carry is never dropped without a word (issue 31,
second round): ``recalibrate`` and ``adapt`` on weights that carry specialists keep them at the
resolutions they do not touch and name those they replace."""

from __future__ import annotations

import json

import torch

from reswise import create_model
from reswise.cli import main
from reswise.models.checkpoint import split_checkpoint
from reswise.pipeline import adapt_checkpoint, recalibrate_checkpoint

from .conftest import CIFAR_JPEG, needs_shared

pytestmark = needs_shared


def _saved(path):
    return split_checkpoint(torch.load(path, weights_only=True))[1]


def test_recalibrating_weights_with_specialists_keeps_them_and_names_what_it_replaces(tmp_path):
    lm = create_model("cifar_resnet20", pretrained="reswise_jpeg_specialists")  # 24, 20, 16
    out = tmp_path / "r.pt"
    res = recalibrate_checkpoint(lm, str(CIFAR_JPEG / "test"), [28, 24], out, calib_size=64)
    extra = _saved(out)
    kinds = extra.kinds(lm.model.state_dict().keys())
    assert kinds == {16: "specialist", 20: "specialist", 24: "bn", 28: "bn"}
    assert all(torch.equal(t, lm.extra.get(20)[k]) for k, t in extra.get(20).items())
    assert extra.made == lm.extra.made  # how the kept specialists were made stays with them
    assert res["kept"] == [16, 20] and res["replaced"] == {24: "specialist"}


def test_adapting_weights_with_specialists_keeps_them(tmp_path):
    lm = create_model("cifar_resnet20", pretrained="reswise_jpeg_specialists")
    out = tmp_path / "a.pt"
    res = adapt_checkpoint(lm, str(CIFAR_JPEG / "test"), [28], out, steps=2, batch_size=16)
    assert _saved(out).resolutions == [16, 20, 24, 28]
    assert res["kept"] == [16, 20, 24] and res["replaced"] == {}


def test_the_cli_says_what_recalibration_replaced(tmp_path, capsys):
    out = tmp_path / "r.pt"
    argv = ["recalibrate", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg_specialists",
            "--calib-root", str(CIFAR_JPEG / "test"), "--calib-size", "32", "--resolutions", "24",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "replaces the weights' specialist at 24" in text and "keeps" in text
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["replaced"] == {"24": "specialist"}
