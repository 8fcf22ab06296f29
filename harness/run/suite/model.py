"""What a validated suite is: a grid of methods x datasets x seeds, its shared settings, and the
trials it expands to, each identified by the hash of its science (:func:`trial_key`).

Built by :func:`harness.run.suite.load.load_suite`; read by the scheduler, ``fmbench plan`` and the
report (docs/design.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator

from harness import SCIENCE_VERSION
from harness.datasets import DATASETS
from harness.core.evaluate import EvalConfig
from harness.core.methods import METHODS
from harness.core.solvers import SOLVERS
from harness.models import MODELS
from harness.plugins import plugins_of
from harness.core.train import TrainConfig
from harness.run.trial import TrialSpec

NOT_SCIENCE = {"train": ("checkpoint_every", "log_every", "eval_every", *TrainConfig.SPEED_ONLY),
               "eval": ("shard_size",)}
"""Settings left out of the trial key: how often a run checkpoints, logs or evaluates, how an
evaluation is split into shard tasks (bitwise the same numbers on CPU), and speed-only training
settings (the same numbers up to float rounding), so changing them never reruns finished trials.
Evaluation ``batch_size`` stays in: dopri5 controls its step size with one error norm over the
whole batch, so the batching changes the NFE (and samples) an evaluation reports."""


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

    @property
    def kind(self) -> str:
        """The kind of data the dataset registers ("vector", "image"): it picks the model."""
        return DATASETS.entry(self.name).meta["kind"]


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
    plugins: tuple[str, ...] = ()
    """The modules the suite's ``plugins:`` loaded (entry-point plugins are not listed)."""

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
        solvers = [SOLVERS.entry(s) for s in self.evaluation.solvers]  # their numbers, too
        for m in self.methods if methods is None else methods:
            for d in self.datasets if datasets is None else datasets:
                model, options = self.models[d.kind]
                train = self.train_resources if d.workers is None else \
                    replace(self.train_resources, workers=d.workers)
                plugins = plugins_of(METHODS.entry(m.name), DATASETS.entry(d.name),
                                     MODELS.entry(model), *solvers)
                for seed in self.seeds if seeds is None else seeds:
                    spec = TrialSpec(
                        method=m.name, dataset=d.name, seed=seed, method_options=dict(m.options),
                        data_root=d.root, download=d.download, model=model,
                        model_options=dict(options), train=replace(self.training, seed=seed),
                        eval=replace(self.evaluation, seed=seed), plugins=dict(plugins))
                    yield Trial(trial_key(spec), self.name, m, d, seed, spec, train,
                                self.eval_resources)


def science_config(spec: TrialSpec) -> dict[str, Any]:
    """Everything that can change a trial's numbers, and nothing else (hashed by trial_key).

    Method options are the ones the suite spells out: omitted ones take defaults at trial time, some
    of them data-dependent (score-matching-ve's sigma_max), so filling them in here could give two
    different trials one key. Model options are fully resolved (defaults carry no data dependence).
    The versions of the plugins the trial uses enter only when there are some, so built-in trials
    keep their keys.
    """
    extra = {"plugins": dict(spec.plugins)} if spec.plugins else {}
    return {
        "science_version": SCIENCE_VERSION, "method": spec.method,
        "method_options": dict(spec.method_options), "dataset": spec.dataset, "seed": spec.seed,
        "model": spec.model, "model_options": dict(spec.model_options),
        "train": {k: v for k, v in asdict(spec.train).items() if k not in NOT_SCIENCE["train"]},
        "eval": {k: v for k, v in asdict(spec.eval).items() if k not in NOT_SCIENCE["eval"]},
        **extra,
    }


def trial_key(spec: TrialSpec) -> str:
    """16 hex digits of sha256 over the canonical JSON of :func:`science_config`."""
    blob = json.dumps(science_config(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
