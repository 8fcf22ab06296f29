"""Suite files: a YAML grid of methods x datasets x seeds, fully validated before anything runs.

A typo found after an hour of training wastes the hour, so :func:`load_suite` checks every field
(names, options, types, ranges) and raises :class:`SuiteError` with one line naming the file, the
field and the problem. Pure: no Ray, no MLflow. The schema is documented in ``suites/README.md``.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import math
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator, NoReturn

import torch
import yaml

from harness import SCIENCE_VERSION
from harness.datasets import DATASETS
from harness.errors import HarnessError
from harness.evaluate import EvalConfig
from harness.likelihood import resolve_divergence
from harness.methods import METHODS, build_method, method_options
from harness.models import MODELS, build_model, model_options
from harness.models.embedding import check_time_scale
from harness.train import TrainConfig
from harness.trial import MODEL_PRESETS, TrialSpec

MAX_INT = 10**9
"""Largest integer setting accepted: beyond it a value is a typo, not an experiment."""
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
MAX_BYTES = 1 << 20
"""Suites are small; a bigger file is the wrong file."""
DEFAULT_CHECKPOINTS = "~/.cache/fmbench/checkpoints"
NOT_SCIENCE = {"train": ("checkpoint_every", "log_every", "eval_every", *TrainConfig.SPEED_ONLY),
               "eval": ("shard_size",)}
"""Settings left out of the trial key: how often a run checkpoints, logs or evaluates, how an
evaluation is split into shard tasks (bitwise the same numbers on CPU), and speed-only training
settings (the same numbers up to float rounding), so changing them never reruns finished trials.
Evaluation ``batch_size`` stays in: dopri5 controls its step size with one error norm over the
whole batch, so the batching changes the NFE (and samples) an evaluation reports."""

TOP_KEYS = ("name", "description", "include", "methods", "datasets", "seeds", "max_trials",
            "model", "training", "evaluation", "resources", "storage", "tracking")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
"""Labels name sample and trial folders: no separators, and no leading dot (``..``, hidden)."""
MAX_EXPERIMENT = 200


class SuiteError(HarnessError):
    """An invalid suite file: ``<file>: <field path>: <problem>``, always one line."""

    def __init__(self, file: str, where: str, problem: str) -> None:
        self.file, self.where, self.problem = str(file), where, " ".join(str(problem).split())
        super().__init__(f"{self.file}: {where}: {self.problem}")


@dataclass(frozen=True)
class MethodEntry:
    """A method of the grid; ``label`` tells apart entries of one method with different options."""
    name: str
    options: dict[str, Any]
    label: str


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset of the grid; ``root`` and ``download`` say where the data are, not what they
    are; ``workers`` (if set) overrides ``resources.train.workers`` for its trials."""
    name: str
    root: str | None = None
    download: bool = True
    workers: int | None = None


@dataclass(frozen=True)
class Resources:
    """What one task asks the scheduler for; fractional GPUs let small tasks share a device.
    ``workers`` > 1 (training only): data-parallel workers, each with ``cpus`` and ``gpus``."""
    cpus: float = 1.0
    gpus: float = 0.0
    workers: int = 1


@dataclass(frozen=True)
class Trial:
    """One cell of the grid; ``key`` identifies its science (see :func:`trial_key`)."""
    key: str
    suite: str
    method: MethodEntry
    dataset: DatasetEntry
    seed: int
    spec: TrialSpec
    train_resources: Resources
    eval_resources: Resources

    @property
    def name(self) -> str:
        return f"{self.method.label}-{self.dataset.name}-s{self.seed}"


