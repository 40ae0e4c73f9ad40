"""The server's batcher alone (asyncio + numpy, no HTTP, no model): batches by size or by wait,
escalated images pooled across requests, answers written back to the right rows, deadlines and
the bounded queue."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from reswise.ship.serve.batcher import Batcher, DeadlineExceeded, QueueFull


class Stages:
    """A fake two-stage cascade on 1-pixel "images": stage 0 answers even values, stage 1 the
    rest; the logits carry the value and the stage, so every answer can be traced."""

    def __init__(self, n_stages: int = 2) -> None:
        self.calls: list[tuple[int, list[int]]] = []
        self.n = n_stages

    def __call__(self, i: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = x.reshape(len(x), -1)[:, 0].astype(np.float32)
        self.calls.append((i, v.astype(int).tolist()))
        stop = np.ones(len(x), bool) if i == self.n - 1 else v % 2 == 0
        return np.stack([v, np.full_like(v, i)], axis=1), stop


def images(*values: int) -> np.ndarray:
    return np.asarray(values, np.uint8).reshape(-1, 1, 1, 1)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_escalated_images_of_several_requests_share_one_batch():
    stages = Stages()

    async def main() -> list[tuple[np.ndarray, np.ndarray]]:
        b = Batcher(stages, 2, max_batch=8, max_wait_ms=50)
        await b.start()
        # three requests, 1 + 3 + 4 images: stage 0 runs once, full, at 8 images
        out = await asyncio.gather(
            b.run(images(1), 5.0), b.run(images(2, 3, 5), 5.0), b.run(images(7, 8, 9, 10), 5.0)
        )
        await b.stop()
        return out

    out = run(main())
    assert stages.calls[0] == (0, [1, 2, 3, 5, 7, 8, 9, 10])
    # the five odd images of the three requests go on together (after max_wait: 5 < 8)
    assert stages.calls[1:] == [(1, [1, 3, 5, 7, 9])]
    for (logits, stage), vals in zip(out, ([1], [2, 3, 5], [7, 8, 9, 10])):
        assert logits[:, 0].tolist() == vals  # each answer in its own row
        assert stage.tolist() == [v % 2 for v in vals] == logits[:, 1].tolist()


def test_a_stage_runs_when_its_oldest_image_has_waited_max_wait():
    stages = Stages(1)

    async def main() -> float:
        b = Batcher(stages, 1, max_batch=64, max_wait_ms=30)
        await b.start()
        loop = asyncio.get_running_loop()
        t = loop.time()
        await b.run(images(4), 5.0)
        took = loop.time() - t
        await b.stop()
        return took

    took = run(main())
    assert 0.025 <= took < 1.0 and stages.calls == [(0, [4])]


def test_large_requests_are_split_into_full_batches_in_order():
    stages = Stages(1)

    async def main() -> np.ndarray:
        b = Batcher(stages, 1, max_batch=4, max_wait_ms=1000)
        await b.start()
        logits, _ = await b.run(images(*range(10)), 5.0)
        await b.stop()  # flushes the last 2 without waiting out max_wait
        return logits

    logits = run(main())
    assert [len(v) for _, v in stages.calls] == [4, 4, 2]
    assert logits[:, 0].tolist() == list(range(10))


def test_full_queue_refuses_at_once_and_deadline_withdraws_the_images():
    stages = Stages(1)

    async def main() -> None:
        b = Batcher(stages, 1, max_batch=64, max_wait_ms=10_000, max_queue=3)
        await b.start()
        waiting = asyncio.create_task(b.run(images(1, 2, 3), 0.05))
        await asyncio.sleep(0)
        assert b.depth == 3
        with pytest.raises(QueueFull):
            b.submit(images(4))
        with pytest.raises(DeadlineExceeded):
            await waiting
        assert b.depth == 0 and b.queued == [0]  # withdrawn: room again
        assert stages.calls == []  # never run
        with pytest.raises(DeadlineExceeded):
            await b.run(images(5, 6, 7), 0.01)
        await b.stop()

    run(main())


def test_the_queue_refuses_work_that_would_wait_past_max_queue_ms():
    """Issue 30: under 2x overload a queue of 1 024 images held 2.5 s of work and every accepted
    request waited it (p99 of the 200s 2.5 s). The wait is bounded by time at the measured
    rate, however many images the count would still admit."""
    import time

    class Slow(Stages):
        def __call__(self, i, x):  # noqa: ANN001, ANN202
            time.sleep(0.02)  # at least 20 ms a batch: >= 5 ms an image at batches of 4
            return super().__call__(i, x)

    async def main() -> None:
        b = Batcher(Slow(1), 1, max_batch=4, max_wait_ms=0, max_queue=10_000, max_queue_ms=50)
        await b.start()
        await b.run(images(1, 2, 3, 4), 5.0)  # one batch measures the rate
        with pytest.raises(QueueFull, match="ms of work waiting, over 50 ms"):
            b.submit(images(*range(11)))  # >= 55 ms of work
        assert b.depth == 0
        assert (await b.run(images(5, 6), 5.0))[0].shape == (2, 2)  # 10 ms: admitted
        await b.stop()

    run(main())


def test_without_max_queue_ms_only_the_count_limits_the_queue():
    async def main() -> None:
        b = Batcher(Stages(1), 1, max_batch=2, max_wait_ms=0, max_queue=100)
        await b.start()
        await b.run(images(1, 2), 5.0)
        jobs = [b.submit(images(*range(50)))]  # a count of 50 fits whatever the rate
        assert b.depth == 50
        await asyncio.gather(*(j.future for j in jobs))
        await b.stop()

    run(main())


def test_stop_answers_everything_accepted_and_a_failing_stage_fails_only_its_batch():
    calls = []

    def flaky(i: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("graph failed")
        return np.zeros((len(x), 2), np.float32), np.ones(len(x), bool)

    async def main() -> None:
        b = Batcher(flaky, 1, max_batch=2, max_wait_ms=10_000)
        await b.start()
        first = asyncio.create_task(b.run(images(1, 2), 5.0))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(b.run(images(3), 5.0))
        await asyncio.sleep(0)
        stopping = asyncio.create_task(b.stop())
        with pytest.raises(RuntimeError, match="graph failed"):
            await first
        logits, stage = await second  # answered by the flush, not dropped
        await stopping
        assert logits.shape == (1, 2) and stage.tolist() == [0] and b.depth == 0

    run(main())
