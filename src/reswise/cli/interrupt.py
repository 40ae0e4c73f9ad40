"""Ctrl-C at any moment of a command: raised where it cannot break an import.

Python raises KeyboardInterrupt at the next bytecode, wherever that is. Inside an import (torch's
takes ~1.5 s) that leaves the module half-initialised: torch's later imports fail with
AttributeErrors, numpy loses ``np.matrix``, pybind11 turns the interrupt into ``ImportError:
initialization failed`` (which code trying an optional import swallows: the command ran on to the
end, exit 0) and CPython, having seen it escape code run from C, kills itself with SIGINT at the
exit of ``python -m`` (-2, not 130). Measured here: ``sweep`` interrupted at 0.6, 0.9, 1.0, 1.1
and 1.2 s printed a torch traceback (exit 1); once that was mended, 5 of 40 ``flops`` runs
interrupted at random in 0.5-1.6 s still exited -2, and 1 of 30 ``sweep`` runs ran on to exit 0.

So during an import the interrupt is held back, and raised as soon as the main thread is out of
every import (then: 30 of 30 ``sweep`` runs interrupted at random in 0.1-3.2 s and 30 of 30
``flops`` runs in 0.3-1.7 s printed one line, exit 130). Standard library only: installed
before anything heavy is imported.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_held = threading.Event()  # an interrupt is waiting for the import under way to finish
_lock = threading.Lock()  # between re-sending a held interrupt and the end of the command


_outer: list[FrameType | None] = [None]  # the frame that entered: imports around it do not count


def importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside an import begun within the command (the import system's
    frames are on its stack below the frame that entered ``interrupts_after_imports``)."""
    while frame is not None and frame is not _outer[0]:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if importing(frame):
        if not _held.is_set():
            _held.set()
            threading.Thread(target=_raise_after_imports, daemon=True).start()
        return
    _held.clear()
    raise KeyboardInterrupt


def _raise_after_imports() -> None:
    """Send the held interrupt again once the main thread is out of its imports (the handler
    runs in the main thread only, so this thread cannot raise it itself)."""
    main = threading.main_thread().ident
    while True:
        with _lock:
            if not _held.is_set():
                return  # the command ended first
            if not importing(sys._current_frames().get(main)):
                _held.clear()  # should it land in an import again, it is held again
                os.kill(os.getpid(), signal.SIGINT)
                return
        time.sleep(0.01)


@contextmanager
def interrupts_after_imports() -> Iterator[None]:
    """The body's Ctrl-C raised outside imports; the previous handler back afterwards. Use it
    inside the ``try`` that catches KeyboardInterrupt: a held one may be raised on the way out.

    Only Python's own handler is replaced: a process started with SIGINT ignored (a background
    job of a non-interactive shell) keeps ignoring it, and a thread other than the main one
    cannot set handlers at all.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    before: Any = signal.signal(signal.SIGINT, _on_sigint)
    _outer[0] = sys._getframe(2)  # past contextlib's __enter__: the caller's frame
    try:
        yield
    finally:
        with _lock:
            pending = _held.is_set()
            _held.clear()
        signal.signal(signal.SIGINT, before)
        _outer[0] = None
        if pending:  # pressed during an import the body ended in: still a Ctrl-C
            raise KeyboardInterrupt
