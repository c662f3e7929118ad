"""The guarded protocol's request/response cycle (`http.cycle`, `http.guard`) byte for byte.

Through the protocol class the server runs, on a transport that records what is written
(no sockets: each write is one call), with small ASGI apps: a complete response is one
write; chunked and HEAD responses are framed as uvicorn frames them; a header value that
would split the response is refused (connection closed, nothing written); pipelined
requests are answered in order; a body is read whole however it arrives. And on a real
server: an idle keep-alive connection closes after `keep_alive_timeout_s`, a busy one
does not.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from tests.faults._cli_server import affine_repo
from uvicorn.server import ServerState

from shipyard.serving.http.guard import guarded_protocol
from shipyard.serving.server import start_in_thread
from shipyard.serving.settings import HttpSettings, ServerSettings

App = Callable[[Any, Any, Any], Awaitable[None]]


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def exchange(app: App, *requests: bytes) -> RecordingTransport:
    """Feed `requests` (each one read) to a new connection; run until the app is done."""

    async def main() -> RecordingTransport:
        config = uvicorn.Config(
            app, http=guarded_protocol(HttpSettings()), lifespan="off", log_config=None, ws="none"
        )
        config.load()
        state = ServerState()
        protocol = config.http_protocol_class(config=config, server_state=state, app_state={})
        transport = RecordingTransport()
        protocol.connection_made(transport)
        for data in requests:
            protocol.data_received(data)
        for _ in range(50):
            await asyncio.sleep(0)
        await asyncio.gather(*state.tasks)
        return transport

    return asyncio.run(main())


def request(body: bytes = b"", method: str = "POST", path: str = "/x") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def answering(headers: list[tuple[bytes, bytes]], *bodies: bytes) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        assert message["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, body in enumerate(bodies):
            await send(
                {"type": "http.response.body", "body": body, "more_body": i < len(bodies) - 1}
            )

    return app


def test_a_complete_response_is_one_write() -> None:
    app = answering([(b"content-type", b"text/plain"), (b"content-length", b"5")], b"hello")
    transport = exchange(app, request(b"{}"))
    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
    ]
    assert not transport.closed


def test_chunked_and_head_responses_are_framed() -> None:
    chunked = exchange(answering([], b"ab", b"cde"), request())
    assert b"".join(chunked.writes) == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    )
    head = exchange(answering([(b"content-length", b"5")], b"hello"), request(method="HEAD"))
    assert head.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"]


def test_a_header_that_would_split_the_response_is_refused() -> None:
    for bad in ([(b"x-id", b"a\r\nset-cookie: evil")], [(b"x id", b"a")], [(b"x:", b"a")]):
        transport = exchange(answering([*bad, (b"content-length", b"2")], b"ok"), request())
        assert transport.writes == [] and transport.closed, bad


def test_connection_close_from_the_app_closes_after_the_response() -> None:
    app = answering([(b"content-length", b"2"), (b"connection", b"close")], b"ok")
    transport = exchange(app, request())
    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    ]
    assert transport.closed


def test_pipelined_requests_are_answered_in_order_and_bodies_read_whole() -> None:
    async def echo(scope: Any, receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message["body"]
            more = message["more_body"]
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    big = bytes(range(256)) * 1024  # 256 KiB: its head is written apart, the body uncopied
    split = request(big)
    transport = exchange(echo, request(b"one") + request(b"two"), split[:1000], split[1000:])
    out = b"".join(transport.writes)
    first, second, third = out.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert first.endswith(b"\r\n\r\none") and second.endswith(b"\r\n\r\ntwo")
    assert third == b"content-length: 262144\r\n\r\n" + big


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return affine_repo(tmp_path_factory.mktemp("cycle") / "models")


def test_idle_keep_alive_connections_close_and_busy_ones_stay(repo: Path) -> None:
    settings = ServerSettings(
        repository=repo, port=0, poll_interval_s=0, http=HttpSettings(keep_alive_timeout_s=1)
    )
    with start_in_thread(settings=settings) as server:
        ask = b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n"
        busy = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        try:
            for conn in (busy, idle):
                conn.sendall(ask)
                assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            while time.monotonic() - started < 2.5:  # past two timeouts, a request every 0.4 s
                time.sleep(0.4)
                busy.sendall(ask)
                assert busy.recv(4096).startswith(b"HTTP/1.1 200")
            assert idle.recv(4096) == b""  # closed by the server, unasked
            time.sleep(1.5)
            assert busy.recv(4096) == b""  # idle in its turn
        finally:
            busy.close()
            idle.close()
