"""One driver per (suite, store): a lease held on the invocation run, and the closing of
invocations whose driver is gone.

The lease lives in MLflow, not in a lock file, so it works for any store (SQLite, a tracking
server) and for drivers on different machines. A driver's invocation run carries its host, pid,
start time and a heartbeat timestamp refreshed every few seconds by a daemon thread. MLflow has no
compare-and-swap, so the driver that may run is elected: each candidate creates its own
invocation run first, waits a moment so that runs created at the same time become visible, then
lists the suite's live invocations (RUNNING, heartbeat younger than the lease). A candidate loses
to any live invocation that already holds the lease, else to an older candidate (start time, then
run id); every candidate sees the same runs and so elects the same one. A loser marks its run
KILLED and exits with one line naming the holder, or with ``--wait`` polls until it wins.

Heartbeats are wall-clock times written by the holder and read by others: clocks of the machines
that drive one suite must agree to well within the lease (NTP does).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from harness.errors import HarnessError
from harness.run.record import (HEARTBEAT, HOST, INVOCATION, KIND, LEASE, PARENT, PID, REASON,
                            STARTED_AT, SUITE, State, TrialWriter, kind_filter, of_kind,
                            tag_column)
from harness.settings import env_seconds
from harness.run.tracking import RunLogger, Tracker, all_runs, retry

CANDIDATE, HELD = "candidate", "held"
"""Values of the lease tag: elected or still a candidate."""
DRIVER_GONE = "driver gone"
"""Start of the reason tag of an invocation closed because its heartbeat expired."""
LOST_ELECTION = "another driver holds the suite"
LEASE_ENV = "FMBENCH_LEASE_S"
DEFAULT_LEASE_S = 60.0
"""Seconds without a heartbeat after which a driver counts as gone: six missed heartbeats."""


class SuiteLockedError(HarnessError):
    """Another live driver runs this suite against this store."""


def lease_seconds() -> float:
    """The lease: ``$FMBENCH_LEASE_S`` or 60 s (tests set a few seconds)."""
    return env_seconds(LEASE_ENV, DEFAULT_LEASE_S)


def heartbeat_interval(lease: float) -> float:
    """Every 10 s, or a sixth of a short lease, so a few lost heartbeats never expire it."""
    return max(0.2, min(10.0, lease / 6))


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _last_beat(run) -> float:
    """Epoch seconds of a run's last heartbeat; its start for drivers that never beat."""
    try:
        return float(run.data.tags[HEARTBEAT])
    except (KeyError, ValueError):
        return run.info.start_time / 1000


def _is_live(run, now: float, lease: float) -> bool:
    return State.of(run.info.status) is State.RUNNING and now - _last_beat(run) <= lease


def _order(run) -> tuple[int, str]:
    return run.info.start_time, run.info.run_id


@dataclass(frozen=True)
class Holder:
    """The driver that holds a suite, as its invocation run describes it."""

    run_id: str
    host: str
    pid: str
    started_at: str

    @classmethod
    def of(cls, run) -> "Holder":
        tags = run.data.tags
        return cls(run.info.run_id, tags.get(HOST, "?"), tags.get(PID, "?"),
                   tags.get(STARTED_AT) or _utc(run.info.start_time / 1000))

    def describe(self) -> str:
        return (f"host {self.host}, pid {self.pid}, started {self.started_at} "
                f"(invocation run {self.run_id})")


def _search(client, experiment_id: str, filter_string: str) -> list:
    return list(all_runs(lambda token: retry(
        lambda: client.search_runs([experiment_id], filter_string=filter_string,
                                   max_results=1000, page_token=token),
        "searching runs", budget=10.0)))


def _running_invocations(client, experiment_id: str, suite: str) -> list:
    """The suite's invocation runs still RUNNING (the suite name is compared here, not quoted
    into the filter)."""
    runs = _search(client, experiment_id, f"{kind_filter(INVOCATION)} and "
                                          f"attributes.status = '{State.RUNNING.status}'")
    return [r for r in runs if r.data.tags.get(SUITE) == suite]


