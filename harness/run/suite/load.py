"""From a suite file to a :class:`~harness.run.suite.model.Suite`: which fields a suite has, which
values each takes, and the rules between them, all checked before anything runs.

A typo found after an hour of training wastes the hour, so :func:`load_suite` checks every field
(names, options, types, ranges) and raises :class:`~harness.run.suite.checks.SuiteError` with one
line naming the file, the field and the problem. A rule that a config class, a method or a model
already enforces is not written again here: the value is handed to it and its error reported at
the field (:meth:`Check.build`). Pure: no Ray, no MLflow. The schema is documented in
``suites/README.md``.
"""

from __future__ import annotations

import inspect
import os
import re
import unicodedata
from typing import Any

import torch

from harness.datasets import DATASETS
from harness.core.evaluate import EvalConfig
from harness.core.methods import METHODS, build_method, method_options
from harness.models import MODELS, build_model, model_options
from harness.models.embedding import check_time_scale
from harness.plugins import ensure_loaded, load_plugin
from harness.run.suite.checks import Check, describe_value, show_value
from harness.run.suite.model import DatasetEntry, MethodEntry, Resources, Suite
from harness.run.suite.reading import read_suite_file
from harness.core.train import Parallel, TrainConfig
from harness.run.trial import MODEL_PRESETS

MAX_SEEDS = 1000
"""Seeds per suite, as a count or as a list."""
MAX_ENTRIES = 1000
"""Methods or datasets per suite: far beyond any benchmark, and it keeps validating a 1 MB file
(every entry builds its method) fast."""
MAX_TRIALS = 10_000
"""Default grid-size cap (override with the suite's ``max_trials:``): a grid past it is almost
always a typo, and expanding it costs minutes and gigabytes before anything is printed."""
MAX_WORKERS = 1024
"""Data-parallel training workers per trial."""
MAX_EXPERIMENT = 200
"""Characters of an MLflow experiment name."""
DEFAULT_CHECKPOINTS = "~/.cache/fmbench/checkpoints"

TOP_KEYS = ("name", "description", "include", "plugins", "methods", "datasets", "seeds",
            "max_trials", "model", "training", "evaluation", "resources", "storage", "tracking")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
"""Labels name sample and trial folders: no separators, and no leading dot (``..``, hidden)."""


# -- plugins -------------------------------------------------------------------------------------

def _plugins(c: Check, raw: dict) -> tuple[str, ...]:
    """Import the modules ``plugins:`` names (module names, or .py files relative to the file
    that lists them) before any name of the grid is looked up; returns their module names."""
    items = raw.get("plugins")
    if items is None:
        return ()
    if not isinstance(items, list):
        c.fail(("plugins",), "must be a list of module names or .py files, got "
               f"{describe_value(items)}")
    base = os.path.dirname(c.origins.get(("plugins",), c.top))
    names = []
    for i, item in enumerate(items):
        spec = c.text(item, ("plugins", i))
        names.append(c.build(load_plugin, {"spec": spec, "origin": "suite", "base": base},
                             ("plugins", i)).name)
    return tuple(dict.fromkeys(names))


# -- grid entries --------------------------------------------------------------------------------

def _entry(c: Check, item: Any, path: tuple, registry, what: str) -> tuple[dict, str]:
    """A grid entry written as a bare name or as a mapping with name:; returns (mapping, name)."""
    at = path if isinstance(item, str) else path + ("name",)  # where a bad name is reported
    item = {"name": item} if isinstance(item, str) else item
    if not isinstance(item, dict):
        c.fail(path, f"must be a {what} name or a mapping with name:, got {describe_value(item)}")
    if "name" not in item:
        c.fail(at, f"missing; every {what} mapping needs name:")
    name = c.text(item["name"], at)
    c.build(registry.entry, {"name": name}, at)
    return item, name


