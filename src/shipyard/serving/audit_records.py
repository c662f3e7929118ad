"""What goes into an audit record: the fields of an audited call, outcomes in the log's words.

Kept apart from the writer (`audit_trail`) so the mapping from the data plane's events to
records reads on its own: HTTP statuses and the data plane's outcomes become the log's
outcome words, and a record the writer cannot write becomes an `audit.unwritable` one.
"""

from __future__ import annotations

from typing import Any

from shipyard.serving.calls import SERVER, CallEvent

_OUTCOMES = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    413: "too_large",
    503: "unavailable",
}
# The data plane's metric outcomes, in the audit log's words (as for HTTP statuses).
_PLANE_OUTCOMES = {"success": "ok", "overloaded": "unavailable", "not_ready": "unavailable"}


def unwritable(item: dict[str, Any], cause: str) -> dict[str, Any]:
    """What stands in the chain for a record the writer cannot write (a bug in it)."""
    return {
        "event": "audit.unwritable",
        "who": SERVER,
        "outcome": "error",
        "request_id": item.get("request_id") if isinstance(item.get("request_id"), str) else None,
        "detail": f"a {item.get('event')!s} record could not be written ({cause})",
    }


def outcome_of(status: int) -> str:
    """The audit outcome of an HTTP status."""
    if status < 400:
        return "ok"
    return _OUTCOMES.get(status, "invalid" if status < 500 else "error")


def call_fields(event: CallEvent) -> dict[str, Any]:
    """An audited call's record: HTTP's names its route and bytes, others their client."""
    context = event.context
    if event.status is not None:
        outcome = outcome_of(event.status)
    else:
        outcome = _PLANE_OUTCOMES.get(event.outcome, event.outcome)
    fields: dict[str, Any] = {
        "who": context.principal,
        "model": event.model,
        "version": event.version,
        "outcome": outcome,
        "request_id": context.request_id,
    }
    if event.bytes_in is not None:
        fields["bytes_in"] = event.bytes_in
        fields["bytes_out"] = event.bytes_out
    fields["latency_ms"] = event.latency_ms
    if context.route is not None:
        fields["detail"] = context.route
    elif context.client:  # `v2_grpc from 127.0.0.1:5000`: named like HTTP's callers
        fields["detail"] = f"{context.protocol} from {context.client}"
    else:
        fields["detail"] = context.protocol
    return fields
