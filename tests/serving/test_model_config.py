"""Triton's model configuration over HTTP and gRPC, read by the unmodified tritonclient."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import onnx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.model_config_pb2 as triton_mc
import tritonclient.http as triton_http
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from onnx import TensorProto, helper
from tests.serving.conftest import GRAPHS
from tritonclient.utils import InferenceServerException

import shipyard
from shipyard.codecs.proto import model_config_pb2 as ours
from shipyard.security.tokens import TokenStore
from shipyard.serving.openapi import build_document
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import ServerSettings, load_settings

pytestmark = pytest.mark.timeout(120)


def _settings(repo: Path, **overrides: Any) -> ServerSettings:
    overrides = {"port": 0, "grpc_port": 0, "poll_interval_s": 0, **overrides}
    return load_settings(repository=repo, **overrides)


def scalar_graph() -> onnx.ModelProto:
    """x: int64[] -> y = x + 1: a scalar input cannot be stacked, so batching stays off."""
    x = helper.make_tensor_value_info("x", TensorProto.INT64, [])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [])
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    node = helper.make_node("Add", ["x", "one"], ["y"])
    graph = helper.make_graph([node], "scalar", [x], [y], initializer=[one])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _repository(repo: Path) -> Path:
    for kind in ("scale", "fixed", "identity"):
        shipyard.pack(GRAPHS[kind](), name=kind, repo=repo)
    shipyard.pack(scalar_graph(), name="scalar", repo=repo)
    # batchable, but batching turned off by its model.toml; two instances, two versions
    for version in (1, 2):
        shipyard.pack(GRAPHS["scale"](), name="unbatched", repo=repo, version=version)
    (repo / "unbatched" / "model.toml").write_text(
        "instances = 2\n[batching]\nenabled = false\n[version_policy]\nall = true\n"
    )
    shipyard.pack(GRAPHS["scale"](), name="tuned", repo=repo)
    (repo / "tuned" / "model.toml").write_text(
        "[batching]\nmax_batch_size = 8\nmax_queue_delay_us = 500\nmax_queue_size = 64\n"
    )
    return repo


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = _repository(tmp_path_factory.mktemp("config") / "models")
    with start_in_thread(settings=_settings(repo)) as running:
        yield running
    assert not running.running


@pytest.fixture
def http(server: RunningServer) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(
        f"{server.host}:{server.port}", connection_timeout=10, network_timeout=10
    )
    yield client
    client.close()


@pytest.fixture
def rpc(server: RunningServer) -> Iterator[triton_grpc.InferenceServerClient]:
    assert server.grpc_port
    client = triton_grpc.InferenceServerClient(f"{server.host}:{server.grpc_port}")
    yield client
    client.close()


def _grpc_config(client: triton_grpc.InferenceServerClient, *args: str) -> dict[str, Any]:
    """The gRPC answer as HTTP's JSON (tritonclient's as_json writes int64 as strings)."""
    message = client.get_model_config(*args).config
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _same(http_doc: dict[str, Any], grpc_doc: dict[str, Any]) -> None:
    """Both transports carry the same configuration, read by Triton's own message type."""
    message = json_format.ParseDict(http_doc, triton_mc.ModelConfig())
    assert json_format.MessageToDict(message, preserving_proto_field_name=True) == grpc_doc


# -- what the configuration says ------------------------------------------------------------


def test_batchable_model_has_dims_without_the_batch_dim(
    http: triton_http.InferenceServerClient, rpc: triton_grpc.InferenceServerClient
) -> None:
    config = http.get_model_config("scale")
    assert config == {
        "name": "scale",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 32,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [4]}],
        "output": [
            {"name": "y", "data_type": "TYPE_FP32", "dims": [4]},
            {"name": "s", "data_type": "TYPE_FP32", "dims": []},  # only the batch dim
        ],
        "dynamic_batching": {
            "max_queue_delay_microseconds": 0,
            "default_queue_policy": {"max_queue_size": 1024},
        },
        "instance_group": [{"name": "scale", "kind": "KIND_CPU", "count": 1}],
    }
    assert http.get_model_config("scale", "1") == config
    as_json = rpc.get_model_config("scale", as_json=True)["config"]
    assert as_json["max_batch_size"] == 32
    assert as_json["input"][0]["dims"] == ["4"]  # protobuf JSON: int64 as strings
    assert as_json["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024
    _same(config, _grpc_config(rpc, "scale"))
    _same(config, _grpc_config(rpc, "scale", "1"))


def test_model_toml_knobs_show_in_the_configuration(
    http: triton_http.InferenceServerClient, rpc: triton_grpc.InferenceServerClient
) -> None:
    config = http.get_model_config("tuned")
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"] == {
        "max_queue_delay_microseconds": 500,
        "default_queue_policy": {"max_queue_size": 64},
    }
    _same(config, _grpc_config(rpc, "tuned"))


