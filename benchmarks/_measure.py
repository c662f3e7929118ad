"""Measuring one cell: the load generator against a server, raw ONNX Runtime, or encode."""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks import _servers
from benchmarks._rows import Bodies, Cell, Run, raw_batch_sizes
from benchmarks._servers import ModelFiles
from shipyard.codecs.v2 import decode_response

HERE = Path(__file__).resolve().parent
LOAD_SLACK_S = 90.0
LOAD_SCRIPTS = {"wrk": "_wrk.py", "python": "_load.py"}
"""`--load-generator`: the script that drives one HTTP cell (same options, same result line)."""


def _measure(argv: list[str], args: argparse.Namespace, *, cells: int = 1) -> Cell:
    timeout = cells * (args.warmup + args.duration) + LOAD_SLACK_S
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Cell(0.0, None, None, 1, 0, f"load generator ran past {timeout:.0f} s")
    if done.returncode != 0 or not done.stdout.strip():
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return Cell(0.0, None, None, 1, 0, f"load generator failed: {tail[0][:200]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return Cell(
        rps=float(data["rps"]),
        p50_ms=data["p50_ms"],
        p99_ms=data["p99_ms"],
        errors=int(data["errors"]),
        requests=int(data["requests"]),
        first_error=str(data.get("first_error", "")),
        batch_size=int(data.get("batch_size", 1)),
        server_cpu_us=data.get("server_cpu_us"),
        client_cpu_us=data.get("client_cpu_us"),
    )


def measure_http_pair(
    ports: tuple[int, int], path: str, bodies: Bodies, encoding: str, c: int, run: Run
) -> tuple[Cell, Cell]:
    """`measure_http` against two servers at the same time, one load generator each."""
    with ThreadPoolExecutor(max_workers=2) as pool:  # each thread waits on its subprocess
        first, second = (
            pool.submit(measure_http, port, path, bodies, encoding, c, run) for port in ports
        )
        return first.result(), second.result()


def measure_http(
    port: int,
    path: str,
    bodies: Bodies,
    encoding: str,
    c: int,
    run: Run,
    *,
    count_cpu: bool = True,
) -> Cell:
    """One cell against the server on `port`; with `count_cpu`, also the CPU time its
    process and their descendants (`_servers.pid_of`) spent per answered request."""
    args = run.args
    argv = [
        sys.executable,
        str(HERE / LOAD_SCRIPTS[args.load_generator]),
        "--url",
        f"http://127.0.0.1:{port}{path}",
        "--body",
        str(bodies.files[encoding]),
        "--concurrency",
        str(c),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
    ]
    header_length = bodies.header_lengths[encoding]
    if header_length is not None:
        # As tritonclient sends it: no Content-Type, the header length tells JSON from tensors.
        argv += ["--header-length", str(header_length), "--content-type", ""]
    pid = _servers.pid_of(port) if count_cpu else None
    if pid is not None:
        argv += ["--server-pid", str(pid)]
    return _measure(argv, args)


def measure_raw(model: ModelFiles, bodies: Bodies, c: int, run: Run) -> Cell:
    """The best of the raw limit at every `--raw-batch-sizes` batch size."""
    sizes = raw_batch_sizes(run.args, model.name)
    cells = [_measure_raw(model, bodies, c, run, batch) for batch in sizes]
    return max(cells, key=lambda cell: cell.rps)


def _measure_raw(model: ModelFiles, bodies: Bodies, c: int, run: Run, batch: int) -> Cell:
    args = run.args
    argv = [
        sys.executable,
        str(HERE / "_raw.py"),
        "--batch-size",
        str(batch),
        "--model",
        str(model.onnx),
        "--inputs",
        str(bodies.npz),
        "--concurrency",
        str(c),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--intra-op-threads",
        str(args.intra_op_threads),
    ]
    return _measure(argv, args)


def measure_encode(model: ModelFiles, bodies: Bodies, c: int, run: Run) -> Cell:
    """In-process SentenceTransformer.encode: the best of every `--raw-batch-sizes` size."""
    args = run.args
    assert bodies.text is not None
    sizes = raw_batch_sizes(args, model.name)
    argv = [
        sys.executable,
        str(HERE / "_encode.py"),
        "--text",
        bodies.text,
        "--batch-sizes",
        ",".join(map(str, sizes)),
        "--concurrency",
        str(c),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.intra_op_threads),
    ]
    return _measure(argv, args, cells=len(sizes))


def probe(port: int, path: str, bodies: Bodies, encoding: str) -> str:
    """'' when one request answers 200 with the reference outputs, else what went wrong."""
    headers = {"Content-Type": "application/json"}
    header_length = bodies.header_lengths[encoding]
    if header_length is not None:
        headers = {"Inference-Header-Content-Length": str(header_length)}
    try:
        status, got_headers, body = _servers.http_call(
            port, "POST", path, bodies.files[encoding].read_bytes(), headers
        )
    except OSError as exc:
        return f"request failed: {exc}"
    if status != 200:
        text = body[:160].decode("utf-8", "replace").replace("\n", " ").replace("|", "/")
        return f"HTTP {status}: {text}"
    length = got_headers.get("inference-header-content-length")
    try:
        outputs = decode_response(body, header_length=int(length) if length else None).outputs
    except Exception as exc:  # any decoding failure is a finding, not a crash
        return f"unreadable response: {exc}"
    for name, want in bodies.expected.items():
        got = outputs.get(name)
        if (
            got is None
            or got.size != want.size
            or not np.allclose(got.ravel(), want.ravel(), rtol=1e-4, atol=1e-5)
        ):
            return f"output {name!r} differs from in-process ONNX Runtime"
    return ""


def server_version(port: int) -> str:
    with contextlib.suppress(Exception):
        status, _, body = _servers.http_call(port, "GET", "/v2")
        if status == 200:
            return str(json.loads(body).get("version", ""))
    return ""
