"""Paths and flags the user typed, taken as meant (fourth round as a new user, issue 31).

A folder that needs no labels (BN calibration images, the images an export is checked on) may
be a flat folder of images; one that does (the test set scored each epoch, the adapters'
training images) is refused in one line that names the flag the user typed, not "data root".
A policy chosen from a sweep run with relative paths loads from any folder. A flag that would
change nothing for this model is refused, not ignored.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from reswise.cli import main
from reswise.errors import ReswiseError
from reswise.models.checkpoint import split_checkpoint
from reswise.ship.adaptive import load_model_for
from reswise.ship.policy_file import load_policy

from .conftest import CIFAR_JPEG, needs_shared

pytestmark = needs_shared


def _flat(tmp_path, n: int = 16):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((CIFAR_JPEG / "test").glob("*/*.jpg"))[::500][:n]:
        shutil.copy(p, flat / f"{p.parent.name}_{p.name}")
    return flat


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_a_flat_test_root_is_refused_naming_test_root(capsys, tmp_path):
    flat = _flat(tmp_path)
    err = _err(capsys, ["train", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                        "--dataset", "imagefolder", "--data-root", str(flat), "--specialists", "16",
                        "--test-root", str(flat), "--epochs", "1", "--no-progress",
                        "--out", str(tmp_path / "o.pt")])  # fmt: skip
    assert f"--test-root {flat} has no class folders" in err, err
    assert "works for `train --specialists`" not in err  # it was given to train --specialists
    assert not (tmp_path / "o.pt").exists()


def test_a_flat_train_root_for_adapters_is_refused_naming_train_root(capsys, tmp_path):
    flat = _flat(tmp_path)
    err = _err(capsys, ["adapt", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                        "--train-root", str(flat), "--resolutions", "24", "--steps", "1",
                        "--out", str(tmp_path / "a.pt")])  # fmt: skip
    assert f"--train-root {flat} has no class folders" in err, err


def test_bn_recalibration_takes_a_flat_folder(capsys, tmp_path):
    """BN statistics need no labels: a flat folder of the user's images was refused."""
    flat = _flat(tmp_path)
    out = tmp_path / "bn.pt"
    assert main(["recalibrate", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                 "--calib-root", str(flat), "--resolutions", "24", "--out", str(out)]) == 0  # fmt: skip
    extra = split_checkpoint(torch.load(out, weights_only=True))[1]
    assert extra.resolutions == [24]


def test_a_sweep_recalibrates_on_a_flat_calib_root(capsys, tmp_path):
    flat = _flat(tmp_path)
    code = main(["sweep", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                 "--dataset", "imagefolder", "--data-root", str(CIFAR_JPEG / "test"), "--limit", "32",
                 "--resolutions", "32,24", "--recalibrate-bn", "--calib-root", str(flat),
                 "--no-progress", "--out", str(tmp_path / "s")])  # fmt: skip
    assert code == 0, capsys.readouterr().err


