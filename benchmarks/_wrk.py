"""The same closed loop as `_load.py`, driven by `wrk` (C, epoll) instead of Python.

    python benchmarks/_wrk.py --url http://127.0.0.1:8000/v2/models/m/infer \
        --body body.bin --concurrency 8 --duration 5 --warmup 1

Same options and the same one JSON result line as `_load.py`, so the benchmarks take either
(`--load-generator`). Why: the load generator shares the machine's cores with the server, and
`_load.py` spends ~40-50 µs of CPU per request (asyncio streams), about a third of what a whole
Shipyard request costs; on a 2-core machine that CPU is taken from the server. `wrk` spends a
few µs. N keep-alive connections on one wrk thread, each sending its next request when the last
answer arrives. The warm-up is its own wrk run (wrk has no warm-up window); the measured run
opens its connections anew. wrk counts whole seconds: fractional `--duration`/`--warmup` round
up. Bounded: wrk stops after `--duration`; a hard timeout kills it.
`--max-requests` is accepted and ignored (wrk has no request budget; the duration bounds it).

wrk (Debian's package, `make wrk`): https://github.com/wg/wrk (Apache-2.0-style licence).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import parser, tree_cpu_s  # run as a script, like _load.py

MARK = "WRK-RESULT "
SLACK_S = 30.0

# wrk's Lua: the request from the environment, one JSON line at the end. Latencies are in
# microseconds; `errors.status` counts answers outside 2xx/3xx.
SCRIPT = r"""
local f = assert(io.open(os.getenv("SHIPYARD_WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
local ctype = os.getenv("SHIPYARD_WRK_CONTENT_TYPE")
if ctype ~= nil and ctype ~= "" then wrk.headers["Content-Type"] = ctype end
local hlen = os.getenv("SHIPYARD_WRK_HEADER_LENGTH")
if hlen ~= nil and hlen ~= "" then wrk.headers["Inference-Header-Content-Length"] = hlen end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, ' ..
    '"mean_us": %.1f}\n',
    os.getenv("SHIPYARD_WRK_MARK"), summary.requests, summary.duration, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean))
end
"""


def wrk_binary() -> str | None:
    """The wrk on PATH, or None."""
    return shutil.which("wrk")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wrk(binary: str, script: Path, args: argparse.Namespace, seconds: float) -> dict[str, float]:
    # wrk counts whole seconds: a fractional duration is rounded up.
    argv = [
        binary, "-t1", f"-c{args.concurrency}", f"-d{max(1, math.ceil(seconds))}s",
        f"--timeout={int(SLACK_S)}s", "-s", str(script), args.url,
    ]  # fmt: skip
    env = dict(os.environ)
    env.update(
        SHIPYARD_WRK_BODY=str(args.body),
        SHIPYARD_WRK_CONTENT_TYPE=args.content_type,
        SHIPYARD_WRK_HEADER_LENGTH="" if args.header_length is None else str(args.header_length),
        SHIPYARD_WRK_MARK=MARK,
    )
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=seconds + SLACK_S, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise SystemExit(f"wrk failed (exit {done.returncode}): {tail[0][:200]}")
    data: dict[str, float] = json.loads(lines[-1][len(MARK) :])
    return data


def run(args: argparse.Namespace) -> dict[str, object]:
    binary = wrk_binary()
    if binary is None:
        raise SystemExit("wrk is not on PATH (`make wrk`, or apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="shipyard-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(SCRIPT, encoding="utf-8")
        if args.warmup > 0:
            _wrk(binary, script, args, args.warmup)
        server0 = tree_cpu_s(args.server_pid) if args.server_pid is not None else 0.0
        client0 = _children_cpu_s()
        started = time.perf_counter()
        data = _wrk(binary, script, args, args.duration)
        window = time.perf_counter() - started
        client_s = _children_cpu_s() - client0
        server_s = tree_cpu_s(args.server_pid) - server0 if args.server_pid is not None else 0.0
    failed = {k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout")}
    errors = sum(failed.values())
    answered = int(data["requests"]) - failed["status"]
    seconds = data["duration_us"] / 1e6
    first_error = (
        "wrk counted " + ", ".join(f"{n} {kind} error(s)" for kind, n in failed.items() if n)
        if errors
        else ""
    )
    ms = 1e-3
    per = (lambda s: s / answered * 1e6) if answered else (lambda s: None)
    return {
        "requests": answered,
        "errors": errors,
        "first_error": first_error,
        "seconds": round(seconds, 3),
        "rps": answered / seconds if seconds > 0 else 0.0,
        "p50_ms": data["p50_us"] * ms if answered else math.nan,
        "p90_ms": data["p90_us"] * ms if answered else math.nan,
        "p99_ms": data["p99_us"] * ms if answered else math.nan,
        "mean_ms": data["mean_us"] * ms if answered else math.nan,
        "budget_exhausted": False,
        # The CPU window is the wrk process's life (connections opened and closed included),
        # a little longer than its measured duration: a slight overcount, the same for every
        # server.
        "server_cpu_us": per(server_s) if args.server_pid is not None else None,
        "client_cpu_us": per(client_s),
        "window_s": round(window, 3),
    }


def main(argv: list[str] | None = None) -> int:
    options = parser()
    options.description = __doc__.split("\n", 1)[0]
    args = options.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0 or args.warmup < 0:
        options.error("--concurrency >= 1, --duration > 0 and --warmup >= 0")
    result = run(args)
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}
    sys.stdout.write(json.dumps(clean) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
