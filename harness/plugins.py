"""Plugins: methods, datasets, models, metrics and solvers registered from outside fmbench.

A plugin is a Python module that registers components into the registries when it is imported
(``METHODS.register(...)`` and friends). fmbench imports plugins from three places, in this order:

1. the ``fmbench_plugins`` entry-point group of installed distributions: each value names a
   module (``cosine = "my_pkg.cosine"``), imported once per process by :func:`ensure_loaded`,
   lazily, before the first registry lookup a user triggers (CLI, ``load_suite``, Ray tasks);
2. a suite's ``plugins:`` list and ``fmbench trial --plugin``: module names, or paths to ``.py``
   files (relative to the suite file's folder, or to the working directory on the command line);
3. on a Ray worker, the plugins a trial was keyed with (:func:`import_plugins`), which the driver
   ships with each task (:func:`plugin_files`, :func:`harness.run.ray_session.ship_modules`).

Each registration records its source (the plugin's module name; fmbench's own are
``harness``): a clash names both sources, and a trial's key carries the version of every plugin
that provided its method, dataset or model (:func:`plugins_of`), so editing a plugin reruns the
trials that use it and no others. docs/design.md §6.5.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.errors import HarnessError
from harness.registry import BUILTIN, REGISTRIES, Entry, RegistrationError, registering_as

ENTRY_POINT_GROUP = "fmbench_plugins"
"""The one entry-point group fmbench reads: its values are modules, which register on import
(one group, not one per registry: a module may register a method and the dataset it needs).
An underscore, not a dot: ``fmbench.`` starts the MLflow tags of :mod:`harness.run.record`."""
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_BUILTIN_MODULES = ("harness.core.methods", "harness.core.metrics", "harness.core.solvers",
                    "harness.datasets", "harness.models")
"""The modules that fill the registries with fmbench's own components: imported before any
plugin, so a clash is always reported against the built-in."""


class PluginError(HarnessError):
    """A plugin that cannot be used: it does not import, registers a clashing name or the wrong
    kind of object, or differs on a worker from the copy the trial was keyed with."""


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: ``name`` is what a worker imports, ``path`` what is shipped to it (the
    module's file, or the folder of its top-level package), ``version`` what trial keys record:
    ``<distribution>==<version> sha256:<digest>`` for an installed one, else ``sha256:<digest>``
    (12 hex digits of the source files' hash)."""

    name: str
    origin: str
    path: str
    version: str


_LOADED: dict[str, Plugin] = {}
_STATE = {"entry_points": False}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def ensure_loaded() -> None:
    """fmbench's own components, then every :data:`ENTRY_POINT_GROUP` entry point (once per
    process)."""
    for name in _BUILTIN_MODULES:
        importlib.import_module(name)
    if _STATE["entry_points"]:
        return
    _STATE["entry_points"] = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        origin = f"entry point {ep.name!r}" + (f" of {dist.name} {dist.version}" if dist else "")
        if ":" in ep.value or not _MODULE.fullmatch(ep.value.strip()):
            _STATE["entry_points"] = False
            raise PluginError(f"{origin}: {ep.value!r} must name a module (fmbench imports it "
                              "and it registers on import), not an object")
        try:
            _load(ep.value.strip(), origin)
        except PluginError:
            _STATE["entry_points"] = False  # a fixed installation is read again next time
            raise


def load_plugins(specs: Iterable[str], origin: str, base: str | Path | None = None
                 ) -> list[Plugin]:
    """Load each of ``specs`` (after :func:`ensure_loaded`): a module name, or a path to a
    ``.py`` file, relative to ``base`` (default: the working directory)."""
    ensure_loaded()
    return [load_plugin(spec, origin, base) for spec in specs]


def load_plugin(spec: str, origin: str, base: str | Path | None = None) -> Plugin:
    """One plugin by module name or ``.py`` path; raises :class:`PluginError` in one line."""
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"a plugin must be a module name or a .py file, got {spec!r}")
    spec = spec.strip()
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec).expanduser()
        return _load_file(path if path.is_absolute() else Path(base or ".") / path, spec, origin)
    if not _MODULE.fullmatch(spec):
        raise PluginError(f"plugin {spec!r}: not a module name (dotted identifiers) nor a .py "
                          "file")
    return _load(spec, origin)


