"""The work of a suite's Ray tasks, as plain functions: train a trial, evaluate one shard, finish a
trial's evaluation. :mod:`harness.scheduler` submits them and :mod:`harness.ddp` runs training in
each Ray Train worker; this module never imports Ray, so every task can be tested without it.

A task logs straight to its MLflow run through a picklable RunLogger and returns a small summary
to the driver.
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

from harness.tracking import RUNNING, RunLogger

LOSS_FLUSH_SECONDS = 5.0
DURING_METRICS = ("nfe", "w2", "mmd", "fid", "fid_classifier")
"""Final metrics also logged as the last point of the during-training curves."""


def train_task(spec, checkpoint_dir: str, logger: RunLogger) -> dict[str, Any]:
    """Train one trial (resuming from ``checkpoint_dir``), logging losses as they come."""
    from harness.device import resolve_device

    return train_logged(spec, checkpoint_dir, logger, resolve_device("auto"))


def train_logged(spec, checkpoint_dir: str, logger: RunLogger, device, parallel=None):
    """Train this process's part of a trial; the main rank (the only one without DDP) logs the
    config, tags, loss curve and during-training evaluations. Returns the train task's summary on
    the main rank, None on the others."""
    from harness.shards import plan_shards
    from harness.train import SINGLE
    from harness.trial import prepare, train_trial

    parallel = parallel or SINGLE
    prep = prepare(spec)
    losses = on_eval = None
    if parallel.main:
        logger.set_status(RUNNING)
        logger.log_params(prep.config)
        tags = {"fmbench.train_node": _node_id(), "fmbench.device": str(device),
                "fmbench.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
        if parallel.world_size > 1:
            tags.update({"fmbench.train_workers": parallel.world_size,
                         "fmbench.per_worker_batch": spec.train.batch_size // parallel.world_size})
        logger.set_tags(tags)
        losses = _LossUploader(logger, prep.spec.train.log_every)
        on_eval = _during_training(prep, logger, device)
    result = train_trial(prep, checkpoint_dir, device=device, progress=losses and losses.add,
                         on_eval=on_eval, parallel=parallel)
    if not parallel.main:
        return None
    losses.flush(result.losses)  # the whole curve: also what the checkpoint restored
    # Training time over every attempt (the checkpoint carries the earlier ones), and this one's.
    logger.log_metrics({"time/train_s": result.earlier_seconds + result.seconds,
                        "time/train_attempt_s": result.seconds}, step=result.step)
    # The evaluation's shards, planned here where the data are loaded (the driver never loads them).
    plan = plan_shards(prep.spec.eval, prep.dataset) if prep.spec.eval.shard_size else None
    return {"step": result.step, "seconds": result.seconds, "resumed_from": result.resumed_from,
            "device": str(device), "shards": plan}


def _during_training(prep, logger: RunLogger, device):
    """The evaluation hook of a training run: each eval_every step logged once across attempts,
    the final step left to the eval task."""
    evaluated = logger.logged_steps("during/nfe")  # by an earlier attempt of this run

    def on_eval(step: int, ema) -> None:
        from harness.evaluate import evaluate_during_training

        if step == prep.spec.train.steps or step in evaluated:
            return
        metrics = evaluate_during_training(prep.method, ema, prep.dataset, prep.spec.eval, device)
        logger.log_metrics({f"during/{k}": v for k, v in metrics.items()}, step=step)

    return on_eval


class _LossUploader:
    """Streams ``train/loss`` to the run every LOSS_FLUSH_SECONDS and logs each step once: an
    attempt that resumes a checkpoint (a rerun, a lost node) fills in whatever part of the curve
    the run lacks, and marks where it started with ``train/started_at_step``."""

    def __init__(self, logger: RunLogger, log_every: int) -> None:
        self.logger, self.log_every = logger, log_every
        self.logged = logger.logged_steps("train/loss")
        self.pending: list[tuple[int, float]] = []
        self.last_flush = time.monotonic()
        self.started = False

    def add(self, step: int, loss: float) -> None:
        if not self.started:
            self.started = True
            self.logger.log_metrics({"train/started_at_step": step - 1}, step=step - 1)
        if step % self.log_every == 0 and math.isfinite(loss):
            self.pending.append((step, loss))
        if self.pending and time.monotonic() - self.last_flush > LOSS_FLUSH_SECONDS:
            self.flush(self.pending)

    def flush(self, points: list[tuple[int, float]]) -> None:
        new = [(step, loss) for step, loss in points if step not in self.logged]
        if new:
            self.logger.log_history("train/loss", new)
            self.logged.update(step for step, _ in new)
        self.pending = []
        self.last_flush = time.monotonic()


def _node_id() -> str:
    """The Ray node this task runs on ("local" outside Ray: Ray is loaded only in its workers)."""
    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_node_id() if ray and ray.is_initialized() else "local"


def shard_task(spec, checkpoint_dir: str, shard):
    """One shard of a trial's evaluation (:mod:`harness.shards`), from the trained checkpoint."""
    from harness.device import resolve_device
    from harness.shards import evaluate_shard
    from harness.trial import load_trained, prepare

    device = resolve_device("auto")
    prep = prepare(spec)
    net = load_trained(prep, checkpoint_dir, device)
    return evaluate_shard(prep.method, net, prep.dataset, prep.spec.eval, shard, device)


