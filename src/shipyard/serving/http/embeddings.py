"""OpenAI-compatible `POST /v1/embeddings` for packages whose processing embeds text.

Body `{"model": NAME, "input": ..., "encoding_format": "float" | "base64"}`, `input` as
OpenAI takes it: a string, a list of strings, a list of token ids (one input) or a list of
such lists. Token ids go to the graph as sent (with an attention mask; no special tokens
added), checked against the tokenizer's vocabulary and `max_length` (a 400 naming the row).
`dimensions` and `user` are accepted and ignored, `dimensions` only when it equals the
model's width; answer `{"object": "list", "data": [{"object": "embedding", "index": i,
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
        texts, id_rows = _inputs(doc.get("input"), max_bytes=limits.max_bytes_element)
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
        usage: dict[str, int] = {}
        if id_rows is not None:
            prepared = target.processor.token_inputs(id_rows, name='"input"')
            inputs: dict[str, np.ndarray] = prepared.inputs
            usage["prompt_tokens"] = prepared.tokens
            counted_usage = None  # the data plane counts tokens of text it tokenizes only
        else:
            texts_array = np.empty(len(texts), dtype=object)
            texts_array[:] = texts
            inputs, counted_usage = {target.text_input: texts_array}, usage
        response = await self.dataplane.infer(
            name,
            InferenceRequest(inputs=inputs, outputs=[RequestedOutput(target.output)]),
            version=target.version,
            protocol=PROTOCOL,
            received_ns=received,
            usage=counted_usage,
            call=call_of(request.scope),
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


def _inputs(value: Any, *, max_bytes: int) -> tuple[list[str], list[list[int]] | None]:
    """(texts, None) or ([], token-id rows) from OpenAI's `input` forms."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ProtocolError(
            '"input" must be a string, a non-empty list of strings, a list of token ids '
            "or a list of such lists"
        )
    if all(_is_id(v) for v in items):
        items = [items]  # one input, already tokenized
    if len(items) > MAX_INPUTS:
        raise ProtocolError(f'"input" has {len(items)} inputs; at most {MAX_INPUTS} per call')
    if all(isinstance(v, list) for v in items):
        rows: list[list[int]] = []
        for index, row in enumerate(items):
            bad = next((v for v in row if not _is_id(v)), None)
            if bad is not None:
                raise ProtocolError(f'"input"[{index}] holds {bad!r}, not a token id (an integer)')
            rows.append(row)
        return [], rows
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise ProtocolError(
                f'"input"[{index}] is not a string; send strings, or token ids (lists of '
                "integers), not a mix"
            )
        if len(text) > max_bytes:
            raise ProtocolError(f'"input"[{index}] is over {max_bytes} characters')
    return items, None


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encode(row: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


def handlers(dataplane: DataPlane, *, authorize: Authorize | None = None) -> dict[str, Handler]:
    """The `openai.*` handler of the route table; `authorize` checks the body's model."""
    handler = EmbeddingsHandler(dataplane, authorize=authorize)
    return {"openai.embeddings": endpoint(handler, metrics=dataplane.metrics)}