def _load_file(path: Path, shown: str, origin: str) -> Plugin:
    """A plugin from a ``.py`` file, imported under its stem (the name workers import it by)."""
    name = path.stem
    if path.suffix != ".py" or not path.is_file():
        raise PluginError(f"plugin {shown!r}: no such .py file ({path})")
    if not name.isidentifier():
        raise PluginError(f"plugin {shown!r}: {name!r} is not a module name; rename the file")
    known = sys.modules.get(name)
    if known is not None and Path(getattr(known, "__file__", "") or "").resolve() != \
            path.resolve():
        raise PluginError(f"plugin {shown!r}: a module named {name!r} is already imported "
                          f"from {getattr(known, '__file__', None) or 'elsewhere'}; rename the file")

    def import_file(_: str):
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module

    return _load(name, origin, import_file if known is None else importlib.import_module)


def _load(name: str, origin: str, importer=importlib.import_module) -> Plugin:
    """Import ``name`` with its registrations attributed to it; roll them back if the import
    fails or registers something of the wrong kind."""
    if name in _LOADED:
        return _LOADED[name]
    if name == BUILTIN or name.startswith(BUILTIN + "."):
        raise PluginError(f"plugin {name!r}: fmbench's own modules are not plugins")
    for builtin in _BUILTIN_MODULES:
        importlib.import_module(builtin)
    try:
        with registering_as(name):
            module = importer(name)
        _check_kinds(name)
    except (RegistrationError, PluginError) as exc:
        _forget(name)
        raise PluginError(f"plugin {name!r} ({origin}): {exc}") from None
    except ModuleNotFoundError as exc:
        _forget(name)
        missing = exc.name or name
        what = "no such module" if name == missing or name.startswith(missing + ".") else \
            f"it imports {missing!r}, which is not installed"
        raise PluginError(f"plugin {name!r} ({origin}): {what}") from None
    except Exception as exc:
        _forget(name)
        raise PluginError(f"plugin {name!r} ({origin}) failed to import: {_first_line(exc)}"
                          ) from None
    path = _ship_path(name, module)
    plugin = Plugin(name, origin, str(path), _version(name, path))
    _LOADED[name] = plugin
    return plugin


def _forget(name: str) -> None:
    """Undo a plugin: its registrations, its record and its modules (so a retry imports anew)."""
    for registry in REGISTRIES:
        registry.drop_source(name)
    _LOADED.pop(name, None)
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def unload(name: str) -> None:
    """Forget a loaded plugin entirely (tests; a long-lived process reloading one)."""
    _forget(name)


def _check_kinds(name: str) -> None:
    """Each component ``name`` registered is of its registry's kind (the cheap checks; the
    mathematical ones are ``fmbench check``'s)."""
    for registry in REGISTRIES:
        for entry in registry.entries():
            if entry.source == name:
                problem = _kind_problem(registry.kind, entry)
                if problem:
                    raise PluginError(f"{registry.kind} {entry.name!r} {problem}")


def _kind_problem(kind: str, entry: Entry) -> str | None:
    """Why ``entry`` is not a usable ``kind`` (None when it is)."""
    import torch

    from harness.core.methods import Method
    from harness.core.metrics import MetricSpec
    from harness.core.solvers import SolverSpec

    obj, data_kinds = entry.obj, ("vector", "image")
    if kind == "method":
        if not callable(obj):
            return f"must be a factory returning a Method, got {type(obj).__name__}"
        try:
            built = obj()
        except Exception as exc:
            return f"does not build with its default options: {_first_line(exc)}"
        if not isinstance(built, Method):
            return f"factory returned {type(built).__name__}, not a Method"
    elif kind == "dataset":
        if not callable(obj):
            return f"must be a loader function, got {type(obj).__name__}"
        if entry.meta.get("kind") not in data_kinds:
            return f"needs kind= one of {', '.join(data_kinds)}, got {entry.meta.get('kind')!r}"
    elif kind == "model":
        if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
            return f"must be an nn.Module class, got {obj!r}"[:200]
        if entry.meta.get("kind") not in data_kinds:
            return f"needs kind= one of {', '.join(data_kinds)}, got {entry.meta.get('kind')!r}"
    elif kind == "metric" and not isinstance(obj, MetricSpec):
        return f"must be a MetricSpec, got {type(obj).__name__}"
    elif kind == "solver" and not isinstance(obj, SolverSpec):
        return f"must be a SolverSpec, got {type(obj).__name__}"
    return None


