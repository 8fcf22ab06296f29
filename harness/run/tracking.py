"""MLflow tracking: the only module that opens MLflow clients and writes runs (docs/design.md §5);
which store, and whether it is usable, is :mod:`harness.run.store`'s.

Layout users see in the MLflow UI: one experiment per suite, a parent run per ``fmbench run``
invocation, one child run per trial tagged with its key; what each run holds, and every name in
it, is :mod:`harness.run.record`'s. Workers log through :class:`RunLogger`, which is picklable (it
carries the URI and run id, not a client) and retries with backoff, so a tracking server that
restarts for a few seconds loses nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from harness import __version__
from harness.run.record import (EXPERIMENT_KIND, HARNESS_VERSION, KEY, KIND, PARENT, REASON,
                            SUITE_KIND, TRAINING_KIND, TRIAL, State, flatten, kind_filter)
from harness.run.store import (TrackingError, check_readable, check_reachable, check_store,
                               first_line, mark_checked, mask_uri, resolve_tracking_uri,
                               store_lock)
from harness.settings import env_seconds

T = TypeVar("T")


def retry_budget() -> float:
    """Seconds a tracking call keeps retrying: ``$FMBENCH_TRACKING_RETRY_S`` or 120, long enough
    for a tracking server to restart; MLflow's own HTTP retries run inside each try."""
    return env_seconds("FMBENCH_TRACKING_RETRY_S", 120.0, error=TrackingError, allow_zero=True)


PERMANENT = ("database disk image is malformed", "file is not a database",
             "out-of-date database schema")
"""Errors no wait cures (a damaged or outdated store): :func:`retry` reports them at once."""


def retry(fn: Callable[[], T], what: str, budget: float | None = None,
          first_wait: float = 0.5, max_wait: float = 10.0) -> T:
    """Call ``fn`` until it succeeds, waiting 0.5, 1, 2, ... (at most ``max_wait``) seconds between
    tries, for at most ``budget`` seconds (:func:`retry_budget` by default) before giving up."""
    budget = retry_budget() if budget is None else budget
    deadline = time.monotonic() + budget
    wait, tries = first_wait, 0
    while True:
        tries += 1
        try:
            return fn()
        except Exception as exc:  # MLflow raises many types for a server that is down
            if any(sign in str(exc) for sign in PERMANENT):
                raise TrackingError(f"{what} failed: {first_line(exc)}") from None
            if time.monotonic() + wait > deadline:
                raise TrackingError(f"{what} failed after {tries} tries over {budget:g} s: "
                                    f"{first_line(exc)}") from None
            time.sleep(wait)
            wait = min(wait * 2, max_wait)


def git_commit() -> str:
    """The commit of the checkout fmbench runs from, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def mlflow_client(uri: str):
    """An MlflowClient on ``uri`` with MLflow's own HTTP retries off: fmbench's :func:`retry`
    paces retries, and MLflow's would otherwise back off up to minutes inside every try and delay
    recovery long after a server is back."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from mlflow import MlflowClient  # imported lazily: the science core never needs MLflow

    return MlflowClient(tracking_uri=uri)


