"""Ray scheduling of a suite: with :mod:`harness.ddp` (Ray Train), the only code importing Ray.

Each trial is a train task followed by an eval task, each with the suite's resources (fractional
GPUs allowed). Tasks log straight to their MLflow run through a picklable RunLogger and return a
small summary to the driver, which shows progress, skips finished trials (same key), reopens
unfinished ones (training resumes from the checkpoint), and cancels everything on Ctrl-C.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness.tracking import (FAILED, FINISHED, KEY, KILLED, KIND, RUNNING, SCHEDULED, SUITE,
                              RunLogger, Tracker, git_commit)

LOSS_FLUSH_SECONDS = 5.0
SHARD_COST = {"error": 20.0, "likelihood": 3.0}
"""Rough cost per example of an evaluation part relative to sampling, measured on 2-D data: the
float64 dopri5 reference at 1e-7 makes a numerical-error sample ~20x a sample, an NLL solve with
its divergence ~3x. Only the order in which shards are submitted depends on it."""
TASK_RETRIES = 3
"""Times Ray reruns a task whose worker or node died (not one that raised: a diverged or misconfigured
trial fails at once). Each rerun resumes from the trial's last checkpoint."""


# -- the work of a task (plain functions, so they can be tested without Ray) -----------------------
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
    logger.log_metrics({"time/train_s": result.seconds}, step=result.step)
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


def train_parallel_task(spec, checkpoint_dir: str, logger: RunLogger, resources) -> dict[str, Any]:
    """Train one trial on ``resources.workers`` DDP workers through Ray Train (:mod:`harness.ddp`);
    this task only coordinates (it holds no resources), the workers hold ``resources`` each."""
    from harness.ddp import train_distributed

    return train_distributed(spec, checkpoint_dir, logger, workers=resources.workers,
                             cpus_per_worker=resources.cpus, gpus_per_worker=resources.gpus)


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
    """The Ray node this task runs on ("local" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def shard_task(spec, checkpoint_dir: str, shard):
    """One shard of a trial's evaluation (:mod:`harness.shards`), from the trained checkpoint."""
    from harness.device import resolve_device
    from harness.shards import evaluate_shard
    from harness.trial import load_trained, prepare

    device = resolve_device("auto")
    prep = prepare(spec)
    net = load_trained(prep, checkpoint_dir, device)
    return evaluate_shard(prep.method, net, prep.dataset, prep.spec.eval, shard, device)


def submit_evaluation(spec, checkpoint_dir: str, logger: RunLogger, plan, options: dict):
    """Submit a trial's evaluation: with a shard ``plan``, one Ray task per shard and an eval task
    that depends on all of them (Ray starts it when they are done, so it holds nothing meanwhile);
    else one eval task. ``options``: the eval tasks' Ray options. Returns (eval ref, shard refs)."""
    import ray

    if not plan:
        return ray.remote(eval_task).options(**options).remote(spec, checkpoint_dir, logger), []
    shard = ray.remote(shard_task)
    # Longest first: Ray starts queued tasks roughly in submission order, and one long shard
    # started last would leave the other workers idle while it runs.
    order = sorted(plan, key=lambda s: SHARD_COST.get(s.part, 1.0) * (s.stop - s.start),
                   reverse=True)
    name = options.get("name", spec.name)
    refs = [shard.options(**{**options, "name": f"{name}:shard{s.index}:{s.part}"}).remote(
        spec, checkpoint_dir, s) for s in order]
    return ray.remote(eval_task).options(**options).remote(spec, checkpoint_dir, logger, *refs), refs


