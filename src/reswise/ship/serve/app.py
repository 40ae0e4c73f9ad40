"""The ASGI app (Starlette): the v2 routes, a route for curl, health, metrics, limits, draining.

    app = create_app(ServedModel(OnnxCascade("shipped/")), ServeConfig(max_batch=64))

Every request is answered: past ``max_queue`` images waiting, or past ``max_queue_ms`` of work
queued at the measured rate, at once with ``503`` and
``Retry-After`` (never by a time-out or a dropped connection); past its deadline with ``504``
(its images withdrawn from the queues); a bad request with a 4xx whose ``{"error": ...}`` is
one line naming the problem and the fix. After :func:`start_drain` (the server calls it on
``SIGTERM``) ``ready`` is false and new images are refused with ``503``, while everything
already accepted is answered.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .batcher import Batcher, DeadlineExceeded, QueueFull
from .images import decode_image, images_from
from .metrics import Metrics
from .model import INPUT, VERSION, ServedModel
from .protocol import HEADER_LENGTH, BadRequest, encode_infer, parse_infer

log = logging.getLogger("reswise.serve")


@dataclass
class ServeConfig:
    max_batch: int = 64  # images per stage run
    max_wait_ms: float = 5.0  # a stage runs when its oldest image has waited this long
    max_queue: int = 1024  # images admitted and not yet answered; past it: 503
    # queued work, in ms at the measured rate; past it: 503. The count alone let 2x overload
    # queue 2.5 s of work, which every accepted request then waited (p99 measured)
    max_queue_ms: float | None = 100.0
    timeout_ms: float = 5000.0  # a request not answered by then: 504
    max_body_bytes: int = 64 << 20  # a larger body: 413


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status, headers)


class _Server:
    """The routes' shared state: the model, its batcher, the metrics, the draining flag."""

    def __init__(self, model: ServedModel, config: ServeConfig) -> None:
        self.model, self.config = model, config
        self.metrics = Metrics(model.chain, model.precision)
        self.batcher = Batcher(
            model.cascade.stage, len(model.chain), max_batch=config.max_batch,
            max_wait_ms=config.max_wait_ms, max_queue=config.max_queue,
            max_queue_ms=config.max_queue_ms, observe=self.metrics.observe_batch,
        )  # fmt: skip
        self.metrics.watch(lambda i: self.batcher.queued[i], lambda: self.batcher.depth)
        self.draining = False
        self.started = False

    def counted(
        self, route: str, fn: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``fn`` with its failures turned into answers, and every answer counted."""

        async def handler(request: Request) -> Response:
            t = time.perf_counter()
            try:
                resp = await fn(request)
            except BadRequest as e:
                resp = _error(e.status, str(e))
            except QueueFull as e:
                resp = _error(
                    503,
                    f"the server is full ({e}); retry after Retry-After seconds, or send fewer "
                    "requests at once",
                    {"retry-after": "1"},
                )
            except DeadlineExceeded:
                resp = _error(
                    504,
                    f"not answered within {self.config.timeout_ms:g} ms (the server is "
                    "overloaded); retry later, or start it with a larger --timeout-ms",
                )
            except Exception as e:  # a bug or a failing graph: answered, logged, server serves on
                log.exception("request failed")
                resp = _error(500, f"internal error ({e.__class__.__name__}: {str(e)[:120]})")
            self.metrics.requests.labels(route, str(resp.status_code)).inc()
            if resp.status_code == 200:
                self.metrics.latency.labels(route).observe(time.perf_counter() - t)
            return resp

        return handler

    def check_model(self, request: Request) -> None:
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != self.model.name:
            raise BadRequest(
                f"no model '{name}' here; this server serves '{self.model.name}' "
                f"(GET /v2/models/{self.model.name})",
                404,
            )
        if version not in (None, VERSION):
            raise BadRequest(f"model '{name}' has only version {VERSION}", 404)

    async def body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        too_big = f"the body is over {limit} bytes; send fewer images per request"
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise BadRequest(too_big, 413)
        if request.headers.get("content-encoding", "identity") not in ("identity", ""):
            raise BadRequest("compressed request bodies are not read here; send it uncompressed", 415)  # fmt: skip
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise BadRequest(too_big, 413)
        if not buf:
            raise BadRequest("the request body is empty; send the images")
        return bytes(buf)

    async def classify(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and answering stage per image, through the batcher, within the deadline."""
        if self.draining:
            raise BadRequest(
                "the server is shutting down; send the request to another replica", 503
            )
        if len(x) > self.config.max_queue:
            raise BadRequest(
                f"the request holds {len(x)} images, more than the server's queue "
                f"({self.config.max_queue}); split it into smaller requests",
                413,
            )
        return await self.batcher.run(x, self.config.timeout_ms / 1e3)

    # --- routes ---
    async def infer(self, request: Request) -> Response:
        self.check_model(request)
        req = parse_infer(await self.body(request), request.headers.get(HEADER_LENGTH))
        x = images_from(req.input(INPUT), self.model.size)
        logits, stage = await self.classify(x)
        outputs, binary = self.model.outputs(req.outputs, req.binary_output, logits, stage)
        body, headers = encode_infer(self.model.name, VERSION, req.id, outputs, binary)
        return Response(body, 200, headers)

    async def classify_file(self, request: Request) -> Response:
        top = request.query_params.get("top_k", "0")
        if not top.isdigit():
            raise BadRequest(f"top_k must be a count, got {top!r}")
        x = decode_image(await self.body(request), self.model.size, "the body")
        logits, stage = await self.classify(x.transpose(2, 0, 1)[None].copy())
        return JSONResponse(self.model.classify_one(logits[0], int(stage[0]), int(top)))

    async def model_metadata(self, request: Request) -> Response:
        self.check_model(request)
        return JSONResponse(self.model.metadata())

    async def model_ready(self, request: Request) -> Response:
        self.check_model(request)
        return await self.ready(request)

    async def ready(self, request: Request) -> Response:
        ok = self.started and not self.draining
        return JSONResponse({"ready": ok}, 200 if ok else 503)

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def server_metadata(self, request: Request) -> Response:
        from importlib.metadata import PackageNotFoundError, version

        try:
            have = version("reswise")
        except PackageNotFoundError:  # run from a source tree that was never installed
            have = "unknown"
        return JSONResponse(
            {"name": "reswise", "version": have,
             "extensions": ["binary_tensor_data", "classification"]}
        )  # fmt: skip

    async def metrics_text(self, request: Request) -> Response:
        body, kind = self.metrics.render()
        return Response(body, 200, {"content-type": kind})


def create_app(model: ServedModel, config: ServeConfig | None = None) -> Starlette:
    """The Starlette app serving ``model``; ``app.state.server`` holds its state."""
    s = _Server(model, config or ServeConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await s.batcher.start()
        s.started = True
        yield
        await s.batcher.stop()

    m = "/v2/models/{name}"
    mv = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2", s.server_metadata),
        Route("/v2/health/live", s.live),
        Route("/v2/health/ready", s.ready),
        *(Route(p, s.counted("metadata", s.model_metadata)) for p in (m, mv)),
        *(Route(p + "/ready", s.counted("ready", s.model_ready)) for p in (m, mv)),
        *(Route(p + "/infer", s.counted("infer", s.infer), methods=["POST"]) for p in (m, mv)),
        Route("/v1/classify", s.counted("classify", s.classify_file), methods=["POST"]),
        Route("/metrics", s.metrics_text),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = s
    return app


def start_drain(app: Starlette) -> Any:
    """Refuse new images (``ready`` false) and return an awaitable that completes once every
    accepted image is answered."""
    s: _Server = app.state.server
    s.draining = True
    return s.batcher.drained()