@dataclass(frozen=True)
class Suite:
    """A validated suite. ``models`` maps a data kind to (model name, fully resolved options)."""
    name: str
    description: str
    path: str
    methods: tuple[MethodEntry, ...]
    datasets: tuple[DatasetEntry, ...]
    seeds: tuple[int, ...]
    models: dict[str, tuple[str, dict[str, Any]]]
    training: TrainConfig
    evaluation: EvalConfig
    train_resources: Resources
    eval_resources: Resources
    checkpoint_root: str
    tracking_uri: str | None
    experiment: str
    source: dict[str, Any]

    @property
    def size(self) -> int:
        """Number of trials, computed without building them."""
        return len(self.methods) * len(self.datasets) * len(self.seeds)

    def trials(self) -> list[Trial]:
        """The grid, methods outermost, then datasets, then seeds (deterministic order)."""
        return list(self.iter_trials())

    def iter_trials(self, methods: tuple[MethodEntry, ...] | None = None,
                    datasets: tuple[DatasetEntry, ...] | None = None,
                    seeds: tuple[int, ...] | None = None) -> Iterator[Trial]:
        """The trials of :meth:`trials` one at a time (``plan`` prints them as they come), or of
        a sub-grid when ``methods``, ``datasets`` or ``seeds`` are given."""
        for m in self.methods if methods is None else methods:
            for d in self.datasets if datasets is None else datasets:
                model, options = self.models[DATASETS.entry(d.name).meta["kind"]]
                for seed in self.seeds if seeds is None else seeds:
                    spec = TrialSpec(
                        method=m.name, dataset=d.name, seed=seed, method_options=dict(m.options),
                        data_root=d.root, download=d.download, model=model,
                        model_options=dict(options), train=replace(self.training, seed=seed),
                        eval=replace(self.evaluation, seed=seed))
                    train = self.train_resources if d.workers is None else \
                        replace(self.train_resources, workers=d.workers)
                    yield Trial(trial_key(spec), self.name, m, d, seed, spec, train,
                                self.eval_resources)


def science_config(spec: TrialSpec) -> dict[str, Any]:
    """Everything that can change a trial's numbers, and nothing else (hashed by trial_key).

    Method options are the ones the suite spells out: omitted ones take defaults at trial time, some
    of them data-dependent (score-matching-ve's sigma_max), so filling them in here could give two
    different trials one key. Model options are fully resolved (defaults carry no data dependence).
    """
    return {
        "science_version": SCIENCE_VERSION, "method": spec.method,
        "method_options": dict(spec.method_options), "dataset": spec.dataset, "seed": spec.seed,
        "model": spec.model, "model_options": dict(spec.model_options),
        "train": {k: v for k, v in asdict(spec.train).items() if k not in NOT_SCIENCE["train"]},
        "eval": {k: v for k, v in asdict(spec.eval).items() if k not in NOT_SCIENCE["eval"]},
    }