def test_an_export_is_checked_on_a_flat_folder(capsys, tmp_path):
    """The check compares the graph with the model on the images: no labels needed."""
    pytest.importorskip("onnxruntime")
    flat = _flat(tmp_path)
    code = main(["export", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                 "--resolution", "24", "--out", str(tmp_path / "m.onnx"), "--check-root", str(flat),
                 "--json"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert '"n_images": 16' in out.out


def test_a_policy_made_from_relative_paths_works_from_another_folder(
    capsys, tmp_path, monkeypatch, tiny_folder, ckpt
):
    """The policy kept the checkpoint and image paths as typed, relative to the sweep's folder:
    from anywhere else `latency --policy` refused ("checkpoint ... does not exist") and export
    skipped its check on real images."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ckpt, work / "m.pt")
    monkeypatch.chdir(work)
    assert main(["sweep", "--model", "cifar_resnet20", "--checkpoint", "m.pt",
                 "--dataset", "imagefolder", "--data-root", "../data", "--resolutions", "32,16",
                 "--out", "run", "--no-progress"]) == 0  # fmt: skip
    assert main(["select", "--from", "run", "--max-drop", "100", "--save", "p.json"]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    lm = load_model_for(load_policy(work / "p.json"))
    assert lm.info.name == "cifar_resnet20"
    assert main(["export", "--policy", str(work / "p.json"), "--out", "shipped", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"check_skipped"' not in out and '"n_check_images": 18' in out, out


@pytest.mark.parametrize(
    "argv",
    [
        ["sweep", "--dataset", "imagefolder", "--data-root", "@test", "--resolutions", "32,24",
         "--no-progress", "--out", "@out"],
        ["recalibrate", "--calib-root", "@test", "--resolutions", "24", "--out", "@out/bn.pt"],
        ["train", "--dataset", "imagefolder", "--data-root", "@test", "--epochs", "1",
         "--no-progress", "--out", "@out/t.pt"],
    ],
)  # fmt: skip
def test_a_crop_on_a_whole_image_model_is_refused(capsys, tmp_path, argv):
    """`--crop-pct 0.875` on a CIFAR model (whole image resized, no crop) ran without effect,
    exit 0: the report said "whole image resized" and the numbers were the uncropped ones."""
    sub = {"@test": str(CIFAR_JPEG / "test"), "@out": str(tmp_path / "o")}
    argv = [sub.get(a, a.replace("@out", str(tmp_path / "o"))) for a in argv]
    err = _err(capsys, [argv[0], "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                        *argv[1:], "--crop-pct", "0.875"])  # fmt: skip
    assert "--crop-pct 0.875 sets a centre crop, but cifar_resnet20 resizes the whole image" in err
    assert not (tmp_path / "o").exists()


def test_an_empty_folder_where_a_flat_one_would_do_says_it_holds_no_images(capsys, tmp_path):
    """It said "has no class folders; expected DIR/<class>/<image>" where a flat folder of
    images is taken too: the fix it named was not the one needed."""
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _err(capsys, ["export", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                        "--resolution", "24", "--out", str(tmp_path / "m.onnx"),
                        "--check-root", str(empty)])  # fmt: skip
    assert f"--check-root {empty} holds no image files" in err, err
    assert "class folders" not in err.split("holds no image files")[0]


def test_a_models_filter_that_matches_nothing_says_so(capsys):
    assert main(["models", "--filter", "nothing_matches*"]) == 0
    out = capsys.readouterr().out
    assert "no registered model matches 'nothing_matches*'" in out, out


def _images(tmp_path, n: int = 100):
    test = tmp_path / "test"
    for p in sorted((CIFAR_JPEG / "test").glob("*/*.jpg"))[:: 10000 // n]:
        (test / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, test / p.parent.name / p.name)
    return test


def test_a_shipped_int8_cascade_can_be_timed_from_its_folder(capsys, tmp_path):
    """`latency --policy SHIPPED/policy.json` of an int8 cascade was refused: export left the
    quantization file behind, which the shipped policy names. The saved policy's line also
    named each stage without its precision, and `select --precision int8 --save` died with a
    KeyError traceback (the FLOPs were looked up by the fp32 stage alone)."""
    pytest.importorskip("onnxruntime")
    test, run, policy = _images(tmp_path), tmp_path / "run", tmp_path / "p.json"
    assert main(["sweep", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                 "--dataset", "imagefolder", "--data-root", str(test), "--resolutions", "32,24",
                 "--precision", "fp32,int8", "--no-progress", "--out", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["select", "--from", str(run), "--max-drop", "50", "--precision", "int8",
                 "--save", str(policy)]) == 0  # fmt: skip
    saved = json.loads(policy.read_text())
    r, p = saved["chain"][0], saved["precision"][0]
    assert p == "int8"
    assert f"(stages: {r} model int8)" in capsys.readouterr().out
    assert main(["export", "--policy", str(policy), "--out", str(tmp_path / "ship")]) == 0
    capsys.readouterr()
    code = main(["latency", "--policy", str(tmp_path / "ship" / "policy.json"), "--data-root",
                 str(test), "--repeats", "1", "--warmup", "0", "--json"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["rows"]


def test_flops_by_operator_prints_the_operators(capsys):
    """`flops --by-operator` printed the same table as without it (the operators were in
    --json only)."""
    assert main(["flops", "--model", "cifar_resnet20", "--resolutions", "32,16",
                 "--by-operator"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "convolution" in out and "by operator" in out, out


def test_a_training_folder_with_an_unreadable_image_says_it_was_skipped(capsys, tmp_path):
    folder = _images(tmp_path, n=50)
    (folder / "cat" / "broken.jpg").write_bytes(b"\\xff\\xd8 not a jpeg")
    out = tmp_path / "t.pt"
    assert main(["train", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                 "--dataset", "imagefolder", "--data-root", str(folder), "--epochs", "1",
                 "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    said = capsys.readouterr()
    assert (
        "1 unreadable image skipped" in said.out + said.err and "broken.jpg" in said.out + said.err
    )
    assert "1 unreadable image skipped" in out.with_suffix(".md").read_text()


def test_a_flops_budget_nothing_fits_is_not_rounded_onto_the_cheapest(capsys, tmp_path):
    """ "No point fits in 20 MFLOPs; the cheapest is ... at 20 MFLOPs" (it was 20.28)."""
    test, run = _images(tmp_path, n=20), tmp_path / "run"
    assert main(["sweep", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                 "--dataset", "imagefolder", "--data-root", str(test), "--resolutions", "32,16",
                 "--no-progress", "--out", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["frontier", "--from", str(run), "--budget-flops", "20M",
                 "--out", str(tmp_path / "f")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "No point fits in 20 MFLOPs" in out and "at 20.28 MFLOPs" in out, out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--resolutions", "24", "--lr", "nan"], "--lr must be a positive number"),
        (["--resolutions", "24", "--lr", "-0.1"], "--lr must be a positive number"),
        (["--resolutions", "24", "--batch-size", "0"], "--batch-size must be positive"),
        (["--resolutions", "32"], "32 is cifar_resnet20's native resolution"),
    ],
)
def test_adapt_refuses_flags_that_would_write_a_useless_file(capsys, tmp_path, extra, message):
    """`adapt --lr nan` wrote NaN adapters and `--resolutions 32` "adapters for []", exit 0
    (sixth round as a new user)."""
    out = tmp_path / "a.pt"
    err = _err(capsys, ["adapt", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                        "--train-root", str(CIFAR_JPEG / "test"), "--steps", "2", *extra,
                        "--out", str(out)])  # fmt: skip
    assert message in err, err
    assert not out.exists()


@pytest.mark.parametrize("values", [[32, 32.5], [32, "24"], (32, 24.0, None), [True, 16]])
def test_resolutions_given_in_python_must_be_whole_numbers(values):
    """`SweepConfig(resolutions=[32, 32.5])` died in torch with a TypeError (round 7, the
    README's Python equivalents); a tuple was read as one string."""
    from reswise.data import parse_resolutions

    with pytest.raises(ReswiseError, match="whole numbers"):
        parse_resolutions(values)


def test_resolutions_given_in_python_as_a_tuple_or_integral_floats_are_taken():
    from reswise.data import parse_resolutions

    assert parse_resolutions((32, 24)) == [32, 24]
    assert parse_resolutions([32, 24.0]) == [32, 24]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--split", "train"], "--split picks a CIFAR-10 split"),
        (["--crop-grid", "0.8,1.0"], "--crop-grid is the grid --crop-pct auto tries"),
        (["--calib-root", "@test"], "--calib-root is for --recalibrate-bn"),
        (["--calib-split"], "--calib-split is for --recalibrate-bn"),
        (["--quant", "minmax"], "--quant calibrates int8 stages"),
    ],
)
def test_sweep_flags_that_would_change_nothing_are_refused(capsys, tmp_path, extra, message):
    """Read before the seventh round, as the third round's train flags were: each ran
    without effect, exit 0."""
    extra = [str(CIFAR_JPEG / "train") if a == "@test" else a for a in extra]
    err = _err(capsys, ["sweep", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                        "--dataset", "imagefolder", "--data-root", str(CIFAR_JPEG / "test"),
                        "--resolutions", "32,24", "--no-progress", "--out", str(tmp_path / "o"),
                        *extra])  # fmt: skip
    assert message in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["latency", "--model", "cifar_resnet20", "--resolutions", "32,24", "--data-root", "@test"],
         "--data-root is for --policy"),
        (["latency", "--model", "cifar_resnet20", "--resolutions", "32,24", "--limit", "5"],
         "--limit is for --policy"),
        (["export", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg", "--resolution",
          "24", "--check-size", "8", "--out", "@out"], "--check-size is the number of"),
    ],
)  # fmt: skip
def test_latency_and_export_refuse_flags_only_another_path_uses(capsys, tmp_path, argv, message):
    """Read before the eighth round: without --policy these flags were parsed and ignored."""
    sub = {"@test": str(CIFAR_JPEG / "test"), "@out": str(tmp_path / "m.onnx")}
    err = _err(capsys, [sub.get(a, a) for a in argv])
    assert message in err, err
    assert not (tmp_path / "m.onnx").exists()


