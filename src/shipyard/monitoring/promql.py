"""The metric names a PromQL expression reads, found with a small tokenizer (no parser)."""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<brace>[{}])
  | (?P<paren>[()])
  | (?P<duration>[0-9]+(?:ms|[smhdwy])(?![A-Za-z0-9_]))
  | (?P<ident>[A-Za-z_:$][A-Za-z0-9_:]*)
  | (?P<number>[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)
  | (?P<other>\S)
    """,
    re.VERBOSE,
)
KEYWORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
        "and", "or", "unless", "inf", "nan",
    }
)  # fmt: skip
AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def metric_names(expr: str) -> set[str]:
    """Names of the series `expr` selects: identifiers outside label matchers, grouping
    lists and strings that are not followed by `(` (a function or aggregation)."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    names: set[str] = set()
    depth_braces = 0
    skip_group = False
    paren_depth, group_depth = 0, -1
    for index, (kind, text) in enumerate(tokens):
        if kind == "brace":
            depth_braces += 1 if text == "{" else -1
            continue
        if kind == "paren":
            if text == "(":
                paren_depth += 1
                if skip_group:
                    group_depth, skip_group = paren_depth, False
            else:
                if paren_depth == group_depth:
                    group_depth = -1
                paren_depth -= 1
            continue
        if kind != "ident" or depth_braces or group_depth != -1:
            continue
        if text.lower() in GROUPING:
            skip_group = True
            continue
        if text.lower() in KEYWORDS or text.startswith("$"):
            continue
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if following == "(" or (text in AGGREGATIONS and following.lower() in GROUPING):
            continue  # a function, or an aggregation before its argument or `by (…)`
        names.add(text)
    return names


HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
COUNTER_SUFFIXES = ("_total",)


def series_family(name: str, families: dict[str, str]) -> str | None:
    """The metric family (as in `# TYPE name type`) a series name belongs to, given
    {family: type}; a suffix is stripped only where the family's type has it."""
    if name in families and families[name] in ("gauge", "untyped", "unknown"):
        return name
    for suffix, kinds in (
        *((s, ("histogram",)) for s in HISTOGRAM_SUFFIXES),
        ("_total", ("counter",)),
    ):
        base = name.removesuffix(suffix)
        if base != name and families.get(base) in kinds:
            return base
    return None
