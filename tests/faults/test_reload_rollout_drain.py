"""Hot reload, a rollout and SIGTERM together, under continuous load on `shipyard serve`.

`scale` v1 answers y = 1·x and v2 (the canary) y = 2·x, so every answer says by its values
which version computed it; that must be the `model_version` it names, and only versions the
rollout allows at that moment may answer (1 or 2 while on trial, 2 once promoted). Meanwhile
model.toml is rewritten (every version reloads), the gate promotes the candidate, and
SIGTERM drains the server. No request that reached the server may fail or be answered by
the wrong version; once the listener closes, new connections are refused; the exit is 0.

While draining every response says `Connection: close`, so no request is sent on a
keep-alive connection the server is closing. What no server can answer: a connection the
kernel completed but the server had not yet accepted when its listening socket closed is
reset (a refused connection, one step later); such resets may only happen after the
shutdown delay, and never to a request the server had read.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

import shipyard
from tests.faults._cli_server import cli_server
from tests.serving.conftest import scale_graph
from tests.serving.test_acceptance import wait_for, write_model_toml

pytestmark = pytest.mark.timeout(120)

TOML = """[rollout]
candidate = 2
percent = 30
[rollout.gate]
min_requests = 150
max_p99_ratio = 100
{batching}
"""
CLIENTS = 4


@dataclass
class Seen:
    answers: list[tuple[float, str]] = field(default_factory=list)
    """(time answered, version) of each 200."""
    failures: list[str] = field(default_factory=list)
    refused: int = 0
    reset_at: list[float] = field(default_factory=list)
    """When a fresh connection was reset before any answer (see the test's docstring)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def client_loop(url: str, seen: Seen, stop: threading.Event, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            x = rng.normal(size=(1, 4)).astype(np.float32)
            doc = {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x.ravel().tolist()}
                ],
                "outputs": [{"name": "y"}],
            }
            try:
                response = client.post("/v2/models/scale/infer", json=doc)
            except httpx.ConnectError:
                with seen.lock:
                    seen.refused += 1
                time.sleep(0.01)
                continue
            except (httpx.ReadError, httpx.RemoteProtocolError):
                with seen.lock:
                    seen.reset_at.append(time.monotonic())
                continue
            except httpx.HTTPError as exc:
                with seen.lock:
                    seen.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if response.status_code != 200:
                with seen.lock:
                    seen.failures.append(f"{response.status_code}: {response.text}")
                continue
            answer = response.json()
            version = answer["model_version"]
            y = np.asarray(answer["outputs"][0]["data"], dtype=np.float32)
            factor = {"1": 1.0, "2": 2.0}.get(version)
            with seen.lock:
                if factor is None or not np.allclose(y, x.ravel() * factor, rtol=1e-5):
                    seen.failures.append(f"version {version} answered {y} for {x.ravel()}")
                seen.answers.append((time.monotonic(), version))


def test_reload_rollout_and_sigterm_under_load(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shipyard.pack(scale_graph(1.0), name="scale", repo=repo)
    shipyard.pack(scale_graph(2.0), name="scale", repo=repo)
    write_model_toml(repo / "scale", TOML.format(batching=""))
    seen, stop = Seen(), threading.Event()
    args = ("--poll-interval", "0.1", "--shutdown-delay", "1", "--drain-timeout", "10")
    with cli_server(repo, *args) as server:
        threads = [
            threading.Thread(target=client_loop, args=(server.url, seen, stop, i), daemon=True)
            for i in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(seen.answers) > 50, "first answers")
        # hot reload: a changed model.toml reloads every version; the rollout goes on
        write_model_toml(
            repo / "scale", TOML.format(batching="[batching]\nmax_queue_delay_us = 200")
        )
        wait_for(
            lambda: sum("loading scale version 1" in line for line in server.lines) >= 2,
            "the reload",
        )
        wait_for(
            lambda: (
                httpx.get(f"{server.url}/v2/models/scale/rollout").json()["phase"] == "promoted"
            ),
            "promotion",
            timeout_s=60,
        )
        promoted_at = time.monotonic()
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        code = server.proc.wait(30)
        stop.set()
        for thread in threads:
            thread.join(15)
    assert code == 0, "\n".join(server.lines)
    assert seen.failures == [], seen.failures[:5]
    versions = [v for _, v in seen.answers]
    assert set(versions) == {"1", "2"}
    # once promoted (after the decision was visible), only the candidate answers
    late = [v for t, v in seen.answers if t > promoted_at + 0.05]
    assert late and set(late) == {"2"}, set(late)
    # answers went on through the shutdown delay; then connections were refused
    assert any(t > signalled_at + 0.5 for t, _ in seen.answers), "no answers during the delay"
    assert seen.refused > 0
    listener_closed = signalled_at + 1.0  # --shutdown-delay
    early = [t - signalled_at for t in seen.reset_at if t < listener_closed - 0.05]
    assert early == [], f"connections reset before the listener closed (s after SIGTERM): {early}"
