"""Serving side by side in one run: raw ONNX Runtime, Shipyard, MLServer, Triton; writes
results/serving.md.

    python benchmarks/serving.py                          # full run: tabular, 1/8/32 connections
    python benchmarks/serving.py --quick                  # smoke run (short cells, no file written)
    python benchmarks/serving.py --skip-mlserver --skip-triton --concurrency 8 --duration 3

Every server serves the same model.onnx with the same ONNX Runtime session options, batching
knobs and instance count, so only the server differs. Requests are batch 1, identical for
every server; the load generator (`_load.py`) runs in its own process with N keep-alive
connections in a closed loop. MLServer and Triton are installed into `benchmarks/.venvs/` on
first use; a competitor that can't be installed or started becomes a row saying why.

A text model whose package declares text processing (the demo `minilm`) also gets text-in
rows (Shipyard tokenizes the same sentence the token-id rows send) and, as their limit,
in-process `SentenceTransformer.encode` (`_encode.py`) at the same batch sizes:

    python benchmarks/serving.py --models minilm --quick --skip-mlserver --skip-triton
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m

from benchmarks import _servers
from benchmarks._servers import ModelFiles, ServingConfig, SetupError
from shipyard import __version__ as shipyard_version
from shipyard.codecs.v2 import decode_request, decode_response, encode_request
from shipyard.compression.machine import machine_facts
from shipyard.package.store import list_versions, read_verified

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "serving.md"
RAW, SHIPYARD, MLSERVER, TRITON = "ONNX Runtime", "Shipyard", "MLServer", "Triton"
JSON_, BINARY = "JSON", "binary"
TEXT_JSON, TEXT_BINARY = "JSON text", "binary text"
"""Text in: the BYTES input `text`, tokenized by the server (JSON or binary tensors)."""
ENCODE = "SentenceTransformer"
TOKEN_OF_TEXT = {TEXT_JSON: JSON_, TEXT_BINARY: BINARY}
LOAD_SLACK_S = 90.0


@dataclass
class Cell:
    """One measurement: a row at one concurrency."""

    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    requests: int
    first_error: str = ""
    batch_size: int = 1
    """Rows per session.run (raw rows measured at several batch sizes keep the best)."""
    rounds: list[float] = field(default_factory=list)
    """req/s of every round of this cell (the cell itself is the best one)."""


@dataclass
class Row:
    model: str
    server: str
    encoding: str
    config: str
    batching: bool | None
    cells: dict[int, Cell] = field(default_factory=dict)
    note: str = ""

    @property
    def label(self) -> str:
        if self.server == RAW:
            return f"{self.server} in-process ({self.config})"
        if self.server == ENCODE:
            return f"{self.server}.encode in-process ({self.config})"
        return f"{self.server} · {self.encoding} · {self.config}"


@dataclass(frozen=True)
class Bodies:
    """The same batch-1 request for every server, JSON and with binary tensors."""

    files: dict[str, Path]
    header_lengths: dict[str, int | None]
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    npz: Path
    text: str | None = None
    """The sentence the text-in rows send (tokenizes to the token-id rows' ids), if any."""


@dataclass
class Run:
    args: argparse.Namespace
    work: Path
    rows: list[Row] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    setup_failures: dict[str, str] = field(default_factory=dict)


# -- measuring -----------------------------------------------------------------------------


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
    )


