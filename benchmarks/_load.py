"""Closed-loop HTTP/1.1 load generator: N keep-alive connections, each sends the next request
as soon as the previous answer arrives; prints one JSON result line.

    python benchmarks/_load.py --url http://127.0.0.1:8000/v2/models/m/infer \
        --body body.bin --concurrency 8 --duration 5 --warmup 1

Runs in its own process so the client never shares the server's GIL. It speaks raw HTTP/1.1
over asyncio streams (uvloop when installed) instead of an HTTP library: a generic client costs
more per request than a fast server does, and would cap what can be measured. Bounded: it stops
after `--duration`, after `--max-requests`, or at a hard deadline, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REQUEST_TIMEOUT_S = 30.0
MAX_HEADER_BYTES = 64 * 1024


@dataclass
class Tally:
    """What all connections saw during the measured window (warm-up is not counted)."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    first_error: str = ""
    sent: int = 0

    def error(self, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = message[:300]


class ProtocolFailure(Exception):
    """The server's answer was not HTTP/1.1 this client understands."""


def build_request(
    url: str, body: bytes, *, content_type: str, header_length: int | None
) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise SystemExit(f"--url must be http://HOST:PORT/PATH, got {url}")
    port = parts.port or 80
    path = parts.path or "/"
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.hostname}:{port}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    if header_length is not None:
        lines.append(f"Inference-Header-Content-Length: {header_length}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return parts.hostname, port, head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one response; handles Content-Length and chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolFailure("response headers too large")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
        raise ProtocolFailure(f"bad status line {lines[0]!r}")
    status = int(status_line[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    keep_alive = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body, keep_alive = await reader.read(), False
    return status, body, keep_alive


async def connection(
    host: str,
    port: int,
    request: bytes,
    *,
    measure_from: float,
    stop_at: float,
    tally: Tally,
    budget: list[int],
) -> None:
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while budget[0] > 0:
            started = time.perf_counter()
            if started >= stop_at:
                return
            budget[0] -= 1
            measured = started >= measure_from
            try:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status, body, keep_alive = await read_response(reader)
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ProtocolFailure,
                TimeoutError,
                ValueError,
            ) as exc:
                if measured:
                    tally.error(f"{type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                writer = reader = None
                await asyncio.sleep(0.01)  # a refused connection must not spin
                continue
            elapsed = time.perf_counter() - started
            if not keep_alive:
                writer.close()
                writer = reader = None
            if not measured:
                continue
            tally.sent += 1
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                tally.latencies.append(elapsed)
            else:
                tally.error(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
    finally:
        if writer is not None:
            writer.close()


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) so far of process `root` and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # it exited meanwhile
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        pid = int(entry.name)  # fields: 4 ppid; 14 and 15 utime and stime (clock ticks)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0)
        todo += children.get(pid, [])
    return total / ticks


class CpuWindow:
    """The CPU time the server's process tree and this process spend between `start` and
    `stop` (a server process that exits meanwhile takes its share along)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.server_s = self.client_s = 0.0
        self._started: tuple[float, float] | None = None
        self._stopped = False

    def start(self) -> None:
        if self._started is None:
            server = tree_cpu_s(self.pid) if self.pid is not None else 0.0
            self._started = (server, time.process_time())

    def stop(self) -> None:
        if self._started is not None and not self._stopped:
            self._stopped = True
            server = tree_cpu_s(self.pid) if self.pid is not None else 0.0
            self.server_s = server - self._started[0]
            self.client_s = time.process_time() - self._started[1]

    def per_request_us(self, requests: int) -> dict[str, float | None]:
        if not requests or self._started is None:
            return {"server_cpu_us": None, "client_cpu_us": None}
        server = self.server_s / requests * 1e6 if self.pid is not None else None
        return {"server_cpu_us": server, "client_cpu_us": self.client_s / requests * 1e6}


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (NaN when empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = Path(args.body).read_bytes()
    host, port, request = build_request(
        args.url, body, content_type=args.content_type, header_length=args.header_length
    )
    tally = Tally()
    budget = [args.max_requests]
    now = time.perf_counter()
    measure_from = now + args.warmup
    stop_at = measure_from + args.duration
    cpu = CpuWindow(args.server_pid)
    loop = asyncio.get_running_loop()
    loop.call_later(args.warmup, cpu.start)
    loop.call_later(args.warmup + args.duration, cpu.stop)
    tasks = [
        asyncio.create_task(
            connection(
                host,
                port,
                request,
                measure_from=measure_from,
                stop_at=stop_at,
                tally=tally,
                budget=budget,
            )
        )
        for _ in range(args.concurrency)
    ]
    # Hard deadline: the last requests get the per-request timeout to finish, no more.
    done, pending = await asyncio.wait(tasks, timeout=args.warmup + args.duration + 35)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            tally.error(f"client crashed: {task.exception()!r}")
    cpu.stop()  # the run ended before the window did (--max-requests)
    window = min(time.perf_counter(), stop_at + REQUEST_TIMEOUT_S) - measure_from
    ordered = sorted(tally.latencies)
    ms = 1000.0
    return {
        "requests": len(ordered),
        "errors": tally.errors,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "first_error": tally.first_error,
        "seconds": round(window, 3),
        "rps": len(ordered) / window if window > 0 else 0.0,
        "p50_ms": percentile(ordered, 50) * ms,
        "p90_ms": percentile(ordered, 90) * ms,
        "p99_ms": percentile(ordered, 99) * ms,
        "mean_ms": (sum(ordered) / len(ordered) * ms) if ordered else math.nan,
        "budget_exhausted": budget[0] <= 0,
        **cpu.per_request_us(len(ordered)),
    }


def parser() -> argparse.ArgumentParser:
    """The options, shared with `_wrk.py`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument(
        "--content-type", default="application/json", help="'' sends no Content-Type header"
    )
    parser.add_argument(
        "--header-length",
        type=int,
        default=None,
        help="Inference-Header-Content-Length (binary tensor extension)",
    )
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    parser.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="report the CPU time per request of this process and its descendants (/proc)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    options = parser()
    args = options.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0 or args.warmup < 0:
        options.error("--concurrency >= 1, --duration > 0 and --warmup >= 0")
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    # NaN is not JSON; the parent reads null as "no successful request".
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}
    sys.stdout.write(json.dumps(clean) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