def eval_task(spec, checkpoint_dir: str, logger: RunLogger, *shards) -> dict[str, float]:
    """Evaluate a trained trial from its checkpoint; log final metrics, curves and artifacts.
    ``shards``: the results of every shard of the evaluation's plan, combined instead of
    evaluating here (:func:`submit_evaluation` passes them)."""
    from harness.device import resolve_device
    from harness.evaluate import evaluate
    from harness.figures import image_grid, scatter_figure, trajectory_figure
    from harness.shards import combine
    from harness.trial import load_trained, prepare

    device = resolve_device("auto")
    prep = prepare(spec)
    started = time.perf_counter()
    if shards:
        result = combine(shards, prep.spec.eval, prep.dataset)
        logger.set_tags({"fmbench.eval_shards": len(shards)})
    else:
        net = load_trained(prep, checkpoint_dir, device)
        result = evaluate(prep.method, net, prep.dataset, prep.spec.eval, device)
    metrics = {**result.metrics, "eval_time": time.perf_counter() - started}
    steps = prep.spec.train.steps
    logger.log_metrics({f"final/{k}": v for k, v in metrics.items()}, step=steps)
    if prep.spec.train.eval_every and steps % prep.spec.train.eval_every == 0:
        during = {k: metrics[k] for k in ("nfe", "w2", "mmd", "fid", "fid_classifier")
                  if k in metrics}
        logger.log_metrics({f"during/{k}": v for k, v in during.items()}, step=steps)
    for solver in {p.solver for p in result.error_curve}:
        logger.log_history(f"error/{solver}", [(p.nfe, p.error) for p in result.error_curve
                                               if p.solver == solver])
    fid_name = "fid_classifier" if prep.spec.eval.fid_features == "classifier" else "fid"
    for solver in {p.solver for p in result.fid_curve}:  # MLflow steps are ints: round dopri5's
        logger.log_history(f"{fid_name}_vs_nfe/{solver}", [
            (round(p.nfe), p.fid) for p in result.fid_curve if p.solver == solver])
    if result.warnings:
        logger.set_tags({"fmbench.warnings": " | ".join(result.warnings)[:5000]})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(prep.config, indent=2, default=str))
        (folder / "metrics.json").write_text(json.dumps(
            {"metrics": metrics, "error_vs_nfe": [p.__dict__ for p in result.error_curve],
             "fid_vs_nfe": [p.__dict__ for p in result.fid_curve], "warnings": result.warnings},
            indent=2))
        title = f"{prep.spec.method} on {prep.spec.dataset} (seed {prep.spec.seed})"
        reference = prep.dataset.test[: len(result.samples)]
        if prep.dataset.is_image:
            image_grid(result.samples, folder / "samples.png", title)
        else:
            scatter_figure(result.samples, reference, folder / "samples.png", title)
        names = ["config.json", "metrics.json", "samples.png"]
        if result.trajectories is not None:
            paths = result.trajectories
            trajectory_figure(paths.times, paths.states, folder / "trajectories.png", title,
                              None if prep.dataset.is_image else reference)
            names.append("trajectories.png")
        for name in names:
            logger.log_artifact(folder / name)
    return metrics


# -- the driver ---------------------------------------------------------------------------------
@dataclass
class TrialState:
    trial: Any
    logger: RunLogger | None = None
    status: str = "queued"  # queued, training, evaluating, finished, failed, skipped, killed
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    started: float = 0.0
    seconds: float = 0.0
    plan: list | None = None  # the evaluation's shards, from the train task
    shard_refs: list = field(default_factory=list)


@dataclass(frozen=True)
class SuiteSummary:
    suite: str
    parent_run_id: str | None
    states: list[TrialState]
    seconds: float

    def count(self, status: str) -> int:
        return sum(s.status == status for s in self.states)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0 and self.count("killed") == 0


