"""The validation toolkit of suite files: every bad value becomes one line naming the file and the
field, so a typo is found before an hour of training is spent, not after.

Nothing here knows what a suite holds; :mod:`harness.run.suite.load` says which fields exist and which
values they take, and calls these checks (docs/design.md).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import fields
from typing import Any, NoReturn

from harness.errors import HarnessError

MAX_INT = 10**9
"""Largest integer setting accepted: beyond it a value is a typo, not an experiment."""


class SuiteError(HarnessError):
    """An invalid suite file: ``<file>: <field path>: <problem>``, always one line."""

    def __init__(self, file: str, where: str, problem: str) -> None:
        self.file, self.where, self.problem = str(file), where, " ".join(str(problem).split())
        super().__init__(f"{self.file}: {where}: {self.problem}")


def show_value(v: Any) -> str:
    """A value as the user wrote it in YAML, short enough for a one-line message."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, int) and abs(v) >= 10**20:
        return f"a {len(str(abs(v)))}-digit number"
    return repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."


def describe_value(v: Any) -> str:
    """The value and its YAML type, for "must be X, got ..." messages."""
    if isinstance(v, (dict, list, tuple)):
        return "a mapping" if isinstance(v, dict) else "a list"
    kinds = {bool: "boolean", str: "string", int: "integer", float: "number", type(None): "null"}
    return f"{show_value(v)} ({kinds.get(type(v), type(v).__name__)})"


def field_path(path: tuple) -> str:
    """``("methods", 0, "label")`` as the user reads it: ``methods[0].label``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _tidy(message: str, name: str) -> str:
    """Drop the field name a config class puts first ("training steps must be > 0" -> "must...")."""
    return re.sub(rf"^(?:training |evaluation )?{re.escape(name)} ", "", message)


class Check:
    """Validators that fail with the file that set the field (which may be an included one):
    ``origins`` maps each key path to the file it came from."""

    def __init__(self, top: str, origins: dict) -> None:
        self.top, self.origins = top, origins

    def fail(self, path: tuple, problem: str) -> NoReturn:
        for n in range(len(path), 0, -1):
            if path[:n] in self.origins:
                raise SuiteError(self.origins[path[:n]], field_path(path), problem)
        raise SuiteError(self.top, field_path(path), problem)

    def mapping(self, raw: Any, path: tuple, valid) -> dict:
        if raw is None:  # `section: null` (or empty) means the defaults
            return {}
        if not isinstance(raw, dict):
            self.fail(path, f"must be a mapping, got {describe_value(raw)}")
        for k in raw:
            if k not in valid:
                close = difflib.get_close_matches(str(k), list(valid), 1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                if isinstance(k, bool):  # YAML 1.1 reads on/off/yes/no as booleans
                    hint = "YAML reads on/off/yes/no keys as booleans (quote them); "
                self.fail(path + (str(k),), f"unknown key; {hint}valid: {', '.join(valid)}")
        return raw

    def integer(self, v: Any, path: tuple) -> int:
        big = f"must be a reasonable integer (at most {MAX_INT} in size), got {show_value(v)}"
        if isinstance(v, float) and not math.isfinite(v):
            self.fail(path, big)
        if isinstance(v, float) and v == int(v):
            v = int(v)  # 1e5 is a fine way to write 100000
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(path, f"must be an integer, got {describe_value(v)}")
        if abs(v) > MAX_INT:
            self.fail(path, big)
        return v

    def number(self, v: Any, path: tuple) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(path, f"must be a number, got {describe_value(v)}")
        if isinstance(v, int) and abs(v) > 10**300 or not math.isfinite(v):
            self.fail(path, f"must be a finite number, got {show_value(v)}")
        return float(v)

    def text(self, v: Any, path: tuple, pattern: re.Pattern | None = None) -> str:
        if not isinstance(v, str) or not v.strip():
            self.fail(path, f"must be a non-empty string, got {describe_value(v)}")
        if pattern is not None and not pattern.fullmatch(v):
            self.fail(path, f"{v!r} must match {pattern.pattern}")
        return v

    def like(self, v: Any, default: Any, path: tuple) -> Any:
        """Check ``v`` against the type of a default (ints pass for floats; lists become tuples)."""
        if isinstance(default, bool):
            if not isinstance(v, bool):
                self.fail(path, f"must be true or false, got {describe_value(v)}")
            return v
        if isinstance(default, int):
            return self.integer(v, path)
        if isinstance(default, float):
            return self.number(v, path)
        if isinstance(default, str):
            return self.text(v, path)
        if isinstance(default, (tuple, list)):
            if not isinstance(v, list):
                self.fail(path, f"must be a list, got {describe_value(v)}")
            item = default[0] if default else None
            return tuple(self.like(x, item, path + (i,)) for i, x in enumerate(v))
        if isinstance(v, (dict, list)):  # no usable default: any single value
            self.fail(path, f"must be a single value, got {describe_value(v)}")
        return v

    def build(self, make, kwargs: dict, path: tuple, name: str = ""):
        """``make(**kwargs)``, its HarnessError reported at ``path``: the code that owns a rule
        checks it, and this only says where the value came from."""
        try:
            return make(**kwargs)
        except HarnessError as e:
            self.fail(path, _tidy(str(e), name))

    def config(self, cls, raw: Any, path: tuple):
        """A config dataclass (TrainConfig, EvalConfig), each field checked alone first so errors
        name the field; a field whose rule involves others (``cls.CHECKED_WITH``) is checked
        with them."""
        defaults = cls()
        valid = [f.name for f in fields(cls) if f.name != "seed"]  # the seed comes from `seeds`
        values = {}
        raw = self.mapping(raw, path, valid)
        for k, v in raw.items():
            values[k] = self.like(v, getattr(defaults, k), path + (k,))
        context = getattr(cls, "CHECKED_WITH", {})
        for k, value in values.items():
            for i, item in enumerate(value if isinstance(value, tuple) else ()):
                self.build(cls, {k: (item,)}, path + (k, i))
            with_others = {o: values[o] for o in context.get(k, ()) if o in values}
            self.build(cls, {**with_others, k: value}, path + (k,), k)
        return self.build(cls, values, path)
