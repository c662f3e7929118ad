"""A signature binds identity: a version serves only under its own name and number, and an
unsigned model.toml cannot raise server ceilings or silently roll a model back."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import shipyard
from shipyard.codecs import InferenceRequest
from shipyard.errors import IntegrityError
from shipyard.package.store import read_verified
from shipyard.package.transfer import import_version
from shipyard.security.keys import KeyPaths, init_keys
from shipyard.security.signing import sign_version
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.errors import ModelLoadError
from shipyard.serving.lifecycle import build_dataplane
from shipyard.serving.settings import ServerSettings, load_settings

pytestmark = pytest.mark.anyio

X = np.ones((2, 4), dtype=np.float32)
FRAUD = "manifest says 'iris' but sits in folder 'fraud'; use `shipyard import` to rename"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def keys(tmp_path: Path) -> KeyPaths:
    return init_keys(tmp_path / "keys")


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("SHIPYARD_KEK", "SHIPYARD_AUDIT_KEY", "SHIPYARD_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    yield


def signed(model: onnx.ModelProto, repo: Path, keys: KeyPaths, name: str = "iris") -> Path:
    path = shipyard.pack(model, name=name, repo=repo).path
    sign_version(path, keys.signing_key)
    return path


def settings(repo: Path, keys: KeyPaths, **overrides: Any) -> ServerSettings:
    return load_settings(
        repository=repo,
        port=0,
        poll_interval_s=0,
        require_signature=True,
        public_key=keys.public_key,
        **overrides,
    )


async def started(s: ServerSettings) -> DataPlane:
    plane = build_dataplane(s)
    await plane.manager.start()
    return plane


async def rows(plane: DataPlane, name: str) -> dict[str, tuple[str, str]]:
    found = await plane.repository_index()
    return {r.get("version", ""): (r["state"], r["reason"]) for r in found if r["name"] == name}


async def served_version(plane: DataPlane, name: str = "iris") -> str:
    response = await plane.infer(name, InferenceRequest(inputs={"x": X}), protocol="test")
    return str(response.model_version)


# -- identity ------------------------------------------------------------------------------


def test_read_verified_refuses_a_package_in_another_models_folder(
    affine_model: onnx.ModelProto, repo: Path, keys: KeyPaths
) -> None:
    source = signed(affine_model, repo, keys)
    shutil.copytree(source, repo / "fraud" / "1")
    with pytest.raises(IntegrityError, match="manifest says 'iris' but sits in folder 'fraud'"):
        read_verified(repo / "fraud" / "1")
    read_verified(repo / "fraud" / "1", check_folder=False)  # what `shipyard import` reads


def test_import_still_renames_a_package_from_any_folder(
    affine_model: onnx.ModelProto, repo: Path, keys: KeyPaths, tmp_path: Path
) -> None:
    source = signed(affine_model, repo, keys)
    stray = tmp_path / "inbox" / "1"  # a download sits in whatever folder it landed in
    shutil.copytree(source, stray)
    result = import_version(stray, repo=repo, name="fraud")
    assert result.path == repo / "fraud" / "1" and read_verified(result.path).name == "fraud"


async def test_a_signed_package_copied_under_another_name_is_not_served(
    affine_model: onnx.ModelProto, repo: Path, keys: KeyPaths
) -> None:
    shutil.copytree(signed(affine_model, repo, keys), repo / "fraud" / "1")
    plane = await started(settings(repo, keys))
    try:
        assert await served_version(plane) == "1"  # iris itself still serves
        state, reason = (await rows(plane, "fraud"))["1"]
        assert state == "UNAVAILABLE" and FRAUD in reason
        with pytest.raises(ModelLoadError, match="sits in folder 'fraud'"):
            await plane.load_model("fraud")
    finally:
        await plane.manager.stop()


# -- ceilings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "why"),
    [
        ("instances = 64\n", "instances = 64 is above the server's max_instances = 16"),
        (
            "[limits]\nmax_body_bytes = 1_099_511_627_776\n",
            "limits.max_body_bytes = 1099511627776 is above the server's 67108864",
        ),
        ("[batching]\nmax_queue_size = 100000\n", "batching.max_queue_size = 100000"),
    ],
)
async def test_model_toml_over_a_server_ceiling_is_refused_and_the_old_config_serves(
    affine_model: onnx.ModelProto, repo: Path, keys: KeyPaths, toml: str, why: str
) -> None:
    signed(affine_model, repo, keys)
    (repo / "iris" / "model.toml").write_text("instances = 2\n[limits]\nmax_body_bytes = 4096\n")
    plane = await started(settings(repo, keys))
    try:
        assert plane.limits_for("iris").max_body_bytes == 4096  # lowering is allowed
        (repo / "iris" / "model.toml").write_text(toml)
        await plane.manager.refresh()
        state, reason = (await rows(plane, "iris"))["1"]
        assert state == "READY" and reason.startswith("serving with the previous config; ")
        assert why in reason and "\n" not in reason
        assert plane.limits_for("iris").max_body_bytes == 4096
        assert plane.manager.get("iris").batcher.workers == 2
        assert await served_version(plane) == "1"
    finally:
        await plane.manager.stop()


async def test_a_model_toml_over_the_ceiling_keeps_a_new_model_unavailable(
    affine_model: onnx.ModelProto, repo: Path, keys: KeyPaths
) -> None:
    signed(affine_model, repo, keys)
    (repo / "iris" / "model.toml").write_text("[limits]\nmax_json_depth = 1000\n")
    plane = await started(settings(repo, keys))
    try:
        state, reason = (await rows(plane, "iris"))["1"]
        assert state == "UNAVAILABLE" and "limits.max_json_depth = 1000" in reason
    finally:
        await plane.manager.stop()


# -- downgrades ----------------------------------------------------------------------------


async def test_a_policy_change_does_not_roll_back_until_the_operator_loads_it(
    affine_model: onnx.ModelProto, repo: Path, keys: KeyPaths
) -> None:
    signed(affine_model, repo, keys)
    signed(affine_model, repo, keys)  # version 2
    plane = await started(settings(repo, keys))
    try:
        assert await served_version(plane) == "2"
        (repo / "iris" / "model.toml").write_text("[version_policy]\nspecific = [1]\n")
        await plane.manager.refresh()
        assert await served_version(plane) == "2"  # no silent downgrade
        state, reason = (await rows(plane, "iris"))["1"]
        assert state == "UNAVAILABLE" and "refused downgrade: version 1 is older than" in reason
        await plane.load_model("iris")  # the operator's explicit action
        assert await served_version(plane) == "1"
        await plane.manager.refresh()  # and it stays: the load moved the mark
        assert await served_version(plane) == "1"
    finally:
        await plane.manager.stop()


async def test_removing_the_newest_folder_keeps_it_serving_rather_than_rolling_back(
    affine_model: onnx.ModelProto, repo: Path, keys: KeyPaths
) -> None:
    signed(affine_model, repo, keys)
    signed(affine_model, repo, keys)
    plane = await started(settings(repo, keys))
    try:
        shutil.rmtree(repo / "iris" / "2")
        await plane.manager.refresh()
        assert await served_version(plane) == "2"
        assert "refused downgrade" in (await rows(plane, "iris"))["1"][1]
    finally:
        await plane.manager.stop()


async def test_allow_downgrade_serves_the_older_version(
    affine_model: onnx.ModelProto, repo: Path, keys: KeyPaths
) -> None:
    signed(affine_model, repo, keys)
    signed(affine_model, repo, keys)
    plane = await started(settings(repo, keys, allow_downgrade=True))
    try:
        shutil.rmtree(repo / "iris" / "2")
        await plane.manager.refresh()
        assert await served_version(plane) == "1"
    finally:
        await plane.manager.stop()
