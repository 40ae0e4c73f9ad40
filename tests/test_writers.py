"""Every writer checks it can write before working, writes atomically, fails when its own check
fails, and tells the truth about what is kept (issue: the shipped artifact is trustworthy)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

import reswise
from reswise.errors import ReswiseError

from .conftest import CIFAR_JPEG, needs_shared
from .test_adaptive import shipped

pytest.importorskip("onnxruntime")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reswise", *args], capture_output=True, text=True, timeout=600
    )


def _one_line_refusal(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    for w in words:
        assert w in p.stderr, p.stderr


def _policy_copy(tmp_path: Path) -> Path:
    _, path, _, _ = shipped()
    dst = tmp_path / "pol" / "policy.json"
    dst.parent.mkdir()
    shutil.copy(path, dst)
    return dst


def _disk_full(*args, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


@needs_shared
def test_export_whose_check_disagrees_fails_and_leaves_no_folder(tmp_path, monkeypatch):
    from reswise.ship import export

    _, _, images, lm = shipped()
    policy = _policy_copy(tmp_path)
    real = export.check_export

    def disagreeing(*a, **kw):  # what two exports racing into one folder produced on main
        got = real(*a, **kw)
        return {**got, "max_abs_logit_diff_same_stage": 5.70, "routing_flips_unexplained": 9}

    monkeypatch.setattr(export, "check_export", disagreeing)
    out = tmp_path / "shipped"
    with pytest.raises(ReswiseError, match=r"check failed.*5\.70e\+00.*9 images"):
        export.export_policy(policy, out, lm=lm, check_images=images[:64])
    assert not out.exists()
    # no staging folder left behind (filelock keeps its small lock file, as it documents)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shipped") and p.is_dir()]


@needs_shared
def test_a_failed_export_leaves_the_previous_export_whole(tmp_path, monkeypatch):
    from reswise.ship import export

    _, _, images, lm = shipped()
    policy = _policy_copy(tmp_path)
    out = tmp_path / "shipped"
    export.export_policy(policy, out, lm=lm, check_images=images[:64])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(export, "_write_graph", _disk_full)
    with pytest.raises(ReswiseError, match="No space left"):
        export.export_policy(policy, out, lm=lm, check_images=images[:64])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@needs_shared
def test_exports_into_one_folder_are_one_at_a_time(tmp_path):
    from reswise.ship.export import export_policy, lock_path

    _, _, images, lm = shipped()
    out = tmp_path / "shipped"
    with FileLock(str(lock_path(out))):
        with pytest.raises(ReswiseError, match="being written by another"):
            export_policy(_policy_copy(tmp_path), out, lm=lm, check_images=images[:8])
    assert not out.exists()


@needs_shared
def test_export_refuses_the_policys_own_folder_and_foreign_folders(tmp_path):
    from reswise.ship.export import export_policy

    _, _, images, lm = shipped()
    policy = _policy_copy(tmp_path)
    text = policy.read_text()
    with pytest.raises(ReswiseError, match="holds the policy file"):
        export_policy(policy, policy.parent, lm=lm, check_images=images[:8])
    assert policy.read_text() == text
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ReswiseError, match="notes.txt"):
        export_policy(policy, mine, lm=lm, check_images=images[:8])
    assert (mine / "notes.txt").read_text() == "keep me"


@needs_shared
def test_check_images_of_another_size_are_refused_before_exporting(tmp_path):
    from reswise.ship.export import export_policy

    _, _, images, lm = shipped()
    big = torch.nn.functional.interpolate(images[:4].float(), size=40).to(torch.uint8)
    out = tmp_path / "shipped"
    with pytest.raises(ReswiseError, match=r"40 x 40.*32 x 32"):
        export_policy(_policy_copy(tmp_path), out, lm=lm, check_images=big)
    assert not out.exists()


@needs_shared
def test_cli_export_refusals_are_one_line(tmp_path):
    policy = _policy_copy(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _one_line_refusal(
        _cli("export", "--policy", str(policy), "--out", str(blocker / "shipped")), "a_file"
    )
    _one_line_refusal(
        _cli("export", "--policy", str(policy), "--out", str(policy.parent)), "policy file"
    )
    odd = tmp_path / "odd"
    (odd / "cat").mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (48, 48), (i * 40, 0, 0)).save(odd / "cat" / f"{i}.png")
    _one_line_refusal(
        _cli(
            "export",
            "--policy",
            str(policy),
            "--out",
            str(tmp_path / "s"),
            "--check-root",
            str(odd),
        ),  # fmt: skip
        "48 x 48",
    )


@needs_shared
def test_save_refuses_an_unwritable_destination_before_working(tmp_path):
    run, _, _, _ = shipped()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    p = _cli("cascade", "--from", run.directory, "--save", str(blocker / "p.json"))
    _one_line_refusal(p, "a_file")
    p = _cli("select", "--from", run.directory, "--save", str(tmp_path))
    _one_line_refusal(p, "folder")


@needs_shared
def test_single_graph_export_refuses_an_unwritable_destination(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    p = _cli("export", "--model", "cifar_resnet20", "--resolution", "24", "--out",
             str(blocker / "r.onnx"))  # fmt: skip
    _one_line_refusal(p, "a_file")


@needs_shared
def test_disk_full_while_writing_results_says_what_is_really_kept(tmp_path, monkeypatch):
    from reswise.pipeline import sweep as pipeline

    monkeypatch.setattr(pipeline, "save_run", _disk_full)
    monkeypatch.setattr(
        "reswise.measure.progress.save_npz", _disk_full
    )  # the disk is full for progress files too
    cfg = reswise.SweepConfig(model="cifar_resnet20", dataset="imagefolder",
                              data_root=str(CIFAR_JPEG / "test"), resolutions=[32, 16], limit=64,
                              out=str(tmp_path / "run"), save_every_s=0.0)  # fmt: skip
    with pytest.warns(UserWarning, match="cannot save progress"):
        with pytest.raises(ReswiseError) as e:
            reswise.run_sweep(cfg)
    assert not list((tmp_path / "run").glob("progress*.npz"))
    assert "progress" not in str(e.value) or "nothing" in str(e.value)
    assert "evaluate" in str(e.value)  # the rerun evaluates again, and the message says so


@needs_shared
def test_disk_full_with_progress_saved_says_the_rerun_resumes(tmp_path, monkeypatch):
    from reswise.pipeline import sweep as pipeline

    monkeypatch.setattr(pipeline, "save_run", _disk_full)
    cfg = reswise.SweepConfig(model="cifar_resnet20", dataset="imagefolder",
                              data_root=str(CIFAR_JPEG / "test"), resolutions=[32, 16], limit=64,
                              out=str(tmp_path / "run"))  # fmt: skip
    with pytest.raises(ReswiseError, match="progress.npz") as e:
        reswise.run_sweep(cfg)
    kept = list((tmp_path / "run").glob("progress*.npz"))
    assert kept and "resume" in str(e.value)
    monkeypatch.undo()
    again = reswise.run_sweep(cfg)  # resumes from the kept records and writes them
    assert (tmp_path / "run" / "results.json").is_file()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["n"] == again.n == 64


def test_write_atomic_leaves_no_temporary_file_when_the_write_fails(tmp_path, monkeypatch):
    from reswise.records import files

    monkeypatch.setattr(files.os, "fsync", _disk_full)
    with pytest.raises(OSError):
        files.write_atomic(tmp_path / "a.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_cli_turns_a_stray_os_error_into_one_line(tmp_path, monkeypatch, capsys):
    import importlib

    cli_main = importlib.import_module("reswise.cli.main")

    def boom(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    sub = parser._subparsers._group_actions[0].choices["doctor"]
    sub.set_defaults(func=boom)
    assert cli_main.main(["doctor"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left" in err and str(tmp_path / "x") in err


def test_a_routing_flip_is_allowed_only_at_a_threshold():
    import math

    from reswise.ship.export import _unexplained_flips, check_failures

    class Session:
        def __init__(self, logits):
            self.logits = np.asarray([logits], np.float32)

        def run(self, names, feeds):
            return [self.logits]

    class Runner:
        chain, thresholds, signal = [16, 32], [0.9], "max_softmax"

    at, far = Runner(), Runner()
    at.sessions = [Session([math.log(9.0) + 1e-6, 0.0])]  # softmax 0.9000001: on the threshold
    far.sessions = [Session([5.0, 0.0])]  # 0.993: no rounding sends this one on
    images, res, want = np.zeros((1, 3, 32, 32), np.uint8), np.array([16]), np.array([32])
    assert _unexplained_flips(at, images, res, want) == 0
    assert _unexplained_flips(far, images, res, want) == 1
    ok = {"max_abs_logit_diff_same_stage": 5e-6, "routing_flips_unexplained": 0}
    assert check_failures(ok) == []
    assert len(check_failures({**ok, "routing_flips_unexplained": 1})) == 1
    assert len(check_failures({**ok, "max_abs_logit_diff_same_stage": 1e-3})) == 1
    # the fused graph's own comparison counts the same way, and says it is the fused graph's
    assert check_failures({**ok, "fused": ok}) == []
    (failed,) = check_failures({**ok, "fused": {**ok, "routing_flips_unexplained": 2}})
    assert failed.startswith("fused graph: 2 images")


@needs_shared
def test_a_failed_swap_puts_the_previous_export_back(tmp_path, monkeypatch):
    from reswise.ship import export

    _, _, images, lm = shipped()
    policy = _policy_copy(tmp_path)
    out = tmp_path / "shipped"
    export.export_policy(policy, out, lm=lm, check_images=images[:16])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = Path.rename

    def rename(self, target):  # the staged folder cannot take --out's place
        staged = self.name.startswith(".shipped.") and not self.name.endswith(".old")
        if staged and Path(target) == out:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(ReswiseError, match="nothing was changed"):
        export.export_policy(policy, out, lm=lm, check_images=images[:16])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
