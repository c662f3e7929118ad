"""Serving side by side in one run: raw ONNX Runtime, Shipyard, MLServer, Triton; writes
results/serving.md.

    python benchmarks/serving.py                          # full run: tabular, 1/8/32 connections
    python benchmarks/serving.py --quick                  # smoke run (short cells, no file written)
    python benchmarks/serving.py --skip-mlserver --skip-triton --concurrency 8 --duration 3
    python benchmarks/serving.py --baseline main --skip-mlserver --skip-triton --rounds 3
                                                          # this tree beside main's server

Every server serves the same model.onnx with the same ONNX Runtime session options, batching
knobs and instance count, so only the server differs. Requests are batch 1, identical for
every server; the load generator runs in its own process with N keep-alive connections in a
closed loop: `wrk` (via `_wrk.py`; `make wrk` installs it) when it is on PATH, else `_load.py`
(`--load-generator`). MLServer and Triton are installed into `benchmarks/.venvs/` on
first use; a competitor that can't be installed or started becomes a row saying why.

A text model whose package declares text processing (the demo `minilm`) also gets text-in
rows (Shipyard tokenizes the same sentence the token-id rows send) and, as their limit,
in-process `SentenceTransformer.encode` (`_encode.py`) at the same batch sizes:

    python benchmarks/serving.py --models minilm --quick --skip-mlserver --skip-triton

`--workers 1,2` adds a Shipyard row set per worker count (`serve --workers N`: N processes
on one port, SO_REUSEPORT):

    python benchmarks/serving.py --workers 1,2 --concurrency 32

`--ray 1,2` adds a Shipyard row set per Ray Serve replica count (`deploy ray --replicas N`,
a local Ray cluster, one CPU per replica): Ray's cost against the plain server, and what a
second replica buys:

    python benchmarks/serving.py --ray 1,2 --skip-mlserver --skip-triton --concurrency 8,32

`--compiled` runs this tree's servers from a copy whose request path mypyc compiled
(`_compiled.py`); beside the same code interpreted, each pair of rows loaded at once:

    python benchmarks/serving.py --compiled --baseline HEAD --paired --workers 1,2 \\
        --concurrency 32 --skip-mlserver --skip-triton
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m

from benchmarks import _servers
from benchmarks._args import parse_args
from benchmarks._baseline import CHECKOUT, baseline_table, checked_out, server_env, twin_of
from benchmarks._compiled import MODULES, compiled_copy
from benchmarks._inputs import build_repo, load_model, make_bodies, text_for
from benchmarks._measure import (
    measure_encode,
    measure_http,
    measure_http_pair,
    measure_raw,
    probe,
    server_version,
)
from benchmarks._report import markdown, text_lines
from benchmarks._rows import (
    BINARY,
    ENCODE,
    JSON_,
    MLSERVER,
    RAW,
    SHIPYARD,
    TEXT_BINARY,
    TEXT_JSON,
    TRITON,
    Bodies,
    Cell,
    Row,
    Run,
    raw_batch_sizes,
    say,
)
from benchmarks._servers import ModelFiles, ServingConfig, SetupError
from benchmarks._tables import concurrency_table, notes, num, render_text, summary_table
from shipyard import __version__ as shipyard_version


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
    say(f"{model.name}: starting {server} ({config.describe()})")
    try:
        port = stack.enter_context(starter(model, config, run))
    except SetupError as exc:
        for row in rows:
            row.note = f"not run: {exc}"
        say(f"  {server} ({config.describe()}): {exc}")
        return []
    run.versions.setdefault(server, server_version(port))
    ready = []
    for row in rows:
        row.note = probe(port, f"/v2/models/{model.name}/infer", bodies, row.encoding)
        if row.note:
            say(f"  {row.label}: {row.note}")
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
    if run.baseline is not None:
        starters.append((run.baseline.server, _baseline))
    if not args.skip_mlserver:
        starters.append((MLSERVER, _mlserver))
    if not args.skip_triton:
        starters.append((TRITON, _triton))
    with contextlib.ExitStack() as stack:
        for server, starter in starters:
            encodings = [JSON_, BINARY]
            if server.startswith(SHIPYARD) and text is not None:
                encodings += [TEXT_JSON, TEXT_BINARY]
            for config in configs(args):
                counts = args.workers if server.startswith(SHIPYARD) else [1]
                variants = [dataclasses.replace(config, workers=w) for w in counts]
                if server == SHIPYARD:
                    variants += [dataclasses.replace(config, ray_replicas=r) for r in args.ray]
                for variant in variants:
                    targets += start_server(
                        server, starter, variant, model, bodies, run, stack, encodings=encodings
                    )
        twins = _twins(targets, run) if args.paired else {}
        measured_with_twin = {id(twin) for twin, _ in twins.values()}
        for round_ in range(args.rounds):
            order = targets if round_ % 2 == 0 else targets[::-1]
            for c in args.concurrency:
                say(f"{model.name}: round {round_ + 1}/{args.rounds}, {c} connection(s)")
                for row, port in order:
                    if id(row) in measured_with_twin:
                        continue  # measured at the same time as this tree's row
                    twin = twins.get(id(row))
                    if twin is not None and port is not None:
                        _measure_pair(row, port, twin, model, bodies, c, run)
                        continue
                    if port is None and row.server == ENCODE:
                        cell = measure_encode(model, bodies, c, run)
                    elif port is None:
                        cell = measure_raw(model, bodies, c, run)
                    else:
                        infer = f"/v2/models/{model.name}/infer"
                        # Ray's cluster processes need not be the front door's descendants
                        count_cpu = not row.config.startswith("Ray ")
                        cell = measure_http(
                            port, infer, bodies, row.encoding, c, run, count_cpu=count_cpu
                        )
                    _keep(row, c, cell)
                    _say_cell(row, c, cell)


@contextlib.contextmanager
def _shipyard(model: ModelFiles, config: ServingConfig, run: Run) -> Iterator[int]:
    """This checkout's server (its `src` first on the path, whatever is installed)."""
    src = run.shipyard_src or CHECKOUT / "src"
    with _shipyard_from(src, "shipyard", model, config, run) as port:
        yield port


