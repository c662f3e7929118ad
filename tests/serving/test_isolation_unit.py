"""Process isolation without a server: the shared-memory tensor codec, a ProcessRuntime driven
directly (answers, errors, a restart that cannot load, close), and the batcher's rule that a
worker failure fails the whole batch at once instead of rerunning it request by request.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from tests.processing.tiny import tiny_encoder, tiny_sample, write_tiny_tokenizer
from tests.serving.test_acceptance import scale_graph, wait_for
from tests.serving.test_batcher import ManualClock, finish, make, rows

import shipyard
from shipyard.errors import InputError, RuntimeBackendError
from shipyard.model import Model
from shipyard.processing.build import text_plan
from shipyard.runtime.base import RuntimeOptions
from shipyard.runtime.shm_tensors import (
    ALIGN,
    SEGMENT_PREFIX,
    Attached,
    Packed,
    TensorHeader,
    create_segment,
    free_segment,
    read,
)
from shipyard.security.encryption import encrypt_version
from shipyard.security.keys import encode_secret, new_secret
from shipyard.serving.errors import WorkerUnavailable
from shipyard.serving.isolation import ProcessRuntime, open_isolated
from shipyard.serving.model_config import WorkerSettings

pytestmark = pytest.mark.timeout(120)

ARRAYS: dict[str, np.ndarray] = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
    "i64": np.array([[-1, 2**40]], dtype=np.int64),
    "flag": np.array([True, False, True]),
    "half": np.array([0.5, -2.0], dtype=np.float16),
    "scalar": np.array(7.25, dtype=np.float64),
    "empty": np.zeros((0, 4), dtype=np.float32),
    "strided": np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2],
    "text": np.array([["héllo", ""], ["✓" * 300, "x"]], dtype=object),
    "raw": np.array([b"\x00\xff", "mixed"], dtype=object),
}


def test_tensors_round_trip_through_a_segment_with_aligned_offsets() -> None:
    packed = Packed(ARRAYS)
    segment = create_segment(packed.size)
    try:
        assert segment.name.startswith(f"{SEGMENT_PREFIX}{os.getpid()}-")
        buf = segment.buf
        assert buf is not None
        headers = packed.write(buf)
        assert all(h.offset % ALIGN == 0 for h in headers)
        other = Attached(segment.name)  # as the worker maps it
        try:
            got = read(other.buf, headers, copy=True)
        finally:
            del headers
            other.close()
    finally:
        free_segment(segment)
    assert not os.path.exists(f"/dev/shm/{segment.name}")
    assert list(got) == list(ARRAYS)
    for name, want in ARRAYS.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        if want.dtype == object:
            assert got[name].tolist() == want.tolist()
            assert [type(v) for v in got[name].flat] == [type(v) for v in want.flat]
        else:
            np.testing.assert_array_equal(got[name], want)


def test_only_str_and_bytes_cross_and_headers_stay_inside_the_segment() -> None:
    with pytest.raises(TypeError, match="only str and bytes"):
        Packed({"bad": np.array([1, "a"], dtype=object)})
    segment = create_segment(0)
    try:
        buf = segment.buf
        assert buf is not None
        outside = TensorHeader("x", "<f4", (4,), len(buf) - 8, 16)
        with pytest.raises(ValueError, match="outside"):
            read(buf, [outside], copy=True)
    finally:
        free_segment(segment)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("iso-unit") / "models"
    shipyard.pack(scale_graph(3.0), name="scale", repo=root)
    return root


def open_scale(repo: Path, **settings: float) -> Model:
    return open_isolated(
        repo / "scale",
        1,
        WorkerSettings(**settings),
        options=RuntimeOptions(intra_op_threads=1),
        public_key=None,
        kek=None,
    )


def test_a_process_runtime_answers_like_the_in_process_one_and_keeps_its_errors(
    repo: Path,
) -> None:
    model = open_scale(repo)
    local = shipyard.load(repo / "scale")
    try:
        runtime = model.runtime
        assert isinstance(runtime, ProcessRuntime) and runtime.pid not in (None, os.getpid())
        assert model.manifest == local.manifest and runtime.providers == local.runtime.providers
        feed = {"x": np.linspace(-1, 1, 40, dtype=np.float32).reshape(10, 4)}
        got, want = runtime.infer(feed), local.infer(feed)
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
        assert list(runtime.run(feed, ["s"])) == ["s"]
        with pytest.raises(InputError, match="unknown output"):  # raised in the worker
            runtime.run(feed, ["nope"])
        with pytest.raises(InputError):  # ORT refuses the rank; the worker survives it
            runtime.run({"x": np.ones((2, 4, 1), np.float32)})
        assert runtime.restarts == 0 and runtime.down is None
    finally:
        model.close()
        local.close()
    assert runtime.down is not None
    with pytest.raises(WorkerUnavailable, match="being unloaded"):
        runtime.run(feed)
    model.close()  # twice: nothing left to do


def test_a_restart_that_cannot_load_backs_off_and_recovers_when_the_files_do(
    repo: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "models"
    shipyard.pack(scale_graph(3.0), name="scale", repo=copy)
    onnx_file = copy / "scale" / "1" / "model.onnx"
    good = onnx_file.read_bytes()
    model = open_scale(copy, max_restart_backoff_s=0.2)
    runtime = model.runtime
    assert isinstance(runtime, ProcessRuntime)
    reasons: list[str] = []
    runtime.on_restart = reasons.append
    try:
        first = runtime.pid
        assert first is not None
        onnx_file.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # a restart must refuse it
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: reasons.count("start_failed") >= 2, "restarts that fail to load")
        assert reasons[0] == "crashed"
        down = runtime.down
        assert down is not None and "could not be restarted" in down and "sha256" in down
        with pytest.raises(WorkerUnavailable):
            runtime.run({"x": np.ones((1, 4), np.float32)})
        onnx_file.write_bytes(good)
        wait_for(lambda: runtime.down is None, "the worker to be back")
        assert runtime.pid not in (None, first) and runtime.restarts == len(reasons)
        out = runtime.run({"x": np.ones((1, 4), np.float32)})
        np.testing.assert_array_equal(out["y"], np.full((1, 4), 3.0, np.float32))
    finally:
        model.close()


def test_a_first_start_that_fails_is_a_load_error(repo: Path, tmp_path: Path) -> None:
    copy = tmp_path / "models"
    shipyard.pack(scale_graph(3.0), name="scale", repo=copy)
    (copy / "scale" / "1" / "model.onnx").write_bytes(b"not onnx")
    started = time.monotonic()
    with pytest.raises(RuntimeBackendError, match="could not load it"):
        open_scale(copy)
    assert time.monotonic() - started < 30


@pytest.mark.anyio
async def test_a_worker_failure_fails_the_whole_batch_without_reruns() -> None:
    calls: list[int] = []

    def dead(feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        calls.append(len(feed["x"]))
        raise WorkerUnavailable("fake", 1, reason="its worker process died")

    clock = ManualClock()
    batcher = make(dead, clock, max_batch_size=8, max_queue_delay_us=50_000, inline_max_us=0)
    outcomes = await finish(clock, *(batcher.submit(rows(1, float(i))) for i in range(3)))
    await batcher.close()
    assert calls == [3]  # one try, no one-by-one reruns
    assert all(isinstance(o, WorkerUnavailable) for o in outcomes)


def test_an_encrypted_version_gets_its_key_over_the_pipe_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHIPYARD_KEK", raising=False)  # the worker inherits the environment
    copy = tmp_path / "models"
    shipyard.pack(scale_graph(3.0), name="scale", repo=copy)
    kek = new_secret()
    encrypt_version(copy / "scale" / "1", kek)
    with pytest.raises(RuntimeBackendError, match="encrypted"):  # no key, no $SHIPYARD_KEK
        open_isolated(
            copy / "scale", 1, WorkerSettings(), options=RuntimeOptions(), public_key=None, kek=None
        )
    model = open_isolated(
        copy / "scale", 1, WorkerSettings(), options=RuntimeOptions(), public_key=None, kek=kek
    )
    try:
        runtime = model.runtime
        assert isinstance(runtime, ProcessRuntime)
        out = runtime.run({"x": np.ones((1, 4), np.float32)})
        np.testing.assert_array_equal(out["y"], np.full((1, 4), 3.0, np.float32))
        seen = Path(f"/proc/{runtime.pid}/cmdline").read_bytes()
        seen += Path(f"/proc/{runtime.pid}/environ").read_bytes()
        for form in (kek, encode_secret(kek).encode(), kek.hex().encode()):
            assert form not in seen
    finally:
        model.close()


def test_an_encrypted_text_model_keeps_its_tokenizer_and_batch_padding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHIPYARD_KEK", raising=False)
    repo = tmp_path / "models"
    tokenizer = write_tiny_tokenizer(tmp_path / "tok" / "tokenizer.json")
    plan = text_plan(tokenizer, max_length=8, pooling="mean", normalize=True, pad_to_multiple=4)
    shipyard.pack(tiny_encoder(), name="tiny", repo=repo, processing=plan)
    kek = new_secret()
    encrypt_version(repo / "tiny" / "1", kek)
    local = shipyard.load(repo / "tiny", kek=kek)
    model = open_isolated(
        repo / "tiny", 1, WorkerSettings(), options=RuntimeOptions(), public_key=None, kek=kek
    )
    try:
        assert model.processor is not None and local.processor is not None
        assert model.processor.batch_padding is not None  # the graph, read in the worker
        assert model.processor.batch_padding == local.processor.batch_padding
        got, want = model.infer(tiny_sample()), local.infer(tiny_sample())
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    finally:
        model.close()
        local.close()


def test_a_local_ray_cluster_that_fails_to_start_is_tried_once_more() -> None:
    """Ray's node start-up deadline can pass on a busy machine; one more try, then the
    one-line RayUnavailable. Joining a cluster at an address is not retried."""
    from shipyard.serving.ray_pool import RayUnavailable, _init

    class FlakyRay:
        def __init__(self, failures: int) -> None:
            self.failures, self.inits, self.shutdowns = failures, 0, 0

        def init(self, **kwargs: object) -> str:
            self.inits += 1
            if self.inits <= self.failures:
                raise RuntimeError("The current node timed out during startup.")
            return "context"

        def shutdown(self) -> None:
            self.shutdowns += 1

    once = FlakyRay(failures=1)
    assert _init(once, {}, local=True) == "context"
    assert (once.inits, once.shutdowns) == (2, 1)
    twice = FlakyRay(failures=2)
    with pytest.raises(RayUnavailable, match="cannot start or join a local cluster"):
        _init(twice, {}, local=True)
    assert twice.inits == 2
    remote = FlakyRay(failures=1)
    with pytest.raises(RayUnavailable, match="cannot start or join auto"):
        _init(remote, {"address": "auto"}, local=False)
    assert remote.inits == 1
