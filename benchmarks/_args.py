"""Command-line options of the serving benchmark."""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks._rows import TEXT_RAW_BATCHES

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "serving.md"


def parse_args(argv: Sequence[str] | None, doc: str) -> argparse.Namespace:
    """The options; `doc` (serving.py's docstring) is the help's description and epilog."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n", 1)[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc.split("\n\n", 1)[1],
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
        "--workers",
        default="1",
        help="Shipyard `serve --workers` counts, comma-separated: one row set each (default 1)",
    )
    parser.add_argument(
        "--ray",
        default="",
        help="Ray Serve replica counts, comma-separated: one row set each of Shipyard on "
        "`deploy ray --replicas N` (local Ray cluster; needs the ray extra; default none)",
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
    parser.add_argument(
        "--baseline",
        metavar="GIT_REF",
        default=None,
        help="also serve GIT_REF (checked out into a temporary git worktree) beside this "
        "tree, with the same load, and print this tree ÷ that one (e.g. --baseline main)",
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="with --baseline: load each Shipyard row and its baseline twin at the same time "
        "(one load generator each) and report the ratio of every round: a busy machine "
        "then slows both alike",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run this tree's Shipyard servers from a copy with the request path compiled "
        "by mypyc (benchmarks/_compiled.py; about a minute to build, needs a C compiler); "
        "with --baseline HEAD --paired: compiled against interpreted, the same code",
    )
    parser.add_argument(
        "--load-generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="what drives the HTTP cells: wrk (C; `make wrk` installs it) or _load.py "
        "(Python asyncio, ~3x the client CPU per request, taken from the server's cores); "
        "auto (default): wrk when it is on PATH, else python",
    )
    args = parser.parse_args(argv)
    if args.load_generator == "auto":
        args.load_generator = "wrk" if shutil.which("wrk") else "python"
        if args.load_generator == "python":
            print("note: wrk is not on PATH (`make wrk`); the Python load generator drives the "
                  "HTTP cells", file=sys.stderr)  # fmt: skip
    elif args.load_generator == "wrk" and shutil.which("wrk") is None:
        parser.error("--load-generator wrk: wrk is not on PATH (`make wrk`, apt-get install wrk)")
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
        args.workers = sorted({int(w) for w in str(args.workers).split(",") if w.strip()})
        args.ray = sorted({int(r) for r in str(args.ray).split(",") if r.strip()})
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
    if args.paired and args.baseline is None:
        parser.error("--paired needs --baseline GIT_REF")
    args.config_flags = [  # for the results' command line: the serving knobs set
        f"--{dest.replace('_', '-')} {getattr(args, dest)}"
        for dest in ("instances", "intra_op_threads", "max_batch_size", "batch_delay_us")
        if getattr(args, dest) != parser.get_default(dest)
    ]
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
    if args.load_generator == "wrk":  # wrk counts whole seconds
        args.duration, args.warmup = math.ceil(args.duration), math.ceil(args.warmup)
    if args.output is None and not args.quick:
        args.output = RESULTS
    return args
