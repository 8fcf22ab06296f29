"""Ray scheduling of a suite: the driver that submits each trial's tasks (:mod:`harness.run.tasks`)
as the cluster has room and records how they end. With :mod:`harness.run.ddp` (Ray Train) and
:mod:`harness.run.ray_session` (joining or starting Ray), the only code importing Ray.

Each trial is a train task followed by an eval task, each with the suite's resources (fractional
GPUs allowed). Tasks log straight to their MLflow run through a picklable RunLogger and return a
small summary to the driver, which shows progress, skips finished trials (same key), reopens
unfinished ones (training resumes from the checkpoint), and cancels everything on Ctrl-C. Every
trial state, and how the driver writes it, is :mod:`harness.run.record`'s.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from harness.core import storage as stores
from harness.plugins import plugin_files
from harness.run.ddp import train_parallel_task
from harness.run.identity import DRIVER_ENV, local_identity
from harness.run.ray_session import RaySession, init_ray, ship_modules
from harness.run.record import (State, TrialRun, TrialWriter, invocation_tags, invocation_totals,
                            trial_runs)
from harness.run.tasks import eval_task, shard_task, train_task
from harness.run.tracking import RunLogger, Tracker, git_commit
from harness.run.store import CREDENTIALS

SHARD_COST = {"error": 20.0, "likelihood": 3.0}
"""Rough cost per example of an evaluation part relative to sampling, measured on 2-D data: the
float64 dopri5 reference at 1e-7 makes a numerical-error sample ~20x a sample, an NLL solve with
its divergence ~3x. Only the order in which shards are submitted depends on it."""
TASK_RETRIES = 3
"""Times Ray reruns a task whose worker or node died (not one that raised: a diverged or misconfigured
trial fails at once). Each rerun resumes from the trial's last checkpoint."""
INTERRUPTED = "interrupted (Ctrl-C)"
"""Why runs end KILLED when the driver is interrupted (Ctrl-C or SIGTERM)."""


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


# -- the driver ---------------------------------------------------------------------------------
PROGRESS = ("queued", "training", "evaluating", "finished", "failed", "skipped", "killed")
"""What the driver shows of a trial (:attr:`TrialState.status`)."""


@dataclass
class TrialState:
    """One trial as the driver follows it, from no run to how it ended: its record's
    :class:`State`, and which of its tasks is in Ray's hands."""

    trial: Any
    writer: TrialWriter | None = None
    state: State = State.MISSING
    task: str = ""  # "training" or "evaluating" while that task is submitted, else ""
    skipped: bool = False  # finished by an earlier driver: nothing to do
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    started: float = 0.0
    seconds: float = 0.0
    plan: list | None = None  # the evaluation's shards, from the train task
    shard_refs: list = field(default_factory=list)
    stale_reason: bool = False  # the reopened run still has an earlier attempt's failure tag

    @property
    def status(self) -> str:
        """One of :data:`PROGRESS`: skipped, the task in flight, queued while the trial waits
        for one, else how it ended."""
        if self.skipped:
            return "skipped"
        return self.state.value if self.state.ended else self.task or "queued"

    def move(self, state: State, reason: str = "") -> None:
        """The trial went to ``state`` (a change :data:`harness.run.record.TRANSITIONS` allows)."""
        self.state, self.reason = self.state.to(state), reason or self.reason


@dataclass(frozen=True)
class SuiteSummary:
    """What a run of the suite did, trial by trial (:func:`run_suite` returns it)."""

    suite: str
    parent_run_id: str | None
    states: list[TrialState]
    seconds: float

    def count(self, status: str) -> int:
        return sum(s.status == status for s in self.states)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0 and self.count("killed") == 0


