"""Reading suite files: YAML through a safe loader, and ``include:`` chains merged into one mapping
that remembers which file set each key (so an error names the file the user has to edit).

Only plain data comes out: what the mapping means is :mod:`harness.run.suite.load`'s business.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from harness.run.suite.checks import SuiteError, describe_value

MAX_BYTES = 1 << 20
"""Suites are small; a bigger file is the wrong file."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader that reads ``1e-4`` as a number (YAML 1.2; PyYAML's 1.1 rule makes it a string)
    and refuses duplicate keys, which plain YAML would silently resolve to the last one. libyaml's
    parser when present: it reads a 1 MB suite about 4x faster than the pure-Python one."""

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                continue  # unhashable: the base class reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _text(path: Path, shown: str) -> str:
    """The file's text, or a SuiteError saying why it cannot be read as one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SuiteError(shown, "(file)", "no such file") from None
    except IsADirectoryError:
        raise SuiteError(shown, "(file)", "is a directory, not a suite file") from None
    except OSError as e:
        raise SuiteError(shown, "(file)", f"cannot read: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise SuiteError(shown, "(file)", f"{len(data)} bytes; a suite file is under {MAX_BYTES}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SuiteError(shown, f"line {line}", f"not UTF-8 text (byte 0x{data[e.start]:02x}); "
                         "save the file as UTF-8") from None


def read_mapping(path: Path, shown: str) -> dict[str, Any]:
    """One file's mapping (no includes followed), or a SuiteError saying why there is none."""
    text = _text(path, shown)
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader: builds plain data only
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise SuiteError(shown, where, f"invalid YAML: {e.problem or e.context}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        problem = str(e)[:200] or type(e).__name__
        raise SuiteError(shown, "(file)", f"invalid YAML: {problem}") from None
    if raw is None:
        raise SuiteError(shown, "(file)", "empty file; a suite needs at least name, methods and "
                         "datasets")
    if not isinstance(raw, dict):
        raise SuiteError(shown, "(top level)",
                         f"must be a mapping of settings, got {describe_value(raw)}")
    return raw


def _merge(base: dict, over: dict) -> dict:
    """Deep-merge mappings; any other value (lists included) in ``over`` replaces the base's."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _record(raw: dict, file: str, prefix: tuple, origins: dict) -> None:
    for k, v in raw.items():
        origins[prefix + (k,)] = file
        if isinstance(v, dict):
            _record(v, file, prefix + (k,), origins)


def _included(raw: dict, path: Path, shown: str, chain: tuple[str, ...],
              seen: tuple[Path, ...]) -> tuple[Path, str, tuple[str, ...]]:
    """The file ``raw``'s ``include:`` names (relative to ``path``'s folder), its shown name and
    the include chain down to it; refuses a cycle or a missing file."""
    inc = raw["include"]
    if not isinstance(inc, str) or not inc.strip():
        raise SuiteError(shown, "include", f"must be a file path, got {describe_value(inc)}")
    target = Path(inc).expanduser()
    target = target if target.is_absolute() else path.parent / target
    tshown = os.path.normpath(target)
    names = " -> ".join(chain + (tshown,))
    if target.resolve() in seen:
        raise SuiteError(shown, "include", f"include cycle: {names}")
    if not target.is_file():
        raise SuiteError(shown, "include", f"included file {tshown} does not exist "
                         f"(include chain: {names})")
    return target, tshown, chain + (tshown,)


def read_tree(path: Path, shown: str, chain: tuple[str, ...], seen: tuple[Path, ...],
              origins: dict) -> dict:
    """Read ``path`` and the files it includes, merged (the including file wins); ``origins``
    maps each key path to its file. A suite's name and description are never inherited."""
    raw = read_mapping(path, shown)
    merged = raw
    if "include" in raw:
        target, tshown, chain = _included(raw, path, shown, chain, seen)
        del raw["include"]
        base = read_tree(target, tshown, chain, seen + (target.resolve(),), origins)
        for own in ("name", "description"):
            base.pop(own, None)
            origins.pop((own,), None)
        merged = _merge(base, raw)
    _record(raw, shown, (), origins)
    return merged


def read_suite_file(path: str | os.PathLike) -> tuple[dict, dict]:
    """The merged mapping of a suite file and its includes, and where each key came from."""
    shown = os.fspath(path)
    origins: dict = {}
    p = Path(shown)
    return read_tree(p, shown, (shown,), (p.resolve(),), origins), origins
