"""What the server counts, in Prometheus' text format (``prometheus_client``), one registry per
app so two servers in one process never share counters."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Requests by route and code, latency, queue depth, batch sizes and images per stage."""

    def __init__(self, chain: list[int], precision: list[str]) -> None:
        disable_created_metrics()  # the *_created series only double what a scrape shows
        self.registry = reg = CollectorRegistry()
        ProcessCollector(registry=reg)  # resident memory and CPU time: is memory bounded?
        self.stages = [(str(i), str(r), p) for i, (r, p) in enumerate(zip(chain, precision))]
        stage = ["stage", "resolution", "precision"]
        self.requests = Counter(
            "reswise_requests", "HTTP requests answered, by route and status code",
            ["route", "code"], registry=reg,
        )  # fmt: skip
        self.latency = Histogram(
            "reswise_request_seconds", "time from the request read to its answer, by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.queued = Gauge(
            "reswise_queue_images", "images waiting at each stage", stage, registry=reg
        )
        self.in_flight = Gauge(
            "reswise_images_in_flight", "images admitted and not yet answered", registry=reg
        )
        self.batch = Histogram(
            "reswise_batch_size", "images per stage run", stage, buckets=BATCH_BUCKETS,
            registry=reg,
        )  # fmt: skip
        self.answered = Counter(
            "reswise_images_answered", "images answered by each stage", stage, registry=reg
        )
        self.seconds = Counter(
            "reswise_stage_seconds", "time each stage's graph ran (its share of the compute)",
            stage, registry=reg,
        )  # fmt: skip

    def watch(self, queued: Callable[[int], int], in_flight: Callable[[], int]) -> None:
        """Read queue depths from the batcher when scraped, not on every change."""
        for i, labels in enumerate(self.stages):
            self.queued.labels(*labels).set_function(lambda i=i: queued(i))
        self.in_flight.set_function(in_flight)

    def observe_batch(self, i: int, size: int, answered: int, seconds: float) -> None:
        labels = self.stages[i]
        self.batch.labels(*labels).observe(size)
        self.answered.labels(*labels).inc(answered)
        self.seconds.labels(*labels).inc(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
