"""The CLI: JSON schema, run directories, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from reswise.cli import main
from reswise.models.cifar_resnet import CifarResNet

from .conftest import make_imagefolder


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    p = tmp_path / "r20.pt"
    torch.save(CifarResNet(20).state_dict(), p)
    return p


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_sweep_json_schema_and_run_directory(capsys, tmp_path, tiny_folder, ckpt):
    out = tmp_path / "run"
    d = run_json(
        capsys,
        [
            "sweep",
            "--model",
            "cifar_resnet20",
            "--checkpoint",
            str(ckpt),
            "--dataset",
            "imagefolder",
            "--data-root",
            str(tiny_folder),
            "--resolutions",
            "32,24,16",
            "--out",
            str(out),
            "--json",
            "--no-progress",
        ],
    )
    assert d["model"] == "cifar_resnet20" and d["reference"] == 32 and d["n"] == 18
    assert [r["resolution"] for r in d["rows"]] == [32, 24, 16]
    for r in d["rows"]:
        assert {"top1", "top5", "acc_drop_pct", "macs", "flops_drop_pct", "images_per_s"} <= set(r)
        assert 0 <= r["top1"] <= 100 and r["top5"] >= r["top1"]
    assert d["rows"][1]["flops_drop_pct"] == pytest.approx(43.75, abs=0.05)
    for f in ["results.json", "results.csv", "report.md", "accuracy_vs_flops.png", "records.npz"]:
        assert (out / f).is_file(), f
    assert "| 24 x 24 |" in (out / "report.md").read_text()
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.startswith("model,weights,dataset,n,policy")


def test_flops_needs_no_dataset_and_prints_json(capsys):
    d = run_json(capsys, ["flops", "--model", "cifar_resnet20", "--resolutions", "32,28", "--json"])
    assert d["rows"][1]["flops_drop_pct"] == pytest.approx(23.44, abs=0.01)


def test_random_from_run_is_seeded(capsys, tmp_path, tiny_folder, ckpt):
    out = tmp_path / "run"
    assert (
        main(
            [
                "sweep",
                "--model",
                "cifar_resnet20",
                "--checkpoint",
                str(ckpt),
                "--dataset",
                "imagefolder",
                "--data-root",
                str(tiny_folder),
                "--resolutions",
                "32,24,16",
                "--out",
                str(out),
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    args = [
        "random",
        "--model",
        "cifar_resnet20",
        "--dataset",
        "imagefolder",
        "--from",
        str(out),
        "--resolutions",
        "32,24,16",
        "--json",
    ]
    a = run_json(capsys, [*args, "--seed", "1"])
    b = run_json(capsys, [*args, "--seed", "1"])
    assert a == b and 0 < a["flops_drop_pct"] < 75


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "bad,msg",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--data-root", "/nonexistent"], "is not a folder"),
        (["--resolutions", "32,abc"], "comma-separated"),
        (["--resolutions", "32,2"], None),
        (["--limit", "0"], "--limit"),
        (["--batch-size", "0"], "--batch-size"),
        (["--interpolation", "lanczos"], "unknown interpolation"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tiny_folder, ckpt, bad, msg):
    args = {
        "--model": "cifar_resnet20",
        "--checkpoint": str(ckpt),
        "--dataset": "imagefolder",
        "--data-root": str(tiny_folder),
        "--resolutions": "32,24",
    }
    args.update(dict(zip(bad[::2], bad[1::2])))
    argv = ["sweep", *sum(([k, v] for k, v in args.items()), []), "--no-progress"]
    if bad[0] == "--resolutions" and bad[1] == "32,2":
        argv[argv.index("--model") + 1] = "resnet18"
        argv[argv.index("--checkpoint") : argv.index("--checkpoint") + 2] = ["--random-init"]
        msg = "too small for resnet18"
    err = _err(capsys, argv)
    assert msg in err


def test_checkpoint_errors_are_one_line(capsys, tmp_path, tiny_folder):
    torch.save(CifarResNet(20).state_dict(), tmp_path / "r20.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    base = [
        "sweep",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(tiny_folder),
        "--resolutions",
        "32",
        "--no-progress",
    ]
    err = _err(
        capsys, [*base, "--model", "cifar_resnet56", "--checkpoint", str(tmp_path / "r20.pt")]
    )
    assert "does not fit the architecture" in err and "layer1.3" in err
    err = _err(
        capsys, [*base, "--model", "cifar_resnet20", "--checkpoint", str(tmp_path / "junk.pt")]
    )
    assert "cannot be read safely" in err
    err = _err(capsys, [*base, "--model", "cifar_resnet44"])
    assert "no pretrained weights" in err


def test_corrupt_image_in_the_data_is_counted(capsys, tmp_path, ckpt):
    root = make_imagefolder(tmp_path / "d")
    (root / "class0" / "zz.png").write_bytes(b"broken")
    d = run_json(
        capsys,
        [
            "sweep",
            "--model",
            "cifar_resnet20",
            "--checkpoint",
            str(ckpt),
            "--dataset",
            "imagefolder",
            "--data-root",
            str(root),
            "--resolutions",
            "32",
            "--out",
            str(tmp_path / "o"),
            "--json",
            "--no-progress",
        ],
    )
    assert d["skipped_images"] == 1 and d["n"] == 18
    err = _err(
        capsys,
        [
            "sweep",
            "--model",
            "cifar_resnet20",
            "--checkpoint",
            str(ckpt),
            "--dataset",
            "imagefolder",
            "--data-root",
            str(root),
            "--resolutions",
            "32",
            "--on-corrupt",
            "error",
            "--no-progress",
        ],
    )
    assert "zz.png" in err


def test_console_entry_point_exits_2_without_traceback(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "reswise",
            "sweep",
            "--model",
            "cifar_resnet20",
            "--dataset",
            "imagefolder",
            "--data-root",
            str(tmp_path / "none"),
            "--resolutions",
            "32",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith("reswise: error:")
