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

from harness.errors import HarnessError
from harness.settings import env_seconds
from harness.tracking import (CREDENTIALS, FAILED, FINISHED, KEY, KILLED, KIND, REASON, RUNNING,
                              SCHEDULED, SUITE, RunLogger, Tracker, git_commit)

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
    stale_reason: bool = False  # the reopened run still has an earlier attempt's failure tag


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


CONNECT_ENV = "FMBENCH_CONNECT_TIMEOUT_S"
DEFAULT_CONNECT_S = 30.0
"""Seconds to wait for a Ray cluster given with ``--address``: a head that answers at all
answers within a few; Ray itself retries for minutes."""
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray 2.60 turns ``_node_ip_address="127.0.0.1"`` into the machine's network address unless
this is 0, which also marks the node as single-machine (GCS and raylet then listen on 127.0.0.1
only). Ray reads it once, when ``ray`` is imported."""


class RayConnectError(HarnessError):
    """No Ray cluster answered at the address given."""


def connect_timeout(value: float | None = None) -> float:
    """``value``, else ``$FMBENCH_CONNECT_TIMEOUT_S``, else 30 s."""
    if value is not None:
        return float(value)
    return env_seconds(CONNECT_ENV, DEFAULT_CONNECT_S, error=RayConnectError)


@dataclass
class RaySession:
    """Ray as this driver found it: ``started`` when fmbench started a local node, which it then
    shuts down (:meth:`close`), also when the driver is killed (:mod:`harness.reaper`)."""

    started: bool = False
    watchdog: Any = None

    def close(self) -> None:
        if not self.started:
            return
        import ray

        try:
            ray.shutdown()
        finally:
            if self.watchdog is not None:
                self.watchdog.close()


def init_ray(address: str | None = None, timeout: float | None = None, **kwargs) -> RaySession:
    """Join ``address`` (else ``$RAY_ADDRESS``) within ``timeout`` seconds
    (:func:`connect_timeout`), or start a new Ray node on this machine pinned to 127.0.0.1 (never
    one found running here: Ray's own default would join the last cluster started on this
    machine, a test's or another user's); a no-op when Ray is already up."""
    loaded = sys.modules.get("ray")
    if loaded is not None and loaded.is_initialized():
        return RaySession()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault(LOOPBACK_ENV, "0")  # before the import; Ray's processes inherit it
    import ray

    options = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=False, **kwargs)
    if address is None:
        if os.environ[LOOPBACK_ENV] == "0":
            from ray._private import ray_constants  # imported earlier (tests): read at import

            ray_constants.ENABLE_RAY_CLUSTER = False
        context = ray.init(address="local", _node_ip_address="127.0.0.1", **options)
        session = RaySession(started=True)
        if sys.platform.startswith("linux"):
            from harness.reaper import Watchdog

            info = context.address_info
            session.watchdog = Watchdog(info["node_id"], info["session_dir"])
        return session
    _join(address, connect_timeout(timeout), options)
    return RaySession()


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
"""A gRPC client's first bytes (connection preface and an empty SETTINGS frame, RFC 9113 §3.4):
Ray's GCS (and its client server) answer with a SETTINGS frame of their own."""


def _probe(address: str, host: str, port: int, timeout: float) -> None:
    """Fail in one line unless a gRPC server answers at host:port within ``timeout``: nothing
    listening fails at once, a port that accepts but never speaks gRPC after ``timeout``.
    Ray's own connect would retry each for minutes (20 tries of 5 s or more)."""
    import socket

    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if os.environ.get("RAY_USE_TLS", "0") not in ("0", ""):
                return  # a TLS handshake comes first: leave it to Ray
            sock.sendall(HTTP2_PREFACE)
            reply = b""
            while len(reply) < 9:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except socket.timeout:
        raise RayConnectError(f"no Ray cluster answered at {address} within {timeout:g} s"
                              ) from None
    except OSError as exc:
        raise RayConnectError(f"no Ray cluster answered at {address} "
                              f"({exc.strerror or exc})") from None
    if len(reply) < 9 or reply[3] != 4:
        raise RayConnectError(f"no Ray cluster answered at {address}: something listens there "
                              "but does not speak gRPC")


