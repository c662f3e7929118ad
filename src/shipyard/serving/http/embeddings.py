"""OpenAI-compatible `POST /v1/embeddings` for packages whose processing embeds text.

Body `{"model": NAME, "input": str | [str, ...], "encoding_format": "float" | "base64"}`
(`dimensions` and `user` are accepted and ignored, `dimensions` only when it equals the
model's width); answer `{"object": "list", "data": [{"object": "embedding", "index": i,
"embedding": [...] | "<base64 float32 LE>"}], "model": NAME, "usage": {"prompt_tokens",
"total_tokens"}}`. The model named in the body needs the token scope `infer:NAME`; the
route goes through the same data plane (batching, limits, metrics, audit) as V2.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from shipyard.codecs.jsonbody import load_object
from shipyard.codecs.types import InferenceRequest, RequestedOutput
from shipyard.errors import InputError
from shipyard.security.errors import AuthenticationError, PermissionDeniedError
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.errors import ProtocolError
from shipyard.serving.http.common import (
    Handler,
    auth_error_response,
    call_of,
    endpoint,
    json_response,
    read_body,
)
from shipyard.serving.http.v2 import counted
from shipyard.serving.routes import ALL_MODELS

PROTOCOL = "openai_http"
MAX_INPUTS = 2048
"""Most texts in one call (OpenAI's own limit)."""


Authorize = Callable[[Scope, str, str], Awaitable[None]]
"""(scope, action, model): returns when the caller's token grants it, else raises 401/403."""


class EmbeddingsHandler:
    def __init__(self, dataplane: DataPlane, *, authorize: Authorize | None = None) -> None:
        self.dataplane = dataplane
        self.authorize = authorize

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._embeddings(request)
        except (AuthenticationError, PermissionDeniedError) as exc:
            return auth_error_response(exc)

    async def _embeddings(self, request: Request) -> Response:
        received = time.perf_counter_ns()
        limits = self.dataplane.limits_for(None)
        body = await read_body(request)
        authorize = self.authorize
        try:
            doc = load_object(body, what="embeddings request")
            name = doc.get("model")
            if not isinstance(name, str) or not name:
                raise ProtocolError('embeddings request needs "model": the name of a served model')
        except ProtocolError:
            # Authorize before validating: a body naming no model is checked as if it
            # targeted every model, so only an 'infer:*' token learns what is wrong with it.
            if authorize is not None:
                await authorize(request.scope, "infer", ALL_MODELS)
            raise
        if authorize is not None:
            await authorize(request.scope, "infer", name)
        texts = _texts(doc.get("input"), max_bytes=limits.max_bytes_element)
        encoding = doc.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise ProtocolError('"encoding_format" must be "float" or "base64"')
        unknown = sorted(set(doc) - {"model", "input", "encoding_format", "dimensions", "user"})
        if unknown:
            raise ProtocolError(f"embeddings request has unknown field(s) {unknown}")
        target = self.dataplane.embedding_target(name)
        if target is None:
            raise InputError(
                f"model {name!r} does not turn text into sentence embeddings; pack it with "
                "--tokenizer (and --pooling) to serve it on /v1/embeddings"
            )
        inputs = np.empty(len(texts), dtype=object)
        inputs[:] = texts
        usage: dict[str, int] = {}
        response = await self.dataplane.infer(
            name,
            InferenceRequest(
                inputs={target.text_input: inputs}, outputs=[RequestedOutput(target.output)]
            ),
            version=target.version,
            protocol=PROTOCOL,
            received_ns=received,
            usage=usage,
            call=call_of(request),
        )
        vectors = np.asarray(response.outputs[target.output], dtype=np.float32)
        dimensions = doc.get("dimensions")
        if dimensions is not None and dimensions != vectors.shape[-1]:
            raise InputError(
                f"model {name!r} makes {vectors.shape[-1]}-dimensional embeddings; "
                f'"dimensions": {dimensions!r} is not supported (leave it out)'
            )
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(row, encoding)}
            for i, row in enumerate(vectors)
        ]
        tokens = usage.get("prompt_tokens", 0)
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _texts(value: Any, *, max_bytes: int) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise ProtocolError('"input" must be a string or a non-empty list of strings')
    if len(texts) > MAX_INPUTS:
        raise ProtocolError(f'"input" has {len(texts)} texts; at most {MAX_INPUTS} per call')
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ProtocolError(
                f'"input"[{index}] is not a string (token-id input is not supported; '
                "send text, or the token tensors to /v2/models/NAME/infer)"
            )
        if len(text) > max_bytes:
            raise ProtocolError(f'"input"[{index}] is over {max_bytes} characters')
    return texts


def _encode(row: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


def handlers(dataplane: DataPlane, *, authorize: Authorize | None = None) -> dict[str, Handler]:
    """The `openai.*` handler of the route table; `authorize` checks the body's model."""
    handler = EmbeddingsHandler(dataplane, authorize=authorize)
    return {"openai.embeddings": endpoint(counted(dataplane.metrics, handler))}
