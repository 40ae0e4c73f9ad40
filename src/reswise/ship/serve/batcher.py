"""Batching across requests, stage by stage, with pooled escalation: asyncio and numpy only.

    batcher = Batcher(cascade.stage, len(cascade.chain), max_batch=64, max_wait_ms=5)
    await batcher.start()
    logits, stage = await batcher.run(images, timeout=5.0)  # uint8 N x 3 x H x W
    await batcher.stop()  # answers what was accepted, then returns

Every stage has its own queue. A stage runs when it holds ``max_batch`` images or its oldest
has waited ``max_wait_ms``; the images it is not confident on join the next stage's queue beside
images of other requests, so under load later stages run full batches too, not the few images
one batch escalates. Routing is the runtime's own (``OnnxCascade.stage``: stage logits and
which images they answer); this module only decides what runs together and when.

One batch runs at a time, in one worker thread (ONNX Runtime releases the GIL, so the event
loop keeps reading requests meanwhile): two stages running at once would split the cores that
each session's own threads already use. Among stages that are due, the deepest runs first: its
images have already cost a stage, and answering them frees their requests soonest.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# stage index, images -> logits, and which of the images those logits answer
StageFn = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]
# stage index, batch size, images answered, seconds the stage ran
Observer = Callable[[int, int, int, float], None]


class QueueFull(Exception):
    """Admitting the images would pass ``max_queue`` (or the batcher is stopping)."""


class DeadlineExceeded(Exception):
    """A request was not answered within its timeout (its images were withdrawn)."""


@dataclass(eq=False)
class _Job:
    """One request's images in flight: answers fill in as stages answer them."""

    n: int
    future: asyncio.Future
    stage: np.ndarray  # index of the stage that answered each image
    left: int  # images not yet answered
    logits: np.ndarray | None = None
    withdrawn: bool = False


@dataclass(eq=False)
class _Part:
    """Some of a job's images waiting at one stage, and their rows in the job."""

    job: _Job
    rows: np.ndarray
    x: np.ndarray
    since: float