def all_runs(search: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every run of a paged search: ``search(page_token)`` returns one page (MLflow's
    ``PagedList``, whose ``token`` names the next page, or is empty after the last one)."""
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


@dataclass(frozen=True)
class RunLogger:
    """Logs to one run from any process; every call retries with backoff."""

    uri: str
    run_id: str

    def _do(self, what: str, fn: Callable[[Any], T]) -> T:
        client = mlflow_client(self.uri)
        return retry(lambda: fn(client), f"{what} for run {self.run_id}")

    def log_points(self, points: Iterable[tuple[str, float, int]]) -> None:
        """(key, value, step) points of any metrics, in as few store calls as MLflow allows (one
        per 500: an evaluation's curves cost one transaction, not one per curve)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v, step in points]
        for i in range(0, len(batch), 500):  # log_batch accepts at most 1000 metrics a call
            self._do("logging metrics", lambda c, b=batch[i:i + 500]: c.log_batch(self.run_id, metrics=b))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Several metrics at one step."""
        self.log_points((k, v, step) for k, v in metrics.items())

    def log_history(self, key: str, points: Iterable[tuple[int, float]]) -> None:
        """One metric at several steps: (step, value) pairs."""
        self.log_points((key, v, step) for step, v in points)

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which metric ``key`` has been logged in this run."""
        history = self._do("reading metric history",
                           lambda c: c.get_metric_history(self.run_id, key))
        return {m.step for m in history}

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self._do("logging params", lambda c, b=items[i:i + 100]: c.log_batch(self.run_id, params=b))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._do("setting tags", lambda c: c.log_batch(self.run_id, tags=items))

    def delete_tag(self, key: str) -> None:
        """Remove tag ``key``, which must exist (MLflow refuses a missing one)."""
        self._do("deleting a tag", lambda c: c.delete_tag(self.run_id, key))

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._do("uploading an artifact", lambda c: c.log_artifact(self.run_id, str(path), folder))

    def set_status(self, status: str) -> None:
        self._do("updating the run status", lambda c: c.update_run(self.run_id, status=status))

    def finish(self, status: str, reason: str | None = None) -> None:
        if reason:
            self.set_tags({REASON: reason[:5000]})
        self._do("closing the run", lambda c: c.set_terminated(self.run_id, status=status))


class Tracker:
    """Driver-side access to a suite's experiment: create runs, find finished trials by key."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.experiment = experiment
        self._experiment_id: str | None = None
        self._new: bool | None = None  # what check_writable found: None before it ran

    @property
    def client(self):
        """A client for a store checked as a reader first (:func:`check_readable`): reading
        never creates, migrates or trips over a damaged store."""
        check_readable(self.uri)
        return mlflow_client(self.uri)

    def check_writable(self) -> None:
        """Check the store as a writer would open it (a server answers, a local store is intact
        or can be created), failing in one line; :meth:`connect` then trusts what was found, so
        a command that checks first (``fmbench run``) still checks once."""
        if self._new is None:
            check_reachable(self.uri)
            self._new = check_store(self.uri, create=True)

    def connect(self) -> str:
        """Check the store and create it if new (said on stderr) and the experiment once, here
        on the driver, before any worker touches the store. A SQLite store is created under
        :func:`store_lock`: two drivers starting together on a new store would race in MLflow's
        first migration. The experiment is tagged as a training experiment for MLflow's UI."""
        if self._experiment_id is None:
            if self._new is None:
                check_reachable(self.uri)
            with store_lock(self.uri):
                # A store found new may have been created since by another driver: look again.
                if self._new is not False and check_store(self.uri, create=True):
                    print(f"creating tracking store {mask_uri(self.uri)}", file=sys.stderr)
                mark_checked(self.uri)

                def get_or_create() -> str:
                    # The client is made inside the retry: MlflowClient opens (and on a new file
                    # migrates) the store when constructed, so another program creating the same
                    # store at this moment (an MLflow UI, a script) fails one try, not the run.
                    client = mlflow_client(self.uri)
                    exp = client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        return client.create_experiment(
                            self.experiment, tags={KIND: SUITE_KIND, EXPERIMENT_KIND: TRAINING_KIND})
                    if exp.lifecycle_stage == "deleted":
                        client.restore_experiment(exp.experiment_id)
                    if EXPERIMENT_KIND not in exp.tags:  # made by an older fmbench
                        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, TRAINING_KIND)
                    return exp.experiment_id

                self._experiment_id = retry(
                    get_or_create, f"opening experiment {self.experiment!r} at "
                                   f"{mask_uri(self.uri)}", budget=10.0)
        return self._experiment_id

    def find(self) -> str | None:
        """The experiment's id, or None when the suite never ran on this store; creates
        nothing (what ``status`` and other readers use)."""
        if self._experiment_id is not None:
            return self._experiment_id
        client = self.client
        exp = retry(lambda: client.get_experiment_by_name(self.experiment),
                    f"opening experiment {self.experiment!r} at {mask_uri(self.uri)}", budget=10.0)
        return None if exp is None or exp.lifecycle_stage == "deleted" else exp.experiment_id

    def start_run(self, name: str, tags: dict[str, Any], parent_id: str | None = None,
                  status: str = State.RUNNING.status) -> RunLogger:
        """Create a run; trials start SCHEDULED and turn RUNNING when their task starts."""
        tags = {**tags, HARNESS_VERSION: __version__}
        if parent_id:
            tags[PARENT] = parent_id
        exp = self.connect()
        run = retry(lambda: self.client.create_run(exp, tags={k: str(v) for k, v in tags.items()},
                                                   run_name=name), f"creating run {name}")
        logger = RunLogger(self.uri, run.info.run_id)
        if status != State.RUNNING.status:
            logger.set_status(status)
        return logger

    def reopen(self, run_id: str) -> RunLogger:
        """Mark an unfinished run as scheduled again (its trial resumes from its checkpoint)."""
        logger = RunLogger(self.uri, run_id)
        logger.set_status(State.SCHEDULED.status)
        return logger

    def trial_runs(self) -> dict[str, Any]:
        """Latest run per trial key in this experiment (MLflow ``Run`` objects); reads only."""
        exp = self.find()
        if exp is None:
            return {}
        client = self.client
        pages = all_runs(lambda token: retry(lambda: client.search_runs(
            [exp], filter_string=kind_filter(TRIAL), max_results=1000,
            order_by=["attributes.start_time ASC"], page_token=token), "searching runs"))
        return {run.data.tags.get(KEY, ""): run for run in pages}
