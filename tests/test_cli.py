"""The CLI: JSON schema, run directories, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from reswise.cli import main
from reswise.models.cifar_resnet import CifarResNet

from .conftest import make_imagefolder, needs_shared


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
        assert {
            "top1",
            "top5",
            "acc_drop_pct",
            "macs",
            "flops_drop_pct",
            "eval_images_per_s",
        } <= set(r)
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


@pytest.fixture
def run_dir(capsys, tmp_path, ckpt):
    root = make_imagefolder(tmp_path / "d", n_per_class=20)
    calib = make_imagefolder(tmp_path / "c", n_per_class=5, seed=7)
    out = tmp_path / "run"
    assert main(["sweep", "--model", "cifar_resnet20", "--checkpoint", str(ckpt), "--dataset",
                 "imagefolder", "--data-root", str(root), "--resolutions", "32,24,16", "--out",
                 str(out), "--no-progress", "--json", "--recalibrate-bn", "--calib-root",
                 str(calib), "--calib-size", "12"]) == 0  # fmt: skip
    d = json.loads(capsys.readouterr().out)
    assert d["bn_recalibration"]["calib_size"] == 12 and len(d["bn_recalibration"]["rows"]) == 3
    assert (out / "records_bn.npz").is_file()
    return out


def test_select_cascade_compare_from_a_finished_run(capsys, run_dir):
    sel = run_json(capsys, ["select", "--from", str(run_dir), "--max-drop", "100", "--json"])
    assert sel["resolution"] == 16 and sel["flops_drop_pct"] == pytest.approx(75, abs=0.1)
    assert {"acc_drop_pct", "acc_drop_ci", "n_calib", "n_heldout"} <= set(sel)
    sel0 = run_json(capsys, ["select", "--from", str(run_dir), "--max-drop", "0", "--test",
                             "exact", "--json"])  # fmt: skip
    assert sel0["resolution"] in (32, 24, 16) and sel0["calib_upper_bound"] <= 0 + 1e-9
    cas = run_json(capsys, ["cascade", "--from", str(run_dir), "--max-drop", "5", "--json"])
    assert cas["chain"][-1] in (32, 24, 16) and abs(sum(cas["stage_share_pct"]) - 100) < 1e-6
    cmp_ = run_json(capsys, ["compare", "--from", str(run_dir), "--json"])
    policies = {r["policy"] for r in cmp_["rows"]}
    assert {
        "fixed",
        "random",
        "selected",
        "cascade",
        "recalibrated",
        "oracle (uses labels)",
    } <= policies
    assert (run_dir / "compare.md").is_file() and (run_dir / "compare.png").is_file()


def test_records_commands_need_a_source(capsys):
    err = _err(capsys, ["select", "--max-drop", "1"])
    assert "--from RUN_DIR" in err
    err = _err(capsys, ["compare", "--from", "/nonexistent/run"])
    assert "is not a finished sweep" in err


def test_bn_statistics_never_come_from_the_evaluation_images(capsys, tiny_folder, ckpt):
    err = _err(capsys, ["sweep", "--model", "cifar_resnet20", "--checkpoint", str(ckpt),
                        "--dataset", "imagefolder", "--data-root", str(tiny_folder),
                        "--resolutions", "32,16", "--recalibrate-bn", "--calib-root",
                        str(tiny_folder), "--no-progress"])  # fmt: skip
    assert "--calib-root is the evaluation set" in err


def test_recalibrated_checkpoint_is_used_by_sweep(capsys, tmp_path, tiny_folder, ckpt):
    calib = make_imagefolder(tmp_path / "c", seed=5)
    out = tmp_path / "bn.pt"
    d = run_json(capsys, ["recalibrate", "--model", "cifar_resnet20", "--checkpoint", str(ckpt),
                          "--resolutions", "24,16", "--calib-root", str(calib), "--out", str(out),
                          "--json"])  # fmt: skip
    assert len(d["sha256"]) == 64
    state = torch.load(out, weights_only=True)
    assert "reswise.bn.16.bn1.running_mean" in state
    d = run_json(capsys, ["sweep", "--model", "cifar_resnet20", "--checkpoint", str(out),
                          "--dataset", "imagefolder", "--data-root", str(tiny_folder),
                          "--resolutions", "32,24,16", "--out", str(tmp_path / "o"), "--json",
                          "--no-progress"])  # fmt: skip
    assert "per-resolution BN statistics for [16, 24]" in d["weights"]


def test_latency_and_export_commands(capsys, tmp_path, tiny_folder, ckpt):
    pytest.importorskip("onnxruntime")
    d = run_json(capsys, ["latency", "--model", "cifar_resnet20", "--resolutions", "32,16",
                          "--repeats", "3", "--warmup", "1", "--json"])  # fmt: skip
    assert [r["resolution"] for r in d["rows"]] == [32, 16] and d["rows"][0]["median_ms"] > 0
    out = tmp_path / "m.onnx"
    e = run_json(capsys, ["export", "--model", "cifar_resnet20", "--checkpoint", str(ckpt),
                          "--resolution", "24", "--out", str(out), "--check-root",
                          str(tiny_folder), "--json"])  # fmt: skip
    assert e["ok"] and e["max_abs_diff"] < 1e-4 and e["n_images"] == 18 and out.is_file()


def test_export_without_onnxruntime_says_how_to_install(capsys, tmp_path, ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    err = _err(capsys, ["export", "--model", "cifar_resnet20", "--checkpoint", str(ckpt),
                        "--resolution", "24", "--out", str(tmp_path / "m.onnx")])  # fmt: skip
    assert "pip install 'reswise[onnx]'" in err


def test_compare_adds_rows_from_other_runs_on_the_same_images(capsys, tmp_path, run_dir):
    other = tmp_path / "other"
    assert main(["sweep", "--model", "cifar_resnet20", "--random-init", "--dataset", "imagefolder",
                 "--data-root", str(tmp_path / "d"), "--resolutions", "32,24,16", "--out",
                 str(other), "--no-progress", "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    d = run_json(capsys, ["compare", "--from", str(run_dir), "--add", f"adapted={other}", "--json"])
    pol = [r["policy"] for r in d["rows"]]
    assert pol.count("adapted") == 2 and "adapted cascade" in pol and "adapted selected" in pol
    elsewhere = tmp_path / "elsewhere"
    assert main(["sweep", "--model", "cifar_resnet20", "--random-init", "--dataset", "imagefolder",
                 "--data-root", str(tmp_path / "c"), "--resolutions", "32,24,16", "--out",
                 str(elsewhere), "--no-progress", "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    err = _err(capsys, ["compare", "--from", str(run_dir), "--add", f"x={elsewhere}"])
    assert "other images" in err


@needs_shared
def test_reproduce_prints_the_study_beside_ours(capsys):
    d = run_json(capsys, ["reproduce", "--limit", "40", "--json"])
    fams = {f["model"]: f for f in d["cifar"]}
    r20 = {r["resolution"]: r for r in fams["cifar_resnet20"]["rows"]}
    assert fams["cifar_resnet20"]["n"] == 40 and "acc_drop_pct" in r20[24]
    for r, (f_seed, _) in {28: (23.43, 0), 24: (43.74, 0), 12: (85.93, 0)}.items():
        assert abs(r20[r]["flops_drop_pct"] - f_seed) < 0.1
    rn50 = [row["flops_drop_pct"] for row in d["resnet50_imagenet_flops"][1:]]
    assert all(abs(a - b) <= 0.5 for a, b in zip(rn50, [3.90, 14.72, 29.26, 38.49, 49.50, 57.26]))


def test_calib_split_bn_statistics_never_see_held_out_images(capsys, tmp_path, ckpt):
    """--calib-split: replacing held-out images leaves the calibration part's BN passes alone."""
    import numpy as np
    from PIL import Image

    from reswise.choose.policies import calib_heldout_split
    from reswise.data.datasets import scan_imagefolder
    from reswise.records import Records

    root = make_imagefolder(tmp_path / "d", n_per_class=10)
    paths = scan_imagefolder(root)[0]
    calib, held = calib_heldout_split(len(paths), 0.5, seed=3)

    def sweep(out):
        d = run_json(capsys, ["sweep", "--model", "cifar_resnet20", "--checkpoint", str(ckpt),
                              "--dataset", "imagefolder", "--data-root", str(root), "--resolutions",
                              "32,16", "--recalibrate-bn", "--calib-split", "--seed", "3", "--out",
                              str(out), "--no-progress", "--json"])  # fmt: skip
        return d, Records.load(out / "records_bn.npz")

    d, before = sweep(tmp_path / "a")
    assert d["bn_recalibration"]["calib_split"] == {"calib_frac": 0.5, "seed": 3, "n": 30}
    assert d["bn_recalibration"]["calib_size"] == len(calib)
    rng = np.random.default_rng(1)
    for i in held:  # new pixels, same names: only the held-out part changes
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(paths[i])
    _, after = sweep(tmp_path / "b")
    np.testing.assert_array_equal(before.topk_prob[:, calib], after.topk_prob[:, calib])
    assert not np.array_equal(before.topk_prob[:, held], after.topk_prob[:, held])
    # a calibration image changing does move the statistics, so the check above can fail
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(paths[calib[0]])
    _, moved = sweep(tmp_path / "c")
    assert not np.array_equal(after.topk_prob[:, calib[1:]], moved.topk_prob[:, calib[1:]])
    # reading that run with another split would report on images its BN statistics saw
    err = _err(capsys, ["compare", "--from", str(tmp_path / "c"), "--seed", "0"])
    assert "--calib-frac 0.5 --seed 3" in err
    assert main(["compare", "--from", str(tmp_path / "c"), "--seed", "3", "--json"]) == 0
    capsys.readouterr()
    err = _err(capsys, ["sweep", "--model", "cifar_resnet20", "--checkpoint", str(ckpt),
                        "--dataset", "imagefolder", "--data-root", str(root), "--resolutions",
                        "32,16", "--recalibrate-bn", "--calib-split", "--calib-root", str(root),
                        "--no-progress"])  # fmt: skip
    assert "not both" in err


def test_cascade_headroom_rows_per_cheaper_resolution(capsys, run_dir):
    d = run_json(capsys, ["cascade", "--from", str(run_dir), "--headroom", "--json"])
    rows = d["headroom"]
    assert [r["resolution"] for r in rows] == [16, 24]  # cheapest first, reference left out
    for r in rows:
        assert r["perfect"]["accept_pct"] >= r["max_softmax"]["accept_pct"]
        assert r["max_softmax"]["flops_drop_pct"] == pytest.approx(
            r["max_softmax"]["accept_pct"] - r["stage_cost_pct"]
        )
    assert main(["cascade", "--from", str(run_dir), "--headroom"]) == 0
    assert "perfect ranking" in capsys.readouterr().out
