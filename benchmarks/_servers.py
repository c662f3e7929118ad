"""Start and stop the servers `serving.py` compares: Shipyard, MLServer and Triton, on 127.0.0.1.

Each competitor lives in its own virtualenv under `benchmarks/.venvs/`, created on first use
and reused while its requirements are unchanged. Every server runs as a child process in its
own process group, is polled on `/v2/health/ready`, and is stopped (SIGTERM to the group, then
SIGKILL) when its `with` block ends, also on Ctrl-C and on errors; on Linux a server also gets
SIGTERM if this process dies without cleaning up.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shipyard.package.dtypes import BY_V2

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
MARKER = ".benchmark-requirements.json"
INSTALL_TIMEOUT_S = 1800
START_TIMEOUT_S = 180.0
STOP_GRACE_S = 10.0

MLSERVER_REQUIREMENTS = ("mlserver==1.7.1", "onnxruntime", "uvloop<0.22")
"""uvloop 0.22+ crashes MLServer 1.7.1's parallel inference workers; 0.21 is fine."""
TRITON_REQUIREMENTS = ("nvidia-pytriton", "onnxruntime")
"""nvidia-pytriton bundles a CPU-capable `tritonserver` binary and its python backend."""


class SetupError(Exception):
    """A competitor could not be installed or started; the message says why, in one line."""


@dataclass(frozen=True)
class ModelFiles:
    """What every server serves: one model version folder (manifest.json + model.onnx)."""

    name: str
    version_dir: Path
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    """(name, V2 datatype, shape with -1 for dynamic dims) per input."""
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]

    @property
    def onnx(self) -> Path:
        return self.version_dir / "model.onnx"


@dataclass(frozen=True)
class ServingConfig:
    """The knobs every server gets the same way, so only the server differs."""

    batching: bool
    max_batch_size: int
    delay_us: int
    instances: int
    intra_op_threads: int
    workers: int = 1
    """Shipyard only: `serve --workers`."""
    ray_replicas: int = 0
    """Shipyard only: `deploy ray --replicas N` (Ray Serve replicas behind the front door);
    0: not on Ray."""

    def describe(self) -> str:
        workers = f"{self.workers} workers, " if self.workers > 1 else ""
        if self.ray_replicas:
            workers = f"Ray {self.ray_replicas} replica{'s' if self.ray_replicas > 1 else ''}, "
        if not self.batching:
            return f"{workers}batching off"
        return f"{workers}batching ≤{self.max_batch_size}, {self.delay_us} µs"


# -- virtualenvs ---------------------------------------------------------------------------


def ensure_venv(name: str, requirements: Sequence[str]) -> Path:
    """`benchmarks/.venvs/NAME` with `requirements` installed; returns its python. Idempotent.

    pip's output goes to `benchmarks/.venvs/NAME-install.log`, kept for when it fails.
    """
    venv = VENVS / name
    log = VENVS / f"{name}-install.log"
    python = venv / "bin" / "python"
    marker = venv / MARKER
    wanted = sorted(requirements)
    if python.is_file() and marker.is_file():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(marker.read_text(encoding="utf-8")) == wanted:
                return python
    VENVS.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        if not python.is_file():
            _run([sys.executable, "-m", "venv", str(venv)], out, what=f"creating {venv}")
        _run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *wanted],
            out,
            what=f"pip install {' '.join(wanted)} (log: {log})",
        )
    marker.write_text(json.dumps(wanted), encoding="utf-8")
    return python


def _run(argv: list[str], out: IO[bytes], *, what: str) -> None:
    try:
        done = subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        raise SetupError(f"{what} failed with exit code {done.returncode}{_pip_error(out.name)}")


