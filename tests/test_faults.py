"""Faults never lose work or give a silently wrong number: kills, Ctrl-C, full disks, two
writers, corrupt files, resumes under another configuration."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import reswise
from reswise.cli import main
from reswise.data import load_dataset
from reswise.measure.evaluate import sweep
from reswise.models.cifar_resnet import CifarResNet

from .conftest import CIFAR_JPEG, make_imagefolder, needs_shared


def _err(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("reswise: error:") and len(err.strip().splitlines()) == 1, err
    return err


def _sweep_argv(ckpt, root, out, *extra):
    return [
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
        "32,24,16",
        "--out",
        str(out),
        "--no-progress",
        "--json",
        *extra,
    ]


class Interrupting:
    """A dataset that raises KeyboardInterrupt (Ctrl-C) when chunk ``at`` is loaded."""

    def __init__(self, data, at):
        self.data, self.at, self.calls = data, at, 0
        self.labels, self.name, self.classes = data.labels, data.name, data.classes
        self.fingerprint = data.fingerprint

    def __len__(self):
        return len(self.data)

    def get(self, idx):
        self.calls += 1
        if self.calls > self.at:
            raise KeyboardInterrupt
        return self.data.get(idx)


def test_resume_never_mixes_images_chosen_by_another_seed(tiny_folder, tmp_path):
    """Case 1: an interrupted --limit/--seed 0 run must not be resumed by --seed 1."""
    model, ck = CifarResNet(20).eval(), tmp_path / "progress.npz"
    seed0 = load_dataset("imagefolder", tiny_folder, limit=12, seed=0)
    seed1 = load_dataset("imagefolder", tiny_folder, limit=12, seed=1)
    with pytest.raises(KeyboardInterrupt):
        sweep(
            model,
            Interrupting(seed0, 2),
            [32, 16],
            batch_size=4,
            checkpoint_path=ck,
            save_every_s=0,
        )
    assert ck.is_file()
    clean = sweep(model, seed1, [32, 16], batch_size=4)
    resumed = sweep(model, seed1, [32, 16], batch_size=4, checkpoint_path=ck, save_every_s=0)
    np.testing.assert_array_equal(resumed.records.topk_prob, clean.records.topk_prob)
    np.testing.assert_array_equal(resumed.records.labels, clean.records.labels)


def test_resume_after_other_weights_starts_over(tiny_folder, tmp_path):
    data = load_dataset("imagefolder", tiny_folder)
    ck = tmp_path / "progress.npz"
    torch.manual_seed(1)
    a, b = CifarResNet(20).eval(), CifarResNet(20).eval()
    with pytest.raises(KeyboardInterrupt):
        sweep(a, Interrupting(data, 2), [32], batch_size=4, checkpoint_path=ck, save_every_s=0)
    # same class name, same dataset: only the weights' values tell the runs apart
    np.testing.assert_array_equal(
        sweep(b, data, [32], batch_size=4, checkpoint_path=ck).records.topk_prob,
        sweep(b, data, [32], batch_size=4).records.topk_prob,
    )


def test_corrupt_progress_is_set_aside_and_the_run_starts_over(capsys, tmp_path, ckpt, tiny_folder):
    out = tmp_path / "run"
    out.mkdir()
    (out / "progress.npz").write_bytes(b"PK\x03\x04 truncated")
    assert main(_sweep_argv(ckpt, tiny_folder, out)) == 0
    got = capsys.readouterr()
    assert json.loads(got.out)["n"] == 18
    (warning,) = got.err.strip().splitlines()
    assert warning.startswith("reswise: warning: progress file") and "set aside" in warning
    assert (out / "progress.npz.corrupt").is_file()
    assert not (out / "progress.npz").exists()  # results written: progress has done its job


def test_two_writers_on_one_out_the_second_is_refused(capsys, tmp_path, ckpt, tiny_folder):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from reswise.records.rundir import owned\n"
            f"with owned({str(out)!r}):\n print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        err = _err(capsys, _sweep_argv(ckpt, tiny_folder, out))
        assert "is being written by another reswise run" in err and f"pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert main(_sweep_argv(ckpt, tiny_folder, out)) == 0  # free again once the holder is gone


def test_unwritable_or_file_out_is_refused_before_any_work(
    capsys, tmp_path, ckpt, tiny_folder, monkeypatch
):
    from reswise.pipeline import sweep as pipeline

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(pipeline, "load_model", no_model)
    f = tmp_path / "a_file"
    f.write_text("x")
    assert "is a file, not a folder" in _err(capsys, _sweep_argv(ckpt, tiny_folder, f))
    assert "is not writable" in _err(capsys, _sweep_argv(ckpt, tiny_folder, f / "sub"))
    assert "is not writable" in _err(capsys, _sweep_argv(ckpt, tiny_folder, "/proc/reswise"))


def test_full_disk_keeps_the_work_and_the_rerun_writes_identical_records(
    capsys, tmp_path, ckpt, tiny_folder, monkeypatch
):
    from reswise.records import SweepResult

    clean = tmp_path / "clean"
    assert main(_sweep_argv(ckpt, tiny_folder, clean)) == 0
    out = tmp_path / "full"
    real = SweepResult.save

    def full(self, where):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SweepResult, "save", full)
    err = _err(capsys, _sweep_argv(ckpt, tiny_folder, out))
    assert "No space left on device" in err and "rerun the same command" in err
    assert (out / "progress.npz").is_file()
    monkeypatch.setattr(SweepResult, "save", real)
    assert main(_sweep_argv(ckpt, tiny_folder, out)) == 0
    a, b = reswise.load_run(clean).records, reswise.load_run(out).records
    np.testing.assert_array_equal(a.topk_prob, b.topk_prob)
    np.testing.assert_array_equal(a.topk_idx, b.topk_idx)


def test_failed_progress_saves_warn_and_the_run_still_finishes(tmp_path, tiny_folder, monkeypatch):
    from reswise.measure import progress

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(progress, "save_npz", full)
    model = CifarResNet(20).eval()
    data = load_dataset("imagefolder", tiny_folder)
    with pytest.warns(UserWarning, match="cannot save progress"):
        res = sweep(
            model, data, [32], batch_size=4, checkpoint_path=tmp_path / "p.npz", save_every_s=0
        )
    assert res.n == 18 and not list(tmp_path.glob(".*tmp"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One clean sweep that every stopped-and-resumed run is compared with (shared: it is the
    same run for every signal)."""
    import torch

    from reswise.models.cifar_resnet import CifarResNet

    tmp = tmp_path_factory.mktemp("uninterrupted")
    torch.manual_seed(0)
    torch.save(CifarResNet(20).state_dict(), tmp / "r20.pt")
    argv = [sys.executable, "-m", "reswise"]
    argv += _sweep_argv(tmp / "r20.pt", CIFAR_JPEG / "test", tmp / "unused")[:-4]  # no --out
    argv += ["--limit", "1500", "--batch-size", "50", "--threads", "1", "--no-progress"]
    # one cache for all these runs: --backend auto's timed choice is cached there, so the
    # resumed runs use the backend the clean run used (another backend rounds differently)
    env = {**os.environ, "RESWISE_CACHE": str(tmp / "cache")}
    clean = subprocess.run([*argv, "--out", str(tmp / "clean")], capture_output=True, env=env)
    assert clean.returncode == 0, clean.stderr
    return argv, tmp / "clean", env


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_killed_interrupted_terminated_sweeps_resume_bit_identical(tmp_path, uninterrupted, how):
    argv, clean, env = uninterrupted
    out = tmp_path / "stopped"
    run = [*argv, "--out", str(out), "--save-every-s", "0"]
    # a test run started in the background of a non-interactive shell inherits SIGINT ignored,
    # and so would the sweep: give it the default disposition, as a terminal would
    p = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 120
    while not (out / "progress.npz").is_file() and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(how)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "Traceback" not in err, err
    assert (out / "progress.npz").is_file()
    again = subprocess.run(run, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    a, b = reswise.load_run(clean).records, reswise.load_run(out).records
    np.testing.assert_array_equal(a.topk_prob, b.topk_prob)
    np.testing.assert_array_equal(a.entropy, b.entropy)


def test_non_finite_outputs_stop_the_sweep(tiny_folder):
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 10, 3)

        def forward(self, x):  # finite weights, but the outputs overflow to inf - inf = NaN
            y = self.conv(x).mean((2, 3)) * 1e38
            return y * 1e38 - y * 1e38

    data = load_dataset("imagefolder", tiny_folder)
    with pytest.raises(reswise.ReswiseError, match="not finite"):
        sweep(Broken(), data, [32])


