"""Reliability under faults, and what the safety nets cost; writes results/reliability.md.

    python benchmarks/reliability.py            # faults + 3 interleaved rounds of 3 s per config
    python benchmarks/reliability.py --quick    # 1 round of 2 s; no file written

Two parts, one run, one machine:

1. **Faults.** A probe (4 closed-loop httpx clients, their own threads) keeps calling the
   breast-cancer pipeline while something goes wrong, and every request's send time, end
   time, status and answering version is kept. Per fault: requests failed, recovery time
   and p99 before and during.
   - SIGTERM on `shipyard serve --shutdown-delay 1`: the drain.
   - A canary at 20 % fitted on shuffled labels, gate `min_agreement = 0.95`: how many of
     its answers clients saw before the gate rolled it back, and how long that took.
   - The serving version's runtime starts failing (injected, in process) under `[failover]`:
     failed requests until traffic moved to the standby version.
   - With `isolation = "process"`: the worker SIGKILLed mid-load.
2. **Cost.** The same model served plain, with a shadow rollout mirroring 100 % and 10 % of
   traffic to an identical candidate, and isolated in a worker process: separate `shipyard
   serve` processes driven in turns by `_load.py` (its own process, keep-alive connections),
   round by round, so drifting machine load hits all configs alike; ratios to plain.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m

from benchmarks import _servers
from shipyard.codecs.v2 import encode_request
from shipyard.compression.machine import machine_facts

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "reliability.md"
BASE_TOML = "instances = 1\n[runtime]\nintra_op_threads = 1\n"
SHADOW = '[rollout]\ncandidate = 2\nmode = "shadow"\npercent = {p}\n[rollout.gate]\nmin_requests = 10000000\n'
ISOLATED = 'isolation = "process"\n'


@dataclass
class Model:
    v1: Path
    same: Path
    """Version 2: the same pipeline packed again (an identical candidate)."""
    shuffled: Path
    """Version 2: the pipeline fitted on shuffled labels."""
    rows: np.ndarray
    labels_v1: np.ndarray


def build(work: Path) -> Model:
    from sklearn.base import clone

    import shipyard
    from shipyard.demo.tabular import train_tabular

    trained = train_tabular()
    x = trained.x_train.astype(np.float32)
    v1 = shipyard.pack(trained.model, name="tabular", repo=work / "same", sample_input=x[:16])
    same = shipyard.pack(trained.model, name="tabular", repo=work / "same", sample_input=x[:16])
    labels = np.random.default_rng(0).permutation(trained.y_train)
    bad = clone(trained.model).fit(trained.x_train, labels)
    shipyard.pack(trained.model, name="tabular", repo=work / "bad", sample_input=x[:16])
    shuffled = shipyard.pack(bad, name="tabular", repo=work / "bad", sample_input=x[:16])
    rows = trained.x_test.astype(np.float32)
    labels_v1 = np.asarray(trained.model.predict(rows))
    return Model(v1.path, same.path, shuffled.path, rows, labels_v1)


def make_repo(work: Path, name: str, versions: Sequence[Path], toml: str) -> Path:
    repo = work / name
    for version_dir in versions:  # each keeps its number (the manifest says it)
        shutil.copytree(version_dir, repo / "tabular" / version_dir.name)
    (repo / "tabular" / "model.toml").write_text(BASE_TOML + toml, encoding="utf-8")
    return repo


def isolation_supported() -> bool:
    from shipyard.serving.model_config import ModelConfig

    return "isolation" in ModelConfig.model_fields


# -- the probe -------------------------------------------------------------------------------


@dataclass
class Shot:
    sent: float
    done: float
    status: int
    """HTTP status; 0 = connection refused, -1 = reset or lost after connecting."""
    version: str | None = None
    label: int | None = None
    row: int = 0


@dataclass
class Probe:
    url: str
    rows: np.ndarray
    clients: int = 4
    shots: list[Shot] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Probe:
        for i in range(self.clients):
            thread = threading.Thread(target=self._loop, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _loop(self, seed: int) -> None:
        import httpx

        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                i = int(rng.integers(len(self.rows)))
                row = self.rows[i : i + 1]
                doc = {
                    "inputs": [
                        {"name": "X", "datatype": "FP32", "shape": [1, row.shape[1]],
                         "data": row.ravel().tolist()}
                    ],
                    "outputs": [{"name": "label"}],
                }  # fmt: skip
                sent = time.monotonic()
                try:
                    r = client.post("/v2/models/tabular/infer", json=doc)
                except httpx.ConnectError:
                    self.shots.append(Shot(sent, time.monotonic(), 0, row=i))
                    time.sleep(0.01)
                    continue
                except httpx.HTTPError:
                    self.shots.append(Shot(sent, time.monotonic(), -1, row=i))
                    continue
                shot = Shot(sent, time.monotonic(), r.status_code, row=i)
                if r.status_code == 200:
                    answer = r.json()
                    shot.version = answer["model_version"]
                    shot.label = int(answer["outputs"][0]["data"][0])
                self.shots.append(shot)


def p99_ms(shots: Sequence[Shot]) -> float | None:
    done = [(s.done - s.sent) * 1000 for s in shots if s.status == 200]
    return float(np.percentile(done, 99)) if done else None


def window(shots: Sequence[Shot], start: float, end: float) -> list[Shot]:
    return [s for s in shots if start <= s.sent < end]


# -- faults ----------------------------------------------------------------------------------


@contextlib.contextmanager
def cli_serve(repo: Path, work: Path, *flags: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _servers.free_port()
    script = Path(sys.executable).with_name("shipyard")
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "shipyard.cli"]
    argv = [*launcher, "serve", str(repo), "--port", str(port), "--poll-interval", "0", *flags]
    log = (work / f"{repo.name}.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, Exception):
                if _servers.http_call(port, "GET", "/v2/health/ready")[0] == 200:
                    break
            if proc.poll() is not None:
                raise SystemExit(f"server exited: see {log.name}")
            time.sleep(0.05)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def fault_drain(model: Model, work: Path) -> dict[str, Any]:
    repo = make_repo(work, "drain", [model.v1], "")
    flags = ("--shutdown-delay", "1", "--drain-timeout", "10")
    with cli_serve(repo, work, *flags) as (proc, port):
        probe = Probe(f"http://127.0.0.1:{port}", model.rows)
        with probe:
            time.sleep(1.5)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            exited = time.monotonic()
            time.sleep(0.2)
    before = window(probe.shots, signalled - 1.0, signalled)
    during = window(probe.shots, signalled, exited)
    closed = signalled + 1.0
    failed = [s for s in during if s.status >= 300 or (s.status == -1 and s.sent < closed - 0.05)]
    return {
        "fault": "SIGTERM, --shutdown-delay 1",
        "requests": len(during),
        "failed": len(failed),
        "detail": f"exit {code} after {exited - signalled:.2f} s; "
        f"{sum(s.status == 200 for s in during)} answered while draining, "
        f"{sum(s.status == 0 for s in probe.shots)} connections refused after the listener closed, "
        f"{sum(s.status == -1 and s.sent >= closed - 0.05 for s in during)} reset as it closed",
        "recovery_s": None,
        "p99_before": p99_ms(before),
        "p99_during": p99_ms(during),
    }


def fault_bad_canary(model: Model, work: Path) -> dict[str, Any]:
    toml = (
        '[rollout]\ncandidate = 2\nmode = "canary"\npercent = 20\n'
        "[rollout.gate]\nmin_requests = 500\nmin_agreement = 0.95\nmax_p99_ratio = 100\n"
    )
    repo = make_repo(work, "canary", [model.v1, model.shuffled], toml)
    with cli_serve(repo, work) as (_proc, port):
        started = time.monotonic()
        with Probe(f"http://127.0.0.1:{port}", model.rows) as probe:
            status: dict[str, Any] = {}
            while time.monotonic() - started < 60:
                status = json.loads(
                    _servers.http_call(port, "GET", "/v2/models/tabular/rollout")[2]
                )
                if status["phase"] != "canary":
                    break
                time.sleep(0.02)
            decided = time.monotonic()
            time.sleep(1.0)
    by_candidate = [s for s in probe.shots if s.version == "2"]
    wrong = [s for s in by_candidate if s.label != model.labels_v1[s.row]]
    after = [s for s in probe.shots if s.sent > decided + 0.05]
    decision = status.get("decision") or {}
    return {
        "fault": "canary 20 % fitted on shuffled labels",
        "requests": len(window(probe.shots, started, decided)),
        "failed": len(wrong),
        "detail": f"{decision.get('action')} ({decision.get('trigger')}) after "
        f"{len(by_candidate)} candidate answers, {len(wrong)} of them a different label than "
        f"stable's; afterwards {sum(s.version == '2' for s in after)} of {len(after)} from the "
        f"candidate",
        "recovery_s": decided - started,
        "p99_before": None,
        "p99_during": p99_ms(window(probe.shots, started, decided)),
    }


def fault_failover(model: Model, work: Path) -> dict[str, Any]:
    from shipyard.serving.server import start_in_thread
    from shipyard.serving.settings import load_settings

    toml = "[failover]\nwindow_requests = 10\nmax_error_rate = 0.5\nwindow_s = 10\n"
    repo = make_repo(work, "failover", [model.v1, model.same], toml)
    settings = load_settings(repository=repo, port=0, poll_interval_s=0)
    with start_in_thread(settings=settings) as running, Probe(running.url, model.rows) as probe:
        time.sleep(1.0)
        served = running.server.dataplane.manager.get("tabular", 2)

        def broken(feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
            raise RuntimeError("device lost")

        broke = time.monotonic()
        served.batcher._run = broken
        time.sleep(2.0)
    before = window(probe.shots, broke - 1.0, broke)
    after = [s for s in probe.shots if s.sent >= broke]
    failed = [s for s in after if s.status != 200]
    recovered = next((s.done for s in after if s.status == 200 and s.version == "1"), None)
    return {
        "fault": "runtime fails ([failover], standby loaded)",
        "requests": len(after),
        "failed": len(failed),
        "detail": f"then every request answered by version 1 "
        f"({sum(s.version == '1' for s in after)} of {len(after)})",
        "recovery_s": None if recovered is None else recovered - broke,
        "p99_before": p99_ms(before),
        "p99_during": p99_ms(window(probe.shots, broke, broke + 2.0)),
    }


def fault_worker_kill(model: Model, work: Path) -> dict[str, Any]:
    repo = make_repo(work, "isolated", [model.v1], ISOLATED)
    with (
        cli_serve(repo, work) as (proc, port),
        Probe(f"http://127.0.0.1:{port}", model.rows) as probe,
    ):
        time.sleep(1.0)
        workers = _children(proc.pid)
        killed = time.monotonic()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        time.sleep(3.0)
    after = [s for s in probe.shots if s.sent >= killed]
    failed = [s for s in after if s.status != 200]
    recovered = next((s.done for s in after if s.status == 200 and s.sent > killed + 0.01), None)
    if failed:
        last_fail = max(s.done for s in failed)
        recovered = next((s.done for s in after if s.status == 200 and s.sent > last_fail), None)
    return {
        "fault": "isolated worker SIGKILLed",
        "requests": len(after),
        "failed": len(failed),
        "detail": f"{len(workers)} worker(s) killed; statuses "
        f"{dict(sorted(_count(s.status for s in failed).items()))}",
        "recovery_s": None if recovered is None else recovered - killed,
        "p99_before": p99_ms(window(probe.shots, killed - 1.0, killed)),
        "p99_during": p99_ms(window(probe.shots, killed, killed + 3.0)),
    }


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _count(values: Iterator[int] | Sequence[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


# -- cost --------------------------------------------------------------------------------------


@dataclass
class Config:
    label: str
    toml: str
    versions: int = 1
    """2: version 1 and an identical version 2 (the shadow candidate)."""
    rounds: list[dict[str, float]] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.median(r["rps"] for r in self.rounds) if self.rounds else 0.0


def load(port: int, body: Path, args: argparse.Namespace) -> dict[str, float]:
    return _servers.closed_loop(port, "/v2/models/tabular/infer", body, args)


def measure_cost(model: Model, work: Path, args: argparse.Namespace) -> list[Config]:
    configs = [
        Config("in process (plain)", ""),
        Config("shadow, 100 % mirrored", SHADOW.format(p=100), versions=2),
        Config("shadow, 10 % mirrored", SHADOW.format(p=10), versions=2),
    ]
    if isolation_supported():
        configs.append(Config('isolation = "process"', ISOLATED))
    body = work / "request.json"
    body.write_bytes(encode_request({"X": model.rows[:1]})[0])
    with contextlib.ExitStack() as stack:
        ports = []
        for c in configs:
            name = "cost-" + "".join(ch if ch.isalnum() else "-" for ch in c.label)
            versions = [model.v1, model.same][: c.versions]
            repo = make_repo(work, name, versions, c.toml)
            ports.append(stack.enter_context(cli_serve(repo, work))[1])
        for round_no in range(args.rounds):
            for config, port in zip(configs, ports, strict=True):
                cell = load(port, body, args)
                config.rounds.append(cell)
                print(
                    f"round {round_no + 1} {config.label}: {cell['rps']:.0f} req/s, "
                    f"p99 {cell['p99_ms']:.2f} ms",
                    flush=True,
                )
    return configs


# -- report ------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown(faults: list[dict[str, Any]], configs: list[Config], args: argparse.Namespace) -> str:
    facts = machine_facts()
    plain = configs[0].rps
    lines = [
        "# Reliability: faults, recovery, and the cost of the safety nets",
        "",
        f"Run {datetime.now(UTC).isoformat(timespec='seconds')} with `python "
        f"benchmarks/reliability.py{' ' + ' '.join(args.argv) if args.argv else ''}`; "
        f"{facts.cpu}, {facts.logical_cpus} logical CPUs, Python {facts.python}, ONNX Runtime "
        f"{facts.onnxruntime}; load average {os.getloadavg()[0]:.2f} at the end.",
        "",
        "Breast-cancer StandardScaler + LogisticRegression, batch-1 V2 JSON requests.",
        "",
        "## Faults",
        "",
        "4 closed-loop httpx clients (threads of the benchmark process). *Failed*: answers "
        "other than 200, or connections reset before the listener closed (drain); for the "
        "canary, answers from the candidate whose label differs from stable's. *Recovery*: "
        "from the fault to the first good answer after it (canary: to the rollback).",
        "",
        "| fault | requests during | failed | recovery s | p99 ms before | p99 ms during | what happened |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in faults:
        rec = "—" if f["recovery_s"] is None else f"{f['recovery_s']:.2f}"
        lines.append(
            f"| {f['fault']} | {f['requests']} | {f['failed']} | {rec} | "
            f"{_ms(f['p99_before'])} | {_ms(f['p99_during'])} | {f['detail']} |"
        )
    lines += [
        "",
        "## Cost",
        "",
        f"`_load.py`, {args.concurrency} keep-alive connections, {len(configs[0].rounds)} "
        f"interleaved rounds of {args.duration:g} s per config (median), each config its own "
        "`shipyard serve` process with one instance and one ONNX Runtime thread. The shadow "
        "candidate is a copy of version 1: every mirrored call runs the model again and "
        "compares the answers.",
        "",
        "| config | req/s (median) | rounds | p50 ms | p99 ms | vs plain |",
        "|---|---|---|---|---|---|",
    ]
    for c in configs:
        rounds = ", ".join(f"{r['rps']:.0f}" for r in c.rounds)
        p50 = statistics.median(r["p50_ms"] for r in c.rounds)
        p99 = statistics.median(r["p99_ms"] for r in c.rounds)
        lines.append(
            f"| {c.label} | {c.rps:.0f} | {rounds} | {p50:.2f} | {p99:.2f} | {c.rps / plain:.3f}× |"
        )
    return "\n".join([*lines, ""])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s; no file written")
    parser.add_argument("--skip-cost", action="store_true", help="faults only")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 0.5
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shipyard-reliability-bench-") as tmp:
        work = Path(tmp)
        model = build(work)
        scenarios: list[Callable[[Model, Path], dict[str, Any]]] = [
            fault_drain,
            fault_bad_canary,
            fault_failover,
        ]
        if isolation_supported():
            scenarios.append(fault_worker_kill)
        faults = []
        for scenario in scenarios:
            result = scenario(model, work)
            faults.append(result)
            print(f"{result['fault']}: {result['failed']} failed of {result['requests']}; "
                  f"{result['detail']}", flush=True)  # fmt: skip
        configs = [] if args.skip_cost else measure_cost(model, work, args)
    plain = configs[0].rps if configs else 0.0
    for c in configs[1:]:
        print(f"{c.label}: {c.rps / plain:.3f}× plain")
    print(f"took {time.perf_counter() - started:.0f} s")
    if not args.quick and configs:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(markdown(faults, configs, args), encoding="utf-8")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
