"""The limit: in-process ONNX Runtime, N threads each running `session.run` back to back.

With `--batch-size B` every call runs B copies of the batch-1 input at once and counts as B
requests (rows/s), with the latency of the whole call: the best a server that forms batches
of B could do.

    python benchmarks/_raw.py --model model.onnx --inputs inputs.npz --concurrency 8 --duration 5

Same closed loop as `_load.py` (N callers, each starts its next call when the last returns)
without HTTP, codecs or a server; prints the same JSON result line. Runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time

import numpy as np
import onnxruntime as ort


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list (as in `_load.py`)."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def session(model: str, *, intra_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True, help=".npz with one array per model input")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--max-requests", type=int, default=20_000_000)
    parser.add_argument("--batch-size", type=int, default=1, help="rows per session.run")
    args = parser.parse_args(argv)
    sess = session(args.model, intra_op_threads=args.intra_op_threads)
    with np.load(args.inputs) as data:
        feeds = {name: data[name] for name in data.files}
    if args.batch_size > 1:
        feeds = {n: np.concatenate([a] * args.batch_size) for n, a in feeds.items()}
    sess.run(None, feeds)
    start = time.perf_counter()
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    per_thread: list[list[float]] = [[] for _ in range(args.concurrency)]
    budget = args.max_requests // args.concurrency + 1

    def loop(out: list[float]) -> None:
        for _ in range(budget):
            began = time.perf_counter()
            if began >= stop_at:
                return
            sess.run(None, feeds)
            if began >= measure_from:
                out.append(time.perf_counter() - began)

    threads = [threading.Thread(target=loop, args=(out,), daemon=True) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.warmup + args.duration + 30)
    window = time.perf_counter() - measure_from
    ordered = sorted(x for out in per_thread for x in out)
    ms = 1000.0
    result = {
        "requests": len(ordered),
        "errors": 0,
        "statuses": {},
        "first_error": "",
        "seconds": round(window, 3),
        "rps": len(ordered) * args.batch_size / window if window > 0 else 0.0,
        "batch_size": args.batch_size,
        "p50_ms": percentile(ordered, 50) * ms if ordered else None,
        "p90_ms": percentile(ordered, 90) * ms if ordered else None,
        "p99_ms": percentile(ordered, 99) * ms if ordered else None,
        "mean_ms": sum(ordered) / len(ordered) * ms if ordered else None,
        "budget_exhausted": False,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
