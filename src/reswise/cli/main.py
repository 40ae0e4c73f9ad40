"""The entry point: one parser, each command module adds its own sub-parsers."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import warnings

from ..errors import ReswiseError
from . import choose, deploy, doctor, frontier, model_tools, serve, sweep
from .interrupt import interrupts_after_imports

INTERRUPTED = "reswise: interrupted; rerun the same command to resume"
MODULES = (model_tools, sweep, choose, deploy, frontier, doctor, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reswise",
        description="What does a smaller input image save a trained CNN (FLOPs, time) and cost "
        "(accuracy)?",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in MODULES:
        module.add_parser(sub)
    return parser


def _one_line(message: Warning | str, category: type[Warning], *args: object, **kw: object) -> None:
    print(f"reswise: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (0, 2 on bad input, 130 on Ctrl-C)."""
    # Threads that wait for work sleep instead of spinning: with another busy process on a
    # small machine, spinning OpenMP threads fight over the cores (docs/speed.md: under contention).
    # Only effective before torch is imported, which this module does not do. Not for `train`:
    # its backward passes are many short operators, and sleeping between them cost 1.27x per
    # step alone (ResNet-20 specialists, 399 vs 508 images/s); a sweep pays 3 %.
    if (sys.argv[1:] if argv is None else argv)[:1] != ["train"]:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Ctrl-C is one line from here on, torch's ~1.5 s import included: this module imports
    # nothing heavy (numpy, torch) at its top, so the window before is the interpreter's start-up
    try:
        with interrupts_after_imports():
            return _run(argv)
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:
        if _interrupt_in(e):  # a Ctrl-C in code run from C may come back as another error
            return _interrupted()
        raise


def _interrupt_in(e: BaseException) -> bool:
    """Whether a Ctrl-C is what ``e`` comes from: pybind11 turns one raised in Python code it
    calls into another error (``ImportError: initialization failed`` in a module's start-up),
    which code trying an optional import may in turn have made a ReswiseError."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _interrupted() -> int:
    """One line and exit code 130; a second Ctrl-C while it is printed is ignored."""
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    print(INTERRUPTED, file=sys.stderr)
    if main_thread:
        signal.signal(signal.SIGINT, before)
    return 130


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, _one_line
    try:
        if getattr(args, "threads", None) is not None and args.threads <= 0:
            raise ReswiseError(f"--threads must be a positive integer, got {args.threads}")
        if hasattr(args, "threads") and args.command != "latency":
            import torch

            from ..measure.inference import available_cpus

            torch.set_num_threads(args.threads or available_cpus())
        result = args.func(args)
    except (ReswiseError, OSError) as e:
        if _interrupt_in(e):
            raise KeyboardInterrupt from None
        return _refused(e)
    finally:
        warnings.showwarning = shown
        # only once reswise's own distributed module is loaded can a process group exist; an
        # interrupted `import torch` leaves torch.distributed half-imported in sys.modules, and
        # importing it again here printed torch's traceback
        if "reswise.measure.distributed" in sys.modules:
            from ..measure.distributed import shutdown

            shutdown()
    if getattr(args, "json", False) and result:
        from ..records import jsonable

        print(json.dumps(result, default=jsonable))
    return 0


def _refused(e: ReswiseError | OSError) -> int:
    """One line for bad input, or for a file that cannot be read or written (the environment,
    not a bug); exit code 2."""
    if isinstance(e, ReswiseError):
        print(f"reswise: error: {e}", file=sys.stderr)
        return 2
    where = f" {e.filename}" if e.filename else ""
    print(
        f"reswise: error: cannot use{where} ({e.strerror or e}); free space, fix the "
        "permissions or give another path",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
