"""The text-in limit: in-process `SentenceTransformer.encode`, N threads calling it back to back.

With `--batch-size B` every call encodes B copies of the text at once and counts as B
requests (rows/s), with the latency of the whole call; with several sizes
(`--batch-sizes 1,8,32`) each is measured in turn and the best is printed.

    python benchmarks/_encode.py --text "a sentence" --batch-sizes 1,8,32 --concurrency 1

Same closed loop and JSON result line as `_raw.py`; tokenizing, the torch forward pass,
pooling and normalisation are all inside `encode`, as a user calling the library gets them.
Runs in its own process (the bundled all-MiniLM-L6-v2, on CPU, offline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m

from benchmarks._raw import percentile


def measure(
    model: Any, texts: list[str], *, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    """One closed-loop cell: `concurrency` threads each calling encode(texts) until time's up."""
    batch = len(texts)
    model.encode(texts, batch_size=batch, convert_to_numpy=True, show_progress_bar=False)
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    per_thread: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def loop(out: list[float]) -> None:
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            try:
                model.encode(
                    texts, batch_size=batch, convert_to_numpy=True, show_progress_bar=False
                )
            except Exception as exc:  # e.g. a tokenizer that refuses concurrent use
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if began >= measure_from:
                out.append(time.perf_counter() - began)

    threads = [threading.Thread(target=loop, args=(out,), daemon=True) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(warmup + duration + 30)
    window = time.perf_counter() - measure_from
    ordered = sorted(x for out in per_thread for x in out)
    ms = 1000.0
    return {
        "requests": len(ordered),
        "errors": len(errors),
        "statuses": {},
        "first_error": errors[0][:200] if errors else "",
        "seconds": round(window, 3),
        "rps": len(ordered) * batch / window if window > 0 else 0.0,
        "batch_size": batch,
        "p50_ms": percentile(ordered, 50) * ms if ordered else None,
        "p90_ms": percentile(ordered, 90) * ms if ordered else None,
        "p99_ms": percentile(ordered, 99) * ms if ordered else None,
        "mean_ms": sum(ordered) / len(ordered) * ms if ordered else None,
        "budget_exhausted": False,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--text", required=True, help="the text every row encodes")
    parser.add_argument("--batch-sizes", default="1", help="texts per encode call, e.g. 1,8,32")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch

    from shipyard.demo.text import load_sentence_transformer

    torch.set_num_threads(args.threads)
    model = load_sentence_transformer()
    model.eval()
    results = [
        # encode() runs its forward pass under torch.no_grad() itself, on every thread.
        measure(
            model,
            [args.text] * batch,
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
        )
        for batch in sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    ]
    best = max(results, key=lambda r: (r["errors"] == 0, r["rps"]))
    sys.stdout.write(json.dumps(best) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