@pytest.mark.parametrize(
    ("model", "inputs", "outputs"),
    [
        ("fixed", [("x", "TYPE_FP32", [1, 4])], [("y", "TYPE_FP32", [1, 4])]),
        ("scalar", [("x", "TYPE_INT64", [])], [("y", "TYPE_INT64", [])]),
        ("unbatched", [("x", "TYPE_FP32", [-1, 4])], [("y", "TYPE_FP32", [-1, 4]), ("s", "TYPE_FP32", [-1])]),
    ],
)  # fmt: skip
def test_model_not_batched_has_full_dims_and_max_batch_size_0(
    http: triton_http.InferenceServerClient,
    rpc: triton_grpc.InferenceServerClient,
    model: str,
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
) -> None:
    config = http.get_model_config(model)
    assert config["max_batch_size"] == 0
    assert "dynamic_batching" not in config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == inputs
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == outputs
    as_json = rpc.get_model_config(model, as_json=True)["config"]
    assert "max_batch_size" not in as_json  # 0 is proto3's default: not written
    assert "dynamic_batching" not in as_json
    _same(config, _grpc_config(rpc, model))


def test_instances_and_version_policy_come_from_model_toml(
    http: triton_http.InferenceServerClient, rpc: triton_grpc.InferenceServerClient
) -> None:
    config = http.get_model_config("unbatched", "1")
    assert config["instance_group"] == [{"name": "unbatched", "kind": "KIND_CPU", "count": 2}]
    assert config["version_policy"] == {"all": {}}
    assert http.get_model_config("unbatched", "2") == config
    _same(config, _grpc_config(rpc, "unbatched", "2"))


def test_every_datatype_has_its_triton_name(http: triton_http.InferenceServerClient) -> None:
    config = http.get_model_config("identity")
    types = {t["name"].removeprefix("in_"): t["data_type"] for t in config["input"]}
    assert types["BYTES"] == "TYPE_STRING"
    assert types["FP16"] == "TYPE_FP16" and types["BOOL"] == "TYPE_BOOL"
    assert all(v == f"TYPE_{k}" for k, v in types.items() if k != "BYTES")
    assert {t["dims"] == [2] for t in config["input"] + config["output"]} == {True}


def test_unknown_model_or_version_is_not_found(
    http: triton_http.InferenceServerClient, rpc: triton_grpc.InferenceServerClient
) -> None:
    for args in (("nope",), ("scale", "2"), ("scale", "x")):
        with pytest.raises(InferenceServerException) as info:
            http.get_model_config(*args)
        assert info.value.status() == "404", args
        with pytest.raises(InferenceServerException) as info:
            rpc.get_model_config(*args)
        assert info.value.status() == str(grpc.StatusCode.NOT_FOUND), args
    with pytest.raises(InferenceServerException) as info:
        http.get_model_config("nope")
    assert "nope" in info.value.message()