def _checkpoint_dir(storage: str, suite_name: str, key: str) -> Path | str:
    """The trial's folder: a local path, or a key prefix under an object-storage URI."""
    return stores.join(stores.folder(storage) if stores.is_uri(storage)
                       else Path(storage).expanduser(), suite_name, key)


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
    """One live line: queued / running / finished / failed, elapsed and ETA.

    The ETA is the remaining trials at the rate trials have finished so far in this invocation.
    (A trial's own seconds run from its submission, queue included, so their mean times the
    queue length counted the waiting twice: 17 minutes shown with 2 left, seen on the smoke
    suite.)"""

    def __init__(self, stream: TextIO, total: int, clock=time.monotonic) -> None:
        self.stream, self.total, self.clock = stream, total, clock
        self.started = clock()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last = 0.0

    def show(self, states: list[TrialState], force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        c = {k: sum(s.status == k for s in states) for k in PROGRESS}
        running = c["training"] + c["evaluating"]
        remaining = c["queued"] + running
        elapsed = now - self.started
        eta = "?"
        if c["finished"] and remaining:
            eta = _fmt(elapsed / c["finished"] * remaining)
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
              connect_timeout: float | None = None, stream: TextIO = sys.stderr,
              tracker: Tracker | None = None) -> SuiteSummary:
    """Run every trial of ``suite`` that has no finished run with the same key.

    The store: ``tracker`` (the suite's experiment, already checked by ``fmbench run``), else
    ``tracking_uri`` or the suite's. One driver per suite and store (:mod:`harness.run.invocation`):
    another live driver makes this one fail (or, with ``wait``, wait) before it starts Ray or
    creates a run. Ray is joined or started only when there is work, and before any run is
    created, so a cluster that does not answer leaves nothing behind in MLflow."""
    from harness.run.invocation import acquire

    stores.check_reachable(storage or suite.checkpoint_root)  # a store that does not answer: one line
    tracker = _open_store(suite, tracker or Tracker(tracking_uri or suite.tracking_uri,
                                                    suite.experiment), wait, stream)
    storage = storage or suite.checkpoint_root
    started = time.monotonic()
    commit = git_commit()
    states = [TrialState(t) for t in suite.trials()]
    existing = trial_runs(tracker)
    session = RaySession()
    if force or any(_unfinished(existing.get(s.trial.key)) for s in states):
        session = init_ray(address, connect_timeout)  # a suite with nothing to do never starts Ray
    try:
        name = f"{suite.name} @ {time.strftime('%Y-%m-%d %H:%M:%S')}"
        lease = acquire(tracker, suite.name, name, invocation_tags(suite.name, commit),
                        wait=wait, stream=stream)

        def drive() -> SuiteSummary:
            # The driver waited for may have finished or failed trials meanwhile.
            runs = trial_runs(tracker) if lease.waited else existing
            driver = _Driver(suite, tracker, lease.logger, storage, force, commit, stream,
                             address=address, timeout=connect_timeout, session=session)
            return driver.run(states, runs, started)

        return _under_lease(lease, drive)
    finally:
        session.close()


def _open_store(suite, tracker: Tracker, wait: bool, stream: TextIO) -> Tracker:
    """The suite's tracking store, once no other live driver holds the suite (or, with ``wait``,
    once it is free): invocations whose driver is gone are closed first, and said so."""
    from harness.run.invocation import close_stale, closed_note, wait_until_free

    tracker.connect()  # before any worker exists: the store and experiment are created once
    closed = close_stale(tracker.uri, suite.experiment, suite.name)
    if closed:
        stream.write(closed_note(closed) + "\n")
    if wait_until_free(tracker, suite.name, wait=wait, stream=stream):
        close_stale(tracker.uri, suite.experiment, suite.name)  # the one waited for may be dead
    return tracker


def _under_lease(lease, work: Callable[[], SuiteSummary]) -> SuiteSummary:
    """``work()`` while this driver holds the suite, then the invocation run ends with its
    outcome: KILLED on Ctrl-C, FAILED on an error or a failed trial, else FINISHED."""
    try:
        summary = work()
    except KeyboardInterrupt:
        lease.release(State.KILLED, INTERRUPTED)
        raise
    except BaseException as exc:
        lease.release(State.FAILED, _first_line(exc))
        raise
    finally:
        lease.heartbeat.stop()
    lease.release(State.FINISHED if summary.ok else State.FAILED,
                  None if summary.ok else f"{summary.count('failed')} trial(s) failed")
    return summary