@contextlib.contextmanager
def _baseline(model: ModelFiles, config: ServingConfig, run: Run) -> Iterator[int]:
    """The `--baseline` commit's server: same Python, its worktree's `src`."""
    assert run.baseline is not None
    with _shipyard_from(run.baseline.src, "baseline", model, config, run) as port:
        yield port


@contextlib.contextmanager
def _shipyard_from(
    src: Path, tag: str, model: ModelFiles, config: ServingConfig, run: Run
) -> Iterator[int]:
    where = f"w{config.workers}" + (f"-ray{config.ray_replicas}" if config.ray_replicas else "")
    work = _fresh(run.work / f"{tag}-{model.name}-{config.batching}-{where}")
    argv, port = _servers.shipyard(model, config, work=work)
    env = server_env(src)
    # every worker listening, not only the first ready one (the supervisor's line)
    line = f"with {config.workers} workers" if config.workers > 1 else None
    log = work / "server.log"
    with _servers.running(SHIPYARD, argv, port=port, log=log, env=env, ready_line=line) as p:
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
    say(f"  {server}: checking benchmarks/.venvs/{venv} ({' '.join(requirements)})")
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


def _twins(targets: list[tuple[Row, int | None]], run: Run) -> dict[int, tuple[Row, int]]:
    """--paired: this tree's Shipyard rows -> the baseline's row of the same request and
    config (and its port)."""
    assert run.baseline is not None
    ports = {id(row): port for row, port in targets if port is not None}
    rows = [row for row, _ in targets]
    twins = {}
    for row in rows:
        twin = twin_of(row, rows, run.baseline.server) if row.server == SHIPYARD else None
        if twin is not None and id(row) in ports and id(twin) in ports:
            twins[id(row)] = (twin, ports[id(twin)])
    return twins


def _measure_pair(
    row: Row, port: int, twin: tuple[Row, int], model: ModelFiles, bodies: Bodies, c: int, run: Run
) -> None:
    """One round of `row` and its baseline twin under load at the same time."""
    base_row, base_port = twin
    infer = f"/v2/models/{model.name}/infer"
    cells = measure_http_pair((port, base_port), infer, bodies, row.encoding, c, run)
    for each, cell in zip((row, base_row), cells, strict=True):
        _keep(each, c, cell)
        _say_cell(each, c, cell)
    new, old = cells
    if new.rps and old.rps:
        row.paired.setdefault(c, []).append(new.rps / old.rps)


def _keep(row: Row, c: int, cell: Cell) -> None:
    """Keep the best round of a cell (highest req/s) with every round's req/s."""
    best = row.cells.get(c)
    history = [*(best.rounds if best else []), cell.rps]
    if best is None or cell.rps > best.rps:
        row.cells[c] = best = cell
    best.rounds = history


def _say_cell(row: Row, c: int, cell: Cell) -> None:
    errors = f", {cell.errors} errors ({cell.first_error[:80]})" if cell.errors else ""
    say(
        f"  {row.label} @{c}: {cell.rps:,.0f} req/s, p50 {num(cell.p50_ms)} ms, "
        f"p99 {num(cell.p99_ms)} ms{errors}"
    )


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text(encoding="utf-8").split()[:3])
    except OSError:
        return "unknown"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, __doc__)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on `kill` too, as on Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    load_before = _loadavg()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="shipyard-serving-bench-") as tmp,
        contextlib.ExitStack() as stack,  # the baseline's worktree goes before the folder
    ):
        run = Run(args=args, work=Path(tmp), versions={SHIPYARD: shipyard_version})
        try:
            if args.baseline:
                baseline = stack.enter_context(checked_out(args.baseline, run.work))
                run.baseline = baseline
                run.versions[baseline.server] = baseline.commit[:12]
                say(f"baseline: {args.baseline} = {baseline.commit[:12]} in {baseline.src}")
            if args.compiled:
                say(f"compiling {len(MODULES)} modules of this tree with mypyc (about a minute)")
                run.shipyard_src = compiled_copy(CHECKOUT / "src", run.work)
                run.versions[f"{SHIPYARD} build:"] = (
                    f"mypyc-compiled request path ({len(MODULES)} modules, benchmarks/_compiled.py)"
                )
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
            say("interrupted: servers stopped, nothing written")
            return 130
    load_after = _loadavg()
    for name in dict.fromkeys(r.model for r in run.rows):
        print(f"\n== {name}: ratios (÷ raw ONNX Runtime, ÷ Triton) ==")
        print(render_text(summary_table(run.rows, name, args.concurrency)))
        for c in args.concurrency:
            print(f"\n-- {name}, {c} connection(s) --")
            print(render_text(concurrency_table(run.rows, name, c)))
        if run.baseline is not None:
            print(f"\n-- {name}: this tree ÷ {run.baseline.server} (req/s: higher is better) --")
            table = baseline_table(run.rows, name, run.baseline.server, args.concurrency)
            print(render_text(table))
        for line in text_lines(run.rows, name):
            print(line)
        for line in notes(run.rows, name):
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
