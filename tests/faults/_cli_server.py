"""`shipyard serve` as a real subprocess on 127.0.0.1 for fault tests: start, wait, stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import shipyard
from tests.conftest import make_affine_onnx

_LISTENING = re.compile(r"on https?://127\.0\.0\.1:(\d+)")


def affine_repo(path: Path) -> Path:
    """A repository holding `affine` v1 (x: float32[batch, 4] -> y: float32[batch, 3])."""
    path.mkdir(parents=True, exist_ok=True)
    shipyard.pack(make_affine_onnx(), name="affine", repo=path)
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shipyard.cli", *args]


class CliServer:
    """A running `shipyard serve`; stderr lines are collected in `lines` as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("server exited early:\n" + "\n".join(self.lines))
            if not self.port:
                for line in list(self.lines):
                    if match := _LISTENING.search(line):
                        self.port = int(match.group(1))
            if self.port:
                try:
                    with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout_s} s:\n" + "\n".join(self.lines))

    def wait_for_line(self, text: str, timeout_s: float = 5.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no log line with {text!r}:\n" + "\n".join(self.lines))

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib) * 1024

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


@contextmanager
def cli_server(
    repo: Path,
    *args: str,
    ready: bool = True,
    env: dict[str, str] | None = None,
    command: tuple[str, ...] = ("serve",),
    ready_timeout_s: float = 30.0,
    stop_timeout_s: float = 15.0,
) -> Iterator[CliServer]:
    """`shipyard serve REPO --port 0 ARGS...` (or another `command` taking the serve flags:
    `deploy ray`), stopped (SIGTERM, then kill) on exit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        cli(*command, str(repo), "--port", "0", "--poll-interval", "0", *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    server = CliServer(proc)
    try:
        if ready:
            server.wait_ready(ready_timeout_s)
        yield server
    finally:
        server.stop(stop_timeout_s)
