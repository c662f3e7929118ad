"""The benchmarks' two load generators: `_wrk.py` (wrk) and `_load.py` (Python) give the same
result line, count what the server answered, and report refusals as errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
KEYS = {"requests", "errors", "first_error", "rps", "p50_ms", "p99_ms", "server_cpu_us"}


class Echo(BaseHTTPRequestHandler):
    """200 with the body's length for a POST to /ok, 400 elsewhere; records what it saw."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str | None, str | None, int]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(
            (
                self.path,
                self.headers.get("Content-Type"),
                self.headers.get("Inference-Header-Content-Length"),
                len(body),
            )
        )
        status = 200 if self.path == "/ok" else 400
        answer = json.dumps({"bytes": len(body)}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def _run(script: str, port: int, path: str, body: Path, *extra: str) -> dict[str, object]:
    argv = [
        sys.executable, str(BENCHMARKS / script), "--url", f"http://127.0.0.1:{port}{path}",
        "--body", str(body), "--concurrency", "2", "--duration", "1", "--warmup", "0",
        *extra,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


GENERATORS = [
    "_load.py",
    pytest.param(
        "_wrk.py",
        marks=pytest.mark.skipif(
            shutil.which("wrk") is None, reason="wrk is not installed (`make wrk`)"
        ),
    ),
]


@pytest.mark.parametrize("script", GENERATORS)
def test_answers_are_counted_with_the_headers_sent(
    script: str, server: int, tmp_path: Path
) -> None:
    body = tmp_path / "body.bin"
    body.write_bytes(b'{"inputs": []}' + bytes(range(40)))
    Echo.seen.clear()
    result = _run(
        script, server, "/ok", body, "--header-length", "14", "--content-type", "",
        "--server-pid", str(os.getpid()),
    )  # fmt: skip
    assert set(result) >= KEYS
    assert result["errors"] == 0 and result["first_error"] == ""
    requests = result["requests"]
    assert isinstance(requests, int) and requests > 0
    # Every answer the generator counts was a request the server saw, with the same bytes.
    assert len(Echo.seen) >= requests
    assert set(Echo.seen) == {("/ok", None, "14", 54)}
    p50, p99 = result["p50_ms"], result["p99_ms"]
    assert isinstance(p50, float) and isinstance(p99, float) and 0 < p50 <= p99
    assert isinstance(result["server_cpu_us"], float)


@pytest.mark.parametrize("script", GENERATORS)
def test_refusals_are_errors(script: str, server: int, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(b'{"inputs": []}')
    result = _run(script, server, "/refuse", body)
    errors = result["errors"]
    assert isinstance(errors, int) and errors > 0
    assert result["first_error"]