def _join(address: str, timeout: float, options: dict) -> None:
    """ray.init(address) bounded by ``timeout``: a gRPC probe of host:port first
    (:func:`_probe`), then ray.init in a daemon thread, abandoned if it still overruns."""
    import logging
    import threading

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit():
        _probe(address, host.strip("[]"), int(port), timeout)
    import ray
    box: dict[str, Any] = {}

    def connect() -> None:
        try:
            ray.init(address=address, **options)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    quiet = logging.getLogger("ray._private.worker")  # "SIGTERM handler is not set" off-main
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        thread = threading.Thread(target=connect, name="fmbench-ray-connect", daemon=True)
        thread.start()
        thread.join(timeout)
    finally:
        quiet.setLevel(level)
    if thread.is_alive():
        raise RayConnectError(f"no Ray cluster answered at {address} within {timeout:g} s")
    error = box.get("error")
    if isinstance(error, ConnectionError):
        first = (str(error).strip().splitlines() or ["no cluster found."])[0].split(". ")[0]
        raise RayConnectError(f"no Ray cluster answered at {address}: {first[:200].rstrip('.')}"
                              ) from None
    if error is not None:
        raise error


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
              storage: str | None = None, force: bool = False, wait: bool = False,
              connect_timeout: float | None = None, stream: TextIO = sys.stderr) -> SuiteSummary:
    """Run every trial of ``suite`` that has no finished run with the same key.

    One driver per suite and store (:mod:`harness.invocation`): another live driver makes this
    one fail (or, with ``wait``, wait) before it starts Ray or creates a run. Ray is joined or
    started only when there is work, and before any run is created, so a cluster that does not
    answer leaves nothing behind in MLflow."""
    from harness.invocation import acquire, close_stale, closed_note, wait_until_free

    tracker = Tracker(tracking_uri or suite.tracking_uri, suite.experiment)
    tracker.connect()  # before any worker exists: the store and experiment are created once
    closed = close_stale(tracker.uri, suite.experiment, suite.name)
    if closed:
        stream.write(closed_note(closed) + "\n")
    if wait_until_free(tracker, suite.name, wait=wait, stream=stream):
        close_stale(tracker.uri, suite.experiment, suite.name)  # the one waited for may be dead
    storage = storage or suite.checkpoint_root
    started = time.monotonic()
    commit = git_commit()
    states = [TrialState(t) for t in suite.trials()]
    existing = tracker.trial_runs()
    session = RaySession()
    if force or any(_unfinished(existing.get(s.trial.key)) for s in states):
        session = init_ray(address, connect_timeout)  # a suite with nothing to do never starts Ray
    try:
        name = f"{suite.name} @ {time.strftime('%Y-%m-%d %H:%M:%S')}"
        lease = acquire(tracker, suite.name, name, {"fmbench.git_commit": commit}, wait=wait,
                        stream=stream)
        try:
            if lease.waited:  # the driver waited for may have finished or failed trials meanwhile
                existing = tracker.trial_runs()
            summary = _drive(suite, states, tracker, lease.logger, existing, storage, force,
                             commit, address, connect_timeout, session, stream, started)
        except KeyboardInterrupt:
            lease.release(KILLED, "interrupted (Ctrl-C)")
            raise
        except BaseException as exc:
            lease.release(FAILED, _first_line(exc))
            raise
        finally:
            lease.heartbeat.stop()
        lease.release(FINISHED if summary.ok else FAILED,
                      None if summary.ok else f"{summary.count('failed')} trial(s) failed")
        return summary
    finally:
        session.close()


def _unfinished(run) -> bool:
    return run is None or run.info.status != FINISHED


def _drive(suite, states: list[TrialState], tracker: Tracker, parent: RunLogger,
           existing: dict[str, Any], storage: str, force: bool, commit: str,
           address: str | None, timeout: float | None, session: RaySession, stream: TextIO,
           started: float) -> SuiteSummary:
    """The driver's loop, once this driver holds the suite: create or reopen the trial runs,
    submit tasks as the cluster has room, record results; Ctrl-C marks what is open KILLED."""
    import ray

    if getattr(suite, "path", None):
        parent.log_artifact(suite.path)
    train = ray.remote(train_task)
    train_parallel = ray.remote(train_parallel_task)
    inflight: dict[Any, tuple[str, TrialState]] = {}
    waiting: list[tuple[str, TrialState]] = []  # (phase, state); evals go first: they end trials
    capacity = _Capacity()
    # Workers on other nodes do not see the driver's environment: pass fmbench's own settings
    # (data root, cache folder) with every task, and the tracking server's credentials (a
    # basic-auth server answers their logging with 401 otherwise; runbook: Security).
    env = {k: v for k, v in os.environ.items() if k.startswith("FMBENCH_") or k in CREDENTIALS}
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

    todo = [s for s in states if force or _unfinished(existing.get(s.trial.key))]
    for state in states:
        if state not in todo:
            state.status = "skipped"
    if todo and not ray.is_initialized():  # work appeared while this driver waited
        joined = init_ray(address, timeout)
        session.started, session.watchdog = joined.started, joined.watchdog
    for state in todo:
        t = state.trial
        run = existing.get(t.key)
        if force:
            shutil.rmtree(_checkpoint_dir(storage, suite.name, t.key), ignore_errors=True)
        tags = {KIND: "trial", SUITE: suite.name, KEY: t.key, "fmbench.method": t.method.label,
                "fmbench.dataset": t.dataset.name, "fmbench.seed": t.seed,
                "fmbench.git_commit": commit}
        if run is not None and not force:
            state.logger = tracker.reopen(run.info.run_id)  # resumes from its checkpoint
            state.logger.set_tags({"mlflow.parentRunId": parent.run_id})
            state.stale_reason = REASON in run.data.tags  # cleared once the trial finishes
        else:
            state.logger = tracker.start_run(t.name, tags, parent_id=parent.run_id,
                                             status=SCHEDULED)
        state.started = time.monotonic()
        waiting.append(("training", state))
    if waiting:
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
                    state.stale_reason = False
                    stream.write(f"\n{state.trial.name} failed: {state.reason}\n")
                    continue
                if phase == "training":
                    state.plan = value.get("shards")
                    waiting.insert(0, ("evaluating", state))
                    state.status = "queued"
                else:
                    state.status, state.metrics = "finished", value
                    state.seconds = time.monotonic() - state.started
                    if state.stale_reason:  # a failure or kill of an earlier attempt
                        state.logger.delete_tag(REASON)
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
    return summary