def close_stale(uri: str | None, experiment: str, suite: str, lease: float | None = None,
                now: float | None = None) -> list[str]:
    """Mark KILLED every invocation of ``suite`` whose driver is gone (RUNNING, no heartbeat
    within the lease), with the reason, and its trial runs still RUNNING or SCHEDULED. Called
    by ``run``, ``status`` and ``report``, so a killed driver leaves nothing RUNNING for longer
    than the next command. Never creates the experiment. Returns the closed invocations' ids."""
    lease = lease_seconds() if lease is None else lease
    tracker = Tracker(uri, experiment)
    client = tracker.client  # checks the store as a reader: never creates one
    exp = retry(lambda: client.get_experiment_by_name(experiment), "opening the experiment",
                budget=10.0)
    if exp is None or exp.lifecycle_stage == "deleted":
        return []
    experiment_id = exp.experiment_id
    now = time.time() if now is None else now
    closed = []
    for run in _running_invocations(client, experiment_id, suite):
        if _is_live(run, now, lease):
            continue
        run_id = run.info.run_id
        reason = f"{DRIVER_GONE}: no heartbeat since {_utc(_last_beat(run))}"
        for trial in _search(client, experiment_id, f"tags.`{PARENT}` = '{run_id}'"):
            if not State.of(trial.info.status).ended:
                TrialWriter(RunLogger(tracker.uri, trial.info.run_id)).end(
                    State.KILLED, f"{reason} (invocation run {run_id})")
        RunLogger(tracker.uri, run_id).finish(State.KILLED.status, reason)
        closed.append(run_id)
    return closed


def live_holder(tracker: Tracker, suite: str, lease: float | None = None,
                exclude: str | None = None) -> Holder | None:
    """The oldest live invocation of ``suite`` other than ``exclude``, if any."""
    lease = lease_seconds() if lease is None else lease
    now = time.time()
    live = [r for r in _running_invocations(tracker.client, tracker.connect(), suite)
            if _is_live(r, now, lease) and r.info.run_id != exclude]
    return Holder.of(min(live, key=_order)) if live else None


class Heartbeat:
    """Refreshes the heartbeat tag of the invocation run from a daemon thread until stopped; a
    failed refresh is retried at the next beat (the lease outlasts several)."""

    def __init__(self, logger: RunLogger, interval: float) -> None:
        self.logger, self.interval = logger, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="fmbench-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.logger.set_tags({HEARTBEAT: f"{time.time():.3f}"})
            except Exception:  # the tracking store is down: the next beat tries again
                pass

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class Lease:
    """This driver's invocation run and its heartbeat; :meth:`release` with its final status."""

    logger: RunLogger
    heartbeat: Heartbeat
    waited: bool = False

    @property
    def run_id(self) -> str:
        return self.logger.run_id

    def release(self, state: State, reason: str | None = None) -> None:
        """End the invocation run ``state`` (finished, failed or killed), with why if not
        finished, and with it the lease."""
        self.heartbeat.stop()
        self.logger.finish(state.status, reason)


def wait_until_free(tracker: Tracker, suite: str, *, wait: bool, stream: TextIO = sys.stderr,
                    poll: float | None = None) -> bool:
    """Before anything is created or started: fail (or with ``wait`` poll) while a live driver
    holds ``suite``. Returns whether it waited."""
    lease = lease_seconds()
    poll = heartbeat_interval(lease) if poll is None else poll
    waited = False
    while (holder := live_holder(tracker, suite, lease)) is not None:
        _held_by(holder, suite, wait=wait, told=waited, stream=stream)
        waited = True
        time.sleep(poll)
    return waited


def _held_by(holder: Holder, suite: str, *, wait: bool, told: bool, stream: TextIO) -> None:
    """Another driver holds ``suite``: refuse in one line, or say once that this one waits."""
    if not wait:
        raise SuiteLockedError(f"suite {suite!r} is being run by another driver: "
                               f"{holder.describe()}; rerun with --wait to wait for it")
    if not told:
        stream.write(f"waiting for the driver of suite {suite!r}: {holder.describe()}\n")
        stream.flush()


