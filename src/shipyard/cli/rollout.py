"""`shipyard rollout status|promote|rollback`: a running server's rollout of one model.

The model is named by its repository folder (`models/iris`) or its name (`iris`); the
server answers from its own counters (`GET /v2/models/{m}/rollout`), and promote/rollback
are admin calls (`POST /v2/models/{m}/rollout/promote|rollback`, audited).
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from pathlib import PurePath
from typing import Any

from shipyard.cli import output
from shipyard.cli.parsing import Subparsers, add_command, add_group
from shipyard.errors import ShipyardError, UsageError


class RolloutCallError(ShipyardError):
    """The server refused or could not be reached."""


def register(sub: Subparsers) -> None:
    _, actions = add_group(sub, "rollout", "see, promote or roll back a model's rollout")
    for name, handler in (
        ("status", cmd_status),
        ("promote", cmd_promote),
        ("rollback", cmd_rollback),
    ):
        p = add_command(actions, name, handler)
        p.add_argument("model", metavar="MODEL", help="model folder (models/iris) or name")
        p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
        scope = "a metadata" if name == "status" else "an admin"
        p.add_argument("--token", help=f"API token ({scope} scope) when the server uses --auth")
        p.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_status(args: argparse.Namespace) -> int:
    """phase, versions, gate, evidence and decision of a model's rollout

    examples:
      shipyard rollout status models/iris --url http://127.0.0.1:8000
      shipyard rollout status iris --token "$SHIPYARD_TOKEN" --json
    """
    return _show(args, _call(args, "GET", ""))


def cmd_promote(args: argparse.Namespace) -> int:
    """give the candidate all traffic now (an admin call, audited)

    examples:
      shipyard rollout promote models/iris --url http://127.0.0.1:8000
      shipyard rollout promote iris --token "$SHIPYARD_ADMIN_TOKEN" --json
    """
    return _show(args, _call(args, "POST", "/promote"))


def cmd_rollback(args: argparse.Namespace) -> int:
    """give stable all traffic now and unload the candidate (an admin call, audited)

    examples:
      shipyard rollout rollback models/iris --url http://127.0.0.1:8000
      shipyard rollout rollback iris --token "$SHIPYARD_ADMIN_TOKEN"
    """
    return _show(args, _call(args, "POST", "/rollback"))


def model_name(model: str) -> str:
    """`models/iris` -> `iris`; a bare name stays as it is."""
    name = PurePath(model.rstrip("/")).name
    if not name:
        raise UsageError(f"{model!r} names no model")
    return name


def _call(args: argparse.Namespace, method: str, suffix: str) -> dict[str, Any]:
    url = f"{args.url.rstrip('/')}/v2/models/{model_name(args.model)}/rollout{suffix}"
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            doc: dict[str, Any] = json.loads(response.read())
            return doc
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", "")
        except ValueError:
            reason = ""
        hint = " (pass --token)" if exc.code in (401, 403) and not args.token else ""
        raise RolloutCallError(f"{url}: HTTP {exc.code}: {reason}{hint}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise RolloutCallError(f"{url}: cannot connect ({exc}); is the server up?") from exc


def _show(args: argparse.Namespace, status: dict[str, Any]) -> int:
    if args.json:
        output.print_json(status)
        return 0
    output.write(
        f"{status['model']}: {status['phase']} ({status['mode']} at {status['percent']:g}%), "
        f"stable {status.get('stable_version') or '-'}, "
        f"candidate {status['candidate_version']}, "
        f"answering {status.get('serving_version') or '-'}"
    )
    evidence = status.get("evidence") or {}
    table = output.table("version", "requests", "failures", "error rate", "p99 ms")
    for role in ("stable", "candidate"):
        side = evidence.get(role) or {}
        table.add_row(
            role,
            str(side.get("requests", 0)),
            str(side.get("failures", 0)),
            _pct(side.get("error_rate")),
            _num(side.get("p99_ms")),
        )
    output.show(table)
    output.write(
        f"compared {evidence.get('compared_requests', 0)} request(s), "
        f"{evidence.get('compared_rows', 0)} row(s): agreement "
        f"{_pct(evidence.get('agreement'))}, max abs diff {_num(evidence.get('max_abs_diff'))}, "
        f"p99 ratio {_num(evidence.get('p99_ratio'))}"
    )
    decision = status.get("decision")
    if decision:
        output.write(
            f"decision: {decision['action']} ({decision['trigger']}) at {decision['at']}: "
            f"{decision['reason']}"
        )
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