class Batcher:
    """Per-stage queues over ``stage_fn`` (see the module docstring)."""

    def __init__(
        self,
        stage_fn: StageFn,
        n_stages: int,
        *,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        max_queue_ms: float | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.stage_fn, self.n_stages = stage_fn, n_stages
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1e3
        self.max_queue, self.observe = max_queue, observe
        self.max_queue_s = None if max_queue_ms is None else max_queue_ms / 1e3
        # stage seconds and images answered by full batches, decayed per batch: the seconds an
        # admitted image costs when the server is loaded, which turns the queue into a wait
        self._busy, self._answered = 0.0, 0.0
        self.queues: list[deque[_Part]] = [deque() for _ in range(n_stages)]
        self.queued = [0] * n_stages  # images waiting per stage
        self.depth = 0  # images admitted and not yet answered or withdrawn
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="reswise-stage")
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    async def start(self) -> None:
        self._wake, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Run what was accepted without waiting for fuller batches, then stop."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
        self._pool.shutdown(wait=True)

    async def drained(self) -> None:
        """Return once every admitted image is answered (or withdrawn)."""
        await self._idle.wait()

    async def run(self, x: np.ndarray, timeout: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Logits and the index of the stage that answered, per image of ``x``; raises
        :class:`QueueFull` at once when the images do not fit, :class:`DeadlineExceeded` after
        ``timeout`` seconds (the request's images still queued are withdrawn)."""
        job = self.submit(x)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            self.withdraw(job)
            raise DeadlineExceeded from None
        except asyncio.CancelledError:  # the client went away: its images need no answer
            self.withdraw(job)
            raise

    def submit(self, x: np.ndarray) -> _Job:
        n = len(x)
        if n == 0:
            raise ValueError("a request needs at least one image")
        if self._closing or self.depth + n > self.max_queue:
            raise QueueFull(f"{self.depth} images waiting")
        wait = self._wait_s(n)
        if wait is not None and wait > self.max_queue_s:
            raise QueueFull(
                f"{1e3 * self._wait_s(0):.0f} ms of work waiting, over {1e3 * self.max_queue_s:g} ms"
            )
        job = _Job(n, asyncio.get_running_loop().create_future(), np.zeros(n, np.int64), n)
        self._admit(0, _Part(job, np.arange(n), x, time.monotonic()))
        self.depth += n
        self._idle.clear()
        return job

    def _wait_s(self, n: int) -> float | None:
        """Seconds the queued images and ``n`` more would wait at the rate full batches were
        measured at; None with no time limit or before a full batch has run. A count alone lets
        a queue that is cheap to fill hold seconds of work under overload, and every request it
        accepts then waits them."""
        if self.max_queue_s is None or self._answered <= 0:
            return None
        return (self.depth + n) * self._busy / self._answered

    def withdraw(self, job: _Job) -> None:
        """Drop a job's queued images; a batch already running finishes and its answers for the
        job are discarded."""
        self._end(job, None)

    def _end(self, job: _Job, error: Exception | None) -> None:
        """Take an unanswered job out of every queue: cancelled, or failed with ``error``."""
        if job.withdrawn or job.future.done():
            return
        job.withdrawn = True
        for i, q in enumerate(self.queues):
            if any(p.job is job for p in q):
                self.queues[i] = deque(p for p in q if p.job is not job)
                self.queued[i] = sum(len(p.rows) for p in self.queues[i])
        self._release(job.left)
        if error is None:
            job.future.cancel()
        else:
            job.future.set_exception(error)

    def _admit(self, i: int, part: _Part) -> None:
        self.queues[i].append(part)
        self.queued[i] += len(part.rows)
        self._wake.set()

    def _release(self, n: int) -> None:
        self.depth -= n
        if self.depth == 0:
            self._idle.set()

    def _due(self, now: float) -> tuple[int | None, float | None]:
        """The deepest stage due to run, or the time the next one will be."""
        soonest = None
        for i in reversed(range(self.n_stages)):
            q = self.queues[i]
            if not q:
                continue
            at = q[0].since + self.max_wait
            if self._closing or self.queued[i] >= self.max_batch or at <= now:
                return i, None
            soonest = at if soonest is None else min(soonest, at)
        return None, soonest

    def _take(self, i: int) -> list[_Part]:
        """Up to ``max_batch`` images from stage ``i``'s queue, oldest first (a part that does
        not fit is split, its rest keeping its place)."""
        q, parts, room = self.queues[i], [], self.max_batch
        while q and room:
            p = q.popleft()
            if len(p.rows) > room:
                q.appendleft(_Part(p.job, p.rows[room:], p.x[room:], p.since))
                p = _Part(p.job, p.rows[:room], p.x[:room], p.since)
            parts.append(p)
            room -= len(p.rows)
        self.queued[i] -= self.max_batch - room
        return parts

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            i, at = self._due(time.monotonic())
            if i is None:
                if self._closing and self.depth == 0:
                    return
                self._wake.clear()
                wait = None if at is None else max(at - time.monotonic(), 0.0)
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
                continue
            parts = self._take(i)
            x = parts[0].x if len(parts) == 1 else np.concatenate([p.x for p in parts])
            t = time.perf_counter()
            try:
                logits, stop = await loop.run_in_executor(self._pool, self.stage_fn, i, x)
            except Exception as e:  # a failing graph fails its batch's requests, not the server
                for p in parts:
                    self._end(p.job, e)
                continue
            answered = self._route(i, parts, logits, stop, time.monotonic())
            dt = time.perf_counter() - t
            if len(x) == self.max_batch:  # the cost at saturation, when the queue is long; a
                # small batch's cost per image would overstate the wait and refuse bursts
                self._busy, self._answered = 0.9 * self._busy + dt, 0.9 * self._answered + answered
            if self.observe is not None:
                self.observe(i, len(x), answered, dt)

    def _route(
        self, i: int, parts: list[_Part], logits: np.ndarray, stop: np.ndarray, now: float
    ) -> int:
        """Write the answers of stage ``i`` into their jobs; queue the rest at stage ``i + 1``."""
        s = 0
        for p in parts:
            m = len(p.rows)
            out, ok = logits[s : s + m], stop[s : s + m]
            s += m
            job = p.job
            if job.withdrawn:
                continue
            if job.logits is None:
                job.logits = np.empty((job.n, out.shape[1]), np.float32)
            rows = p.rows[ok]
            job.logits[rows], job.stage[rows] = out[ok], i
            if not ok.all():
                self._admit(i + 1, _Part(job, p.rows[~ok], p.x[~ok], now))
            job.left -= len(rows)
            self._release(len(rows))
            if job.left == 0:
                job.future.set_result((job.logits, job.stage))
        return int(stop.sum())