def acquire(tracker: Tracker, suite: str, name: str, tags: dict[str, Any], *, wait: bool,
            stream: TextIO = sys.stderr, settle: float | None = None,
            poll: float | None = None) -> Lease:
    """Create this driver's invocation run with the lease tags and win the election for
    ``suite`` (see the module docstring). Loses at once with :class:`SuiteLockedError` (its run
    KILLED), or with ``wait`` keeps its run beating and polls until it wins."""
    lease = lease_seconds()
    interval = heartbeat_interval(lease)
    settle = min(1.0, interval) if settle is None else settle
    poll = interval if poll is None else poll
    now = time.time()
    logger = tracker.start_run(name, {**tags, KIND: INVOCATION, SUITE: suite,
                                      HOST: socket.gethostname(), PID: os.getpid(),
                                      STARTED_AT: _utc(now), HEARTBEAT: f"{now:.3f}",
                                      LEASE: CANDIDATE})
    beat = Heartbeat(logger, interval).start()
    waited = False
    try:
        time.sleep(settle)  # runs created at the same moment are visible to each other after it
        while True:
            winner = _elect(tracker, suite, logger.run_id, lease)
            if winner is None:
                logger.set_tags({LEASE: HELD})
                return Lease(logger, beat, waited)
            _held_by(winner, suite, wait=wait, told=waited, stream=stream)
            waited = True
            time.sleep(poll)
    except BaseException as exc:  # lost, interrupted, or the store failed: free the suite
        beat.stop()
        reason = LOST_ELECTION if isinstance(exc, SuiteLockedError) else (
            "interrupted while waiting for the suite" if isinstance(exc, KeyboardInterrupt)
            else f"could not take the suite's lease: {str(exc)[:200]}")
        try:
            logger.finish(State.KILLED.status, reason)
        except Exception:  # already failing: the original error is the one to report
            pass
        raise


def _elect(tracker: Tracker, suite: str, mine: str, lease: float) -> Holder | None:
    """None when this driver (run ``mine``) wins; else the live invocation it loses to."""
    now = time.time()
    live = [r for r in _running_invocations(tracker.client, tracker.connect(), suite)
            if _is_live(r, now, lease) or r.info.run_id == mine]
    # Invocations without a lease tag come from drivers older than the lease: they hold.
    holders = [r for r in live if r.info.run_id != mine and r.data.tags.get(LEASE, HELD) == HELD]
    if holders:
        return Holder.of(min(holders, key=_order))
    first = min(live, key=_order) if live else None
    if first is None or first.info.run_id == mine:
        return None
    return Holder.of(first)


def gone_count(runs) -> int:
    """Invocations in a runs table (``mlflow.search_runs`` layout) closed by :func:`close_stale`:
    what the report's banner mentions."""
    reason = tag_column(REASON)
    if tag_column(KIND) not in runs or reason not in runs or "status" not in runs:
        return 0
    invocations = of_kind(runs, INVOCATION)
    gone = invocations[reason].fillna("").astype(str).str.startswith(DRIVER_GONE)
    return int(((invocations["status"] == State.KILLED.status) & gone).sum())


def closed_note(closed: list[str]) -> str:
    """The line a command prints after :func:`close_stale` closed invocations."""
    n = len(closed)
    return (f"fmbench: note: {n} invocation{'s' if n > 1 else ''} of this suite had no driver "
            f"any more (no heartbeat within the lease): marked KILLED with their unfinished "
            f"trial runs")


__all__ = ["DRIVER_GONE", "Heartbeat", "Holder", "Lease", "SuiteLockedError", "acquire",
           "close_stale", "closed_note", "gone_count", "heartbeat_interval", "lease_seconds",
           "live_holder", "wait_until_free"]