def _options(c: Check, item: dict, reserved: tuple, valid: dict, path: tuple, owner: str) -> dict:
    """The keys of ``item`` other than ``reserved``, each a known option of the right type."""
    options = {}
    for k, v in item.items():
        if k not in reserved:
            if k not in valid:
                c.fail(path + (str(k),), f"{owner} has no option {k!r}; valid: "
                       f"{', '.join([*reserved, *valid])}")
            options[k] = c.like(v, valid[k], path + (k,))
    return options


def _method(c: Check, item: Any, path: tuple) -> MethodEntry:
    item, name = _entry(c, item, path, METHODS, "method")
    label = c.text(item.get("label", name), path + ("label",), _LABEL)
    options = _options(c, item, ("name", "label"), method_options(name), path, f"method {name!r}")
    for k, v in options.items():  # alone first, so a bad value is reported at its own field
        c.build(build_method, {"name": name, k: v}, path + (k,))
    c.build(build_method, {"name": name, **options}, path)
    return MethodEntry(name, options, label)


def _workers(c: Check, v: Any, path: tuple) -> int:
    n = c.integer(v, path)
    if not 1 <= n <= MAX_WORKERS:
        c.fail(path, f"must be in 1..{MAX_WORKERS}, got {n}")
    return n


def _dataset(c: Check, item: Any, path: tuple) -> DatasetEntry:
    item, name = _entry(c, item, path, DATASETS, "dataset")
    c.mapping(item, path, ("name", "root", "download", "workers"))
    root = item.get("root")
    root = None if root is None else c.text(root, path + ("root",))
    workers = item.get("workers")
    workers = None if workers is None else _workers(c, workers, path + ("workers",))
    return DatasetEntry(name, root, c.like(item.get("download", True), True, path + ("download",)),
                        workers)


def _grid(c: Check, raw: dict, key: str, parse, unique: str) -> tuple:
    """A non-empty list of entries whose ``unique`` attribute (label, name) tells them apart."""
    items = raw.get(key)
    if key not in raw:
        c.fail((key,), "missing; a suite needs at least one")
    if not isinstance(items, list) or not items:
        c.fail((key,), "is empty; list at least one" if items == [] else
               f"must be a non-empty list, got {describe_value(items)}")
    if len(items) > MAX_ENTRIES:
        c.fail((key,), f"{len(items)} entries; a suite lists at most {MAX_ENTRIES}")
    entries, seen = [], {}
    for i, item in enumerate(items):
        entries.append(parse(c, item, (key, i)))
        tag = getattr(entries[-1], unique)
        if tag in seen:
            hint = "; give each entry of one method a distinct label:" if unique == "label" else ""
            c.fail((key, i), f"duplicate {unique} {tag!r} (also {key}[{seen[tag]}]){hint}")
        seen[tag] = i
    return tuple(entries)


def _seeds(c: Check, raw: Any) -> tuple[int, ...]:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        n = c.integer(raw, ("seeds",))
        if not 1 <= n <= MAX_SEEDS:
            c.fail(("seeds",), f"a count of seeds must be in 1..{MAX_SEEDS}, got {n}")
        return tuple(range(n))
    if not isinstance(raw, list) or not raw:
        c.fail(("seeds",), "is empty; list at least one seed" if raw == [] else
               f"must be a list of seeds or a count, got {describe_value(raw)}")
    if len(raw) > MAX_SEEDS:
        c.fail(("seeds",), f"{len(raw)} seeds; a suite lists at most {MAX_SEEDS}")
    seeds: list[int] = []
    seen: set[int] = set()
    for i, s in enumerate(raw):
        s = c.integer(s, ("seeds", i))
        if s < 0:
            c.fail(("seeds", i), f"must be a non-negative integer, got {s}")
        if s in seen:
            c.fail(("seeds", i), f"duplicate seed {s}")
        seen.add(s)
        seeds.append(s)
    return tuple(seeds)


