"""Model lifecycle through the data plane: policies, configs, hot reload, load and unload."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shipyard.runtime.onnxrt
import shipyard.serving.request_checks
from shipyard.codecs import InferenceRequest
from shipyard.errors import InputError
from shipyard.runtime.base import check_inputs
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.errors import ModelLoadError, ModelNotFound, ModelNotReady
from shipyard.serving.lifecycle import build_dataplane
from shipyard.serving.settings import ServerSettings

pytestmark = pytest.mark.anyio

X = np.arange(8, dtype=np.float32).reshape(2, 4)


async def started(settings: ServerSettings) -> DataPlane:
    plane = build_dataplane(settings)
    await plane.manager.start()
    return plane


async def infer(plane: DataPlane, name: str = "scale", version: str | None = None) -> Any:
    request = InferenceRequest(inputs={"x": X})
    return await plane.infer(name, request, version=version, protocol="test")


def index(rows: list[dict[str, str]], name: str) -> dict[str, tuple[str, str]]:
    return {r.get("version", ""): (r["state"], r["reason"]) for r in rows if r["name"] == name}


async def test_latest_version_serves_and_older_ones_are_not_selected(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., ServerSettings]
) -> None:
    pack(factor=2.0)
    pack(factor=3.0)
    plane = await started(settings_for(repo))
    try:
        response = await infer(plane)
        assert response.model_version == "2"
        np.testing.assert_array_equal(response.outputs["y"], X * 3)
        rows = index(await plane.repository_index(), "scale")
        assert rows["2"] == ("READY", "")
        assert rows["1"][0] == "UNAVAILABLE" and "latest = 1" in rows["1"][1]
        with pytest.raises(ModelNotReady):
            await infer(plane, version="1")
        with pytest.raises(ModelNotFound):
            await infer(plane, version="9")
        with pytest.raises(ModelNotFound):
            await infer(plane, version="latest")
        with pytest.raises(ModelNotFound):
            await infer(plane, name="nope")
    finally:
        await plane.manager.stop()


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ('version_policy = "all"', ["1", "2", "3"]),
        ("version_policy = {specific = [1, 3]}", ["1", "3"]),
        ("[version_policy]\nlatest = 2", ["2", "3"]),
    ],
)
async def test_version_policies(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    policy: str,
    served: list[str],
) -> None:
    for factor in (1.0, 2.0, 3.0):
        pack(factor=factor)
    (repo / "scale" / "model.toml").write_text(policy + "\n")
    plane = await started(settings_for(repo))
    try:
        assert plane.model_metadata("scale")["versions"] == served
        for version in served:
            response = await infer(plane, version=version)
            np.testing.assert_array_equal(response.outputs["y"], X * float(version))
        assert (await infer(plane)).model_version == served[-1]
    finally:
        await plane.manager.stop()


async def test_invalid_model_toml_makes_that_model_unavailable_with_the_reason(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., ServerSettings]
) -> None:
    pack()
    pack("fixed")
    (repo / "scale" / "model.toml").write_text("instances = [oops\n")
    plane = await started(settings_for(repo))
    try:
        state, reason = index(await plane.repository_index(), "scale")["1"]
        assert state == "UNAVAILABLE" and "model.toml" in reason and "TOML" in reason
        with pytest.raises(ModelNotReady, match=r"model\.toml"):
            await infer(plane)
        assert plane.model_ready("fixed") and not plane.model_ready("scale")
        assert not plane.ready()  # strict readiness: one model cannot serve
        (repo / "scale" / "model.toml").write_text("instances = 0\n")  # valid TOML, bad value
        with pytest.raises(ModelLoadError, match="instances"):
            await plane.load_model("scale")
        (repo / "scale" / "model.toml").write_text(
            "instances = 2\n[batching]\nmax_batch_size = 4\n"
        )
        await plane.load_model("scale")
        assert plane.ready()
        served = plane.manager.get("scale")
        assert served.batcher.workers == 2 and served.batcher.max_batch_size == 4
    finally:
        await plane.manager.stop()


async def test_new_version_is_swapped_in_and_a_broken_one_refused(
    repo: Path,
    tmp_path: Path,
    pack: Callable[..., Path],
    corrupt_copy: Callable[[Path, Path], None],
    settings_for: Callable[..., ServerSettings],
) -> None:
    pack(factor=2.0)
    plane = await started(settings_for(repo))
    try:
        v1 = plane.manager.get("scale")
        pack(factor=3.0)
        await plane.manager.refresh()
        assert (await infer(plane)).model_version == "2"
        assert v1.closing  # retired once its requests finished
        elsewhere = pack(factor=4.0, version=3, into=tmp_path / "elsewhere")
        corrupt_copy(elsewhere, repo / "scale" / "3")
        await plane.manager.refresh()
        rows = index(await plane.repository_index(), "scale")
        assert rows["3"][0] == "UNAVAILABLE" and "sha256" in rows["3"][1]
        assert rows["2"] == ("READY", "")
        response = await infer(plane)
        assert response.model_version == "2"
        np.testing.assert_array_equal(response.outputs["y"], X * 3)
        await plane.manager.refresh()  # same broken files: not retried, nothing changes
        assert plane.metrics.load_failures.labels("scale")._value.get() == 1
    finally:
        await plane.manager.stop()


async def test_a_failed_reload_keeps_the_loaded_version_serving(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., ServerSettings]
) -> None:
    pack()
    plane = await started(settings_for(repo))
    try:
        loaded = plane.manager.get("scale")
        toml = repo / "scale" / "model.toml"
        toml.write_text('[runtime]\nproviders = ["NoSuchExecutionProvider"]\n')
        for _ in range(2):  # the second scan must not retry the same failing config
            await plane.manager.refresh()
            assert plane.manager.get("scale") is loaded
            assert (await infer(plane)).model_version == "1"
        state, reason = index(await plane.repository_index(), "scale")["1"]
        assert (
            state == "READY" and "reload failed" in reason and "NoSuchExecutionProvider" in reason
        )
        assert plane.metrics.load_failures.labels("scale")._value.get() == 1
        toml.write_text("instances = 2\n")
        await plane.manager.refresh()
        assert plane.manager.get("scale") is not loaded and loaded.closing
        assert plane.manager.get("scale").batcher.workers == 2
        assert index(await plane.repository_index(), "scale")["1"] == ("READY", "")
    finally:
        await plane.manager.stop()


async def test_with_a_public_key_only_signed_versions_serve(
    repo: Path,
    tmp_path: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
) -> None:
    from shipyard.security.keys import init_keys
    from shipyard.security.signing import sign_version

    keys = init_keys(tmp_path / "keys")
    sign_version(pack(factor=2.0), keys.signing_key)
    pack(factor=3.0)  # version 2, unsigned
    plane = await started(settings_for(repo, public_key=keys.public_key))
    try:
        assert (await infer(plane)).model_version == "1"
        state, reason = index(await plane.repository_index(), "scale")["2"]
        assert state == "UNAVAILABLE" and "model.sig" in reason
    finally:
        await plane.manager.stop()


async def test_unload_waits_for_in_flight_requests_then_load_brings_it_back(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., ServerSettings]
) -> None:
    pack()
    plane = await started(settings_for(repo, batching={"max_queue_delay_us": 200_000}))
    try:
        in_flight = asyncio.ensure_future(infer(plane))  # waits 200 ms for batch-mates
        await asyncio.sleep(0.02)
        await plane.unload_model("scale")
        assert in_flight.done() and in_flight.result().model_version == "1"
        assert not plane.model_ready("scale")
        assert plane.ready()  # unloaded on request: not counted against readiness
        rows = index(await plane.repository_index(), "scale")
        assert rows["1"] == ("UNAVAILABLE", "unloaded by request")
        await plane.manager.refresh()  # polling does not bring it back by itself
        assert not plane.model_ready("scale")
        await plane.load_model("scale")
        assert (await infer(plane)).model_version == "1"
        with pytest.raises(ModelNotFound):
            await plane.load_model("nope")
        with pytest.raises(ModelNotFound):
            await plane.unload_model("nope")
    finally:
        await plane.manager.stop()


async def test_a_model_removed_from_disk_is_unloaded(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., ServerSettings]
) -> None:
    import shutil

    pack()
    plane = await started(settings_for(repo))
    try:
        shutil.rmtree(repo / "scale")
        await plane.manager.refresh()
        with pytest.raises(ModelNotFound):
            await infer(plane)
        assert await plane.repository_index() == []
    finally:
        await plane.manager.stop()


async def test_invalid_inputs_are_refused_before_batching(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., ServerSettings]
) -> None:
    pack()
    plane = await started(settings_for(repo))
    try:
        bad = [
            {"x": np.zeros((2, 5), np.float32)},  # wrong trailing dim
            {"x": np.zeros((2, 4), np.float64)},  # lossy cast
            {"z": X},  # unknown input
        ]
        for inputs in bad:
            with pytest.raises(InputError):
                await plane.infer("scale", InferenceRequest(inputs=inputs), protocol="test")
        ints = InferenceRequest(inputs={"x": np.ones((1, 4), np.int32)})  # lossless: cast
        response = await plane.infer("scale", ints, protocol="test")
        assert response.outputs["y"].dtype == np.float32
        stats = plane.statistics("scale")["model_stats"][0]["inference_stats"]
        assert stats["fail"]["count"] == 3 and stats["success"]["count"] == 1
    finally:
        await plane.manager.stop()


async def test_batching_defaults_follow_the_signature(
    repo: Path, pack: Callable[..., Path], settings_for: Callable[..., ServerSettings]
) -> None:
    pack()
    pack("fixed")
    plane = await started(settings_for(repo))
    try:
        assert plane.manager.get("scale").batcher.enabled
        assert not plane.manager.get("fixed").batcher.enabled
    finally:
        await plane.manager.stop()


async def test_config_is_resolved_once_at_load_and_inputs_checked_once(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pack()
    (repo / "scale" / "model.toml").write_text("[limits]\nmax_tensor_elements = 1000\n")
    plane = await started(settings_for(repo, limits={"max_json_depth": 8}))
    try:
        limits = plane.limits_for("scale")
        assert (limits.max_tensor_elements, limits.max_json_depth) == (1000, 8)
        assert plane.limits_for("scale") is limits  # kept on the version, not merged per call
        assert plane.decode_limits_for("scale").max_tensor_elements == 1000
        assert plane.limits_for("nope") is plane.manager.settings.limits
        calls: list[str] = []

        def counted(specs: Any, inputs: Any) -> Any:
            calls.append("check")
            return check_inputs(specs, inputs)

        monkeypatch.setattr(shipyard.serving.request_checks, "check_inputs", counted)
        monkeypatch.setattr(shipyard.runtime.onnxrt, "check_inputs", counted)
        np.testing.assert_array_equal((await infer(plane)).outputs["y"], X * 2)
        assert calls == ["check"]
        (repo / "scale" / "model.toml").write_text("[limits]\nmax_tensor_elements = 500\n")
        await plane.manager.refresh()  # a changed model.toml reloads the version with it
        assert plane.limits_for("scale").max_tensor_elements == 500
    finally:
        await plane.manager.stop()


async def test_inputs_passed_unchanged_are_remembered_and_everything_else_checked_each_time(
    repo: Path,
    pack: Callable[..., Path],
    settings_for: Callable[..., ServerSettings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pack()
    plane = await started(settings_for(repo))
    calls: list[tuple[str, tuple[int, ...]]] = []

    def counted(specs: Any, inputs: Any) -> Any:
        calls.extend((str(a.dtype), a.shape) for a in inputs.values())
        return check_inputs(specs, inputs)

    monkeypatch.setattr(shipyard.serving.request_checks, "check_inputs", counted)

    async def run(x: Any) -> Any:
        return await plane.infer("scale", InferenceRequest(inputs={"x": x}), protocol="test")

    try:
        for _ in range(3):  # checked once, then known: the same answer without the checks
            np.testing.assert_array_equal((await run(X)).outputs["y"], X * 2)
        assert calls == [("float32", (2, 4))]
        one = X[:1].copy()
        await run(one)
        await run(one)  # another batch size is another signature, checked once
        assert calls[1:] == [("float32", (1, 4))]
        calls.clear()
        for _ in range(2):  # refused: never remembered, refused again with its reason
            with pytest.raises(InputError, match="float64"):
                await run(X.astype(np.float64))
            with pytest.raises(InputError, match="shape"):
                await run(np.zeros((2, 5), np.float32))
        # cast (lossless int32) or copied (not C-contiguous): what the checks change is
        # value- or layout-dependent, so checked each time
        for _ in range(2):
            assert (await run(np.ones((2, 4), np.int32))).outputs["y"].dtype == np.float32
            strided = np.asfortranarray(X)
            np.testing.assert_array_equal((await run(strided)).outputs["y"], X * 2)
        assert [dtype for dtype, _ in calls] == ["float64", "float32"] * 2 + [
            "int32",
            "float32",
        ] * 2
        assert len(plane.manager.get("scale").accepted_inputs) == 2
    finally:
        await plane.manager.stop()


def test_remembered_inputs_come_back_as_the_checks_give_them_in_the_models_order() -> None:
    from types import SimpleNamespace

    from shipyard.package.tensorspec import TensorSpec
    from shipyard.serving.request_checks import validated

    specs = [
        TensorSpec(name="a", dtype="float32", shape=(-1, 2)),
        TensorSpec(name="b", dtype="int64", shape=(-1,)),
    ]
    served: Any = SimpleNamespace(model=SimpleNamespace(inputs=specs), accepted_inputs=set())
    inputs = {"b": np.arange(3), "a": np.zeros((3, 2), np.float32)}  # not the model's order
    first = validated(served, inputs, [])
    assert len(served.accepted_inputs) == 1
    again = validated(served, inputs, [])
    assert list(first) == list(again) == ["a", "b"]
    assert all(again[name] is inputs[name] for name in inputs)
    with pytest.raises(InputError, match="int64"):  # same shapes, another dtype: checked
        validated(served, {"b": np.arange(3.0), "a": inputs["a"]}, [])