def _unfinished(run: TrialRun | None) -> bool:
    return run is None or run.state is not State.FINISHED


def _resources(trial, phase: str):
    """What a task of ``phase`` ("training" or "evaluating") of ``trial`` asks for."""
    return trial.train_resources if phase == "training" else trial.eval_resources


class _Driver:
    """The driver's loop, once this driver holds the suite: create or reopen the trial runs,
    submit tasks as the cluster has room, record results; Ctrl-C marks what is open KILLED."""

    def __init__(self, suite, tracker: Tracker, parent: RunLogger, storage: str, force: bool,
                 commit: str, stream: TextIO, *, address: str | None, timeout: float | None,
                 session: RaySession) -> None:
        self.suite, self.tracker, self.parent, self.storage = suite, tracker, parent, storage
        self.force, self.commit, self.stream = force, commit, stream
        self.address, self.timeout, self.session = address, timeout, session
        self.inflight: dict[Any, tuple[str, TrialState]] = {}
        # (phase, state) not yet submitted; evaluations go first: they end trials.
        self.waiting: list[tuple[str, TrialState]] = []
        self.capacity = _Capacity()
        # Workers on other nodes do not see the driver's environment: pass fmbench's own settings
        # (data root, cache folder) with every task, and the tracking server's credentials (a
        # basic-auth server answers their logging with 401 otherwise; runbook: Security).
        # The object store's standard variables travel the same way (--storage s3://...).
        env = {k: v for k, v in os.environ.items()
               if k.startswith("FMBENCH_") or k in CREDENTIALS or k in stores.ENVIRONMENT}
        env[DRIVER_ENV] = local_identity().dumps()  # each task checks its node's code against it
        self.runtime_env = {"runtime_env": {"env_vars": env}}
        # The files of the plugins the trials use, shipped with every task once Ray is up (run).
        self.plugin_files = plugin_files(t.spec.plugins for t in suite.iter_trials())

    def run(self, states: list[TrialState], existing: dict[str, TrialRun],
            started: float) -> SuiteSummary:
        """Run the trials of ``states`` that ``existing`` (runs by key) has not finished."""
        import ray

        if getattr(self.suite, "path", None):
            self.parent.log_artifact(self.suite.path)
        self.train, self.train_parallel = ray.remote(train_task), ray.remote(train_parallel_task)
        todo = [s for s in states if self.force or _unfinished(existing.get(s.trial.key))]
        for state in states:
            if state not in todo:
                state.state, state.skipped = State.FINISHED, True
        if todo and not ray.is_initialized():  # work appeared while this driver waited
            joined = init_ray(self.address, self.timeout)
            self.session.started, self.session.watchdog = joined.started, joined.watchdog
        if todo and self.plugin_files:  # tasks import them before resolving names (prepare)
            self.runtime_env.setdefault("runtime_env", {})["py_modules"] = ship_modules(
                self.plugin_files)
        for state in todo:
            self._open(state, existing.get(state.trial.key))
            self.waiting.append(("training", state))
        if self.waiting:
            self._pump()
        progress = _Progress(self.stream, len(states))
        self._wait_for_tasks(states, progress)
        progress.show(states, force=True)
        progress.close()
        summary = SuiteSummary(self.suite.name, self.parent.run_id, states,
                               time.monotonic() - started)
        self.parent.log_metrics(invocation_totals(summary.count("finished"),
                                                  summary.count("failed"),
                                                  summary.count("skipped"), summary.seconds))
        return summary

    def _open(self, state: TrialState, run: TrialRun | None) -> None:
        """Give the trial its run: the unfinished ``run`` of an earlier driver reopened (training
        resumes from its checkpoint), else a new one; ``force`` starts over from scratch."""
        t = state.trial
        if self.force:
            stores.remove_tree(_checkpoint_dir(self.storage, self.suite.name, t.key))
        if run is not None and not self.force:
            state.writer = TrialWriter.reopen(self.tracker, run, t, self.parent.run_id)
            state.stale_reason = run.reason is not None  # cleared once the trial finishes
            state.state = run.state
        else:
            state.writer = TrialWriter.create(self.tracker, self.suite.name, t, self.commit,
                                              self.parent.run_id)
        state.move(State.SCHEDULED)
        state.started = time.monotonic()

    def _pump(self) -> None:
        """Submit waiting tasks while the cluster has room, so the counts shown are honest."""
        self.capacity.refresh()
        while self.waiting:
            phase, state = self.waiting[0]
            t = state.trial
            res = _resources(t, phase)
            if not self.capacity.fits(res):
                if self.inflight:
                    return
                self.stream.write(f"\nwarning: {t.name} asks for {res.cpus:g} CPU / {res.gpus:g} "
                                  f"GPU, more than the cluster has free; Ray will queue it until a "
                                  f"node with room joins\n")
            self.waiting.pop(0)
            self.inflight[self._submit(phase, state, res)] = (phase, state)
            self.capacity.take(res)
            state.task = phase

    def _submit(self, phase: str, state: TrialState, res):
        """Submit the task of ``phase`` for ``state``'s trial; returns its Ray reference."""
        t = state.trial
        ckpt = str(_checkpoint_dir(self.storage, self.suite.name, t.key))
        options = dict(num_cpus=res.cpus, num_gpus=res.gpus, name=f"{phase[:5]}:{t.name}",
                       max_retries=TASK_RETRIES, retry_exceptions=False, **self.runtime_env)
        args = (t.spec, ckpt, state.writer.logger)
        if phase == "evaluating":
            ref, state.shard_refs = submit_evaluation(*args, state.plan, options)
            return ref
        if res.workers > 1:  # a coordinator: Ray Train's workers hold the resources
            return self.train_parallel.options(**{**options, "num_cpus": 0, "num_gpus": 0}).remote(
                *args, res)
        return self.train.options(**options).remote(*args)

    def _wait_for_tasks(self, states: list[TrialState], progress: _Progress) -> None:
        """Record each task as it ends and submit what then fits, until none is left; Ctrl-C (or
        SIGTERM) cancels every task and marks the trials not yet done KILLED."""
        import ray

        previous = _terminate_as_interrupt()
        try:
            while self.inflight:
                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    self._record(ref)
                self._pump()
                progress.show(states)
        except KeyboardInterrupt:
            self._cancel_all()
            progress.show(states, force=True)
            progress.close()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _record(self, ref) -> None:
        """A task ended: a trained trial waits for its evaluation (ahead of other work), an
        evaluated one is finished, a failed one is FAILED with the first line of its error."""
        import ray

        phase, state = self.inflight.pop(ref)
        self.capacity.give(_resources(state.trial, phase))
        state.task = ""
        try:
            value = ray.get(ref)
        except Exception as exc:  # the task failed: record why, keep the others going
            for shard in state.shard_refs:  # an evaluation that failed leaves none running
                ray.cancel(shard, force=True)
            state.move(State.FAILED, _first_line(exc))
            state.writer.end(State.FAILED, state.reason)
            state.stale_reason = False
            self.stream.write(f"\n{state.trial.name} failed: {state.reason}\n")
            return
        if phase == "training":  # the train task marked the run RUNNING
            state.plan = value.get("shards")
            self.waiting.insert(0, ("evaluating", state))
            if state.state is State.SCHEDULED:
                state.move(State.RUNNING)
        else:
            state.move(State.FINISHED)
            state.metrics = value
            state.seconds = time.monotonic() - state.started
            if state.stale_reason:  # a failure or kill of an earlier attempt
                state.writer.clear_reason()
            state.writer.end(State.FINISHED)

    def _cancel_all(self) -> None:
        """Cancel every task in flight (with its evaluation's shards) and mark every trial in
        flight or waiting KILLED."""
        import ray

        for ref, (_, state) in self.inflight.items():
            for shard in state.shard_refs:
                ray.cancel(shard, force=True)
            ray.cancel(ref, force=True)
        for state in {id(s): s for _, s in [*self.inflight.values(), *self.waiting]}.values():
            state.task = ""
            state.move(State.KILLED, INTERRUPTED)
            state.writer.end(State.KILLED, INTERRUPTED)
