"""The route table compiled for matching: a segment tree, one dict look-up per segment.

A parameter is one non-empty segment without `:`. `RouteTable.find(path)` tries a literal
segment before a parameter and a `{param}:verb` before `{param}:{param}`, backtracking as
needed; the method is then chosen among the routes of the matched path (none: 405).
"""

from __future__ import annotations

from typing import NamedTuple

from shipyard.serving.routes import EVERYTHING, ROUTES, UNROUTED, Access, Route


class _Node:
    __slots__ = ("literal", "param", "routes", "split", "verbs")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.verbs: dict[str, tuple[str, _Node]] = {}
        """`{param}:verb` segments: ':verb' -> (param, node)."""
        self.split: tuple[str, str, _Node] | None = None
        """A `{param}:{param}` segment."""
        self.param: tuple[str, _Node] | None = None
        self.routes: dict[str, Route] = {}
        """Method -> route of the paths that end here (GET also answers HEAD)."""


class Found(NamedTuple):
    """The routes of a matched path and its parameters."""

    routes: dict[str, Route]
    params: dict[str, str]

    def route(self, method: str) -> Route | None:
        return self.routes.get(method)

    @property
    def allowed(self) -> str:
        return ", ".join(sorted(m for m in self.routes if m != "HEAD"))

    def access(self, *, metrics_require_auth: bool = True) -> Access | None:
        route = next(iter(self.routes.values()))  # every method of a path needs the same
        if route.metrics and not metrics_require_auth:
            return None
        return route.access(self.params)


def _param(segment: str) -> str | None:
    if len(segment) > 2 and segment[0] == "{" and segment[-1] == "}" and ":" not in segment:
        return segment[1:-1]
    return None


class RouteTable:
    """`ROUTES` compiled into a segment tree; `find` costs a dict look-up per segment."""

    def __init__(self, routes: tuple[Route, ...] = ROUTES) -> None:
        self.routes = routes
        self._root = _Node()
        for route in routes:
            self._add(route)
        self._memo: dict[str, Found | None] = {}

    def _add(self, route: Route) -> None:
        node = self._root
        for segment in route.path.split("/")[1:]:
            name = _param(segment)
            if name is not None:
                node.param = node.param or (name, _Node())
                node = node.param[1]
                continue
            head, colon, verb = segment.partition(":")
            first = _param(head) if colon else None
            if first is not None and _param(verb) is not None:
                node.split = node.split or (first, verb[1:-1], _Node())
                node = node.split[2]
            elif first is not None:
                node.verbs.setdefault(":" + verb, (first, _Node()))
                node = node.verbs[":" + verb][1]
            else:
                node = node.literal.setdefault(segment, _Node())
        assert route.method not in node.routes, f"two routes for {route.method} {route.path}"
        others = list(node.routes.values())
        assert not others or (others[0].action, others[0].target) == (
            route.action,
            route.target,
        ), f"{route.path}: every method of a path must need the same scope"
        node.routes[route.method] = route
        if route.method == "GET":
            node.routes["HEAD"] = route

    def find(self, path: str) -> Found | None:
        """The routes of `path` with its parameters; None when no route serves it."""
        memo = self._memo
        if path in memo:
            found = memo[path]
            return None if found is None else Found(found.routes, dict(found.params))
        params: dict[str, str] = {}
        node = _walk(self._root, path.split("/"), 1, params) if path.startswith("/") else None
        found = None if node is None else Found(node.routes, params)
        if len(memo) >= 4096:  # paths come from clients: keep the memo bounded
            memo.clear()
        memo[path] = found
        return None if found is None else Found(found.routes, dict(params))

    def access(self, path: str, *, metrics_require_auth: bool = True) -> Access | None:
        """What an HTTP path needs whichever method it is called with; None when open."""
        found = self.find(path)
        if found is not None:
            return found.access(metrics_require_auth=metrics_require_auth)
        return unrouted_access(path)


def unrouted_access(path: str) -> Access:
    """The access a path no route serves needs (`UNROUTED`)."""
    for prefix, action in UNROUTED:
        if path.startswith(prefix):
            name = path[len(prefix) :].split("/", 1)[0]
            if name and ":" not in name:
                return Access(action, name)
    return EVERYTHING


def _walk(node: _Node, segments: list[str], at: int, params: dict[str, str]) -> _Node | None:
    if at == len(segments):
        return node if node.routes else None
    segment = segments[at]
    child = node.literal.get(segment)
    if child is not None and (found := _walk(child, segments, at + 1, params)) is not None:
        return found
    head, colon, tail = segment.partition(":")
    if colon:
        if not head:
            return None
        verb = node.verbs.get(colon + tail)
        if verb is not None:
            params[verb[0]] = head
            if (found := _walk(verb[1], segments, at + 1, params)) is not None:
                return found
            del params[verb[0]]
        if node.split is not None:
            first, second, nxt = node.split
            params[first], params[second] = head, tail
            if (found := _walk(nxt, segments, at + 1, params)) is not None:
                return found
            del params[first], params[second]
    elif segment and node.param is not None:
        name, nxt = node.param
        params[name] = segment
        if (found := _walk(nxt, segments, at + 1, params)) is not None:
            return found
        del params[name]
    return None


TABLE = RouteTable()
"""The server's routes, compiled once."""
