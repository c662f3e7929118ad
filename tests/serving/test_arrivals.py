"""A batch runs before its queue delay only when no request can arrive to join it.

`Arrivals.settled` on its own (a manual clock), then real servers on real ports: a lone
keep-alive client and a closed loop of clients are not held for the delay, an idle open
connection or a recent gRPC call keep it. The delay is long (0.3 s) so that waiting it out
and not waiting are far apart; what is checked is the server's own queue time
(`shipyard_queue_duration_seconds`) and batch sizes from `/metrics`.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from shipyard.codecs import encode_request
from shipyard.serving.arrivals import GRPC_QUIET_NS, Arrivals
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import ServerSettings

DELAY_S = 0.3
BODY = encode_request({"x": np.ones((1, 4), dtype=np.float32)})[0]
URL = "/v2/models/scale/infer"


class Clock:
    def __init__(self) -> None:
        self.ns = 10**12

    def __call__(self) -> int:
        return self.ns


def test_settled_only_when_every_connection_waits_in_the_queue() -> None:
    clock = Clock()
    arrivals = Arrivals(clock)
    assert not arrivals.settled(0, 0)  # no connection: nothing is known
    assert not arrivals.settled(1, 0)
    for _ in range(3):
        arrivals.connection_opened()
    arrivals.busy = 3
    quiet = 500_000
    assert not arrivals.settled(3, quiet)  # a connection opened within the quiet window
    clock.ns += quiet
    assert arrivals.settled(3, quiet)
    assert not arrivals.settled(2, quiet)  # one request under way is not queued here
    arrivals.busy = 2
    assert not arrivals.settled(2, quiet)  # an idle connection may send at any time
    arrivals.connection_closed(busy=False)
    assert arrivals.settled(2, quiet)
    arrivals.connection_closed(busy=True)
    assert (arrivals.open, arrivals.busy) == (1, 1)
    arrivals.grpc_call()  # a gRPC channel may send another call at any time
    clock.ns += GRPC_QUIET_NS - 1
    assert not arrivals.settled(1, quiet)
    clock.ns += 1
    assert arrivals.settled(1, quiet)


def _scrape(client: httpx.Client) -> tuple[float, float, float, float]:
    """(queue seconds in all, requests queued under 0.1 s, batches, rows) for the scale
    model, read on `client`'s own connection (a new one would hold the next batch for the
    delay: it might send)."""
    text = client.get("/metrics").text
    found = {"queue": 0.0, "quick": 0.0, "batches": 0.0, "rows": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != "scale":
                continue
            if sample.name == "shipyard_queue_duration_seconds_sum":
                found["queue"] += sample.value
            elif sample.name == "shipyard_queue_duration_seconds_bucket":
                if sample.labels.get("le") == "0.1":
                    found["quick"] += sample.value
            elif sample.name == "shipyard_batch_size_count":
                found["batches"] += sample.value
            elif sample.name == "shipyard_batch_size_sum":
                found["rows"] += sample.value
    return found["queue"], found["quick"], found["batches"], found["rows"]


@pytest.fixture
def delayed(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., ServerSettings]
) -> ServerSettings:
    """Settings for a repository whose scale model batches with a 0.3 s queue delay."""
    pack()
    (repo / "scale" / "model.toml").write_text(
        f"[batching]\nenabled = true\nmax_batch_size = 32\n"
        f"max_queue_delay_us = {int(DELAY_S * 1e6)}\n"
    )
    return settings_for(repo)


def _infer(client: httpx.Client) -> None:
    answer = client.post(URL, content=BODY, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text


def test_a_lone_keep_alive_client_is_not_held_for_the_queue_delay(
    delayed: ServerSettings,
) -> None:
    with (
        start_in_thread(settings=delayed) as server,
        httpx.Client(base_url=server.url, trust_env=False) as client,
    ):
        _infer(client)  # its connection is new: the request waits the delay
        queue0, _, batches0, _ = _scrape(client)
        assert queue0 >= DELAY_S * 0.9
        for _ in range(8):
            _infer(client)
        queue1, _, batches1, _ = _scrape(client)
    assert batches1 - batches0 == 8
    # waiting out the delay would be 8 x 0.3 s; each request ran as soon as it was queued
    assert queue1 - queue0 < DELAY_S


def test_a_closed_loop_of_clients_batches_all_of_them_without_the_delay(
    delayed: ServerSettings,
) -> None:
    clients, rounds = 4, 6
    with start_in_thread(settings=delayed) as server:
        pool = [httpx.Client(base_url=server.url, trust_env=False) for _ in range(clients)]
        try:

            def each(work: Callable[[httpx.Client], None]) -> None:
                failures: list[BaseException] = []

                def run(client: httpx.Client) -> None:
                    try:
                        work(client)
                    except BaseException as exc:  # reported below
                        failures.append(exc)

                threads = [threading.Thread(target=run, args=(c,)) for c in pool]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(60)
                assert not failures, failures

            each(_infer)  # opens the connections: these wait the delay (new connections)
            time.sleep(DELAY_S * 1.2)  # every connection older than the quiet window
            _, quick0, batches0, rows0 = _scrape(pool[0])
            each(lambda client: [_infer(client) for _ in range(rounds)])
            _, quick1, batches1, rows1 = _scrape(pool[0])
        finally:
            for client in pool:
                client.close()
    requests, batches = rows1 - rows0, batches1 - batches0
    assert requests == clients * rounds
    # Waiting out the delay, every request would queue about 0.3 s (the clients' requests
    # arrive within milliseconds of each other); a batch runs once all four are queued. A
    # client thread stalled past the delay on a busy machine makes its batch-mates wait,
    # hence "most", not "all".
    assert quick1 - quick0 >= requests * 0.75
    assert requests / batches >= 2  # they still batch: the clients' requests run together


def test_an_idle_connection_or_a_grpc_call_keeps_the_queue_delay(
    delayed: ServerSettings,
) -> None:
    settings = delayed.model_copy(update={"grpc_port": 0})
    with (
        start_in_thread(settings=settings) as server,
        httpx.Client(base_url=server.url, trust_env=False) as client,
    ):
        _infer(client)
        _infer(client)  # not held: the connection is old enough and alone
        queue0, *_ = _scrape(client)
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        try:
            time.sleep(DELAY_S * 1.2)  # older than the quiet window: only its idleness holds
            _infer(client)  # the idle connection could send a request to join it
        finally:
            idle.close()
        queue1, *_ = _scrape(client)
        assert queue1 - queue0 >= DELAY_S * 0.9
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        try:
            feed = grpcclient.InferInput("x", [1, 4], "FP32")
            feed.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
            grpc.infer("scale", [feed])
        finally:
            grpc.close()
        queue2, *_ = _scrape(client)
        _infer(client)  # a gRPC call just began: another may come at any time
        queue3, *_ = _scrape(client)
    assert queue3 - queue2 >= DELAY_S * 0.9