def _cap(c: Check, raw: dict, methods: tuple, datasets: tuple, seeds: tuple) -> None:
    """Refuse a grid above ``max_trials`` (default :data:`MAX_TRIALS`), counted, not built."""
    cap = MAX_TRIALS
    if "max_trials" in raw:
        cap = c.integer(raw["max_trials"], ("max_trials",))
        if cap < 1:
            c.fail(("max_trials",), f"must be >= 1, got {cap}")
    size = len(methods) * len(datasets) * len(seeds)
    if size > cap:
        where = ("max_trials",) if "max_trials" in raw else ("methods x datasets x seeds",)
        c.fail(where, f"{size} trials ({len(methods)} methods x {len(datasets)} datasets x "
               f"{len(seeds)} seeds) is above the cap of {cap}; set max_trials: {size} in the "
               "suite if you mean it")


# -- shared settings -----------------------------------------------------------------------------

def _model(c: Check, raw: dict, kind: str) -> tuple[str, dict[str, Any]]:
    """One data kind's model: the first registered model of the kind, its preset, then the
    suite's options."""
    path = ("model", kind)
    entry = raw.get(kind) or {}
    if not isinstance(entry, dict):
        c.fail(path, f"must be a mapping of name: and model options, got {describe_value(entry)}")
    default = next(e.name for e in MODELS.entries() if e.meta.get("kind") == kind)
    name = c.text(entry.get("name", default), path + ("name",))
    model = c.build(MODELS.entry, {"name": name}, path + ("name",))
    if model.meta.get("kind") != kind:
        c.fail(path + ("name",), f"model {name!r} is for {model.meta.get('kind')} data, "
               f"not {kind}")
    valid = {k: v for k, v in model_options(name).items() if v is not inspect.Parameter.empty}
    options = _options(c, entry, ("name",), valid, path, f"model {name!r}")
    if "time_scale" in options:  # checked here: datasets without a declared shape build none
        c.build(check_time_scale, {"value": options["time_scale"], "model": name},
                path + ("time_scale",))
    return name, {**valid, **MODEL_PRESETS.get(name, {}), **options}


def _models(c: Check, raw: Any, datasets) -> dict[str, tuple[str, dict[str, Any]]]:
    """Model per data kind, each built on the meta device (no memory) for every dataset that
    declares its shape, so a bad model value fails here and not on a worker."""
    kinds = list(dict.fromkeys(e.meta["kind"] for e in MODELS.entries() if "kind" in e.meta))
    raw = c.mapping(raw, ("model",), kinds)
    out = {kind: _model(c, raw, kind) for kind in kinds}
    for d in datasets:
        shape = DATASETS.entry(d.name).meta.get("shape")
        if shape is not None:
            with torch.device("meta"):
                c.build(build_model, {"name": out[d.kind][0], "data_shape": tuple(shape),
                                      **out[d.kind][1]}, ("model", d.kind))
    return out


def _resources(c: Check, raw: Any, path: tuple, workers: bool = False) -> Resources:
    raw = c.mapping(raw, path, ("cpus", "gpus", "workers") if workers else ("cpus", "gpus"))
    got = {k: c.number(raw.get(k, d), path + (k,)) for k, d in (("cpus", 1), ("gpus", 0))}
    if got["cpus"] <= 0:
        c.fail(path + ("cpus",), f"must be > 0, got {show_value(got['cpus'])}")
    if got["gpus"] < 0:
        c.fail(path + ("gpus",), f"must be >= 0, got {show_value(got['gpus'])}")
    for k, x in got.items():
        if x > 1 and x != int(x):
            c.fail(path + (k,), f"above 1 must be a whole number (Ray's rule), got {x}")
    if "workers" in raw:
        got["workers"] = _workers(c, raw["workers"], path + ("workers",))
        if got["workers"] > 1 and 0 < got["gpus"] < 1:
            c.fail(path + ("gpus",), f"must be whole with {got['workers']} workers: DDP "
                                     f"(NCCL) puts one rank on each GPU, got {got['gpus']}")
    return Resources(**got)


