"""Python work per request, counted: opcodes and calls through the server's HTTP protocol.

    python benchmarks/opcodes.py                          # tabular, JSON and binary
    python benchmarks/opcodes.py --baseline main          # this tree beside main's
    python benchmarks/opcodes.py --top 40 --encodings json

Time on a shared machine moves by 10-30 % between runs of the same code, more than most
changes to the request path do. The number of Python bytecode instructions a request
executes does not move at all: this script starts the server in process (the demo
`tabular` model, batching <=32 rows / 500 us as `serving.py` serves it, no sockets),
makes the HTTP protocol the server runs (uvicorn's httptools protocol with Shipyard's
guard, `serving.server._uvicorn_config`) for each of 16 keep-alive connections on a
transport that keeps what is written, feeds each whole requests (`--requests` in all;
batches form as under load; on uvloop, as the server runs) and counts,
with `sys.settrace`, the opcodes and Python calls (coroutine resumptions included) per
request, from the parser's callbacks to the response's write, optionally the functions
that execute the most. It does not see C: the parser, numpy, orjson, ONNX Runtime, the
event loop and the socket cost time it does not count, so it tells whether a change to
Python code does less work, and `serving.py` tells what that buys. `--baseline GIT_REF`
counts that commit's code too (a temporary git worktree, imported through PYTHONPATH) on
the same model files. (Until round 8 it drove the ASGI app without the protocol: its
counts then are ~1,100 lower for the same code.)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
CALLERS = 16
WARMUP = 400
TOML = """instances = 1
warmup = true
[batching]
enabled = true
max_batch_size = 32
max_queue_delay_us = 500
[runtime]
intra_op_threads = 1
"""


def _bodies(repo: Path) -> dict[str, tuple[bytes, list[tuple[bytes, bytes]]]]:
    sys.path.insert(0, str(HERE.parent))
    from benchmarks._inputs import load_model
    from shipyard.codecs.v2 import encode_request

    _, sample = load_model(repo, "tabular")
    out = {}
    for encoding, binary in (("json", False), ("binary", True)):
        body, length = encode_request(sample, binary_inputs=binary, binary_outputs=binary)
        headers = [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode())]
        if length is None:
            headers.append((b"content-type", b"application/json"))
        else:  # as tritonclient sends it: no Content-Type
            headers.append((b"inference-header-content-length", str(length).encode()))
        out[encoding] = (body, headers)
    return out


async def _count(
    repo: Path, body: bytes, headers: list[tuple[bytes, bytes]], requests: int, top: int
) -> dict[str, Any]:
    from uvicorn.server import ServerState

    from shipyard.serving.lifecycle import Server
    from shipyard.serving.server import _uvicorn_config
    from shipyard.serving.settings import ServerSettings

    settings = ServerSettings(repository=repo, poll_interval_s=0)
    server = Server(settings)
    await server.start()
    # the protocol class the server runs (uvicorn's httptools protocol, guarded), as its
    # listener makes it for each connection
    config = _uvicorn_config(server.app, settings)
    config.load()
    state = ServerState()
    path = "/v2/models/tabular/infer"
    head = b"".join(b"%s: %s\r\n" % pair for pair in headers)
    request = b"POST %s HTTP/1.1\r\n%s\r\n%s" % (path.encode(), head, body)

    async def caller(each: int) -> None:
        make: Any = config.http_protocol_class
        protocol = make(config=config, server_state=state, app_state={})
        transport = _Transport()
        protocol.connection_made(transport)
        for _ in range(each):
            transport.written.clear()
            transport.answered.clear()
            protocol.data_received(request)  # one read holds the whole request
            await transport.answered.wait()
            answer = b"".join(transport.written)
            if not answer.startswith(b"HTTP/1.1 200 "):
                raise SystemExit(f"the server answered {answer[:200]!r}, not 200")
        protocol.connection_lost(None)

    async def callers(each: int) -> None:
        await asyncio.gather(*(caller(each) for _ in range(CALLERS)))

    try:
        await callers(WARMUP // CALLERS)
        opcodes = calls = 0
        by_code: collections.Counter[CodeType] = collections.Counter()

        def tracer(frame: FrameType, event: str, arg: object) -> Any:
            nonlocal opcodes, calls
            frame.f_trace_opcodes = True
            if event == "opcode":
                opcodes += 1
                if top:
                    by_code[frame.f_code] += 1
            elif event == "call":
                calls += 1
            return tracer

        each = max(1, requests // CALLERS)
        sys.settrace(tracer)
        try:
            await callers(each)
        finally:
            sys.settrace(None)
        n = each * CALLERS
        hot = [
            (round(count / n, 1), f"{code.co_qualname} ({_short(code.co_filename)}:"
             f"{code.co_firstlineno})")
            for code, count in by_code.most_common(top)
        ]  # fmt: skip
        return {"opcodes": opcodes / n, "calls": calls / n, "requests": n, "top": hot}
    finally:
        await server.stop()


class _Transport(asyncio.Transport):
    """A connection's socket: what the server writes is kept; a write answers the request
    (a small response is one write)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.answered = asyncio.Event()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))
        self.answered.set()

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


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/src/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _measure(args: argparse.Namespace) -> int:
    """The child mode: count for each encoding, print one JSON line."""
    bodies = _bodies(args.repo)
    result = {}
    for encoding in args.encodings:
        body, headers = bodies[encoding]
        result[encoding] = _run(_count(args.repo, body, headers, args.requests, args.top))
    print(json.dumps(result))
    return 0


