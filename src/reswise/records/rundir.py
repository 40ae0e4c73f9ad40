"""A run directory has one writer at a time and is proven writable before any work is done.

Two sweeps writing one ``--out`` used to both exit 0 with one's results gone (and a short run
deleted a long run's progress); an unwritable ``--out`` was found only after the whole sweep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import ReswiseError

LOCK = ".reswise.lock"


class ReswiseWarning(UserWarning):
    """Something was set aside or could not be saved; the run goes on."""


def check_writable(out: Path, flag: str = "--out") -> None:
    """``out`` is (or can be made) a folder we can write into; a clear error otherwise."""
    if out.exists() and not out.is_dir():
        raise ReswiseError(f"{flag} {out} is a file, not a folder; give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".reswise.probe.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ReswiseError(
            f"{flag} {out} is not writable ({e.strerror or e.__class__.__name__}); "
            "give a folder you can write to"
        ) from None


def check_destination(path: Path, flag: str, kind: str = "file") -> None:
    """``path`` (a file or a folder to be written) can be written: its nearest existing parent
    is a folder we can write into, and nothing in the way is a file. Checked before any work,
    so a bad destination costs nothing."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise ReswiseError(f"{flag} {path} is a folder; give the path of the file to write")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ReswiseError(f"{flag} {path} is a file; give a folder")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ReswiseError(
            f"{flag} {path} lies under {parent}, which is a file, not a folder; give another path"
        )
    check_writable(path if kind == "folder" and path.is_dir() else path.parent, flag)


@contextmanager
def hold(lock_file: Path, what: str) -> Iterator[None]:
    """Hold ``lock_file`` for this process: a second writer of ``what`` gets an error naming the
    holder (pid, host, start, command) instead of writing into the same place."""
    lock = FileLock(str(lock_file))
    owner = lock_file.with_name(lock_file.name + ".owner.json")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ReswiseError(
            f"{what} is being written by another reswise run ({_holder(owner)}); wait for it "
            "to finish or give another destination"
        ) from None
    try:
        facts = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime(),
                 "command": " ".join(sys.argv)[:300]}  # fmt: skip
        owner.write_text(json.dumps(facts))
    except OSError:
        pass  # the lock itself is what protects the folder; the note only names the holder
    try:
        yield
    finally:
        try:
            owner.unlink(missing_ok=True)
        except OSError:
            pass
        lock.release()


@contextmanager
def owned(out: str | Path, rank: int = 0) -> Iterator[Path]:
    """Hold ``out`` for this process: a second writer gets an error naming the holder.

    Under torchrun every rank holds a lock of its own in the same folder (ranks write
    rank-suffixed progress files), so a second launch collides on every rank.
    """
    out = Path(out)
    check_writable(out)
    suffix = f".rank{rank}" if rank else ""
    with hold(out / f"{LOCK}{suffix}", f"--out {out}"):
        yield out


def _holder(owner: Path) -> str:
    try:
        f = json.loads(owner.read_text())
        return f"pid {f['pid']} on {f['host']} since {f['since']}: {f['command']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so a killed-by-scheduler run saves its progress too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def warn(message: str) -> None:
    warnings.warn(message, ReswiseWarning, stacklevel=2)
