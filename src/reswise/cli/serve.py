"""`serve`: an exported cascade behind the Open Inference Protocol (KServe v2) over HTTP."""

from __future__ import annotations

import argparse
import re
from typing import Any

from ..errors import ReswiseError
from .common import add_json


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve an exported cascade over HTTP (KServe v2 / Triton clients, curl), batching "
        "images across requests stage by stage",
    )
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="a folder written by export --policy")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    p.add_argument("--name", help="the model name clients use (default: the policy's model)")
    p.add_argument("--max-batch", type=int, default=64, help="images per stage run")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="a stage runs when its oldest image has waited this long, full batch or not",
    )
    p.add_argument(
        "--max-queue", type=int, default=1024, help="images waiting, past which requests get 503"
    )
    p.add_argument(
        "--max-queue-ms",
        type=float,
        default=100.0,
        help="work waiting, in ms at the measured stage rate, past which requests get 503 "
        "(0: no time limit, --max-queue alone); keeps the wait of accepted requests bounded "
        "under overload",
    )
    p.add_argument(
        "--timeout-ms", type=float, default=5000.0, help="requests not answered by then get 504"
    )
    # not dest="threads": cli.main sets torch's threads for any command with that attribute,
    # and importing torch is what this command must never do
    p.add_argument(
        "--threads",
        dest="session_threads",
        type=int,
        help="ONNX Runtime intra-op threads per stage (default: one per core)",
    )
    add_json(p)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> dict[str, Any]:
    try:
        from ..ship.serve.app import ServeConfig
        from ..ship.serve.server import serve
    except ImportError as e:
        raise ReswiseError(
            f"reswise serve needs starlette, uvicorn and prometheus_client ({e}); "
            "pip install 'reswise[serve]'"
        ) from None
    for flag in ("max_batch", "max_queue", "session_threads"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            name = "threads" if flag == "session_threads" else flag.replace("_", "-")
            raise ReswiseError(f"--{name} must be a positive integer, got {value}")
    if not (args.max_wait_ms >= 0 and args.timeout_ms > 0 and args.max_queue_ms >= 0):
        raise ReswiseError("--max-wait-ms and --max-queue-ms must be >= 0, --timeout-ms > 0")
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        raise ReswiseError(
            f"--name must be letters, digits, '.', '_' or '-' (it is a path segment of every "
            f"URL: /v2/models/NAME/infer), got {args.name!r}"
        )
    if not 0 <= args.port <= 65535:
        raise ReswiseError(f"--port must be 0..65535, got {args.port}")
    config = ServeConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_queue_ms=args.max_queue_ms or None,
        timeout_ms=args.timeout_ms,
    )
    out = serve(
        args.export_dir, host=args.host, port=args.port, name=args.name,
        threads=args.session_threads, config=config,
    )  # fmt: skip
    if not args.json:
        served = ", ".join(f"{k}: {v}" for k, v in sorted(out["requests"].items())) or "none"
        print(f"stopped; requests answered (route code: count): {served}")
    return out
