"""Static stand-ins for the values a pickle builds, so the walker can follow the stack and memo."""

from __future__ import annotations

from shipyard.safepickle.allowlist import FIRST_ARG_FACTORIES


class NotStatic(Exception):
    """A value cannot be known without running code."""


class Global:
    """A module attribute named by GLOBAL, INST or STACK_GLOBAL (after Python 2 renames)."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    @property
    def full(self) -> str:
        """The "module.qualname" spelling used by the allowlist."""
        return f"{self.module}.{self.name}"

    @property
    def is_joblib_wrapper(self) -> bool:
        """Whether this names joblib's NumpyArrayWrapper (under any alias)."""
        return self.name.rsplit(".", 1)[-1] == "NumpyArrayWrapper"


class Obj:
    """An object a callable or class builds; cls is its class when statically known."""

    __slots__ = ("args", "attrs", "cls", "factory", "states")

    def __init__(self, cls: Global | None, factory: object = None, args: object = ()) -> None:
        self.cls = cls
        self.factory = factory
        self.args = args
        self.attrs: dict[str, object] = {}
        self.states: list[object] = []

    @property
    def is_wrapper(self) -> bool:
        """A live joblib NumpyArrayWrapper: BUILD on it makes joblib read raw array bytes."""
        return self.cls is not None and self.cls.is_joblib_wrapper


class Unknown:
    """A value the scan cannot model (persistent ids, extension codes, unsupported calls)."""

    __slots__ = ()


class Blob:
    """A large str/bytes payload whose content the scan does not keep."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class DictV:
    """A dict as (key, value) pairs; keys may be unhashable stand-ins."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[object, object]] | None = None) -> None:
        self.items = items or []

    def get(self, key: str) -> tuple[bool, object]:
        """(found, value) for a str key, last assignment winning as in a real dict."""
        for k, v in reversed(self.items):
            if type(k) is str and k == key:
                return True, v
        return False, None


class SetV:
    """A set or frozenset (only its members matter to the scan)."""

    __slots__ = ("frozen", "items")

    def __init__(self, items: list[object], *, frozen: bool) -> None:
        self.items = items
        self.frozen = frozen


def truthy(value: object) -> bool:
    """Python truthiness of a statically known value; unknown objects count as true."""
    if value is None or value is False or (value == 0 and type(value) in (int, float, bool)):
        return False
    if isinstance(value, str | bytes | bytearray | tuple | list):
        return len(value) > 0
    if isinstance(value, DictV):
        return bool(value.items)
    if isinstance(value, SetV):
        return bool(value.items)
    if isinstance(value, Blob):
        return value.size > 0
    return True


def mentions_wrapper(value: object, limit: int) -> tuple[bool, int]:
    """(whether joblib's wrapper class or a live wrapper is reachable, nodes visited)."""
    seen: set[int] = set()
    todo = [value]
    work = 0  # every queued item counts, duplicates included, so the cost stays bounded
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Global):
            if item.is_joblib_wrapper:
                return True, work
            continue
        if isinstance(item, Obj):
            if item.is_wrapper:
                return True, work
            children: list[object] = [item.args, *item.states]
        elif isinstance(item, tuple | list):
            children = list(item)
        elif isinstance(item, DictV):
            children = [part for pair in item.items for part in pair]
        elif isinstance(item, SetV):
            children = list(item.items)
        elif isinstance(item, Unknown):
            return True, work
        else:
            continue
        work += 1 + len(children)
        if work > limit:
            return True, work  # too large to inspect: assume the worst
        todo.extend(children)
    return False, work


def result_class(func: Global, args: object, limit: int) -> tuple[Global | None, int]:
    """The class of func(*args) as far as joblib wrappers go (None: cannot tell), nodes visited."""
    if func.full in FIRST_ARG_FACTORIES:
        first = args[0] if isinstance(args, tuple) and args else None
        return (first if isinstance(first, Global) else None), 1
    found, visited = mentions_wrapper(args, limit)
    return (None if found else func), visited  # a wrapper passed through a callable: unknown
