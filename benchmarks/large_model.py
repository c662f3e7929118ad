"""Peak memory of packing and serving a model past 2 GB (ONNX external data), side by side
with raw ONNX Runtime opening the same files.

A recommender with an embedding table of `--gb` GB (default 2.2) is written straight to an
external data file in chunks (the writer never holds the table), then each step runs in its
own process and reports its peak RSS:

- raw ONNX Runtime: InferenceSession on the file + one lookup (the floor);
- `shipyard pack` (checker and shape inference by path, trial run, hashing, copy);
- `shipyard.load` + one inference (what a server process holds per version);
- the server: `shipyard serve` answering one V2 request (peak RSS of the server process).

Ratios are to raw ONNX Runtime in the same run (the machine is shared and noisy) and to
the table size. Results go to benchmarks/results/large_model.md.

    python benchmarks/large_model.py [--gb 2.2] [--workdir /tmp/shipyard-large]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

WIDTH = 128

RAW = """
import json, resource, sys, time, numpy as np, onnxruntime as ort
t = time.perf_counter()
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
y = s.run(None, {"ids": np.array([[0, 1, 2]], np.int64)})[0]
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t, "sum": float(y.sum())}))
"""

PACK = """
import json, resource, sys, time, shipyard
t = time.perf_counter()
r = shipyard.pack(sys.argv[1], name="rec", repo=sys.argv[2])
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t, "path": str(r.path)}))
"""

LOAD = """
import json, resource, sys, time, numpy as np, shipyard
t = time.perf_counter()
m = shipyard.load(sys.argv[1])
y = m.infer({"ids": np.array([[0, 1, 2]], np.int64)})["scores"]
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t, "sum": float(y.sum())}))
"""

SERVE = """
import json, resource, sys, time, numpy as np, httpx
from shipyard.serving.server import start_in_thread
t = time.perf_counter()
running = start_in_thread(sys.argv[1])
body = {"inputs": [{"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [0, 1, 2]}]}
reply = httpx.post(f"{running.url}/v2/models/rec/infer", json=body, timeout=600)
reply.raise_for_status()
took = time.perf_counter() - t
running.stop()
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": took, "sum": float(np.sum(reply.json()["outputs"][0]["data"]))}))
"""


def write_model(folder: Path, gb: float) -> tuple[Path, int]:
    """model.onnx + model.onnx.data with a [rows, WIDTH] float32 table, written in chunks."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    rows = int(gb * 1e9) // (WIDTH * 4)
    data = folder / "rec.onnx.data"
    chunk_rows = 65536
    with data.open("wb") as out:
        for start in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - start)
            block = np.full((n, WIDTH), 1.0, np.float32) * (np.arange(start, start + n) % 97)[
                :, None
            ].astype(np.float32)
            out.write(block.tobytes())
    table = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[rows, WIDTH])
    table.data_location = TensorProto.EXTERNAL
    for key, value in (("location", data.name), ("offset", "0"), ("length", str(rows * WIDTH * 4))):
        entry = table.external_data.add()
        entry.key, entry.value = key, value
    dense = helper.make_tensor(
        "dense", TensorProto.FLOAT, [WIDTH, 4], np.ones((WIDTH, 4), np.float32).ravel().tolist()
    )
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"]),
            helper.make_node("MatMul", ["rows", "dense"], ["scores"]),
        ],
        "recommender",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3, 4])],
        [table, dense],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "rec.onnx"
    onnx.save(model, str(path))
    return path, rows * WIDTH * 4


def run(script: str, *args: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"step failed: {done.stderr.strip().splitlines()[-1]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=2.2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/shipyard-large"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    started = time.perf_counter()
    model, size = write_model(args.workdir / "export", args.gb)
    print(f"wrote {size / 1e9:.2f} GB table in {time.perf_counter() - started:.0f} s")
    repo = args.workdir / "models"
    rows = {"raw ONNX Runtime (InferenceSession + 1 run)": run(RAW, str(model))}
    packed = run(PACK, str(model), str(repo))
    rows["shipyard pack"] = packed
    rows["shipyard.load + 1 infer"] = run(LOAD, str(packed.pop("path")))
    rows["shipyard serve + 1 V2 request"] = run(SERVE, str(repo))
    floor = rows["raw ONNX Runtime (InferenceSession + 1 run)"]["rss_mb"]
    lines = [
        "# Large model (ONNX external data): peak memory",
        "",
        f"Embedding table {size / 1e9:.2f} GB ({size / 2**20:.0f} MiB), float32 × {WIDTH}; "
        "each step in its own process, peak RSS (ru_maxrss).",
        "",
        "| step | peak RSS MiB | × raw ORT | × table | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for step, figures in rows.items():
        rss = figures["rss_mb"]
        lines.append(
            f"| {step} | {rss:.0f} | {rss / floor:.2f} | {rss / (size / 2**20):.2f} | "
            f"{figures['seconds']:.1f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "large_model.md").write_text(table, encoding="utf-8")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