@pytest.mark.parametrize("res", ["32,100000", "32,4096"])
def test_huge_resolutions_are_refused_with_the_estimate(capsys, ckpt, tiny_folder, tmp_path, res):
    argv = _sweep_argv(ckpt, tiny_folder, tmp_path / "r")
    argv[argv.index("32,24,16")] = res
    t = time.perf_counter()
    err = _err(capsys, argv)
    assert "GiB" in err and "are free" in err and time.perf_counter() - t < 30


def test_from_refuses_flags_it_would_ignore_and_honours_resolutions(capsys, tmp_path, ckpt):
    root = make_imagefolder(tmp_path / "d", n_per_class=20)
    assert main(_sweep_argv(ckpt, root, tmp_path / "run")) == 0
    capsys.readouterr()
    src = ["--from", str(tmp_path / "run")]
    for flag in (["--limit", "5"], ["--batch-size", "3"], ["--checkpoint", str(ckpt)]):
        err = _err(capsys, ["select", *src, *flag])
        assert f"{flag[0]} has no effect with --from" in err
    assert "disagrees with" in _err(capsys, ["select", *src, "--model", "cifar_resnet56"])
    assert "disagrees with" in _err(capsys, ["select", *src, "--data-root", str(tmp_path)])
    assert main(["select", *src, "--model", "cifar_resnet20", "--data-root", str(root)]) == 0
    capsys.readouterr()
    out = json.loads(
        (main(["select", *src, "--resolutions", "24", "--max-drop", "100", "--json"]) == 0)
        and capsys.readouterr().out
    )
    assert out["resolution"] in (24, 32) and {c["resolution"] for c in out["candidates"]} == {
        32,
        24,
    }
    err = _err(capsys, ["cascade", *src, "--resolutions", "20"])
    assert "resolution 20 is not in the run's records" in err