def test_http_answer_matches_the_documented_schema(
    http: triton_http.InferenceServerClient,
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = build_document("0")
    schema = doc["paths"]["/v2/models/{name}/config"]["get"]["responses"]["200"]
    rooted = {**schema["content"]["application/json"]["schema"], "components": doc["components"]}
    validator = jsonschema.Draft202012Validator(rooted)
    for model in ("scale", "tuned", "fixed", "scalar", "unbatched", "identity"):
        errors = [e.message for e in validator.iter_errors(http.get_model_config(model))]
        assert not errors, f"{model}: {errors[:3]}"


def test_server_metadata_advertises_the_extension(
    http: triton_http.InferenceServerClient,
) -> None:
    assert "model_configuration" in http.get_server_metadata()["extensions"]


# -- the data plane: what runs now decides what is said ---------------------------------------


def test_config_follows_the_batcher_and_the_providers(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataplane = server.server.dataplane
    served = dataplane.manager.get("scale")
    runtime_type = type(served.model.runtime)
    monkeypatch.setattr(
        runtime_type, "providers", property(lambda self: ["CUDAExecutionProvider", "CPU"])
    )
    assert dataplane.model_config("scale")["instance_group"][0]["kind"] == "KIND_GPU"
    monkeypatch.undo()
    # the batcher turns itself off when a batch cannot be split: the config says so at once
    monkeypatch.setattr(served.batcher, "enabled", False)
    config = dataplane.model_config("scale")
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"][0]["dims"] == [-1, 4]


# -- the proto --------------------------------------------------------------------------------


def _check_subset(mine: Descriptor, theirs: Descriptor) -> None:
    """Every field we declare is Triton's: same name, number, type and repetition."""
    for field in mine.fields:
        other = theirs.fields_by_name[field.name]
        assert (field.number, field.type, field.is_repeated) == (
            other.number,
            other.type,
            other.is_repeated,
        ), f"{mine.full_name}.{field.name}"
        for kind in ("message_type", "enum_type"):
            a, b = getattr(field, kind), getattr(other, kind)
            assert (a and a.name) == (b and b.name), f"{mine.full_name}.{field.name}"
        if field.containing_oneof is not None:
            assert other.containing_oneof is not None
            assert field.containing_oneof.name == other.containing_oneof.name
    for nested in mine.nested_types:
        _check_subset(nested, theirs.nested_types_by_name[nested.name])
    for enum in mine.enum_types:
        _check_enum(enum, theirs.enum_types_by_name[enum.name])


def _check_enum(mine: EnumDescriptor, theirs: EnumDescriptor) -> None:
    assert {v.name: v.number for v in mine.values} == {v.name: v.number for v in theirs.values}


def test_model_config_proto_is_a_subset_of_tritons() -> None:
    for name, message in ours.DESCRIPTOR.message_types_by_name.items():
        _check_subset(message, triton_mc.DESCRIPTOR.message_types_by_name[name])
    for name, enum in ours.DESCRIPTOR.enum_types_by_name.items():
        _check_enum(enum, triton_mc.DESCRIPTOR.enum_types_by_name[name])


# -- authorization ----------------------------------------------------------------------------


def test_config_needs_the_metadata_scope(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shipyard.pack(GRAPHS["scale"](), name="scale", repo=repo)
    store = TokenStore(tmp_path / "tokens.json")
    meta = store.create("meta", ["metadata:scale"])
    infer = store.create("infer", ["infer:scale"])
    with start_in_thread(settings=_settings(repo, auth=store.path)) as server:
        http = triton_http.InferenceServerClient(
            f"{server.host}:{server.port}", connection_timeout=10, network_timeout=10
        )
        rpc = triton_grpc.InferenceServerClient(f"{server.host}:{server.grpc_port}")
        try:
            for headers, status, code in (
                (None, "401", grpc.StatusCode.UNAUTHENTICATED),
                ({"authorization": "Bearer shp_unknown"}, "401", grpc.StatusCode.UNAUTHENTICATED),
                ({"authorization": f"Bearer {infer}"}, "403", grpc.StatusCode.PERMISSION_DENIED),
            ):
                with pytest.raises(InferenceServerException) as info:
                    http.get_model_config("scale", headers=headers)
                assert info.value.status() == status, headers
                with pytest.raises(InferenceServerException) as info:
                    rpc.get_model_config("scale", headers=headers)
                assert info.value.status() == str(code), headers
            allowed = {"authorization": f"Bearer {meta}"}
            assert http.get_model_config("scale", headers=allowed)["max_batch_size"] == 32
            assert rpc.get_model_config("scale", headers=allowed).config.max_batch_size == 32
        finally:
            http.close()
            rpc.close()


# -- perf_analyzer ------------------------------------------------------------------------------

PERF_ANALYZER = shutil.which("perf_analyzer")


@pytest.mark.skipif(
    PERF_ANALYZER is None,
    reason="perf_analyzer is not on PATH (PyPI's perf-analyzer 0.1.0 is a placeholder without "
    "the binary; it ships in Triton's SDK container)",
)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_against_the_server(server: RunningServer, protocol: str) -> None:
    assert PERF_ANALYZER is not None
    port = server.port if protocol == "http" else server.grpc_port
    result = subprocess.run(
        [PERF_ANALYZER, "-m", "scale", "-u", f"127.0.0.1:{port}", "-i", protocol,
         "--concurrency-range", "1", "--measurement-interval", "500"],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
