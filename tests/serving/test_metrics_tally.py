"""Request metrics are tallied per request and added to Prometheus at each scrape: the
exposition must be exactly what observing each request directly gives."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.serving.metrics import LATENCY_BUCKETS, Metrics

# (outcome, total, queue, compute) in ns: bucket bounds exactly, between, past the last
REQUESTS = [
    ("success", 100_000, 0, 50_000),  # 0.0001 s: in the le="0.0001" bucket, as observe() puts it
    ("success", 100_001, 20_000, 80_000),
    ("success", 3_000_000, 1_000_000, 1_000_000),
    ("success", 20_000_000_000, 0, 10_000_000_000),  # +Inf
    ("invalid", 400_000, 0, 0),
    ("success", 2_500_000, 250_000, 500_000),
]


def samples(text: bytes, names: set[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name in names:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def reference() -> bytes:
    """The same requests observed one by one on plain prometheus_client series."""
    registry = CollectorRegistry()
    labels = ("model", "version")
    requests = Counter("shipyard_requests", "", (*labels, "protocol", "outcome"), registry=registry)
    seconds = Histogram(
        "shipyard_request_duration_seconds",
        "",
        (*labels, "protocol"),
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    queue = Histogram(
        "shipyard_queue_duration_seconds", "", labels, buckets=LATENCY_BUCKETS, registry=registry
    )
    compute = Histogram(
        "shipyard_compute_duration_seconds", "", labels, buckets=LATENCY_BUCKETS, registry=registry
    )
    for outcome, total, queued, computed in REQUESTS:
        requests.labels("m", "1", "v2_http", outcome).inc()
        seconds.labels("m", "1", "v2_http").observe(total / 1e9)
        if outcome == "success":
            queue.labels("m", "1").observe(queued / 1e9)
            compute.labels("m", "1").observe(computed / 1e9)
    return generate_latest(registry)


NAMES = {
    "shipyard_requests_total",
    *(
        f"shipyard_{what}_duration_seconds_{part}"
        for what in ("request", "queue", "compute")
        for part in ("bucket", "sum", "count")
    ),
}


def test_the_tallied_exposition_equals_observing_each_request() -> None:
    metrics = Metrics()
    for number, (outcome, total, queued, computed) in enumerate(REQUESTS):
        metrics.observe_request(
            model="m",
            version="1",
            protocol="v2_http",
            outcome=outcome,
            total_ns=total,
            queue_ns=queued,
            compute_ns=computed,
        )
        if number == 2:  # a scrape between requests: the later ones still add up
            metrics.exposition()
    got, want = samples(metrics.exposition(), NAMES), samples(reference(), NAMES)
    assert want and got == want
    assert got == samples(metrics.exposition(), NAMES)  # a scrape adds nothing twice
    stats = metrics.model_stats("m")[0]["inference_stats"]  # statistics: at once, unchanged
    assert stats["success"]["count"] == 5 and stats["fail"]["count"] == 1


@pytest.mark.anyio
async def test_on_a_loop_the_series_are_written_once_the_loop_turns() -> None:
    """Under `--workers N` another worker's scrape reads the files, not this process's
    tally: the series must be written right after the requests, not at this one's scrape."""
    import asyncio

    metrics = Metrics()
    for _ in range(3):
        metrics.observe_request(
            model="m", version="1", protocol="v2_http", outcome="success", total_ns=1000
        )
    key = (
        "shipyard_requests_total",
        (("model", "m"), ("outcome", "success"), ("protocol", "v2_http"), ("version", "1")),
    )
    assert samples(generate_latest(metrics.registry), NAMES).get(key) is None  # tallied
    await asyncio.sleep(0)
    assert samples(generate_latest(metrics.registry), NAMES)[key] == 3.0
