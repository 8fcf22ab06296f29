"""One (method, dataset, seed) trial: resolve its configuration, train, evaluate, write results.

The resolved configuration (every default filled in, including data-dependent ones) is written to
``config.json`` before any work starts, so a result can always be traced to exactly what produced it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from harness import SCIENCE_VERSION, __version__
from harness.datasets import DATASETS, Dataset, load_dataset
from harness.core.evaluate import EvalConfig, EvalResult, evaluate
from harness.core.methods import METHODS, build_method, default_method_options
from harness.models import MODELS, build_model, default_model_for, model_options as model_defaults
from harness.core import storage
from harness.core.checkpoint import load_checkpoint, write_text_atomic
from harness.errors import CheckpointError
from harness.plugins import import_plugins
from harness.core.methods import Method
from harness.core.train import (CHECKPOINT_NAME, SINGLE, EvalHook, Parallel, Progress, TrainConfig,
                           TrainResult, train)

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train on a laptop CPU; suites set paper-scale models explicitly.
    "mlp": {"hidden": 256, "depth": 3},
    "unet": {"channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1,
             "attention_resolutions": ()},
}


@dataclass(frozen=True)
class TrialSpec:
    """What to run. Options left empty take the registered defaults when resolved. ``plugins``:
    the plugins (module -> version, :func:`harness.plugins.plugins_of`) that provide the method,
    dataset, model or an evaluation solver; imported first wherever the trial runs, and part of
    its key."""

    method: str
    dataset: str
    seed: int = 0
    method_options: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    download: bool = True
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    plugins: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method}-{self.dataset}-s{self.seed}"


@dataclass(frozen=True)
class TrialResult:
    """A trial's final record, the one both ways of finishing a trial produce (``fmbench trial``'s
    :func:`run_trial` and a suite's eval task, :mod:`harness.run.tasks`): resolved config, metrics,
    curves, warnings, and where this process trained the trial, its training and folder."""

    config: dict[str, Any]
    metrics: dict[str, float]
    evaluation: EvalResult
    training: TrainResult | None = None
    out_dir: Path | None = None

    @classmethod
    def record(cls, prep: PreparedTrial, evaluation: EvalResult, eval_seconds: float, *,
               training: TrainResult | None = None, out_dir: Path | None = None) -> TrialResult:
        """The record of an evaluation that took ``eval_seconds``, with the training's time and
        last loss among the metrics when ``training`` is given."""
        metrics = dict(evaluation.metrics)
        if training is not None:
            metrics["train_time"] = training.seconds
        metrics["eval_time"] = eval_seconds
        if training is not None and training.losses:
            metrics["train_loss"] = training.losses[-1][1]
        return cls(prep.config, metrics, evaluation, training, out_dir)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"method": self.config["method"],
                                  "dataset": self.config["dataset"], "seed": self.config["seed"]}
        if self.training is not None:
            record["steps"] = self.training.step
        record.update(metrics=self.metrics,
                      error_vs_nfe=[asdict(p) for p in self.evaluation.error_curve],
                      quality_vs_nfe=[asdict(p) for p in self.evaluation.quality_curve],
                      warnings=self.evaluation.warnings)
        if self.training is not None:
            record["losses"] = self.training.losses
        record["config"] = self.config
        if self.out_dir is not None:
            record["out_dir"] = str(self.out_dir)
        return record

    def dumps(self) -> str:
        """The record as the file that keeps it (``result.json``, a suite run's ``metrics.json``)."""
        return json.dumps(self.to_json(), indent=2, default=str)


def resolve(spec: TrialSpec, dataset: Dataset) -> tuple[TrialSpec, dict[str, Any]]:
    """Fill in defaults: the model for the data shape, data-dependent method options, and seeds.

    Training and evaluation seeds follow the trial seed, so a trial is reproducible from it.
    """
    METHODS.entry(spec.method)
    model = spec.model or default_model_for(dataset.shape)
    MODELS.entry(model)
    method_options = {**default_method_options(spec.method, dataset, given=spec.method_options),
                      **spec.method_options}
    # Every option recorded, defaults included (time_scale, ...), as suites resolve them.
    model_options = {**model_defaults(model), **MODEL_PRESETS.get(model, {}),
                     **spec.model_options}
    resolved = replace(spec, model=model, method_options=method_options, model_options=model_options,
                       train=replace(spec.train, seed=spec.seed), eval=replace(spec.eval, seed=spec.seed))
    method = build_method(resolved.method, **method_options)
    config = {
        "method": resolved.method, "dataset": resolved.dataset, "seed": resolved.seed,
        "method_options": method_options, "method_constants": method.describe(),
        "model": model, "model_options": model_options,
        "data": {"shape": list(dataset.shape), "levels": dataset.levels,
                 "train_size": len(dataset.train), "test_size": len(dataset.test),
                 "root": resolved.data_root},
        "train": asdict(resolved.train), "eval": asdict(resolved.eval),
        "harness_version": __version__, "science_version": SCIENCE_VERSION,
    }
    if spec.plugins:  # only when used: a built-in trial's config (and params) stay as they were
        config["plugins"] = dict(spec.plugins)
    return resolved, config


@dataclass(frozen=True, eq=False)
class PreparedTrial:
    """A trial with its data loaded and every default resolved: what train and eval tasks share."""

    spec: TrialSpec
    config: dict[str, Any]
    dataset: Dataset
    method: Method

    def new_network(self) -> torch.nn.Module:
        """The untrained network, initialised from the trial seed."""
        torch.manual_seed(self.spec.seed)
        return build_model(self.spec.model, self.dataset.shape, **self.spec.model_options)


def prepare(spec: TrialSpec) -> PreparedTrial:
    """Import the trial's plugins (a Ray worker has not yet), validate names, load the data and
    resolve defaults (cheap next to training)."""
    import_plugins(spec.plugins)
    METHODS.entry(spec.method)
    DATASETS.entry(spec.dataset)
    dataset = load_dataset(spec.dataset, seed=spec.seed, root=spec.data_root, download=spec.download)
    spec, config = resolve(spec, dataset)
    return PreparedTrial(spec, config, dataset, build_method(spec.method, **spec.method_options))


def train_trial(prep: PreparedTrial, out_dir: str | Path, *, device: torch.device | str = "cpu",
                progress: Progress | None = None, on_eval: EvalHook | None = None,
                parallel: Parallel = SINGLE) -> TrainResult:
    """Write the resolved config, then train (resuming from ``out_dir``'s checkpoint if any).
    ``parallel``: this process's rank of a data-parallel run (rank 0 writes the files)."""
    out = storage.folder(out_dir)
    config = storage.join(out, "config.json")
    trained = storage.exists(storage.join(out, CHECKPOINT_NAME))
    if trained and storage.exists(config):
        _check_same_network(out, json.loads(storage.read_bytes(config)), prep.config)
    if parallel.main and (not trained or not storage.exists(config)):
        # A resumed run keeps the config it started with: a mismatched rerun fails on the
        # checkpoint without overwriting what describes the finished work.
        extra = {"train_workers": parallel.world_size} if parallel.world_size > 1 else {}
        write_text_atomic(config, json.dumps({**prep.config, "device": str(device), **extra},
                                             indent=2, default=str))
    return train(prep.method, prep.dataset, prep.new_network(), prep.spec.train, device=device,
                 checkpoint_dir=out, progress=progress, on_eval=on_eval, parallel=parallel)


def _check_same_network(out: Path | str, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse a checkpoint whose network means something else: same weight shapes but another
    science version or model option (e.g. a time_scale-1000 checkpoint from science version 2)
    would load silently and give wrong numbers."""
    fields = ("science_version", "model", "model_options")
    was, now = ({k: c.get(k) for k in fields} for c in (old, new))
    if json.dumps(was, sort_keys=True, default=str) != json.dumps(now, sort_keys=True, default=str):
        raise CheckpointError(f"checkpoint {storage.join(out, CHECKPOINT_NAME)} was written for another network "
                              f"(science_version {was['science_version']}, model_options "
                              f"{was['model_options']}); remove {out} or choose another --out")


def load_trained(prep: PreparedTrial, out_dir: str | Path,
                 device: torch.device | str = "cpu") -> torch.nn.Module:
    """The EMA network of a finished training run, read from its checkpoint (for eval tasks)."""
    path = storage.join(out_dir, CHECKPOINT_NAME)
    state = load_checkpoint(path, map_location=device)
    if int(state.get("step", -1)) < prep.spec.train.steps:
        raise CheckpointError(f"checkpoint {path} is at step {state.get('step')}, "
                              f"training needs {prep.spec.train.steps}")
    net = prep.new_network()
    try:
        net.load_state_dict(state["ema"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match this model ({exc})"[:300]) from None
    return net.to(device).eval()


def run_trial(spec: TrialSpec, out_dir: str | Path, *, device: torch.device | str = "cpu",
              progress: Progress | None = None,
              announce: Callable[[str], None] | None = None) -> TrialResult:
    """Train and evaluate one trial in ``out_dir``; resumes training from its checkpoint.
    ``announce`` receives one line per phase (for progress displays)."""
    say = announce or (lambda msg: None)
    prep = prepare(spec)
    trained = train_trial(prep, out_dir, device=device, progress=progress)
    say(f"{prep.spec.name}: trained {trained.step} steps in {trained.seconds:.1f} s; evaluating "
        f"(dopri5 NFE and samples, NLL, error vs NFE)")
    started = time.perf_counter()
    evaluation = evaluate(prep.method, trained.ema, prep.dataset, prep.spec.eval, device)
    out = Path(out_dir)
    result = TrialResult.record(prep, evaluation, time.perf_counter() - started, training=trained,
                                out_dir=out)
    write_text_atomic(out / "result.json", result.dumps())
    return result