def test_a_train_out_whose_card_would_overwrite_it_is_refused(capsys, tmp_path):
    """`train --out w.md` wrote the weights, then the model card over them ("wrote o/w.md and
    its model card o/w.md", exit 0): the run's weights were lost (eighth round)."""
    out = tmp_path / "w.md"
    err = _err(capsys, ["train", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                        "--dataset", "imagefolder", "--data-root", str(_images(tmp_path, n=20)),
                        "--epochs", "1", "--no-progress", "--out", str(out)])  # fmt: skip
    assert "--out" in err and "model card" in err, err
    assert not out.exists()


def test_an_export_check_size_of_zero_is_refused(capsys, tmp_path):
    err = _err(capsys, ["export", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                        "--resolution", "24", "--check-root", str(_images(tmp_path, n=20)),
                        "--check-size", "0", "--out", str(tmp_path / "m.onnx")])  # fmt: skip
    assert "--check-size must be positive" in err, err


def test_compare_names_the_run_that_lacks_a_resolution(capsys, tmp_path):
    """`compare --from A --add b=B`, B swept at a resolution A was not swept at, said "run 'b'
    lacks resolution [16]", though B had it and A did not (ninth round)."""
    test = _images(tmp_path, n=20)
    for name, res in (("a", "32,24"), ("b", "32,24,16")):
        assert main(["sweep", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                     "--dataset", "imagefolder", "--data-root", str(test), "--resolutions", res,
                     "--no-progress", "--out", str(tmp_path / name)]) == 0  # fmt: skip
    capsys.readouterr()
    err = _err(capsys, ["compare", "--from", str(tmp_path / "a"), "--add",
                        f"b={tmp_path / 'b'}"])  # fmt: skip
    assert "run 'b' has 16, which the --from run" in err, err
    assert "lacks resolution [16]" not in err