def _run(main: Any) -> Any:
    """On uvloop, as the server runs (its loop is C: its work is not counted)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _child(args: argparse.Namespace, src: Path | None) -> dict[str, Any]:
    argv = [
        sys.executable, str(Path(__file__).resolve()), "--child", "--repo", str(args.repo),
        "--requests", str(args.requests), "--top", str(args.top),
        "--encodings", ",".join(args.encodings),
    ]  # fmt: skip
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"counting failed{' (baseline)' if src else ''}: {tail}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--repo", type=Path, default=None, help="a repository holding tabular")
    parser.add_argument("--requests", type=int, default=1600, help="counted requests (1600)")
    parser.add_argument("--encodings", default="json,binary", help="json,binary (both)")
    parser.add_argument("--top", type=int, default=0, help="also list the N busiest functions")
    parser.add_argument("--baseline", metavar="GIT_REF", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
    if not args.encodings or set(args.encodings) - {"json", "binary"}:
        parser.error("--encodings takes json and/or binary")
    if args.requests < CALLERS:
        parser.error(f"--requests must be at least {CALLERS}")
    if args.child:
        return _measure(args)
    with tempfile.TemporaryDirectory(prefix="shipyard-opcodes-") as tmp:
        work = Path(tmp)
        if args.repo is None:
            sys.path.insert(0, str(HERE.parent))
            from benchmarks._inputs import build_repo

            args.repo = build_repo(["tabular"], work / "models")
            (args.repo / "tabular" / "model.toml").write_text(TOML, encoding="utf-8")
        current = _child(args, HERE.parent / "src")
        baseline = None
        if args.baseline is not None:
            from benchmarks._baseline import checked_out

            with checked_out(args.baseline, work) as tree:
                baseline = _child(args, tree.src)
    for encoding in args.encodings:
        now = current[encoding]
        line = f"{encoding:7s} {now['opcodes']:8.1f} opcodes/request, {now['calls']:6.1f} calls"
        if baseline is not None:
            then = baseline[encoding]
            line += (
                f"   baseline {args.baseline}: {then['opcodes']:8.1f}, {then['calls']:6.1f}"
                f"   this/baseline {now['opcodes'] / then['opcodes']:.3f}"
            )
        print(line)
        for count, where in now["top"]:
            print(f"  {count:8.1f}  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