def _pip_error(log: str | int) -> str:
    """pip's last ERROR line in the log, to say why in one line."""
    with contextlib.suppress(OSError, TypeError):
        lines = Path(str(log)).read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line.strip() for line in lines if line.startswith("ERROR")]
        if errors:
            return f": {errors[-1][:200]}"
    return ""


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the benchmark dies (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def http_call(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request to 127.0.0.1 without proxies or retries: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def running(
    label: str,
    argv: list[str],
    *,
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    ready_path: str = "/v2/health/ready",
    ready_line: str | None = None,
) -> Iterator[int]:
    """Run `argv` until the block ends; yields `port` once `ready_path` answers 200 (and
    `ready_line` is in the log: one worker's readiness is not the whole group's)."""
    with log.open("ab") as out:
        try:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches us; we stop the group in order
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as exc:
            raise SetupError(f"{label}: could not start {argv[0]}: {exc}") from exc
        try:
            _wait_ready(label, proc, port=port, path=ready_path, log=log, line=ready_line)
            _PIDS[port] = proc.pid
            yield port
        finally:
            _PIDS.pop(port, None)
            _stop(proc)


_PIDS: dict[int, int] = {}
"""Port -> the process `running` started for the server there."""


def pid_of(port: int) -> int | None:
    """The process of the server listening on `port` (its workers are its descendants), if
    `running` started it."""
    return _PIDS.get(port)


def _wait_ready(
    label: str,
    proc: subprocess.Popen[bytes],
    *,
    port: int,
    path: str,
    log: Path,
    line: str | None = None,
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{label} exited with code {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_call(port, "GET", path)[0] == 200 and (
                line is None or line in log.read_text(errors="replace")
            ):
                return
        time.sleep(0.2)
    raise SetupError(f"{label} not ready within {START_TIMEOUT_S:.0f} s: {_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_GRACE_S)
    # The group may hold workers (MLServer's, Triton's stubs) even after the leader exited.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_GRACE_S)


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip()[:200] for line in text[-lines:]) or "(empty log)"


# -- Shipyard ------------------------------------------------------------------------------


def shipyard(model: ModelFiles, config: ServingConfig, *, work: Path) -> tuple[list[str], int]:
    """(argv, port) serving `model` with `config` written to its model.toml."""
    repo = work / "repo"
    target = repo / model.name / model.version_dir.name
    shutil.copytree(model.version_dir, target)
    # on Ray a batcher thread waits per batch in flight: two per replica keep each busy
    instances = max(config.instances, 2 * config.ray_replicas)
    toml = [
        f"instances = {instances}",
        "warmup = true",
        "[batching]",
        f"enabled = {'true' if config.batching else 'false'}",
        f"max_batch_size = {config.max_batch_size}",
        f"max_queue_delay_us = {config.delay_us}",
        "[runtime]",
        f"intra_op_threads = {config.intra_op_threads}",
    ]
    (repo / model.name / "model.toml").write_text("\n".join(toml) + "\n", encoding="utf-8")
    script = Path(sys.executable).with_name("shipyard")
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "shipyard.cli"]
    port = free_port()
    command = ["deploy", "ray"] if config.ray_replicas else ["serve"]
    argv = [*launcher, *command, str(repo), "--port", str(port), "--poll-interval", "0"]
    if config.ray_replicas:  # one CPU each: a replica's session runs intra_op_threads
        argv += ["--replicas", str(config.ray_replicas), "--num-cpus", "1"]
    if config.workers > 1:
        argv += ["--workers", str(config.workers)]
    return argv, port


# -- MLServer ------------------------------------------------------------------------------


def mlserver_dir(model: ModelFiles, config: ServingConfig, *, work: Path) -> tuple[Path, int]:
    """An MLServer folder (settings.json + NAME/model-settings.json, runtime.py, model.onnx)."""
    root = work / "mlserver"
    folder = root / model.name
    folder.mkdir(parents=True)
    shutil.copyfile(model.onnx, folder / "model.onnx")
    shutil.copyfile(HERE / "mlserver_runtime" / "runtime.py", folder / "runtime.py")
    http_port = free_port()
    settings = {
        "debug": False,  # True (the default) turns on access logs; Shipyard's are off too
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": config.instances,
        "load_models_at_startup": True,
    }
    model_settings = {
        "name": model.name,
        "implementation": "runtime.OnnxModel",
        "max_batch_size": config.max_batch_size if config.batching else 0,
        "max_batch_time": config.delay_us / 1e6 if config.batching else 0.0,
        "parameters": {
            "uri": "./model.onnx",
            "version": model.version_dir.name,
            "extra": {"intra_op_threads": config.intra_op_threads},
        },
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
    (folder / "model-settings.json").write_text(
        json.dumps(model_settings, indent=1), encoding="utf-8"
    )
    return root, http_port


# -- Triton --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backends: Path
    env: dict[str, str]


def triton_install(python: Path) -> TritonInstall:
    """The tritonserver binary bundled by nvidia-pytriton, with a python backend for `python`.

    What pytriton itself does before it starts Triton: a backend folder holding the stub built
    for this Python version, the bundled libraries plus Python's LIBDIR on LD_LIBRARY_PATH, and
    the venv's bin first on PATH (the stub's embedded Python finds the venv through it).
    """
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import json, sys, sysconfig, pytriton; print(json.dumps(["
            "sysconfig.get_config_var('LIBDIR'), f'{sys.version_info[0]}.{sys.version_info[1]}', "
            "pytriton.__file__]))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        raise SetupError(f"nvidia-pytriton not importable: {probe.stderr.strip()[-300:]}")
    libdir, pyver, module = json.loads(probe.stdout)
    dist = Path(module).parent / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    stub = dist / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    libs = Path(module).parent.parent / "nvidia_pytriton.libs"
    for needed in (binary, stub, dist / "backends" / "python"):
        if not needed.exists():
            raise SetupError(f"nvidia-pytriton lacks {needed} (no stub for Python {pyver}?)")
    backends = python.parent.parent / "triton-backends"
    python_backend = backends / "python"
    if not (python_backend / stub.name).is_file():
        shutil.rmtree(backends, ignore_errors=True)
        shutil.copytree(dist / "backends", backends)
        shutil.copy2(stub, python_backend / stub.name)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(
        p for p in (libdir, str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p
    )
    env["PATH"] = f"{python.parent}:{os.environ.get('PATH', '')}"
    return TritonInstall(binary=binary, backends=backends, env=env)


def triton_repo(model: ModelFiles, config: ServingConfig, *, work: Path) -> Path:
    """A Triton model repository: NAME/config.pbtxt + NAME/1/{model.py, model.onnx}."""
    repo = work / "triton"
    version = repo / model.name / "1"
    version.mkdir(parents=True)
    shutil.copyfile(model.onnx, version / "model.onnx")
    shutil.copyfile(HERE / "triton_backend" / "model.py", version / "model.py")
    template = (HERE / "triton_backend" / "config.pbtxt.template").read_text(encoding="utf-8")
    batching = (
        f"dynamic_batching {{ max_queue_delay_microseconds: {config.delay_us} }}"
        if config.batching
        else ""
    )
    text = template.format(
        name=model.name,
        max_batch_size=config.max_batch_size,
        inputs=_triton_tensors("input", model.inputs),
        outputs=_triton_tensors("output", model.outputs),
        instances=config.instances,
        dynamic_batching=batching,
        intra_op_threads=config.intra_op_threads,
    )
    (repo / model.name / "config.pbtxt").write_text(text, encoding="utf-8")
    return repo


def _triton_tensors(kind: str, tensors: Sequence[tuple[str, str, tuple[int, ...]]]) -> str:
    """Config entries without the batch dim; a rank-1 [batch] tensor is dims [1] reshaped []."""
    entries = []
    for name, datatype, shape in tensors:
        if datatype not in BY_V2:
            raise SetupError(f"Triton: no config type for {kind} {name!r} ({datatype})")
        dims = list(shape[1:])
        reshape = "" if dims else " reshape: { shape: [ ] }"
        dims_text = ", ".join(str(d) for d in dims or [1])
        entries.append(
            f'  {{ name: "{name}" data_type: {BY_V2[datatype].triton} dims: [ {dims_text} ]'
            f"{reshape} }}"
        )
    return f"{kind} [\n" + ",\n".join(entries) + "\n]"


def triton_argv(install: TritonInstall, repo: Path, port: int) -> list[str]:
    return [
        str(install.binary),
        f"--model-repository={repo}",
        f"--backend-directory={install.backends}",
        "--http-address=127.0.0.1",
        f"--http-port={port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        "--allow-gpu-metrics=false",
        "--exit-on-error=true",
        "--log-verbose=0",
        "--exit-timeout-secs=5",
    ]


def closed_loop(port: int, path: str, body: Path, args: Any) -> dict[str, float]:
    """One `_load.py` run (its own process) against 127.0.0.1:`port``path` with `body`:
    `args.concurrency` keep-alive connections for `args.duration` s after `args.warmup` s;
    {rps, p50_ms, p99_ms}. Any error fails the run (the configs compared must all answer)."""
    argv = [
        sys.executable, str(Path(__file__).resolve().parent / "_load.py"),
        "--url", f"http://127.0.0.1:{port}{path}",
        "--body", str(body), "--concurrency", str(args.concurrency),
        "--duration", str(args.duration), "--warmup", str(args.warmup),
    ]  # fmt: skip
    timeout = args.warmup + args.duration + 60
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"load generator failed: {done.stderr.strip()[-300:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    if data["errors"]:
        raise SystemExit(f"{data['errors']} errors: {data['first_error']}")
    return {k: float(data[k]) for k in ("rps", "p50_ms", "p99_ms")}