def measure_http(port: int, path: str, bodies: Bodies, encoding: str, c: int, run: Run) -> Cell:
    args = run.args
    argv = [
        sys.executable,
        str(HERE / "_load.py"),
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


def _server_version(port: int) -> str:
    with contextlib.suppress(Exception):
        status, _, body = _servers.http_call(port, "GET", "/v2")
        if status == 200:
            return str(json.loads(body).get("version", ""))
    return ""


def configs(args: argparse.Namespace) -> list[ServingConfig]:
    """Batching on, then off; everything else the same for every server."""
    return [
        ServingConfig(
            batching=batching,
            max_batch_size=args.max_batch_size,
            delay_us=args.batch_delay_us,
            instances=args.instances,
            intra_op_threads=args.intra_op_threads,
        )
        for batching in (True, False)
    ]


Starter = Callable[[ModelFiles, ServingConfig, "Run"], contextlib.AbstractContextManager[int]]


def start_server(
    server: str,
    starter: Starter,
    config: ServingConfig,
    model: ModelFiles,
    bodies: Bodies,
    run: Run,
    stack: contextlib.ExitStack,
    *,
    encodings: Sequence[str] = (JSON_, BINARY),
) -> list[tuple[Row, int]]:
    """Start one server (kept running by `stack`); its rows that answered the probe, by port."""
    rows = [Row(model.name, server, enc, config.describe(), config.batching) for enc in encodings]
    run.rows += rows
    _say(f"{model.name}: starting {server} ({config.describe()})")
    try:
        port = stack.enter_context(starter(model, config, run))
    except SetupError as exc:
        for row in rows:
            row.note = f"not run: {exc}"
        _say(f"  {server} ({config.describe()}): {exc}")
        return []
    run.versions.setdefault(server, _server_version(port))
    ready = []
    for row in rows:
        row.note = probe(port, f"/v2/models/{model.name}/infer", bodies, row.encoding)
        if row.note:
            _say(f"  {row.label}: {row.note}")
        else:
            ready.append((row, port))
    return ready


def run_model(model: ModelFiles, sample: dict[str, np.ndarray], run: Run) -> None:
    """Start every server at once, then measure all rows in alternating rounds.

    Idle servers cost next to nothing, and alternating rows within each round spreads the
    drift of a shared machine over all of them instead of penalising whichever ran last.
    Each cell keeps its best round (highest req/s, with that round's latencies).
    """
    args = run.args
    text = None if args.skip_text else text_for(model, sample)
    bodies = make_bodies(model, sample, run.work / f"bodies-{model.name}", text=text)
    raw_config = f"{args.intra_op_threads} intra-op thread(s)"
    if raw_batch_sizes(args, model.name) != [1]:
        raw_config += ", best batch of " + "/".join(map(str, raw_batch_sizes(args, model.name)))
    raw = Row(model.name, RAW, "—", raw_config, None)
    run.rows.append(raw)
    targets: list[tuple[Row, int | None]] = [(raw, None)]
    if text is not None:
        encode_config = raw_config.replace("intra-op", "torch")
        encode = Row(model.name, ENCODE, "text", encode_config, None)
        run.rows.append(encode)
        targets.append((encode, None))
    starters: list[tuple[str, Starter]] = [(SHIPYARD, _shipyard)]
    if not args.skip_mlserver:
        starters.append((MLSERVER, _mlserver))
    if not args.skip_triton:
        starters.append((TRITON, _triton))
    with contextlib.ExitStack() as stack:
        for server, starter in starters:
            encodings = [JSON_, BINARY]
            if server == SHIPYARD and text is not None:
                encodings += [TEXT_JSON, TEXT_BINARY]
            for config in configs(args):
                targets += start_server(
                    server, starter, config, model, bodies, run, stack, encodings=encodings
                )
        for round_ in range(args.rounds):
            order = targets if round_ % 2 == 0 else targets[::-1]
            for c in args.concurrency:
                _say(f"{model.name}: round {round_ + 1}/{args.rounds}, {c} connection(s)")
                for row, port in order:
                    if port is None and row.server == ENCODE:
                        cell = measure_encode(model, bodies, c, run)
                    elif port is None:
                        cell = measure_raw(model, bodies, c, run)
                    else:
                        infer = f"/v2/models/{model.name}/infer"
                        cell = measure_http(port, infer, bodies, row.encoding, c, run)
                    best = row.cells.get(c)
                    history = [*(best.rounds if best else []), cell.rps]
                    if best is None or cell.rps > best.rps:
                        row.cells[c] = best = cell
                    best.rounds = history
                    _say_cell(row, c, cell)


@contextlib.contextmanager
def _shipyard(model: ModelFiles, config: ServingConfig, run: Run) -> Iterator[int]:
    work = _fresh(run.work / f"shipyard-{model.name}-{config.batching}")
    argv, port = _servers.shipyard(model, config, work=work)
    with _servers.running(SHIPYARD, argv, port=port, log=work / "server.log") as p:
        yield p


@contextlib.contextmanager
def _mlserver(model: ModelFiles, config: ServingConfig, run: Run) -> Iterator[int]:
    work = _fresh(run.work / f"mlserver-{model.name}-{config.batching}")
    python = _setup(run, MLSERVER, lambda: _install(run, MLSERVER))
    folder, port = _servers.mlserver_dir(model, config, work=work)
    argv = [str(python.with_name("mlserver")), "start", str(folder)]
    with _servers.running(MLSERVER, argv, port=port, log=work / "server.log", cwd=folder) as p:
        yield p


@contextlib.contextmanager
def _triton(model: ModelFiles, config: ServingConfig, run: Run) -> Iterator[int]:
    work = _fresh(run.work / f"triton-{model.name}-{config.batching}")
    install = _setup(run, TRITON, lambda: _servers.triton_install(_install(run, TRITON)))
    repo = _servers.triton_repo(model, config, work=work)
    port = _servers.free_port()
    argv = _servers.triton_argv(install, repo, port)
    with _servers.running(TRITON, argv, port=port, log=work / "server.log", env=install.env) as p:
        yield p


T = TypeVar("T")


def _setup(run: Run, server: str, step: Callable[[], T]) -> T:
    """Run a competitor's setup once per run: a failure is remembered, not retried per row."""
    if server in run.setup_failures:
        raise SetupError(run.setup_failures[server])
    try:
        return step()
    except SetupError as exc:
        run.setup_failures[server] = str(exc)
        raise


def _install(run: Run, server: str) -> Path:
    venv = server.lower()
    requirements = {
        MLSERVER: _servers.MLSERVER_REQUIREMENTS,
        TRITON: _servers.TRITON_REQUIREMENTS,
    }[server]
    _say(f"  {server}: checking benchmarks/.venvs/{venv} ({' '.join(requirements)})")
    python = _servers.ensure_venv(venv, requirements)
    run.versions.setdefault(f"ONNX Runtime in {server}'s venv", _onnxruntime_version(python))
    return python


def _onnxruntime_version(python: Path) -> str:
    found = subprocess.run(
        [str(python), "-c", "import onnxruntime; print(onnxruntime.__version__)"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return found.stdout.strip() if found.returncode == 0 else "unknown"


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=False)
    return path


def make_bodies(
    model: ModelFiles, sample: dict[str, np.ndarray], folder: Path, *, text: str | None = None
) -> Bodies:
    folder.mkdir(parents=True)
    files, lengths = {}, {}
    requests = [(JSON_, False, sample), (BINARY, True, sample)]
    if text is not None:
        texts = {"text": np.array([text.encode()], dtype=object)}
        requests += [(TEXT_JSON, False, texts), (TEXT_BINARY, True, texts)]
    for encoding, binary, inputs in requests:
        body, header_length = encode_request(inputs, binary_inputs=binary, binary_outputs=binary)
        files[encoding] = folder / f"{encoding.replace(' ', '-')}.body"
        files[encoding].write_bytes(body)
        lengths[encoding] = header_length
    npz = folder / "inputs.npz"
    np.savez(npz, **sample)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model.onnx), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, sample), strict=True))
    return Bodies(files, lengths, sample, expected, npz, text=text)


