"""Small name -> component registries with metadata.

Methods, datasets, models, solvers and metrics are looked up by name; an unknown name raises
:class:`~harness.errors.UnknownNameError` listing the valid ones, so the CLI can print one line.
Every entry remembers its source: :data:`BUILTIN` for fmbench's own, else the plugin that
registered it (:mod:`harness.plugins`), so two sources of one name are refused naming both.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar

from harness.errors import HarnessError, UnknownNameError

T = TypeVar("T")

BUILTIN = "harness"
"""The source of every component fmbench itself registers."""
_SOURCE: ContextVar[str | None] = ContextVar("fmbench_registry_source", default=None)
REGISTRIES: list[Registry] = []
"""Every registry, in creation order (the plugin loader checks and rolls back all of them)."""


class RegistrationError(HarnessError):
    """A name registered twice (naming both sources), or a registration of the wrong kind."""


@contextmanager
def registering_as(source: str) -> Iterator[None]:
    """Registrations made inside this block are recorded as coming from ``source``."""
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


def _caller_source(depth: int) -> str:
    """The source of a registration made outside :func:`registering_as`: fmbench's own modules
    are :data:`BUILTIN`, any other module is named (a script, or a plugin imported by hand)."""
    module = sys._getframe(depth).f_globals.get("__name__", "?")
    return BUILTIN if module == BUILTIN or module.startswith(BUILTIN + ".") else module


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its name, the object, a one-line summary, free metadata and
    where it came from (:data:`BUILTIN` or a plugin's module name)."""

    name: str
    obj: T
    summary: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = BUILTIN


class Registry(Generic[T]):
    """An ordered mapping of names to components of one family (``kind`` names the family)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        REGISTRIES.append(self)

    def register(self, name: str, obj: T | None = None, *, summary: str = "", **meta: Any):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted. A name
        already taken raises :class:`RegistrationError` naming both sources."""
        source = _SOURCE.get() or _caller_source(2)

        def add(target: T) -> T:
            if not isinstance(name, str) or not name:
                raise RegistrationError(f"{self.kind} from {source}: a name must be a non-empty "
                                        f"string, got {name!r}")
            if name in self._entries:
                raise RegistrationError(
                    f"{self.kind} {name!r} from {source} clashes with the {self.kind} of that "
                    f"name from {self._entries[name].source}; rename one of them")
            text = summary or (getattr(target, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, target, text, dict(meta), source)
            return target

        if obj is None:
            return add
        return add(obj)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self._entries) or "(none registered)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return list(self._entries)

    def drop_source(self, source: str) -> list[str]:
        """Remove every entry ``source`` registered (a plugin that failed to load, or a test's);
        returns their names."""
        gone = [n for n, e in self._entries.items() if e.source == source]
        for n in gone:
            del self._entries[n]
        return gone

    def entries(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