def init_ray(address: str | None = None, **kwargs) -> None:
    """Join ``address`` or start Ray on this machine; a no-op when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False, **kwargs)


def _checkpoint_dir(storage: str, suite_name: str, key: str) -> Path:
    return Path(storage).expanduser() / suite_name / key


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # RayTaskError wraps the task's own exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:500]


class _Capacity:
    """CPUs and GPUs of the cluster not yet claimed by this driver's tasks."""

    def __init__(self) -> None:
        self.used = {"CPU": 0.0, "GPU": 0.0}
        self.total = {"CPU": 0.0, "GPU": 0.0}

    def refresh(self) -> None:
        import ray

        total = ray.cluster_resources()  # changes as nodes join or leave
        self.total = {k: float(total.get(k, 0.0)) for k in self.used}

    @staticmethod
    def _claim(res) -> dict[str, float]:
        """What a task claims: every data-parallel worker holds ``res`` (evaluation has one)."""
        return {"CPU": res.workers * res.cpus, "GPU": res.workers * res.gpus}

    def fits(self, res) -> bool:
        return all(self.used[k] + v <= self.total[k] + 1e-9 for k, v in self._claim(res).items())

    def take(self, res) -> None:
        for k, v in self._claim(res).items():
            self.used[k] += v

    def give(self, res) -> None:
        for k, v in self._claim(res).items():
            self.used[k] -= v


