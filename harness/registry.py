"""Small name -> component registries with metadata.

Methods, datasets, models, solvers and metrics are looked up by name; an unknown name raises
:class:`~harness.errors.UnknownNameError` listing the valid ones, so the CLI can print one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar

from harness.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its name, the object, a one-line summary and free metadata."""

    name: str
    obj: T
    summary: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """An ordered mapping of names to components of one family (``kind`` names the family)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T | None = None, *, summary: str = "", **meta: Any):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(target: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            text = summary or (getattr(target, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, target, text, dict(meta))
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

    def entries(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

