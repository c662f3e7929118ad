"""HTTP is bounded before auth: header size and count, header and body timeouts, connections.

A real `shipyard serve` (subprocess, 127.0.0.1) with a 1 s header timeout, attacked with raw
sockets; every attack is bounded in count and time.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.faults._cli_server import CliServer, affine_repo, cli_server

MAX_CONNECTIONS = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    repo = affine_repo(tmp_path_factory.mktemp("bounds") / "models")
    with cli_server(
        repo,
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--keep-alive-timeout",
        "1",
        "--max-connections",
        str(MAX_CONNECTIONS),
    ) as srv:
        yield srv


def _connect(server: CliServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _read_reply(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    """What the server sends before it closes (b"" when it just closes or resets)."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return data


def _send_header(sock: socket.socket, size: int) -> None:
    """A request whose one header is `size` bytes, sent until the server stops reading."""
    try:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * 65536
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)
        sock.sendall(b"\r\n\r\n")
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        pass


def test_a_one_megabyte_header_is_refused_quickly_and_costs_no_memory(server: CliServer) -> None:
    before = server.rss_bytes()
    started = time.monotonic()
    for _ in range(8):
        with _connect(server) as sock:
            _send_header(sock, 1 << 20)
            reply = _read_reply(sock)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 431 ")
    elapsed = time.monotonic() - started
    growth = server.rss_bytes() - before
    assert elapsed < 5, f"8 refusals took {elapsed:.1f} s"
    assert growth < 16 << 20, f"RSS grew {growth / 2**20:.1f} MiB for 8 x 1 MiB headers"


def test_a_header_over_the_limit_gets_431_with_a_one_line_error(server: CliServer) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        )
        reply = _read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b'{"error": "request headers larger than 16384 bytes' in reply


def test_too_many_header_fields_get_431(server: CliServer) -> None:
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(101))
    with _connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        reply = _read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_b_health_stays_fast_under_large_headers_and_slowloris(server: CliServer) -> None:
    stop = threading.Event()

    def flood() -> None:  # one of 4 clients sending 4 MiB headers, again and again
        while not stop.is_set():
            try:
                with _connect(server) as sock:
                    _send_header(sock, 4 << 20)
                    _read_reply(sock, 2)
            except OSError:
                pass

    floods = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    slow = []
    for thread in floods:
        thread.start()
    try:
        for _ in range(100):
            sock = _connect(server)
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        latencies = []
        with httpx.Client(base_url=server.url, timeout=5) as client:
            for _ in range(20):
                started = time.perf_counter()
                assert client.get("/v2/health/live").status_code == 200
                latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.02)
    finally:
        stop.set()
        for thread in floods:
            thread.join(10)
        for sock in slow:
            sock.close()
    assert max(latencies) < 100, f"health p max {max(latencies):.1f} ms: {latencies}"


def test_c_slowloris_and_idle_connections_are_closed_after_the_header_timeout(
    server: CliServer,
) -> None:
    socks = [_connect(server) for _ in range(30)]
    try:
        for i, sock in enumerate(socks):
            if i % 2:  # half send part of a request line, half say nothing
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: a")
        started = time.monotonic()
        replies = [_read_reply(sock, 5) for sock in socks]
        elapsed = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    assert elapsed < 3.5, f"closing 30 connections took {elapsed:.1f} s (timeout 1 s)"
    for i, reply in enumerate(replies):
        if i % 2:
            assert reply.startswith(b"HTTP/1.1 408 "), reply[:80]
        else:
            assert reply == b""


def test_a_trickled_header_is_cut_at_the_header_timeout(server: CliServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 5:
            try:
                sock.sendall(b"X-A: b\r\n")  # a field every 0.1 s: never complete
            except OSError:
                closed = True
                break
            sock.settimeout(0.1)
            try:
                if sock.recv(4096).startswith(b"HTTP/1.1 408 "):
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed and time.monotonic() - started < 2.5


def test_a_stalled_body_is_cut_at_the_body_timeout(server: CliServer) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b'\r\nContent-Length: 1000\r\n\r\n{"inputs": '
        )
        started = time.monotonic()
        reply = _read_reply(sock, 5)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3


def test_idle_keep_alive_connections_are_closed(server: CliServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert _read_reply(sock, 5) == b""
    assert time.monotonic() - started < 3


def test_connections_past_the_cap_get_503(server: CliServer) -> None:
    socks = []
    try:
        for _ in range(MAX_CONNECTIONS):
            socks.append(_connect(server))
        time.sleep(0.1)  # let the server accept them all
        with _connect(server) as extra:
            reply = _read_reply(extra, 2)
    finally:
        for sock in socks:
            sock.close()
    assert reply.startswith(b"HTTP/1.1 503 "), reply[:80]
    time.sleep(0.2)
    assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200


def test_d_normal_clients_still_work(server: CliServer) -> None:
    import tritonclient.http as triton

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        inp = triton.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("affine", [inp])
        assert result.as_numpy("y").shape == (2, 3)
    finally:
        client.close()
    headers = {"X-Fine": "a" * 10_000, **{f"X-F{i}": "1" for i in range(50)}}
    with httpx.Client(base_url=server.url, timeout=5) as http:
        for _ in range(3):  # keep-alive reuse
            response = http.post(
                "/v2/models/affine/infer",
                headers=headers,
                json={
                    "inputs": [
                        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                    ]
                },
            )
            assert response.status_code == 200, response.text


def test_settings_reject_out_of_range_bounds(tmp_path: Path) -> None:
    from shipyard.errors import ShipyardError
    from shipyard.serving.settings import load_settings

    with pytest.raises(ShipyardError, match="max_header_bytes"):
        load_settings(http={"max_header_bytes": 10})