def text_for(model: ModelFiles, sample: dict[str, np.ndarray]) -> str | None:
    """The sentence whose tokens are the sample's `input_ids`, when the package takes text.

    Decoded with the package's own tokenizer and checked by encoding it again the way the
    server does (padding included), so text-in and token-ids-in rows run the same tensors.
    """
    spec = read_verified(model.version_dir).processing
    if spec is None or spec.text is None or spec.text.input_ids not in sample:
        return None
    from shipyard.processing.text import encode, load_tokenizer

    data = (model.version_dir / spec.text.tokenizer).read_bytes()
    tokenizer = load_tokenizer(data, spec=spec.text, where=str(model.version_dir))
    ids = sample[spec.text.input_ids]
    text = tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)
    tensors, _ = encode(tokenizer, [text], spec=spec.text)
    if tensors[spec.text.input_ids].tolist() != ids.tolist():
        _say(
            f"{model.name}: the text-in sentence tokenizes to {tensors[spec.text.input_ids].shape}"
            f" tokens, not {ids.shape} as the token-id rows send (use --tokens as a multiple "
            f"of pad_to_multiple={spec.text.pad_to_multiple}); text rows are not like for like"
        )
    return text


def load_model(
    repo: Path, name: str, *, tokens: int = 16
) -> tuple[ModelFiles, dict[str, np.ndarray]]:
    """The latest version of `name` in `repo` and a batch-1 sample input for it.

    A text model (inputs `input_ids` + `attention_mask`) gets one sentence of exactly
    `tokens` tokens: the demo request's first sentence, its words repeated to that length
    between [CLS] and [SEP], no padding.
    """
    versions = list_versions(repo / name)
    if not versions:
        raise SystemExit(f"{repo / name}: no packaged version; build the demo or pass --repo")
    version_dir = repo / name / str(versions[-1])
    manifest = read_verified(version_dir)
    model = ModelFiles(
        name=name,
        version_dir=version_dir,
        inputs=tuple((t.name, t.v2_datatype, tuple(t.shape)) for t in manifest.inputs),
        outputs=tuple((t.name, t.v2_datatype, tuple(t.shape)) for t in manifest.outputs),
    )
    request = repo / "requests" / f"{name}.json"
    if request.is_file():
        decoded = decode_request(request.read_bytes()).inputs
        sample = {k: np.ascontiguousarray(v[:1]) for k, v in decoded.items()}
        if {"input_ids", "attention_mask"} <= sample.keys():
            sample = _fixed_length(sample, tokens)
    else:
        rng = np.random.default_rng(0)
        sample = {
            t.name: rng.standard_normal([1 if d == -1 else d for d in t.shape]).astype(t.dtype)
            for t in manifest.inputs
        }
    return model, sample


