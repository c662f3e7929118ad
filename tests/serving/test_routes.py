"""The route table: one row per route, consistent, and covering both transports."""

from __future__ import annotations

import pytest

from shipyard.serving.routes import (
    ALL_MODELS,
    ANY_MODEL,
    GRPC_METHODS,
    ROUTES,
    Access,
    Route,
    grpc_access,
)
from shipyard.serving.routing import TABLE, RouteTable


def test_every_row_is_reachable_by_its_own_template() -> None:
    for route in ROUTES:
        sample = route.path.replace("{verb}", "explain")
        found = TABLE.find(sample.format(name="m", version="2", label="x"))
        assert found is not None, route.path
        assert found.route(route.method) == route, route.path


def test_audited_routes_need_a_token_and_open_ones_write_nothing() -> None:
    for route in ROUTES:
        if route.audit is not None:
            assert route.action is not None, route.path
        if route.action is None:
            assert route.audit is None and route.path.startswith("/v2/health/"), route.path


def test_a_path_needs_one_scope_whatever_the_method() -> None:
    with pytest.raises(AssertionError, match="same scope"):
        RouteTable(
            (Route("GET", "/x/{name}", "a", "metadata"), Route("POST", "/x/{name}", "b", "infer"))
        )


def test_grpc_methods_cover_the_proto_and_map_to_the_same_scopes() -> None:
    pytest.importorskip("grpc")
    from shipyard.codecs.proto import grpc_service_pb2 as pb

    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert methods == set(GRPC_METHODS)
    assert grpc_access("ServerLive", None) is None
    assert grpc_access("ModelReady", None) is None
    assert grpc_access("ModelReady", "m") == Access("metadata", "m")
    assert grpc_access("ModelInfer", "m") == TABLE.access("/v2/models/m/infer")
    assert grpc_access("ModelMetadata", "m") == TABLE.access("/v2/models/m")
    assert (
        grpc_access("ServerMetadata", None) == TABLE.access("/v2") == Access("metadata", ANY_MODEL)
    )
    assert grpc_access("ModelStatistics", None) == TABLE.access("/v2/models/stats")
    assert grpc_access("RepositoryIndex", None) == TABLE.access("/v2/repository/index")
    assert grpc_access("RepositoryModelLoad", "m") == TABLE.access("/v2/repository/models/m/load")
    assert grpc_access("Unknown", None) == Access("admin", ALL_MODELS)
