"""The entry point: one parser, each command module adds its own sub-parsers."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from ..errors import ReswiseError
from ..records import jsonable
from . import choose, deploy, doctor, frontier, model_tools, sweep

MODULES = (model_tools, sweep, choose, deploy, frontier, doctor)


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
    # Threads that wait for work sleep instead of spinning: with another busy process on a
    # small machine, spinning OpenMP threads fight over the cores (docs/speed.md: under contention).
    # Only effective before torch is imported, which this module does not do.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
    except ReswiseError as e:
        print(f"reswise: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written: the environment, not a bug
        where = f" {e.filename}" if e.filename else ""
        print(
            f"reswise: error: cannot use{where} ({e.strerror or e}); free space, fix the "
            "permissions or give another path",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("reswise: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
        if "torch.distributed" in sys.modules:
            from ..measure.distributed import shutdown

            shutdown()
    if getattr(args, "json", False) and result:
        print(json.dumps(result, default=jsonable))
    return 0


if __name__ == "__main__":
    sys.exit(main())