def _fixed_length(sample: dict[str, np.ndarray], tokens: int) -> dict[str, np.ndarray]:
    ids = sample["input_ids"][0][sample["attention_mask"][0] != 0]
    first, words, last = ids[:1], ids[1:-1], ids[-1:]
    if len(words) == 0:
        words = ids
    body = np.resize(words, tokens - 2)
    row = np.concatenate([first, body, last]).astype(sample["input_ids"].dtype)[None, :]
    out = dict(sample)
    out["input_ids"] = row
    out["attention_mask"] = np.ones_like(row, dtype=sample["attention_mask"].dtype)
    return out


def build_repo(models: Sequence[str], folder: Path) -> Path:
    from shipyard.demo.build import build_demo_repository

    build_demo_repository(folder, include_text="minilm" in models, only=list(models), progress=_say)
    return folder


# -- output --------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "—"
    return f"{_sig(a / b)}×"


def _num(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else _sig(value)


def _sig(value: float) -> str:
    """Three significant digits, no exponent: 0.00437, 0.812, 12.3, 1,234."""
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}"


def references(rows: Sequence[Row], row: Row) -> tuple[Row | None, Row | None]:
    """(raw row, Triton row) to compare `row` with: same model, same encoding and batching."""
    raw = next((r for r in rows if r.model == row.model and r.server == RAW), None)
    tritons = [r for r in rows if r.model == row.model and r.server == TRITON and r.cells]
    for candidates in (
        [r for r in tritons if r.encoding == row.encoding and r.batching == row.batching],
        [r for r in tritons if r.encoding == row.encoding and r.batching],
        [r for r in tritons if r.encoding == JSON_ and r.batching],
    ):
        if candidates:
            return raw, candidates[0]
    return raw, None


def concurrency_table(rows: Sequence[Row], model: str, c: int) -> list[list[str]]:
    header = [
        "server · request · config",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "req/s ÷ raw",
        "req/s ÷ Triton",
        "p50 ÷ Triton",
        "p99 ÷ Triton",
    ]
    table = [header]
    for row in (r for r in rows if r.model == model):
        cell = row.cells.get(c)
        if cell is None:
            table.append([row.label, *["—"] * (len(header) - 1)])
            continue
        raw, triton = references(rows, row)
        rc = raw.cells.get(c) if raw is not None and raw is not row else None
        tc = triton.cells.get(c) if triton is not None and triton is not row else None
        table.append(
            [
                row.label,
                f"{cell.rps:,.0f}",
                _num(cell.p50_ms),
                _num(cell.p99_ms),
                str(cell.errors)
                if not cell.first_error
                else f"{cell.errors} ({cell.first_error[:60]})",
                _ratio(cell.rps, rc.rps) if rc else "—",
                _ratio(cell.rps, tc.rps) if tc else "—",
                _ratio(cell.p50_ms, tc.p50_ms) if tc else "—",
                _ratio(cell.p99_ms, tc.p99_ms) if tc else "—",
            ]
        )
    return table