class _Progress:
    """One live line: queued / running / finished / failed, elapsed and ETA."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream, self.total, self.started = stream, total, time.monotonic()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last = 0.0

    def show(self, states: list[TrialState], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        c = {k: sum(s.status == k for s in states) for k in
             ("queued", "training", "evaluating", "finished", "failed", "skipped", "killed")}
        done = [s.seconds for s in states if s.status == "finished" and s.seconds]
        running = c["training"] + c["evaluating"]
        remaining = c["queued"] + running
        elapsed = now - self.started
        eta = "?"
        if done and remaining:
            eta = _fmt(sum(done) / len(done) * remaining / max(running, 1))
        elif not remaining:
            eta = "0s"
        line = (f"{c['queued']} queued · {running} running · {c['finished']} finished · "
                f"{c['failed']} failed · {c['skipped']} skipped · elapsed {_fmt(elapsed)} · ETA {eta}")
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _terminate_as_interrupt():
    """Treat SIGTERM (what batch schedulers and `kill` send) like Ctrl-C, so outstanding runs are
    marked killed rather than left running. Returns the previous handler (None off the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def run_suite(suite, *, address: str | None = None, tracking_uri: str | None = None,
              storage: str | None = None, force: bool = False,
              stream: TextIO = sys.stderr) -> SuiteSummary:
    """Run every trial of ``suite`` that has no finished run with the same key."""
    import ray

    tracker = Tracker(tracking_uri or suite.tracking_uri, suite.experiment)
    tracker.connect()  # before any worker exists: the store and experiment are created once
    existing = tracker.trial_runs()
    storage = storage or suite.checkpoint_root
    started = time.monotonic()
    commit = git_commit()
    parent = tracker.start_run(f"{suite.name} @ {time.strftime('%Y-%m-%d %H:%M:%S')}",
                               {KIND: "invocation", SUITE: suite.name, "fmbench.git_commit": commit})
    if getattr(suite, "path", None):
        parent.log_artifact(suite.path)

    train = ray.remote(train_task)
    train_parallel = ray.remote(train_parallel_task)
    states = [TrialState(t) for t in suite.trials()]
    inflight: dict[Any, tuple[str, TrialState]] = {}
    waiting: list[tuple[str, TrialState]] = []  # (phase, state); evals go first: they end trials
    capacity = _Capacity()
    # Workers on other nodes do not see the driver's environment: pass fmbench's own settings
    # (data root, cache folder) with every task.
    env = {k: v for k, v in os.environ.items() if k.startswith("FMBENCH_")}
    runtime_env = {"runtime_env": {"env_vars": env}} if env else {}

    def pump() -> None:
        """Submit waiting tasks while the cluster has room, so the counts shown are honest."""
        capacity.refresh()
        while waiting:
            phase, state = waiting[0]
            t = state.trial
            res = t.train_resources if phase == "training" else t.eval_resources
            if not capacity.fits(res):
                if inflight:
                    return
                stream.write(f"\nwarning: {t.name} asks for {res.cpus:g} CPU / {res.gpus:g} GPU, "
                             f"more than the cluster has free; Ray will queue it until a node "
                             f"with room joins\n")
            waiting.pop(0)
            ckpt = str(_checkpoint_dir(storage, suite.name, t.key))
            options = dict(num_cpus=res.cpus, num_gpus=res.gpus, name=f"{phase[:5]}:{t.name}",
                           max_retries=TASK_RETRIES, retry_exceptions=False, **runtime_env)
            args = (t.spec, ckpt, state.logger)
            if phase == "evaluating":
                ref, state.shard_refs = submit_evaluation(*args, state.plan, options)
            elif res.workers > 1:  # a coordinator: Ray Train's workers hold the resources
                ref = train_parallel.options(**{**options, "num_cpus": 0, "num_gpus": 0}).remote(
                    *args, res)
            else:
                ref = train.options(**options).remote(*args)
            inflight[ref] = (phase, state)
            capacity.take(res)
            state.status = phase

    for state in states:
        t = state.trial
        run = existing.get(t.key)
        if run is not None and run.info.status == FINISHED and not force:
            state.status = "skipped"
            continue
        if force:
            shutil.rmtree(_checkpoint_dir(storage, suite.name, t.key), ignore_errors=True)
        tags = {KIND: "trial", SUITE: suite.name, KEY: t.key, "fmbench.method": t.method.label,
                "fmbench.dataset": t.dataset.name, "fmbench.seed": t.seed,
                "fmbench.git_commit": commit}
        if run is not None and not force:
            state.logger = tracker.reopen(run.info.run_id)  # resumes from its checkpoint
            state.logger.set_tags({"mlflow.parentRunId": parent.run_id})
        else:
            state.logger = tracker.start_run(t.name, tags, parent_id=parent.run_id,
                                             status=SCHEDULED)
        state.started = time.monotonic()
        waiting.append(("training", state))
    if waiting:  # a suite with nothing left to do never starts (or joins) Ray
        init_ray(address)
        pump()

    progress = _Progress(stream, len(states))
    previous = _terminate_as_interrupt()
    try:
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                phase, state = inflight.pop(ref)
                t = state.trial
                capacity.give(t.train_resources if phase == "training" else t.eval_resources)
                try:
                    value = ray.get(ref)
                except Exception as exc:  # the task failed: record why, keep the others going
                    for shard in state.shard_refs:  # an evaluation that failed leaves none running
                        ray.cancel(shard, force=True)
                    state.status, state.reason = "failed", _first_line(exc)
                    state.logger.finish(FAILED, state.reason)
                    stream.write(f"\n{state.trial.name} failed: {state.reason}\n")
                    continue
                if phase == "training":
                    state.plan = value.get("shards")
                    waiting.insert(0, ("evaluating", state))
                    state.status = "queued"
                else:
                    state.status, state.metrics = "finished", value
                    state.seconds = time.monotonic() - state.started
                    state.logger.finish(FINISHED)
            pump()
            progress.show(states)
    except KeyboardInterrupt:
        for ref, (_, state) in inflight.items():
            for shard in state.shard_refs:
                ray.cancel(shard, force=True)
            ray.cancel(ref, force=True)
        for state in {id(s): s for _, s in [*inflight.values(), *waiting]}.values():
            state.status, state.reason = "killed", "interrupted (Ctrl-C)"
            state.logger.finish(KILLED, state.reason)
        parent.finish(KILLED, "interrupted (Ctrl-C)")
        progress.show(states, force=True)
        progress.close()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    progress.show(states, force=True)
    progress.close()
    summary = SuiteSummary(suite.name, parent.run_id, states, time.monotonic() - started)
    parent.log_metrics({"trials/finished": summary.count("finished"),
                        "trials/failed": summary.count("failed"),
                        "trials/skipped": summary.count("skipped"),
                        "time/wall_s": summary.seconds})
    parent.finish(FINISHED if summary.ok else FAILED,
                  None if summary.ok else f"{summary.count('failed')} trial(s) failed")
    return summary
