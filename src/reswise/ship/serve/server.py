"""``reswise serve``: the app run by uvicorn on a socket we bind, stopped by draining.

    summary = serve("shipped/", host="127.0.0.1", port=8000, config=ServeConfig())

``SIGTERM`` (or Ctrl-C) does not stop the server at once: readiness goes false and new images
are refused with 503 while the accepted ones are answered; then uvicorn closes the listener
and the connections and the process returns normally (exit code 0). A second signal stops it
at once.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from ...errors import ReswiseError
from ..runtime import OnnxCascade
from .app import ServeConfig, create_app, start_drain
from .model import ServedModel


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket (bound here so a taken port is one error line, and port 0 reports the
    port the system chose)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # listening before the address is printed: a client that reads it and connects at
        # once waits in the backlog instead of being refused while uvicorn starts
        sock.listen(2048)
    except OSError as e:
        raise ReswiseError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); give another --port "
            "(0 picks a free one) or --host"
        ) from None
    return sock


def _uvicorn_server(app: Any) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose first signal drains before it stops."""

        draining = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.draining:  # a second signal: uvicorn's own exit (and its re-raise)
                super().handle_exit(sig, frame)
                return
            self.draining = True
            # not uvicorn's path, which re-raises the signal after shutdown (exit code 143)
            asyncio.get_running_loop().call_soon_threadsafe(self._drain)

        def _drain(self) -> None:
            async def drain() -> None:
                await start_drain(app)
                self.should_exit = True

            self._drain_task = asyncio.ensure_future(drain())

    # idle keep-alive connections stay open 65 s (uvicorn's default: 5): a server that closes
    # one while its client reuses it loses that request in the race (measured: 1-3 in 3 000
    # at 500 req/s); clients' pools (and load balancers, 60 s) close first at this length
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_keep_alive=65)  # fmt: skip
    return Server(config)


def serve(
    directory: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    threads: int | None = None,
    config: ServeConfig | None = None,
) -> dict[str, Any]:
    """Serve the export in ``directory`` until ``SIGTERM``/Ctrl-C; what was served, per code."""
    config = config or ServeConfig()
    model = ServedModel(OnnxCascade(directory, threads=threads), name)
    sock = _listen(host, port)
    app = create_app(model, config)
    server = _uvicorn_server(app)
    where = sock.getsockname()
    print(
        f"reswise: serving '{model.name}' (stages {model.stages_text()}) on "
        f"http://{host}:{where[1]} (max batch {config.max_batch}, max wait "
        f"{config.max_wait_ms:g} ms, queue {config.max_queue} images or "
        f"{config.max_queue_ms or 0:g} ms of work, timeout "
        f"{config.timeout_ms:g} ms); SIGTERM or Ctrl-C drains and stops",
        file=sys.stderr,
        flush=True,
    )
    server.run(sockets=[sock])
    return summary(app)


def summary(app: Any) -> dict[str, Any]:
    """Requests answered per route and code, images answered per stage."""
    s = app.state.server
    out: dict[str, Any] = {"model": s.model.name, "requests": {}, "images_answered": {}}
    for metric in s.metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = f"{sample.labels['route']} {sample.labels['code']}"
                out["requests"][key] = int(sample.value)
    for metric in s.metrics.answered.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                lb = sample.labels
                out["images_answered"][f"{lb['resolution']}/{lb['precision']}"] = int(sample.value)
    return out
