"""TensorFlow Serving REST API on the same port as V2: status, metadata, predict, classify, regress.

Paths (TF Serving's; rows of the route table, `routes.ROUTES`, handlers `tf.*`):

    GET  /v1/models/NAME[/versions/N]             model status, all versions when none named
    GET  /v1/models/NAME[/versions/N]/metadata    signature_def of the (highest) ready version
    POST /v1/models/NAME[/versions/N]:predict     row {"instances"} or columnar {"inputs"}
    POST /v1/models/NAME[/versions/N]:classify    classifiers with `classes` in metadata
    POST /v1/models/NAME[/versions/N]:regress     single-output regressors

Every error is `{"error": message}`: 400 bad request, 404 unknown model, version or path,
405 wrong method, 413 body too large, 503 not ready or overloaded. Version labels
(`/labels/L`) are not supported (400).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from shipyard.codecs import tfserving
from shipyard.codecs.limits import DecodeLimits
from shipyard.codecs.types import InferenceRequest, RequestedOutput
from shipyard.errors import NotFoundError
from shipyard.package.tensorspec import TensorSpec
from shipyard.serving.calls import Call
from shipyard.serving.dataplane import DataPlane, ModelSignature
from shipyard.serving.errors import ModelNotFound, ProtocolError
from shipyard.serving.http import common
from shipyard.serving.http.common import Handler, json_response
from shipyard.serving.request_checks import check_model_name
from shipyard.serving.settings import ServerSettings
from shipyard.serving.traffic import Plan
from shipyard.serving.version_state import IndexEntry, ModelState

PROTOCOL = "tfserving_http"
PREFIX = "/v1/models/"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,18}")

# A version that stopped serving for one of these reasons ended normally (error_code OK).
_NORMAL_ENDINGS = (
    "unloaded by request",
    "not selected by the version policy",
    "removed from the repository",
    "server stopped",
)


class LabelsNotSupported(ProtocolError):
    """Version labels are a TF Serving config feature Shipyard does not have."""


def _target(request: Request) -> tuple[str, str | None]:
    """(name, version) of the path; 404 for a name or version no model can have."""
    name, version = request.path_params["name"], request.path_params.get("version")
    check_model_name(name)  # a 400 past the longest name a model can have, as on V2
    if not _NAME.fullmatch(name):
        raise ModelNotFound(name)
    if version is not None and not _VERSION.fullmatch(version):
        raise ModelNotFound(name, version)
    return name, version


@dataclass(frozen=True)
class _Job:
    """What a verb needs besides its body and signature."""

    limits: DecodeLimits
    received_ns: int
    """time.perf_counter_ns() when the request arrived (latency includes decoding)."""
    call: Call | None
    """The audited call this request is, if any."""
    route: Plan
    """The version that typed the request and runs it (a rollout may have picked it)."""


Verb = Callable[[bytes, ModelSignature, _Job], Awaitable[bytes]]


class TFServingHandlers:
    """One handler per TF Serving route (status, metadata, each verb, the refusals)."""

    def __init__(self, dataplane: DataPlane, *, compress_min_bytes: int) -> None:
        self.dataplane = dataplane
        self.compress_min_bytes = compress_min_bytes

    async def status(self, request: Request) -> Response:
        name, version = _target(request)
        entries = await self.dataplane.model_status(name)
        if version is not None:
            entries = [e for e in entries if str(e.version) == version]
            if not entries:
                raise ModelNotFound(name, version)
        ordered = sorted(entries, key=lambda e: e.version or 0, reverse=True)
        return json_response({"model_version_status": [version_status(e) for e in ordered]})

    async def metadata(self, request: Request) -> Response:
        name, version = _target(request)
        signature = self.dataplane.model_signature(name, version)
        return json_response(
            {
                "model_spec": {
                    "name": name,
                    "signature_name": "",
                    "version": str(signature.version),
                },
                "metadata": {
                    "signature_def": tfserving.signature_def(signature.inputs, signature.outputs)
                },
            }
        )

    async def unknown_verb(self, request: Request) -> Response:
        raise NotFoundError(
            f"unknown verb :{request.path_params['verb']} in {request.url.path}; use :predict, "
            ":classify or :regress"
        )

    async def labels(self, request: Request) -> Response:
        name, label = request.path_params["name"], request.path_params["label"]
        raise LabelsNotSupported(
            f"version labels ({PREFIX}{name}/labels/{label}) are not supported; name a "
            "version with /versions/N or omit it for the highest ready one"
        )

    def verb(self, run: Verb) -> Handler:
        """The handler of one verb: read the body, type it by the pinned version, run it."""

        async def handle(request: Request) -> Response:
            received = time.perf_counter_ns()
            name, version = _target(request)
            body = await common.read_body(request)
            route = self.dataplane.route(name, version, common.header_of(request.scope))
            signature = self.dataplane.model_signature(name, version, route=route)
            limits = common.decode_limits_of(request.scope, self.dataplane, name)
            job = _Job(limits, received, common.call_of(request.scope), route)
            payload = await run(body, signature, job)
            payload, headers = common.compress_for(
                request.scope, payload, min_bytes=self.compress_min_bytes
            )
            return common.BytesResponse(payload, headers=headers)

        return handle

    async def predict(self, body: bytes, signature: ModelSignature, job: _Job) -> bytes:
        decoded = tfserving.decode_predict(
            body, inputs=signature.inputs, limits=job.limits, processed=signature.processed_inputs
        )
        response = await self._infer(signature, decoded.request, job)
        return tfserving.encode_predict(response, decoded=decoded)

    async def classify(self, body: bytes, signature: ModelSignature, job: _Job) -> bytes:
        spec = _single_input(signature, "classify")
        metadata = self._model_metadata(signature)
        scores_output, labels = _classifier_head(signature, metadata)
        matrix = tfserving.decode_examples(
            body, spec=spec, feature_names=_feature_names(metadata, spec), limits=job.limits
        )
        request = InferenceRequest({spec.name: matrix}, [RequestedOutput(scores_output.name)])
        outputs = await self._infer(signature, request, job)
        scores = outputs[scores_output.name]
        if scores.shape != (len(matrix), len(labels)):
            raise ProtocolError(
                f"output {scores_output.name!r} has shape {list(scores.shape)}, not one score "
                f"per class ({len(labels)}) per example ({len(matrix)})"
            )
        return tfserving.encode_classify(scores, labels=labels)

    async def regress(self, body: bytes, signature: ModelSignature, job: _Job) -> bytes:
        spec = _single_input(signature, "regress")
        metadata = self._model_metadata(signature)
        output = _regression_output(signature, metadata)
        matrix = tfserving.decode_examples(
            body, spec=spec, feature_names=_feature_names(metadata, spec), limits=job.limits
        )
        request = InferenceRequest({spec.name: matrix}, [RequestedOutput(output.name)])
        values = (await self._infer(signature, request, job))[output.name]
        if values.size != len(matrix):
            raise ProtocolError(
                f"output {output.name!r} has shape {list(values.shape)}, not one value per "
                f"example ({len(matrix)})"
            )
        return tfserving.encode_regress(values)

    async def _infer(
        self, signature: ModelSignature, request: InferenceRequest, job: _Job
    ) -> dict[str, np.ndarray]:
        # Pin the version whose signature typed the request, so a hot reload in between
        # cannot hand these tensors to a model with other dtypes.
        response = await self.dataplane.infer(
            signature.name,
            request,
            version=str(signature.version),
            protocol=PROTOCOL,
            received_ns=job.received_ns,
            call=job.call,
            route=job.route,
        )
        return response.outputs

    def _model_metadata(self, signature: ModelSignature) -> dict[str, Any]:
        return self.dataplane.package_metadata(signature.name, str(signature.version))


def handlers(dataplane: DataPlane, *, settings: ServerSettings) -> dict[str, Handler]:
    """The `tf.*` handlers of the route table, bound to `dataplane`."""
    h = TFServingHandlers(dataplane, compress_min_bytes=settings.compress_min_bytes)
    bound: dict[str, Handler] = {
        "tf.status": h.status,
        "tf.metadata": h.metadata,
        "tf.predict": h.verb(h.predict),
        "tf.classify": h.verb(h.classify),
        "tf.regress": h.verb(h.regress),
        "tf.unknown_verb": h.unknown_verb,
        "tf.labels": h.labels,
    }
    return {
        name: common.endpoint(handler, metrics=dataplane.metrics) for name, handler in bound.items()
    }


def version_status(entry: IndexEntry) -> dict[str, Any]:
    """One ModelVersionStatus: our READY/LOADING/UNLOADING/UNAVAILABLE in TF Serving terms."""
    state, error_code, message = _tf_state(entry)
    return {
        "version": str(entry.version or 0),
        "state": state,
        "status": {"error_code": error_code, "error_message": message},
    }


def _tf_state(entry: IndexEntry) -> tuple[str, str, str]:
    if entry.state is ModelState.READY:
        return "AVAILABLE", "OK", ""
    if entry.state is ModelState.LOADING:
        return "LOADING", "OK", ""
    if entry.state is ModelState.UNLOADING:
        return "UNLOADING", "OK", ""
    if entry.reason == "not loaded yet":
        return "START", "OK", ""
    if entry.reason.startswith(_NORMAL_ENDINGS):
        return "END", "OK", entry.reason
    return "END", "UNKNOWN", entry.reason or "not available"


def _single_input(signature: ModelSignature, verb: str) -> TensorSpec:
    if len(signature.inputs) != 1:
        raise ProtocolError(
            f"model {signature.name!r} takes {len(signature.inputs)} inputs; :{verb} needs a "
            "model with one [examples, features] input, use :predict"
        )
    return signature.inputs[0]


def _classifier_head(
    signature: ModelSignature, metadata: dict[str, Any]
) -> tuple[TensorSpec, list[str]]:
    """(scores output, class labels) of a classifier, or 400 saying why it is not one."""
    classes = metadata.get("classes")
    if not isinstance(classes, list) or not classes:
        raise ProtocolError(
            f"model {signature.name!r} is not a classifier (its metadata has no 'classes'); "
            "use :predict"
        )
    names = metadata.get("class_names")
    if isinstance(names, list) and len(names) == len(classes):
        labels = [str(n) for n in names]
    else:
        labels = [str(c) for c in classes]
    candidates = [
        o
        for o in signature.outputs
        if o.dtype.startswith("float") and len(o.shape) == 2 and o.shape[1] in (-1, len(classes))
    ]
    named = [o for o in candidates if o.name == "probabilities"]
    if named or len(candidates) == 1:
        return (named or candidates)[0], labels
    raise ProtocolError(
        f"model {signature.name!r} has no single [examples, {len(classes)}] float output of "
        "class probabilities (or one named 'probabilities'); use :predict"
    )


def _regression_output(signature: ModelSignature, metadata: dict[str, Any]) -> TensorSpec:
    task = metadata.get("task")
    outputs = signature.outputs
    fits = (
        len(outputs) == 1
        and outputs[0].dtype.startswith("float")
        and outputs[0].shape in ((-1,), (-1, 1))
    )
    if task not in (None, "regression"):
        raise ProtocolError(
            f"model {signature.name!r} has task {task!r} in its metadata, not 'regression'; "
            "use :predict"
        )
    if not fits:
        raise ProtocolError(
            f"model {signature.name!r} is not a single-output regressor (that needs exactly one "
            "float output of shape [examples] or [examples, 1]); use :predict"
        )
    return outputs[0]


def _feature_names(metadata: dict[str, Any], spec: TensorSpec) -> Sequence[str] | None:
    names = metadata.get("feature_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    if len(spec.shape) == 2 and spec.shape[1] not in (-1, len(names)):
        return None
    return names
