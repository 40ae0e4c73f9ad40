"""Ctrl-C at any moment of any command, and a full disk in any writer (issue 31): one line, the
right exit code, and no half-written file left behind."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reswise.errors import ReswiseError

from .conftest import CIFAR_JPEG, needs_shared

CONSOLE_SCRIPT = Path(sys.executable).with_name("reswise")
COMMANDS = {
    "sweep": ["sweep", "--model", "cifar_resnet20", "--pretrained", "--dataset", "imagefolder",
              "--data-root", str(CIFAR_JPEG / "test"), "--resolutions", "32,16", "--limit", "3000",
              "--threads", "1", "--no-progress"],
    "latency": ["latency", "--model", "cifar_resnet20", "--resolutions", "32,16", "--backend",
                "eager", "--repeats", "100000", "--threads", "1"],
}  # fmt: skip


def _disk_full(*args: object, **kw: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _default_sigint() -> None:
    # a test run started in the background of a non-interactive shell inherits SIGINT ignored,
    # and so would the command: give it the default disposition, as a terminal would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupted(argv: list[str], delay: float, cwd: Path) -> subprocess.CompletedProcess:
    """``argv`` run in a fresh process that gets SIGINT after ``delay`` seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=cwd, env=env, preexec_fn=_default_sigint)  # fmt: skip
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def _one_line_130(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 130, p.stderr[-1500:]
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr[-1500:]
    assert "interrupted" in p.stderr and "Traceback" not in p.stderr


@needs_shared
@pytest.mark.parametrize("delay", [0.2, 0.8, 1.0, 1.1, 1.5, 3.0])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(tmp_path: Path, command: str, delay: float):
    # the first ~1.5 s are torch's import: an interrupt there printed a torch traceback (the
    # clean-up imported the half-imported torch again), exit 1
    argv = [sys.executable, "-m", "reswise", *COMMANDS[command]]
    if command == "sweep":
        argv += ["--out", str(tmp_path / "run")]
    _one_line_130(_interrupted(argv, delay, tmp_path))


@needs_shared
@pytest.mark.skipif(not CONSOLE_SCRIPT.is_file(), reason="the reswise script is not installed")
@pytest.mark.parametrize("delay", [0.2, 0.8, 1.5, 3.0])
def test_ctrl_c_through_the_console_script(tmp_path: Path, delay: float):
    argv = [str(CONSOLE_SCRIPT), *COMMANDS["sweep"], "--out", str(tmp_path / "run")]
    _one_line_130(_interrupted(argv, delay, tmp_path))


@needs_shared
def test_ctrl_c_reaches_a_command_run_while_its_caller_imports(tmp_path: Path):
    # interrupts held back during imports are those the command began, not one around it
    (tmp_path / "runs_at_import.py").write_text(
        f"import sys\nfrom reswise.cli import main\nsys.exit(main({COMMANDS['latency']!r}))\n"
    )
    _one_line_130(_interrupted([sys.executable, "-c", "import runs_at_import"], 3.0, tmp_path))


# an interrupt raised the moment one of these modules starts importing: no timing luck needed
HOOK = """
import importlib.abc, os, signal, sys
class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
from reswise.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize(
    "module", ["numpy", "torch", "torch._prims", "torch.distributed", "torch.ao.quantization"]
)
def test_ctrl_c_while_a_module_imports_is_one_line(tmp_path: Path, module: str):
    argv = ["flops", "--model", "cifar_resnet20", "--resolutions", "32,16"]
    code = HOOK.format(module=module, argv=argv)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       preexec_fn=_default_sigint, timeout=120)  # fmt: skip
    _one_line_130(p)


def _broken_import(args: object) -> None:
    """What pybind11 makes of a Ctrl-C while an extension initialises (matplotlib's, once)."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as e:
        raise ImportError("initialization failed") from e


def _import_refused(args: object) -> None:
    """...and what code that tries an optional import makes of that."""
    try:
        _broken_import(args)
    except ImportError:
        raise ReswiseError("this needs onnxruntime: pip install onnxruntime") from None


@pytest.mark.parametrize("fails", [_broken_import, _import_refused])
def test_ctrl_c_that_breaks_an_extensions_import_is_still_ctrl_c(monkeypatch, capsys, fails):
    import importlib

    cli_main = importlib.import_module("reswise.cli.main")
    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["doctor"].set_defaults(func=fails)
    assert cli_main.main(["doctor"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == cli_main.INTERRUPTED


# ---- a full disk ------------------------------------------------------------------------------


def test_write_atomic_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    from reswise.records import files

    monkeypatch.setattr(files.os, "fsync", _disk_full)
    with pytest.raises(OSError) as e:
        files.write_atomic(tmp_path / "a.json", b"{}")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "a.json")
    assert list(tmp_path.iterdir()) == []


def _partial_then_full(out: object, *args: object, **kw: object) -> None:
    """A writer that got half a file onto the disk, then ran out of space."""
    Path(str(out)).write_bytes(b"half a graph")
    raise OSError(errno.ENOSPC, "No space left on device")


def _cache() -> Path:
    return Path(os.environ["RESWISE_CACHE"])


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if ".tmp" in p.name)


def _full_export(model: object, args: object, f: object, *a: object, **kw: object) -> None:
    _partial_then_full(f)


def test_backend_cache_on_a_full_disk_names_the_file_and_leaves_no_partial_graph(
    tmp_path, monkeypatch, capsys
):
    import torch

    from reswise.cli.main import main

    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(torch.onnx, "export", _full_export)
    argv = ["latency", "--model", "cifar_resnet20", "--resolutions", "16", "--backend",
            "onnxruntime", "--repeats", "1", "--warmup", "0", "--threads", "1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left" in err, err
    assert "backends" in err and ".onnx" in err and ".tmp" not in err, err  # the cache file
    assert _leftovers(_cache()) == []
    assert list((_cache() / "backends").glob("*.onnx")) == []  # no half graph cached


def test_onnx_export_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    import torch

    from reswise.cli.main import main

    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(torch.onnx, "export", _full_export)
    out = tmp_path / "out" / "r20.onnx"
    argv = ["export", "--model", "cifar_resnet20", "--resolution", "16", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left" in err and str(out) in err, err
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("writer", ["preprocessed", "quantize_graph", "with_normalize"])
def test_int8_cache_writers_on_a_full_disk_leave_no_partial_graph(tmp_path, monkeypatch, writer):
    pytest.importorskip("onnxruntime")
    import onnx as onnx_lib
    import torch

    from reswise.measure import quantize
    from reswise.measure.backends import cached_graph
    from reswise.models.cifar_resnet import CifarResNet

    fp32 = cached_graph(CifarResNet(20).eval(), "r20", 16)
    if writer == "preprocessed":
        import onnxruntime.quantization.shape_inference as si

        monkeypatch.setattr(si, "quant_pre_process", lambda a, out, **kw: _partial_then_full(out))
        call = lambda: quantize.preprocessed(fp32)  # noqa: E731
    elif writer == "quantize_graph":
        import onnxruntime.quantization as q

        monkeypatch.setattr(q, "quantize_static", lambda a, out, **kw: _partial_then_full(out))
        ranges = tmp_path / "r.json"
        images = torch.zeros(2, 3, 16, 16).numpy()
        call = lambda: quantize.quantize_graph(  # noqa: E731
            fp32, tmp_path / "g.int8.onnx", ranges, quantize.QuantSettings(), images
        )
    else:
        monkeypatch.setattr(onnx_lib, "save", lambda model, out, *a, **kw: _partial_then_full(out))
        call = lambda: quantize.with_normalize(fp32, (0.5,) * 3, (0.25,) * 3)  # noqa: E731
    with pytest.raises((OSError, ReswiseError)) as e:
        call()
    assert "No space left" in str(e.value)
    assert _leftovers(_cache()) == [] and _leftovers(tmp_path) == []


def test_train_keeps_openmps_wait_policy_and_other_commands_sleep(monkeypatch):
    """PASSIVE (threads sleep between operators) cost training 1.27x per step alone; it stays
    for the other commands, and a policy the user sets wins."""
    import os

    from reswise.cli import main

    for argv, preset, want in (
        (["train", "--threads", "0"], None, None),
        (["sweep", "--threads", "0"], None, "PASSIVE"),
        (["train", "--threads", "0"], "PASSIVE", "PASSIVE"),
    ):
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        if preset:
            monkeypatch.setenv("OMP_WAIT_POLICY", preset)
        try:
            main(argv)
        except SystemExit:
            pass
        assert os.environ.get("OMP_WAIT_POLICY") == want, argv