def _experiment(c: Check, v: Any, path: tuple) -> str:
    """An MLflow experiment name; it also names folders (reports, artifacts), so it must be one
    plain path component: no separators, not ``.``/``..``, no control or invisible characters."""
    name = c.text(v, path)
    if len(name) > MAX_EXPERIMENT:
        c.fail(path, f"{len(name)} characters; at most {MAX_EXPERIMENT}")
    if name != name.strip():
        c.fail(path, f"{show_value(name)} starts or ends with whitespace")
    if "/" in name or "\\" in name:
        c.fail(path, f"{show_value(name)} must not contain / or \\ (it names folders)")
    if name in (".", ".."):
        c.fail(path, f"{name!r} is not a name (it names a folder)")
    bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf")), None)
    if bad is not None:
        c.fail(path, f"{show_value(name)} holds the control character U+{ord(bad):04X}")
    return name


# -- the whole suite -----------------------------------------------------------------------------

def _suite(c: Check, raw: dict, shown: str) -> Suite:
    """The Suite the merged mapping describes, each field checked on its own (in file order)."""
    c.mapping(raw, (), TOP_KEYS)
    if "name" not in raw:
        c.fail(("name",), "missing; every suite file names itself (names are not inherited)")
    name = c.text(raw["name"], ("name",), _NAME)
    description = raw.get("description") or ""
    if not isinstance(description, str):
        c.fail(("description",), f"must be a string, got {describe_value(description)}")
    plugins = _plugins(c, raw)
    methods = _grid(c, raw, "methods", _method, "label")
    datasets = _grid(c, raw, "datasets", _dataset, "name")
    seeds = _seeds(c, raw.get("seeds", [0]))
    _cap(c, raw, methods, datasets, seeds)
    models = _models(c, raw.get("model"), datasets)
    training = c.config(TrainConfig, raw.get("training"), ("training",))
    evaluation = c.config(EvalConfig, raw.get("evaluation"), ("evaluation",))
    res = c.mapping(raw.get("resources"), ("resources",), ("train", "eval"))
    storage = c.mapping(raw.get("storage"), ("storage",), ("checkpoints",))
    tracking = c.mapping(raw.get("tracking"), ("tracking",), ("uri", "experiment"))
    uri = tracking.get("uri")
    return Suite(
        name, description, shown, methods, datasets, seeds, models, training, evaluation,
        _resources(c, res.get("train"), ("resources", "train"), workers=True),
        _resources(c, res.get("eval"), ("resources", "eval")),
        c.text(storage.get("checkpoints", DEFAULT_CHECKPOINTS), ("storage", "checkpoints")),
        None if uri is None else c.text(uri, ("tracking", "uri")),
        _experiment(c, tracking.get("experiment", name), ("tracking", "experiment")), raw,
        plugins)


def _check_batch_splits(c: Check, suite: Suite) -> None:
    """The training batch is the global batch: it splits evenly over each trial's workers."""
    for i, d in enumerate(suite.datasets):
        n = suite.train_resources.workers if d.workers is None else d.workers
        where = ("datasets", i, "workers") if d.workers is not None else \
            ("resources", "train", "workers")
        c.build(Parallel(0, n).block, {"batch_size": suite.training.batch_size}, where)


def _check_methods_differ(c: Check, suite: Suite) -> None:
    """Labels differ but science equal: the runs would be one run. A key hashes the method and
    its options with everything else shared, so one dataset and one seed tell the methods apart."""
    first: dict[str, int] = {}
    for i, t in enumerate(suite.iter_trials(datasets=suite.datasets[:1], seeds=suite.seeds[:1])):
        if first.setdefault(t.key, i) != i:
            c.fail(("methods", i), f"same method and options as methods[{first[t.key]}]; "
                   "the trials would be identical")


def load_suite(path: str | os.PathLike) -> Suite:
    """Read, merge (``include:``) and validate a suite file; raises :class:`SuiteError` (or
    :class:`~harness.plugins.PluginError` for a broken installed plugin)."""
    ensure_loaded()
    raw, origins = read_suite_file(path)
    c = Check(os.fspath(path), origins)
    suite = _suite(c, raw, os.fspath(path))
    _check_batch_splits(c, suite)
    _check_methods_differ(c, suite)
    return suite