def _ship_path(name: str, module: Any) -> Path:
    """What a worker needs to import ``name``: the folder of its top-level package, or the file
    of a top-level module."""
    top = sys.modules.get(name.split(".")[0], module)
    paths = list(getattr(top, "__path__", None) or [])
    if len(paths) == 1:
        return Path(paths[0]).resolve()
    file = getattr(top, "__file__", None)
    if not paths and file:
        return Path(file).resolve()
    raise PluginError(f"plugin {name!r}: cannot tell which files to ship to workers "
                      f"(a namespace package over {len(paths)} folders, or no file)")


def source_digest(path: Path) -> str:
    """12 hex digits of sha256 over the ``.py`` files at ``path`` (a file, or a folder's tree:
    relative names and bytes, in sorted order)."""
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(path if path.is_dir() else path.parent).as_posix().encode())
        digest.update(b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _distribution(name: str) -> metadata.Distribution | None:
    """The installed distribution that provides ``name``'s top-level package, if any."""
    top = name.split(".")[0]
    for dist_name in metadata.packages_distributions().get(top, []):
        try:
            return metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _version(name: str, path: Path) -> str:
    digest = f"sha256:{source_digest(path)}"
    dist = _distribution(name)
    return f"{dist.metadata['Name']}=={dist.version} {digest}" if dist else digest


def plugins_of(*entries: Entry) -> dict[str, str]:
    """The plugins (name -> version) behind ``entries``: what a trial using them is keyed with
    and imports on a worker. Empty for built-ins only, so their keys stay as they were."""
    out: dict[str, str] = {}
    for entry in entries:
        if entry.source == BUILTIN:
            continue
        if entry.source == "__main__":
            raise PluginError(f"{entry.name!r} is registered by a script (__main__), which "
                              "workers cannot import; move it into a module and list that "
                              "under plugins:")
        plugin = _LOADED.get(entry.source) or _load(entry.source, "imported directly")
        out[plugin.name] = plugin.version
    return dict(sorted(out.items()))


def loaded(name: str) -> Plugin | None:
    """The loaded plugin of that module name (None if none)."""
    return _LOADED.get(name)


def describe_source(source: str) -> str:
    """An entry's source for listings: ``harness``, or the plugin with its version."""
    plugin = _LOADED.get(source)
    return source if plugin is None else f"{source} ({plugin.version})"


def _digest_of(version: str) -> str:
    return version.split()[-1]


def import_plugins(versions: Mapping[str, str]) -> None:
    """On a worker (or any process): import the plugins a trial was keyed with, and refuse a
    copy whose source differs from the one the key records (an older install on the node
    would shadow what the driver shipped)."""
    ensure_loaded()
    for name, version in versions.items():
        plugin = _LOADED.get(name) or _load(name, "shipped with the trial")
        if _digest_of(plugin.version) != _digest_of(version):
            raise PluginError(f"plugin {name!r} here ({plugin.path}) has source "
                              f"{_digest_of(plugin.version)}, the trial was keyed with "
                              f"{_digest_of(version)}; this node imports another copy")


def plugin_files(versions: Iterable[Mapping[str, str]]) -> list[str]:
    """What ships the plugins of ``versions`` (one mapping per trial) to workers: each plugin's
    file or package folder, once (Ray's ``py_modules`` puts them on the workers' import path);
    empty when no trial uses a plugin."""
    paths: list[str] = []
    for mapping in versions:
        for name in mapping:
            plugin = _LOADED.get(name) or _load(name, "imported directly")
            if plugin.path not in paths:
                paths.append(plugin.path)
    return paths