def trial_key(spec: TrialSpec) -> str:
    """16 hex digits of sha256 over the canonical JSON of :func:`science_config`."""
    blob = json.dumps(science_config(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- reading -------------------------------------------------------------------------------------

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


def _read(path: Path, shown: str) -> dict[str, Any]:
    """One file's mapping, or a SuiteError saying why there is none."""
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
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SuiteError(shown, f"line {line}", f"not UTF-8 text (byte 0x{data[e.start]:02x}); "
                         "save the file as UTF-8") from None
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
        raise SuiteError(shown, "(top level)", f"must be a mapping of settings, got {_desc(raw)}")
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


def _load_tree(path: Path, shown: str, chain: tuple[str, ...], seen: tuple[Path, ...],
               origins: dict) -> dict:
    """Read ``path`` and the files it includes; ``origins`` maps each key path to its file."""
    raw = _read(path, shown)
    merged = raw
    if "include" in raw:
        inc = raw.pop("include")
        if not isinstance(inc, str) or not inc.strip():
            raise SuiteError(shown, "include", f"must be a file path, got {_desc(inc)}")
        target = Path(inc).expanduser()
        target = target if target.is_absolute() else path.parent / target
        tshown = os.path.normpath(target)
        names = " -> ".join(chain + (tshown,))
        if target.resolve() in seen:
            raise SuiteError(shown, "include", f"include cycle: {names}")
        if not target.is_file():
            raise SuiteError(shown, "include", f"included file {tshown} does not exist "
                             f"(include chain: {names})")
        base = _load_tree(target, tshown, chain + (tshown,), seen + (target.resolve(),), origins)
        for own in ("name", "description"):  # a suite's identity is never inherited
            base.pop(own, None)
            origins.pop((own,), None)
        merged = _merge(base, raw)
    _record(raw, shown, (), origins)
    return merged


# -- validation ----------------------------------------------------------------------------------

def _show(v: Any) -> str:
    """A value as the user wrote it in YAML, short enough for a one-line message."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, int) and abs(v) >= 10**20:
        return f"a {len(str(abs(v)))}-digit number"
    return repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."


def _desc(v: Any) -> str:
    """The value and its YAML type, for "must be X, got ..." messages."""
    if isinstance(v, (dict, list, tuple)):
        return "a mapping" if isinstance(v, dict) else "a list"
    kinds = {bool: "boolean", str: "string", int: "integer", float: "number", type(None): "null"}
    return f"{_show(v)} ({kinds.get(type(v), type(v).__name__)})"


def _where(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _tidy(message: str, name: str) -> str:
    """Drop the field name a config class puts first ("training steps must be > 0" -> "must...")."""
    return re.sub(rf"^(?:training |evaluation )?{re.escape(name)} ", "", message)


class _Check:
    """Validators that fail with the file that set the field (which may be an included one)."""

    def __init__(self, top: str, origins: dict) -> None:
        self.top, self.origins = top, origins

    def fail(self, path: tuple, problem: str) -> NoReturn:
        for n in range(len(path), 0, -1):
            if path[:n] in self.origins:
                raise SuiteError(self.origins[path[:n]], _where(path), problem)
        raise SuiteError(self.top, _where(path), problem)

    def mapping(self, raw: Any, path: tuple, valid) -> dict:
        if raw is None:  # `section: null` (or empty) means the defaults
            return {}
        if not isinstance(raw, dict):
            self.fail(path, f"must be a mapping, got {_desc(raw)}")
        for k in raw:
            if k not in valid:
                close = difflib.get_close_matches(str(k), list(valid), 1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                if isinstance(k, bool):  # YAML 1.1 reads on/off/yes/no as booleans
                    hint = "YAML reads on/off/yes/no keys as booleans (quote them); "
                self.fail(path + (str(k),), f"unknown key; {hint}valid: {', '.join(valid)}")
        return raw

    def integer(self, v: Any, path: tuple) -> int:
        big = f"must be a reasonable integer (at most {MAX_INT} in size), got {_show(v)}"
        if isinstance(v, float) and not math.isfinite(v):
            self.fail(path, big)
        if isinstance(v, float) and v == int(v):
            v = int(v)  # 1e5 is a fine way to write 100000
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(path, f"must be an integer, got {_desc(v)}")
        if abs(v) > MAX_INT:
            self.fail(path, big)
        return v

    def number(self, v: Any, path: tuple) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(path, f"must be a number, got {_desc(v)}")
        if isinstance(v, int) and abs(v) > 10**300 or not math.isfinite(v):
            self.fail(path, f"must be a finite number, got {_show(v)}")
        return float(v)

    def text(self, v: Any, path: tuple, pattern: re.Pattern | None = None) -> str:
        if not isinstance(v, str) or not v.strip():
            self.fail(path, f"must be a non-empty string, got {_desc(v)}")
        if pattern is not None and not pattern.fullmatch(v):
            self.fail(path, f"{v!r} must match {pattern.pattern}")
        return v

    def like(self, v: Any, default: Any, path: tuple) -> Any:
        """Check ``v`` against the type of a default (ints pass for floats; lists become tuples)."""
        if isinstance(default, bool):
            if not isinstance(v, bool):
                self.fail(path, f"must be true or false, got {_desc(v)}")
            return v
        if isinstance(default, int):
            return self.integer(v, path)
        if isinstance(default, float):
            return self.number(v, path)
        if isinstance(default, str):
            return self.text(v, path)
        if isinstance(default, (tuple, list)):
            if not isinstance(v, list):
                self.fail(path, f"must be a list, got {_desc(v)}")
            item = default[0] if default else None
            return tuple(self.like(x, item, path + (i,)) for i, x in enumerate(v))
        if isinstance(v, (dict, list)):  # no usable default: any single value
            self.fail(path, f"must be a single value, got {_desc(v)}")
        return v

    def build(self, make, kwargs: dict, path: tuple, name: str = ""):
        try:
            return make(**kwargs)
        except HarnessError as e:
            self.fail(path, _tidy(str(e), name))

    def config(self, cls, raw: Any, path: tuple):
        """A TrainConfig/EvalConfig, each field checked alone first so errors name the field."""
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
            if k == "divergence":
                self.build(resolve_divergence, {"divergence": value, "dim": 1}, path + (k,))
        return self.build(cls, values, path)

    def resources(self, raw: Any, path: tuple, workers: bool = False) -> Resources:
        raw = self.mapping(raw, path, ("cpus", "gpus", "workers") if workers else ("cpus", "gpus"))
        got = {k: self.number(raw.get(k, d), path + (k,)) for k, d in (("cpus", 1), ("gpus", 0))}
        if got["cpus"] <= 0:
            self.fail(path + ("cpus",), f"must be > 0, got {_show(got['cpus'])}")
        if got["gpus"] < 0:
            self.fail(path + ("gpus",), f"must be >= 0, got {_show(got['gpus'])}")
        for k, x in got.items():
            if x > 1 and x != int(x):
                self.fail(path + (k,), f"above 1 must be a whole number (Ray's rule), got {x}")
        if "workers" in raw:
            got["workers"] = self.workers(raw["workers"], path + ("workers",))
            if got["workers"] > 1 and 0 < got["gpus"] < 1:
                self.fail(path + ("gpus",), f"must be whole with {got['workers']} workers: DDP "
                                            f"(NCCL) puts one rank on each GPU, got {got['gpus']}")
        return Resources(**got)

    def workers(self, v: Any, path: tuple) -> int:
        n = self.integer(v, path)
        if not 1 <= n <= MAX_WORKERS:
            self.fail(path, f"must be in 1..{MAX_WORKERS}, got {n}")
        return n


def _entry(c: _Check, item: Any, path: tuple, registry, what: str) -> tuple[dict, str]:
    """A grid entry written as a bare name or as a mapping with name:; returns (mapping, name)."""
    at = path if isinstance(item, str) else path + ("name",)  # where a bad name is reported
    item = {"name": item} if isinstance(item, str) else item
    if not isinstance(item, dict):
        c.fail(path, f"must be a {what} name or a mapping with name:, got {_desc(item)}")
    if "name" not in item:
        c.fail(at, f"missing; every {what} mapping needs name:")
    name = c.text(item["name"], at)
    c.build(registry.entry, {"name": name}, at)
    return item, name


def _options(c: _Check, item: dict, reserved: tuple, valid: dict, path: tuple, owner: str) -> dict:
    """The keys of ``item`` other than ``reserved``, each a known option of the right type."""
    options = {}
    for k, v in item.items():
        if k not in reserved:
            if k not in valid:
                c.fail(path + (str(k),), f"{owner} has no option {k!r}; valid: "
                       f"{', '.join([*reserved, *valid])}")
            options[k] = c.like(v, valid[k], path + (k,))
    return options


def _method(c: _Check, item: Any, path: tuple) -> MethodEntry:
    item, name = _entry(c, item, path, METHODS, "method")
    label = c.text(item.get("label", name), path + ("label",), _LABEL)
    options = _options(c, item, ("name", "label"), method_options(name), path, f"method {name!r}")
    for k, v in options.items():  # alone first, so a bad value is reported at its own field
        c.build(build_method, {"name": name, k: v}, path + (k,))
    c.build(build_method, {"name": name, **options}, path)
    return MethodEntry(name, options, label)


def _dataset(c: _Check, item: Any, path: tuple) -> DatasetEntry:
    item, name = _entry(c, item, path, DATASETS, "dataset")
    c.mapping(item, path, ("name", "root", "download", "workers"))
    root = item.get("root")
    root = None if root is None else c.text(root, path + ("root",))
    workers = item.get("workers")
    workers = None if workers is None else c.workers(workers, path + ("workers",))
    return DatasetEntry(name, root, c.like(item.get("download", True), True, path + ("download",)),
                        workers)


def _models(c: _Check, raw: Any, datasets) -> dict[str, tuple[str, dict[str, Any]]]:
    """Model per data kind: the first registered model of the kind, its preset, then the suite's."""
    kinds = list(dict.fromkeys(e.meta["kind"] for e in MODELS.entries() if "kind" in e.meta))
    raw = c.mapping(raw, ("model",), kinds)
    out = {}
    for kind in kinds:
        path = ("model", kind)
        entry = raw.get(kind) or {}
        if not isinstance(entry, dict):
            c.fail(path, f"must be a mapping of name: and model options, got {_desc(entry)}")
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
        out[kind] = (name, {**valid, **MODEL_PRESETS.get(name, {}), **options})
    for d in datasets:  # build on the meta device (no memory) where a dataset declares its shape
        shape, kind = DATASETS.entry(d.name).meta.get("shape"), DATASETS.entry(d.name).meta["kind"]
        if shape is not None:
            with torch.device("meta"):
                c.build(build_model, {"name": out[kind][0], "data_shape": tuple(shape),
                                      **out[kind][1]}, ("model", kind))
    return out


def _grid(c: _Check, raw: dict, key: str, parse, unique: str) -> tuple:
    """A non-empty list of entries whose ``unique`` attribute (label, name) tells them apart."""
    items = raw.get(key)
    if key not in raw:
        c.fail((key,), "missing; a suite needs at least one")
    if not isinstance(items, list) or not items:
        c.fail((key,), "is empty; list at least one" if items == [] else
               f"must be a non-empty list, got {_desc(items)}")
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


def _seeds(c: _Check, raw: Any) -> tuple[int, ...]:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        n = c.integer(raw, ("seeds",))
        if not 1 <= n <= MAX_SEEDS:
            c.fail(("seeds",), f"a count of seeds must be in 1..{MAX_SEEDS}, got {n}")
        return tuple(range(n))
    if not isinstance(raw, list) or not raw:
        c.fail(("seeds",), "is empty; list at least one seed" if raw == [] else
               f"must be a list of seeds or a count, got {_desc(raw)}")
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


def _experiment(c: _Check, v: Any, path: tuple) -> str:
    """An MLflow experiment name; it also names folders (reports, artifacts), so it must be one
    plain path component: no separators, not ``.``/``..``, no control or invisible characters."""
    name = c.text(v, path)
    if len(name) > MAX_EXPERIMENT:
        c.fail(path, f"{len(name)} characters; at most {MAX_EXPERIMENT}")
    if name != name.strip():
        c.fail(path, f"{_show(name)} starts or ends with whitespace")
    if "/" in name or "\\" in name:
        c.fail(path, f"{_show(name)} must not contain / or \\ (it names folders)")
    if name in (".", ".."):
        c.fail(path, f"{name!r} is not a name (it names a folder)")
    bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf")), None)
    if bad is not None:
        c.fail(path, f"{_show(name)} holds the control character U+{ord(bad):04X}")
    return name


def _cap(c: _Check, raw: dict, methods: tuple, datasets: tuple, seeds: tuple) -> None:
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


def load_suite(path: str | os.PathLike) -> Suite:
    """Read, merge (``include:``) and validate a suite file; raises :class:`SuiteError`."""
    shown = os.fspath(path)
    origins: dict = {}
    p = Path(shown)
    raw = _load_tree(p, shown, (shown,), (p.resolve(),), origins)
    c = _Check(shown, origins)
    c.mapping(raw, (), TOP_KEYS)
    if "name" not in raw:
        c.fail(("name",), "missing; every suite file names itself (names are not inherited)")
    name = c.text(raw["name"], ("name",), _NAME)
    description = raw.get("description") or ""
    if not isinstance(description, str):
        c.fail(("description",), f"must be a string, got {_desc(description)}")

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
    suite = Suite(
        name, description, shown, methods, datasets, seeds, models, training, evaluation,
        c.resources(res.get("train"), ("resources", "train"), workers=True),
        c.resources(res.get("eval"), ("resources", "eval")),
        c.text(storage.get("checkpoints", DEFAULT_CHECKPOINTS), ("storage", "checkpoints")),
        None if uri is None else c.text(uri, ("tracking", "uri")),
        _experiment(c, tracking.get("experiment", name), ("tracking", "experiment")), raw)
    first: dict[str, int] = {}
    for i, d in enumerate(suite.datasets):
        n = suite.train_resources.workers if d.workers is None else d.workers
        if suite.training.batch_size % n:
            where = ("datasets", i, "workers") if d.workers is not None else \
                ("resources", "train", "workers")
            c.fail(where, f"training batch_size {suite.training.batch_size} does not split "
                          f"evenly over {n} workers")
    # Labels differ but science equal: the runs would be one run. A key hashes the method and
    # its options with everything else shared, so one dataset and one seed tell the methods apart.
    for i, t in enumerate(suite.iter_trials(datasets=datasets[:1], seeds=seeds[:1])):
        if first.setdefault(t.key, i) != i:
            c.fail(("methods", i), f"same method and options as methods[{first[t.key]}]; "
                   "the trials would be identical")
    return suite


__all__ = ["DatasetEntry", "MethodEntry", "Resources", "Suite", "SuiteError", "Trial",
           "load_suite", "science_config", "trial_key"]