def eval_task(spec, checkpoint_dir: str, logger: RunLogger, *shards) -> dict[str, float]:
    """Evaluate a trained trial from its checkpoint; log final metrics, curves and artifacts.
    ``shards``: the results of every shard of the evaluation's plan, combined instead of
    evaluating here (:func:`harness.scheduler.submit_evaluation` passes them)."""
    from harness.device import resolve_device
    from harness.evaluate import evaluate
    from harness.shards import combine
    from harness.trial import TrialResult, load_trained, prepare

    device = resolve_device("auto")
    prep = prepare(spec)
    started = time.perf_counter()
    if shards:
        evaluation = combine(shards, prep.spec.eval, prep.dataset)
        logger.set_tags({"fmbench.eval_shards": len(shards)})
    else:
        net = load_trained(prep, checkpoint_dir, device)
        evaluation = evaluate(prep.method, net, prep.dataset, prep.spec.eval, device)
    record = TrialResult.record(prep, evaluation, time.perf_counter() - started)
    _log_evaluation(logger, prep, record)
    _log_artifacts(logger, prep, record)
    return record.metrics


def _log_evaluation(logger: RunLogger, prep, record) -> None:
    """Final metrics (also the last point of the during-training curves when that step is one of
    them), the error and FID curves by solver, and any warnings as a tag."""
    metrics, evaluation, steps = record.metrics, record.evaluation, prep.spec.train.steps
    logger.log_metrics({f"final/{k}": v for k, v in metrics.items()}, step=steps)
    if prep.spec.train.eval_every and steps % prep.spec.train.eval_every == 0:
        during = {k: metrics[k] for k in DURING_METRICS if k in metrics}
        logger.log_metrics({f"during/{k}": v for k, v in during.items()}, step=steps)
    for solver in {p.solver for p in evaluation.error_curve}:
        logger.log_history(f"error/{solver}", [(p.nfe, p.error) for p in evaluation.error_curve
                                               if p.solver == solver])
    fid_name = prep.spec.eval.fid_metric
    for solver in {p.solver for p in evaluation.fid_curve}:  # MLflow steps are ints: round dopri5's
        logger.log_history(f"{fid_name}_vs_nfe/{solver}", [
            (round(p.nfe), p.fid) for p in evaluation.fid_curve if p.solver == solver])
    if evaluation.warnings:
        logger.set_tags({"fmbench.warnings": " | ".join(evaluation.warnings)[:5000]})


def _log_artifacts(logger: RunLogger, prep, record) -> None:
    """The run's files: ``config.json``, the trial's record as ``metrics.json``, ``samples.png``
    and, when the evaluation kept sample paths, ``trajectories.png``."""
    from harness.figures import image_grid, scatter_figure, trajectory_figure

    evaluation = record.evaluation
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(prep.config, indent=2, default=str))
        (folder / "metrics.json").write_text(record.dumps())
        title = f"{prep.spec.method} on {prep.spec.dataset} (seed {prep.spec.seed})"
        reference = prep.dataset.test[: len(evaluation.samples)]
        if prep.dataset.is_image:
            image_grid(evaluation.samples, folder / "samples.png", title)
        else:
            scatter_figure(evaluation.samples, reference, folder / "samples.png", title)
        names = ["config.json", "metrics.json", "samples.png"]
        if evaluation.trajectories is not None:
            paths = evaluation.trajectories
            trajectory_figure(paths.times, paths.states, folder / "trajectories.png", title,
                              None if prep.dataset.is_image else reference)
            names.append("trajectories.png")
        for name in names:
            logger.log_artifact(folder / name)
