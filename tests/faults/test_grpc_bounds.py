"""gRPC refuses anonymous calls before reading their message: memory stays flat under big ones.

A real `shipyard serve` in a subprocess (its RSS is what is measured), auth on; six
anonymous ~60 MB ModelInfer calls at once must all be UNAUTHENTICATED while the server's
peak RSS (VmHWM) grows by less than 20 MiB. Before the gate, grpc read and decoded each
message first: six took the server to about 755 MiB.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import shipyard
from shipyard.codecs.proto import grpc_service_pb2 as pb
from shipyard.security.tokens import TokenStore
from tests.serving.conftest import GRAPHS

pytestmark = pytest.mark.timeout(60)

SERVICE = "/inference.GRPCInferenceService"
BIG_FLOATS = 15_000_000  # 60 MB of FP32, under the 64 MiB body limit and 2**24 elements


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _memory_mib(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, int, str]]:
    """(pid, grpc port, token allowed to infer on 'scale') of a server that stops itself."""
    repo = tmp_path / "models"
    shipyard.pack(GRAPHS["scale"](), name="scale", repo=repo)
    tokens = tmp_path / "tokens.json"
    token = TokenStore(tokens).create("app", ["infer:scale"])
    port = _free_port()
    env = {**os.environ, "SHIPYARD_POLL_INTERVAL_S": "0", "SHIPYARD_WARMUP": "false"}
    command = [sys.executable, "-m", "shipyard.cli", "serve", str(repo), "--port", "0"]
    command += ["--grpc-port", str(port), "--auth", str(tokens)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            live = channel.unary_unary(
                f"{SERVICE}/ServerLive", response_deserializer=pb.ServerLiveResponse.FromString
            )
            while True:
                assert process.poll() is None, process.communicate()[1][-2000:]
                try:
                    live(pb.ServerLiveRequest().SerializeToString(), timeout=1)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "server did not start in 30 s"
                    time.sleep(0.1)
        yield process.pid, port, token
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        finally:
            assert process.stderr is not None
            process.stderr.close()  # else a ResourceWarning when the Popen is collected


def _infer_request(floats: int) -> bytes:
    request = pb.ModelInferRequest(model_name="scale")
    request.inputs.add(name="x", datatype="FP32", shape=[floats // 4, 4])
    request.raw_input_contents.append(np.ones(floats, np.float32).tobytes())
    return bytes(request.SerializeToString())


async def _call_many(
    port: int, body: bytes, n: int, metadata: tuple[tuple[str, str], ...]
) -> list[str]:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        infer = channel.unary_unary(f"{SERVICE}/ModelInfer")

        async def one() -> str:
            try:
                await infer(body, metadata=metadata, timeout=20)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return "OK"

        return await asyncio.gather(*(one() for _ in range(n)))


def test_anonymous_big_infer_calls_are_refused_before_their_message(
    served: tuple[int, int, str],
) -> None:
    pid, port, token = served
    small = _infer_request(4 * 4)
    # warm up grpc's per-process allocations (first call, channel, threads)
    assert asyncio.run(_call_many(port, small, 2, ())) == ["UNAUTHENTICATED"] * 2
    assert asyncio.run(_call_many(port, small, 1, (("authorization", f"Bearer {token}"),))) == [
        "OK"
    ]
    before = _memory_mib(pid)
    big = _infer_request(BIG_FLOATS)
    assert len(big) > 60_000_000
    started = time.perf_counter()
    codes = asyncio.run(_call_many(port, big, 6, ()))
    seconds = time.perf_counter() - started
    after = _memory_mib(pid)
    grown = after["VmHWM"] - before["VmHWM"]
    print(
        f"6 refused 60 MB calls in {seconds:.2f}s; peak RSS {before} -> {after}: +{grown:.1f} MiB"
    )
    assert codes == ["UNAUTHENTICATED"] * 6
    assert grown < 20, f"peak RSS grew {grown:.1f} MiB"
    wrong = asyncio.run(_call_many(port, big, 2, (("authorization", "Bearer shp_not-a-token"),)))
    assert wrong == ["UNAUTHENTICATED"] * 2


def test_authenticated_big_tensors_still_pass(served: tuple[int, int, str]) -> None:
    _, port, token = served
    body = _infer_request(2_000_000)  # 8 MB: the body limit, not the gate, bounds these
    codes = asyncio.run(_call_many(port, body, 2, (("authorization", f"Bearer {token}"),)))
    assert codes == ["OK", "OK"]
