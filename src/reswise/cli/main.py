"""The entry point: one parser, each command module adds its own sub-parsers."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ReswiseError
from ..records import jsonable
from . import choose, deploy, model_tools, sweep

MODULES = (model_tools, sweep, choose, deploy)


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except ReswiseError as e:
        print(f"reswise: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reswise: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:
            from ..distributed import shutdown

            shutdown()
    if getattr(args, "json", False) and result:
        print(json.dumps(result, default=jsonable))
    return 0


if __name__ == "__main__":
    sys.exit(main())