def summary_table(rows: Sequence[Row], model: str, levels: Sequence[int]) -> list[list[str]]:
    header = ["server · request · config"]
    for c in levels:
        header += [f"req/s @{c}", f"p99 ms @{c}", f"÷ raw @{c}", f"÷ Triton @{c}"]
    table = [header]
    for row in (r for r in rows if r.model == model):
        raw, triton = references(rows, row)
        line = [row.label]
        for c in levels:
            cell = row.cells.get(c)
            if cell is None:
                line += ["—", "—", "—", "—"]
                continue
            rc = raw.cells.get(c) if raw is not None and raw is not row else None
            tc = triton.cells.get(c) if triton is not None and triton is not row else None
            line += [
                f"{cell.rps:,.0f}",
                _num(cell.p99_ms),
                _ratio(cell.rps, rc.rps) if rc else "—",
                _ratio(cell.rps, tc.rps) if tc else "—",
            ]
        table.append(line)
    return table


def render_text(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for n, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(table: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(table[0]) + " |", "|---" + "|---:" * (len(table[0]) - 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    return lines


def notes(rows: Sequence[Row], model: str) -> list[str]:
    """One line per row that has no numbers, saying why."""
    return [f"- {r.label}: {r.note}" for r in rows if r.model == model and r.note]


def raw_batches(rows: Sequence[Row], model: str) -> str:
    """Which batch size won each raw cell, e.g. '1 conn: batch 1; 32 conns: batch 8'."""
    return "; ".join(
        f"{c} connection(s): batch {cell.batch_size}"
        for r in rows
        if r.model == model and r.server == RAW
        for c, cell in sorted(r.cells.items())
    )


def markdown(run: Run, loads: tuple[str, str]) -> str:
    args, facts = run.args, machine_facts()
    cores = os.cpu_count() or 1
    first = float(loads[0].split()[0])
    versions = ", ".join(f"{k} {v}" for k, v in run.versions.items() if v)
    shared = (
        f" **The machine was shared** (load {first:.1f} on {cores} cores before the run "
        "started): absolute numbers are low and noisy; compare the ratios."
        if first >= 0.5 * cores
        else ""
    )
    lines = [
        "# Serving benchmark",
        "",
        f"- Generated by {_command(args)} on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"- Machine: {facts.cpu}, {cores} logical CPUs, {facts.platform}, Python {facts.python}.",
        f"- Software: ONNX Runtime {facts.onnxruntime} (raw and Shipyard)"
        + (f", {versions}" if versions else "")
        + ".",
        f"- Load average (1/5/15 min) before the run: {loads[0]}; after: {loads[1]}.{shared}",
        "",
        "How it was measured: every server serves the same `model.onnx` with the same ONNX",
        f"Runtime options ({_threads(args)}), {args.instances} model "
        f"instance(s), and — where on — the same dynamic batching (≤{args.max_batch_size} rows, "
        f"{args.batch_delay_us} µs queue delay); only the server differs. Each request is one",
        "row (batch 1; MiniLM: one sentence of a fixed number of tokens), the same bytes for",
        "every server. The load generator (`_load.py`) is a",
        "separate process with N keep-alive HTTP/1.1 connections in a closed loop; it shares the",
        "machine's cores with the server, the same for every row. All servers run at once (idle",
        f"but one); each cell is {args.warmup:g} s warm-up then {args.duration:g} s measured, "
        f"repeated in {args.rounds} round(s) that alternate the row order; a cell shows its best",
        "round (highest req/s, with that round's latencies).",
        "Raw ONNX Runtime is the limit: N threads in one process calling `session.run` on the",
        "same input, stacked into batches of each `--raw-batch-sizes` size (req/s counts rows),",
        "keeping the best. Ratios: req/s ÷ raw and ÷ Triton (higher is better); latency ÷ Triton",
        "(lower is better). The Triton reference is the Triton row with the same request",
        "encoding and batching setting. Compare ratios, not absolute numbers." + _noise(run.rows),
    ]
    for model in dict.fromkeys(r.model for r in run.rows):
        lines += ["", f"## {model}", "", "### Summary", ""]
        threads = args.model_threads.get(model, args.intra_op_threads)
        lines += [f"- ONNX Runtime intra-op threads for {model}: {threads}, raw and every server."]
        if raw_batch_sizes(args, model) != [1]:
            lines += [f"- Raw ONNX Runtime's best batch size: {raw_batches(run.rows, model)}."]
            lines += ["- " + best_raw_line(run.rows, model)]
        if any(r.model == model and r.encoding in TOKEN_OF_TEXT for r in run.rows):
            lines += [
                "- Text-in rows (`JSON text`, `binary text`) send the token-id rows' sentence as "
                "the BYTES input `text`; Shipyard tokenizes it (same ids, same padded shape). "
                "`SentenceTransformer.encode in-process`: N threads calling `encode` on B copies "
                "of that sentence (torch threads = the intra-op threads), best of the raw batch "
                "sizes.",
                *("- " + line for line in text_lines(run.rows, model)),
            ]
        lines += [""]
        lines += render_markdown(summary_table(run.rows, model, args.concurrency))
        for c in args.concurrency:
            lines += ["", f"### {c} connection{'s' if c > 1 else ''}", ""]
            lines += render_markdown(concurrency_table(run.rows, model, c))
        found = notes(run.rows, model)
        if found:
            lines += ["", "Rows without numbers:", "", *found]
    lines += ["", *RESULT_NOTES, ""]
    return "\n".join(lines)


TEXT_RAW_BATCHES = (1, 8, 32)
"""Raw batch sizes for MiniLM, whose target is "90 % of raw at its best batch size"."""


def raw_batch_sizes(args: argparse.Namespace, model: str) -> list[int]:
    if args.raw_batch_sizes is not None:
        return list(args.raw_batch_sizes)
    return list(TEXT_RAW_BATCHES) if model == "minilm" else [1]


def best_raw_line(rows: Sequence[Row], model: str) -> str:
    """Shipyard (batching on) at its busiest against the best raw cell at any concurrency."""
    raw = [
        (c, cell)
        for r in rows
        if r.model == model and r.server == RAW
        for c, cell in r.cells.items()
    ]
    if not raw:
        return ""
    c_raw, best = max(raw, key=lambda item: item[1].rps)
    parts = []
    for r in rows:
        if r.model == model and r.server == SHIPYARD and r.batching and r.cells:
            c, cell = max(r.cells.items())
            parts.append(f"{r.encoding} @{c} {_num(cell.rps)} ({cell.rps / best.rps:.0%})")
    return (
        f"Best raw cell at any concurrency: {_num(best.rps)} req/s ({c_raw} thread(s), batch "
        f"{best.batch_size}); Shipyard with batching against it: {', '.join(parts)}."
    )


TEXT_COST_TARGET = 0.90
"""Issue #14: text in costs at most 10 % of token-ids-in throughput."""
ENCODE_TARGET = 0.80
"""Issue #14: serving text in reaches 80 % of in-process encode's best cell."""


def text_lines(rows: Sequence[Row], model: str) -> list[str]:
    """Text in against token ids in (same server and config), and against in-process encode."""
    lines = []
    for row in rows:
        token_encoding = TOKEN_OF_TEXT.get(row.encoding)
        if row.model != model or row.server != SHIPYARD or token_encoding is None:
            continue
        tokens = next(
            (
                r
                for r in rows
                if r.model == model
                and r.server == SHIPYARD
                and r.encoding == token_encoding
                and r.config == row.config
            ),
            None,
        )
        if tokens is None or not row.cells:
            continue
        ratios = [
            f"{_ratio(cell.rps, tokens.cells[c].rps)} @{c}"
            for c, cell in sorted(row.cells.items())
            if c in tokens.cells
        ]
        worst = min(
            (cell.rps / tokens.cells[c].rps for c, cell in row.cells.items() if c in tokens.cells
             and tokens.cells[c].rps), default=math.nan,
        )  # fmt: skip
        met = "met" if worst >= TEXT_COST_TARGET else "not met"
        lines.append(
            f"Text in ÷ token ids in, {row.encoding.split()[0]} · {row.config}: "
            f"{', '.join(ratios)} (target ≥ {TEXT_COST_TARGET:.2f}×: {met})."
        )
    encode = [
        (c, cell)
        for r in rows
        if r.model == model and r.server == ENCODE
        for c, cell in r.cells.items()
        if not cell.errors
    ]
    served = [
        (r, c, cell)
        for r in rows
        if r.model == model and r.server == SHIPYARD and r.encoding in TOKEN_OF_TEXT
        for c, cell in r.cells.items()
        if not cell.errors
    ]
    if encode and served:
        c_enc, best = max(encode, key=lambda item: item[1].rps)
        row, c, cell = max(served, key=lambda item: item[2].rps)
        ratio = cell.rps / best.rps if best.rps else math.nan
        met = "met" if ratio >= ENCODE_TARGET else "not met"
        lines.append(
            f"Best text-in cell ({row.label} @{c}: {_num(cell.rps)} req/s) ÷ in-process "
            f"SentenceTransformer.encode's best cell ({c_enc} thread(s), batch "
            f"{best.batch_size}: {_num(best.rps)} req/s) = {ratio:.2f}× "
            f"(target ≥ {ENCODE_TARGET:.2f}×: {met})."
        )
    return lines


def _threads(args: argparse.Namespace) -> str:
    text = f"{args.intra_op_threads} intra-op thread(s)"
    overrides = ", ".join(f"{m}: {n}" for m, n in args.model_threads.items() if m in args.models)
    return f"{text}; {overrides}" if overrides else text


def _noise(rows: Sequence[Row]) -> str:
    """How far apart the rounds of the same cell were: the noise floor of this run."""
    spreads = sorted(
        (max(c.rounds) - min(c.rounds)) / max(c.rounds)
        for r in rows
        for c in r.cells.values()
        if len(c.rounds) > 1 and max(c.rounds) > 0
    )
    if not spreads:
        return ""
    median, worst = spreads[len(spreads) // 2], spreads[-1]
    return (
        f" Noise: the rounds of one cell differed by {median:.0%} in req/s at the median "
        f"(worst {worst:.0%}); smaller differences between rows mean nothing."
    )


RESULT_NOTES = (
    "Notes:",
    "",
    "- MLServer 1.7.1 does not implement the binary tensor extension",
    "  (`Inference-Header-Content-Length`) over REST: sent as tritonclient sends it (no",
    "  Content-Type) it answers 422, with `Content-Type: application/octet-stream` 500. Its",
    "  binary rows record the answer instead of numbers.",
    "- MLServer runs inference in `parallel_workers` processes (one per model instance here);",
    "  its venv pins `uvloop<0.22`, with which 1.7.1's workers crash. Triton runs the python",
    "  backend (`benchmarks/triton_backend/model.py`), since the `tritonserver` bundled by",
    "  nvidia-pytriton ships no ONNX Runtime backend; both run ONNX Runtime in a Python process.",
)


def _command(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/serving.py", "--models " + ",".join(args.models)]
    parts += [
        "--concurrency " + ",".join(map(str, args.concurrency)),
        f"--duration {args.duration:g}",
        f"--warmup {args.warmup:g}",
        f"--rounds {args.rounds}",
        "--model-intra-op-threads " + args.model_intra_op_threads,
    ]
    if args.raw_batch_sizes:
        parts.append("--raw-batch-sizes " + ",".join(map(str, args.raw_batch_sizes)))
    if "minilm" in args.models:
        parts.append(f"--tokens {args.tokens}")
    parts += [
        flag
        for flag, on in (
            ("--skip-mlserver", args.skip_mlserver),
            ("--skip-triton", args.skip_triton),
            ("--skip-text", args.skip_text),
        )
        if on
    ]
    return "`" + " ".join(parts) + "`"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _say_cell(row: Row, c: int, cell: Cell) -> None:
    errors = f", {cell.errors} errors ({cell.first_error[:80]})" if cell.errors else ""
    _say(
        f"  {row.label} @{c}: {cell.rps:,.0f} req/s, p50 {_num(cell.p50_ms)} ms, "
        f"p99 {_num(cell.p99_ms)} ms{errors}"
    )


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text(encoding="utf-8").split()[:3])
    except OSError:
        return "unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--models",
        default="tabular",
        help="demo models to serve, comma-separated (default: tabular)",
    )
    parser.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="use this model repository instead of building the demo models",
    )
    parser.add_argument(
        "--concurrency",
        default="1,8,32",
        help="connections per cell, comma-separated (default: 1,8,32)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds per cell and round (default 3; --quick: 1)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="warm-up seconds per cell (default 1; --quick: 0.5)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run; writes no results file unless --output is given",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="measure every cell this many times, alternating rows; keep the best "
        "(default 2; --quick: 1)",
    )
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--skip-triton", action="store_true")
    parser.add_argument(
        "--skip-text",
        action="store_true",
        help="no text-in rows and no SentenceTransformer.encode row for text packages",
    )
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument(
        "--batch-delay-us",
        type=int,
        default=500,
        help="dynamic batching queue delay for every server (default 500)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="model instances (Shipyard instances, MLServer parallel_workers, "
        "Triton instance_group count)",
    )
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=1,
        help="ONNX Runtime intra-op threads, every server and raw (default 1)",
    )
    parser.add_argument(
        "--model-intra-op-threads",
        default="minilm=2",
        help="per-model override of --intra-op-threads, raw and every server alike "
        "(default minilm=2: the model dominates, so it gets the cores)",
    )
    parser.add_argument(
        "--raw-batch-sizes",
        default=None,
        help="batch sizes raw ONNX Runtime is measured at; each cell keeps the best "
        f"(default: {','.join(map(str, TEXT_RAW_BATCHES))} for minilm, 1 for the others)",
    )
    parser.add_argument(
        "--tokens",
        type=int,
        default=16,
        help="tokens per MiniLM request (one sentence, fixed length; default 16)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"markdown results file (default {RESULTS.relative_to(HERE.parent)})",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the raw cells here")
    args = parser.parse_args(argv)
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        parser.error("--concurrency takes integers, e.g. 1,8,32")
    if not args.concurrency or min(args.concurrency) < 1 or max(args.concurrency) > 1024:
        parser.error("--concurrency values must be between 1 and 1024")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        if args.raw_batch_sizes is not None:
            args.raw_batch_sizes = sorted({int(b) for b in args.raw_batch_sizes.split(",") if b})
        args.model_threads = {
            m.strip(): int(n)
            for m, n in (p.split("=", 1) for p in args.model_intra_op_threads.split(",") if p)
        }
    except ValueError:
        parser.error("--raw-batch-sizes takes integers; --model-intra-op-threads NAME=N,...")
    if args.raw_batch_sizes is not None and (
        not args.raw_batch_sizes or min(args.raw_batch_sizes) < 1
    ):
        parser.error("--raw-batch-sizes must be >= 1")
    if args.tokens < 2:
        parser.error("--tokens must be >= 2")
    if args.duration is None:
        args.duration = 1.0 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 1.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be between 1 and 10")
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be in (0, 600] and --warmup in [0, 60] seconds")
    if args.output is None and not args.quick:
        args.output = RESULTS
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on `kill` too, as on Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    load_before = _loadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shipyard-serving-bench-") as tmp:
        run = Run(args=args, work=Path(tmp), versions={SHIPYARD: shipyard_version})
        try:
            repo = args.repo or build_repo(args.models, run.work / "models")
            default_threads = args.intra_op_threads
            for name in args.models:
                model, sample = load_model(repo, name, tokens=args.tokens)
                args.intra_op_threads = args.model_threads.get(name, default_threads)
                try:
                    run_model(model, sample, run)
                finally:
                    args.intra_op_threads = default_threads
        except KeyboardInterrupt:
            _say("interrupted: servers stopped, nothing written")
            return 130
    load_after = _loadavg()
    for model in dict.fromkeys(r.model for r in run.rows):
        print(f"\n== {model}: ratios (÷ raw ONNX Runtime, ÷ Triton) ==")
        print(render_text(summary_table(run.rows, model, args.concurrency)))
        for c in args.concurrency:
            print(f"\n-- {model}, {c} connection(s) --")
            print(render_text(concurrency_table(run.rows, model, c)))
        for line in text_lines(run.rows, model):
            print(line)
        for line in notes(run.rows, model):
            print(line)
    print(
        f"\n{time.monotonic() - started:.0f} s; load average before {load_before}, "
        f"after {load_after}"
    )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(markdown(run, (load_before, load_after)), encoding="utf-8")
        print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in run.rows], indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
