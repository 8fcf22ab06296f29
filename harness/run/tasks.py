"""The work of a suite's Ray tasks, as plain functions: train a trial, evaluate one shard, finish a
trial's evaluation. :mod:`harness.run.scheduler` submits them and :mod:`harness.run.ddp` runs training in
each Ray Train worker; this module never imports Ray, so every task can be tested without it.

A task writes its trial's record (:mod:`harness.run.record`) straight to its MLflow run through a
picklable RunLogger and returns a small summary to the driver.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.run.identity import check_same_code
from harness.run.record import (CONFIG_FILE, RECORD_FILE, SAMPLES, TRAJECTORIES, TrialWriter,
                            code_tags, placement_tags)
from harness.run.tracking import RunLogger

LOSS_FLUSH_SECONDS = 5.0


def train_task(spec, checkpoint_dir: str, logger: RunLogger) -> dict[str, Any]:
    """Train one trial (resuming from ``checkpoint_dir``), logging losses as they come."""
    from harness.core.device import resolve_device

    return train_logged(spec, checkpoint_dir, logger, resolve_device("auto"))


def train_logged(spec, checkpoint_dir: str, logger: RunLogger, device, parallel=None):
    """Train this process's part of a trial; the main rank (the only one without DDP) logs the
    config, tags, loss curve and during-training evaluations. Returns the train task's summary on
    the main rank, None on the others."""
    from harness.core.shards import plan_shards
    from harness.core.train import SINGLE
    from harness.run.trial import prepare, train_trial

    code = check_same_code()  # before any work: a node with other code refuses, in one line
    parallel = parallel or SINGLE
    prep = prepare(spec)
    writer = TrialWriter(logger)
    losses = on_eval = None
    if parallel.main:
        writer.start(prep.config, {**placement_tags(
            _node_id(), str(device), os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            parallel.world_size, spec.train.batch_size), **code_tags(code)})
        losses = _LossUploader(writer, prep.spec.train.log_every)
        on_eval = _DuringTraining(prep, writer, device)
    result = train_trial(prep, checkpoint_dir, device=device, progress=losses and losses.add,
                         on_eval=on_eval, parallel=parallel)
    if not parallel.main:
        return None
    losses.flush(result.losses)  # the whole curve: also what the checkpoint restored
    on_eval.fill(result.during)  # likewise the during-training evaluations
    # Training time over every attempt (the checkpoint carries the earlier ones), and this one's.
    writer.log_train_time(result.earlier_seconds + result.seconds, result.seconds, result.step)
    # The evaluation's shards, planned here where the data are loaded (the driver never loads them).
    plan = plan_shards(prep.spec.eval, prep.dataset) if prep.spec.eval.shard_size else None
    return {"step": result.step, "seconds": result.seconds, "resumed_from": result.resumed_from,
            "device": str(device), "shards": plan}


class _DuringTraining:
    """The evaluation hook of a training run: each eval_every step but the last (the eval task's)
    is evaluated, kept in the checkpoint and logged once across attempts; :meth:`fill` logs what
    the checkpoint holds and the run lacks (a run that resumed a checkpoint written under another
    run or tracking store)."""

    def __init__(self, prep, writer: TrialWriter, device) -> None:
        self.prep, self.writer, self.device = prep, writer, device
        self.logged = writer.evaluated_steps()  # by an earlier attempt of this run

    def __call__(self, step: int, ema) -> dict[str, float] | None:
        from harness.core.evaluate import evaluate_during_training

        if step == self.prep.spec.train.steps:
            return None
        p = self.prep
        metrics = evaluate_during_training(p.method, ema, p.dataset, p.spec.eval, self.device)
        self.fill([(step, metrics)])
        return metrics

    def fill(self, during) -> None:
        for step, metrics in during:
            if step not in self.logged:
                self.writer.log_during(metrics, step)
                self.logged.add(step)


class _LossUploader:
    """Streams the loss curve to the run every LOSS_FLUSH_SECONDS and logs each step once: an
    attempt that resumes a checkpoint (a rerun, a lost node) fills in whatever part of the curve
    the run lacks, and marks the step it started from."""

    def __init__(self, writer: TrialWriter, log_every: int) -> None:
        self.writer, self.log_every = writer, log_every
        self.logged = writer.logged_loss_steps()
        self.pending: list[tuple[int, float]] = []
        self.last_flush = time.monotonic()
        self.started = False

    def add(self, step: int, loss: float) -> None:
        if not self.started:
            self.started = True
            self.writer.log_attempt_start(step - 1)
        if step % self.log_every == 0 and math.isfinite(loss):
            self.pending.append((step, loss))
        if self.pending and time.monotonic() - self.last_flush > LOSS_FLUSH_SECONDS:
            self.flush(self.pending)

    def flush(self, points: list[tuple[int, float]]) -> None:
        new = [(step, loss) for step, loss in points if step not in self.logged]
        if new:
            self.writer.log_losses(new)
            self.logged.update(step for step, _ in new)
        self.pending = []
        self.last_flush = time.monotonic()


def _node_id() -> str:
    """The Ray node this task runs on ("local" outside Ray: Ray is loaded only in its workers)."""
    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_node_id() if ray and ray.is_initialized() else "local"


def shard_task(spec, checkpoint_dir: str, shard):
    """One shard of a trial's evaluation (:mod:`harness.core.shards`), from the trained checkpoint."""
    from harness.core.device import resolve_device
    from harness.core.shards import evaluate_shard
    from harness.run.trial import load_trained, prepare

    check_same_code()
    device = resolve_device("auto")
    prep = prepare(spec)
    net = load_trained(prep, checkpoint_dir, device)
    return evaluate_shard(prep.method, net, prep.dataset, prep.spec.eval, shard, device)


def eval_task(spec, checkpoint_dir: str, logger: RunLogger, *shards) -> dict[str, float]:
    """Evaluate a trained trial from its checkpoint; log final metrics, curves and artifacts.
    ``shards``: the results of every shard of the evaluation's plan, combined instead of
    evaluating here (:func:`harness.run.scheduler.submit_evaluation` passes them)."""
    from harness.core.device import resolve_device
    from harness.core.evaluate import evaluate
    from harness.core.shards import combine
    from harness.run.trial import TrialResult, load_trained, prepare

    code = check_same_code()
    device = resolve_device("auto")
    prep = prepare(spec)
    writer = TrialWriter(logger)
    writer.log_code(code)
    started = time.perf_counter()
    if shards:
        evaluation = combine(shards, prep.spec.eval, prep.dataset)
        writer.log_eval_shards(len(shards))
    else:
        net = load_trained(prep, checkpoint_dir, device)
        evaluation = evaluate(prep.method, net, prep.dataset, prep.spec.eval, device)
    record = TrialResult.record(prep, evaluation, time.perf_counter() - started)
    train = prep.spec.train
    writer.log_evaluation(record.metrics, evaluation, step=train.steps,
                          on_curve=bool(train.eval_every) and train.steps % train.eval_every == 0)
    _log_artifacts(writer, prep, record)
    return record.metrics


def _log_artifacts(writer: TrialWriter, prep, record) -> None:
    """The run's files: the resolved config, the trial's record, the samples and, when the
    evaluation kept sample paths, their trajectories."""
    from harness.run.sample_figures import image_grid, scatter_figure, trajectory_figure

    evaluation = record.evaluation
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / CONFIG_FILE).write_text(json.dumps(prep.config, indent=2, default=str))
        (folder / RECORD_FILE).write_text(record.dumps())
        title = f"{prep.spec.method} on {prep.spec.dataset} (seed {prep.spec.seed})"
        reference = prep.dataset.test[: len(evaluation.samples)]
        if prep.dataset.is_image:
            image_grid(evaluation.samples, folder / SAMPLES, title)
        else:
            scatter_figure(evaluation.samples, reference, folder / SAMPLES, title)
        names = [CONFIG_FILE, RECORD_FILE, SAMPLES]
        if evaluation.trajectories is not None:
            paths = evaluation.trajectories
            trajectory_figure(paths.times, paths.states, folder / TRAJECTORIES, title,
                              None if prep.dataset.is_image else reference)
            names.append(TRAJECTORIES)
        writer.log_files(folder, names)