def test_damaged_run_files_are_one_line_errors(capsys, tmp_path, ckpt, tiny_folder):
    run = tmp_path / "run"
    assert main(_sweep_argv(ckpt, tiny_folder, run)) == 0
    capsys.readouterr()
    rec = run / "records.npz"
    good = rec.read_bytes()
    for damage in (b"", good[: len(good) // 2]):
        rec.write_bytes(damage)
        assert "cannot be read" in _err(capsys, ["select", "--from", str(run)])
    arrays = dict(np.load(_write(tmp_path / "g.npz", good)))
    arrays["entropy"] = arrays["entropy"][:, :3]
    np.savez(rec, **arrays)
    assert "inconsistent shapes" in _err(capsys, ["select", "--from", str(run)])
    rec.write_bytes(good)
    (run / "results.json").write_text("{not json")
    assert "not a reswise results file" in _err(capsys, ["select", "--from", str(run)])


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("value", ["nan", "-1"])
def test_nonsense_budgets_are_refused(capsys, tmp_path, ckpt, tiny_folder, value):
    run = tmp_path / "run"
    assert main(_sweep_argv(ckpt, tiny_folder, run)) == 0
    capsys.readouterr()
    for cmd in ("select", "cascade", "compare"):
        assert "--max-drop" in _err(capsys, [cmd, "--from", str(run), "--max-drop", value])


def test_export_out_that_is_a_folder_is_refused(capsys, tmp_path, ckpt):
    err = _err(
        capsys,
        [
            "export",
            "--model",
            "cifar_resnet20",
            "--checkpoint",
            str(ckpt),
            "--resolution",
            "24",
            "--out",
            str(tmp_path),
        ],
    )
    assert "is a folder" in err


def test_compare_add_refuses_a_run_on_other_images(capsys, tmp_path, ckpt):
    """Case 7: same layout, same labels, other pixels: once paired as if the same images."""
    a = make_imagefolder(tmp_path / "a", n_per_class=20, seed=0)
    b = make_imagefolder(tmp_path / "b", n_per_class=20, seed=1)
    assert main(_sweep_argv(ckpt, a, tmp_path / "ra")) == 0
    assert main(_sweep_argv(ckpt, b, tmp_path / "rb")) == 0
    assert main(_sweep_argv(ckpt, a, tmp_path / "ra2")) == 0
    capsys.readouterr()
    err = _err(capsys, ["compare", "--from", str(tmp_path / "ra"), "--add", f"x={tmp_path / 'rb'}"])
    assert "was evaluated on other images" in err
    assert main(["compare", "--from", str(tmp_path / "ra"), "--add", f"x={tmp_path / 'ra2'}"]) == 0


@needs_shared
def test_labels_follow_class_names_not_folder_positions(capsys, tmp_path):
    """Case 2: a folder holding only cat, dog and frog once scored 0.00 % (cat read as airplane)."""
    sub = tmp_path / "three"
    for name in ("cat", "dog", "frog"):
        (sub / name).mkdir(parents=True)
        for f in sorted((CIFAR_JPEG / "test" / name).iterdir())[:100]:
            (sub / name / f.name).symlink_to(f)
    d = json.loads(
        (
            main(
                [
                    "sweep",
                    "--model",
                    "cifar_resnet20",
                    "--dataset",
                    "imagefolder",
                    "--data-root",
                    str(sub),
                    "--resolutions",
                    "32",
                    "--out",
                    str(tmp_path / "r"),
                    "--no-progress",
                    "--json",
                ]
            )
            == 0
        )
        and capsys.readouterr().out
    )
    assert d["rows"][0]["top1"] > 60 and "by class name" in d["labels"]
    assert "by class name" in (tmp_path / "r" / "report.md").read_text()
    err = _err(
        capsys,
        [
            "sweep",
            "--model",
            "cifar_resnet20",
            "--dataset",
            "imagefolder",
            "--data-root",
            str(CIFAR_JPEG),
            "--resolutions",
            "32",
            "--out",
            str(tmp_path / "p"),
            "--no-progress",
        ],
    )
    assert "train" in err and "test" in err
