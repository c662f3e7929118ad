"""Schemathesis against a real server: no request the OpenAPI document allows, or nearly
allows, gets a 5xx.

One server without auth and one with `--auth` (a token file) serve an iris classifier
(scikit-learn, packed with `shipyard.pack`), the identity model (every V2 datatype) and a
spare copy of it that the load/unload operations may take down. For every operation the
schema at `{url}/openapi.json` describes, Hypothesis draws valid (positive) and invalid
(negative) requests, for the real models and for made-up names, and sends them; for the
real models' inference operations it also draws bodies with their input names, shapes
and datatypes (mostly right, sometimes not), so requests reach the models too:

- `open`: auth off: no 5xx (`not_a_server_error`), and never 401/403;
- `admin`: auth on, an admin token on every request: no 5xx, never 401/403;
- `anonymous`: auth on, no token: 401 on every protected operation, no 5xx anywhere.

Every response must also be documented (status, media type, headers, body schema).
Derandomized, with no example database, so each run sends the same requests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.serving.conftest import identity_graph

import shipyard
from shipyard.security.tokens import TokenStore
from shipyard.serving.openapi import ENDPOINTS, required_scope
from shipyard.serving.openapi_schemas import SCHEMAS
from shipyard.serving.server import RunningServer, start_in_thread
from shipyard.serving.settings import load_settings

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
requests = pytest.importorskip("requests")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi import checks as openapi_checks  # noqa: E402

CHECKS = [
    not_a_server_error,
    # and the document tells the truth: documented status, media type, headers and body
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]
# Schemathesis 4.32 rewrites `prefixItems` (TfClassifyResponse's [label, score] pairs) into
# draft-4 `items: [...]` and then meta-validates it as 2020-12, an InvalidSchema; the
# classify bodies are checked against the document by test_openapi.py instead.
TUPLE_RESPONSES = {"tf_classify", "tf_classify_version"}

MAX_EXAMPLES = {"open": 40, "admin": 25, "anonymous": 8}
"""Examples per operation; SHIPYARD_FUZZ_EXAMPLES=300 (and SHIPYARD_FUZZ_RANDOM=1 for a
fresh seed each run instead of the fixed one) digs deeper by hand."""
SERVED = ("iris", "identity")
SPARE = "spare"
"""The model load/unload may act on: the others stay up for the whole module."""
OPERATIONS = {ep.operation_id: ep for ep in ENDPOINTS}
DATATYPES: list[str] = SCHEMAS["Datatype"]["enum"]


@dataclass
class Run:
    schema: Any
    url: str
    headers: dict[str, str]
    session: Any
    auth: bool
    inputs: dict[str, list[dict[str, Any]]]
    """Model name -> its V2 metadata inputs ({name, datatype, shape})."""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    repo = tmp_path_factory.mktemp("schemathesis-models")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    estimator = LogisticRegression(max_iter=300).fit(x, y)
    shipyard.pack(estimator, name="iris", repo=repo, sample_input=x[:8])
    shipyard.pack(identity_graph(), name="identity", repo=repo)
    shipyard.pack(identity_graph(), name=SPARE, repo=repo)
    return repo


@pytest.fixture(scope="module")
def admin_token_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("schemathesis-auth") / "tokens.json"
    return path, TokenStore(path).create("fuzz-admin", ["admin:*"])


def _serve(repo: Path, **overrides: Any) -> RunningServer:
    settings = load_settings(
        repository=repo, port=0, poll_interval_s=0, limits={"max_body_bytes": 8192}, **overrides
    )
    return start_in_thread(settings=settings)


@pytest.fixture(scope="module")
def runs(repository: Path, admin_token_file: tuple[Path, str]) -> Iterator[dict[str, Run]]:
    path, token = admin_token_file
    admin = {"Authorization": f"Bearer {token}"}
    with (
        _serve(repository) as open_server,
        _serve(repository, auth=path) as auth_server,
        requests.Session() as session,
    ):
        open_schema = schemathesis.openapi.from_url(f"{open_server.url}/openapi.json")
        # /openapi.json itself needs a token (metadata on any model) when auth is on
        auth_schema = schemathesis.openapi.from_url(
            f"{auth_server.url}/openapi.json", headers=admin
        )
        inputs = {
            m: session.get(f"{open_server.url}/v2/models/{m}", timeout=10).json()["inputs"]
            for m in SERVED
        }
        yield {
            "open": Run(open_schema, open_server.url, {}, session, False, inputs),
            "admin": Run(auth_schema, auth_server.url, admin, session, True, inputs),
            "anonymous": Run(auth_schema, auth_server.url, {}, session, True, inputs),
        }


def _path_parameters(path: str) -> list[dict[str, str]]:
    """Real models (their version 1 too) to aim at, besides the names Hypothesis makes up."""
    if "{name}" not in path:
        return []
    names = (SPARE,) if path.startswith("/v2/repository/") else SERVED
    if "{version}" in path:
        return [{"name": n, "version": "1"} for n in names] + [{"name": n} for n in names]
    return [{"name": n} for n in names]


FLAWS = (None, None, None, "datatype", "shape", "size", "range", "missing")
"""What an aimed body gets wrong, if anything: one flaw at a time, most often none."""


def _values(datatype: str, *, wild: bool = False) -> st.SearchStrategy[Any]:
    """JSON values for one element of `datatype`; `wild`: integers out of its range too."""
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return st.text(max_size=6)
    if datatype.startswith("FP"):
        return (
            st.sampled_from([70000.0, 1e39, -1e300])
            if wild
            else st.floats(width=16, allow_nan=False, allow_infinity=False)
        )
    bits = int(datatype.removeprefix("U").removeprefix("INT"))
    low, high = (
        (0, 2**bits - 1) if datatype[0] == "U" else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    )
    return st.sampled_from([low - 1, high + 1, 2**64]) if wild else st.integers(low, high)


@st.composite
def _tensor(
    draw: st.DrawFn, spec: dict[str, Any], datatype: str, rows: int, flaw: str | None
) -> tuple[list[int], Any]:
    """(shape, values) of an input like `spec` (free dims = `rows`), values nested or flat."""
    shape = [d if d >= 0 else rows for d in spec["shape"]]
    if flaw == "shape":
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
    size = int(np.prod(shape)) + (draw(st.sampled_from([1, -1])) if flaw == "size" else 0)
    size = max(size, 0)
    data = draw(st.lists(_values(datatype, wild=flaw == "range"), min_size=size, max_size=size))
    if size == int(np.prod(shape)) and draw(st.booleans()):
        return shape, np.array(data, dtype=object).reshape(shape).tolist()
    return shape, data


@st.composite
def _columns(draw: st.DrawFn, inputs: list[dict[str, Any]], rows: int) -> list[dict[str, Any]]:
    """One tensor per input ({name, datatype, shape, data}); at most one of them flawed."""
    flaw, flawed = draw(st.sampled_from(FLAWS)), draw(st.sampled_from(inputs))["name"]
    tensors = []
    for spec in inputs:
        mine = flaw if spec["name"] == flawed else None
        if mine == "missing":
            continue
        datatype = draw(st.sampled_from(DATATYPES)) if mine == "datatype" else spec["datatype"]
        shape, data = draw(_tensor(spec, datatype, rows, mine))
        tensors.append({"name": spec["name"], "datatype": datatype, "shape": shape, "data": data})
    return tensors


@st.composite
def _v2_body(draw: st.DrawFn, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": draw(_columns(inputs, draw(st.integers(0, 3))))}
    if draw(st.booleans()):
        body["parameters"] = {"binary_data_output": draw(st.booleans())}
    return body


@st.composite
def _tf_body(draw: st.DrawFn, inputs: list[dict[str, Any]], examples: bool) -> dict[str, Any]:
    rows = draw(st.integers(1, 3))
    columns = {t["name"]: t["data"] for t in draw(_columns(inputs, rows))}
    if not columns:
        return {"inputs": {}}
    (first, *others) = columns.values()
    if examples:
        return {"examples": first}
    if draw(st.booleans()):  # columnar
        return {"inputs": columns if others else first}
    if not others:
        return {"instances": first}
    if all(isinstance(v, list) and len(v) == rows for v in columns.values()):
        return {"instances": [{k: v[i] for k, v in columns.items()} for i in range(rows)]}
    return {"instances": [columns]}


def _aimed_bodies(operation_id: str, inputs: list[dict[str, Any]]) -> st.SearchStrategy[Any]:
    if operation_id.startswith("v2_infer"):
        return _v2_body(inputs)
    return _tf_body(inputs, examples=not operation_id.startswith("tf_predict"))


def _cases(operation: Any, run: Run) -> st.SearchStrategy[Any]:
    """Schemathesis' own cases (valid and invalid, any name or a served one), and for the
    inference operations as many again with bodies aimed at the served models."""
    headers = run.headers or None
    fixed: list[dict[str, str] | None] = [None, *_path_parameters(operation.path)]
    generic = st.one_of(
        *(
            operation.as_strategy(mode, path_parameters=params, headers=headers)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            for params in fixed
        )
    )
    operation_id = operation.definition.raw["operationId"]
    if operation.method.upper() != "POST" or "{name}" not in operation.path:
        return generic
    if operation.path.startswith("/v2/repository/"):
        return generic
    aimed = st.one_of(
        *(
            _aimed_bodies(operation_id, run.inputs[params["name"]]).flatmap(
                lambda body, params=params: operation.as_strategy(
                    path_parameters=params,
                    headers={**(headers or {}), "Content-Encoding": "identity"},
                    body=body,
                    media_type="application/json",
                )
            )
            for params in fixed
            if params is not None
        )
    )
    return st.sampled_from((aimed, generic)).flatmap(lambda cases: cases)  # half and half


@pytest.mark.parametrize("run_name", list(MAX_EXAMPLES))
@pytest.mark.parametrize("operation_id", list(OPERATIONS))
def test_no_server_errors(runs: dict[str, Run], run_name: str, operation_id: str) -> None:
    run = runs[run_name]
    operation = run.schema.find_operation_by_id(operation_id)
    protected = run.auth and required_scope(OPERATIONS[operation_id].path) is not None
    statuses: list[int] = []
    checks = CHECKS
    if operation_id in TUPLE_RESPONSES:
        checks = [c for c in CHECKS if c is not openapi_checks.response_schema_conformance]

    @settings(
        max_examples=int(os.environ.get("SHIPYARD_FUZZ_EXAMPLES", MAX_EXAMPLES[run_name])),
        deadline=None,
        derandomize=not os.environ.get("SHIPYARD_FUZZ_RANDOM"),
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=_cases(operation, run))
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(
            base_url=run.url, session=run.session, checks=checks, timeout=30
        )
        status = response.status_code
        statuses.append(status)
        where = f"{case.method} {case.formatted_path} -> {status}: {response.content[:200]!r}"
        if run_name == "anonymous" and protected:
            assert status == 401, where
        else:
            assert status not in (401, 403), where

    fuzz()
    assert statuses, "Hypothesis sent no request"


# Requests schemathesis found a 5xx with once; each must stay a 4xx.
REGRESSIONS = [
    pytest.param(
        "/v2/models/iris/infer",
        {
            "inputs": [
                {"name": "X", "datatype": "UINT64", "shape": [1, 4], "data": [2**64 - 1, 3, 4, 5]}
            ]
        },
        400,
        id="uint64-max-to-fp32-cast-warning",
    ),
]


@pytest.mark.parametrize(("path", "body", "status"), REGRESSIONS)
def test_found_by_schemathesis(runs: dict[str, Run], path: str, body: Any, status: int) -> None:
    for run in (runs["open"], runs["admin"]):
        response = run.session.post(run.url + path, json=body, headers=run.headers, timeout=30)
        assert response.status_code == status, response.text
