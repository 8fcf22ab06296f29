"""MLflow tracking: the only module that talks to the tracking store (DESIGN.md §2).

Layout users see in the MLflow UI: one experiment per suite, a parent run per ``fmbench run``
invocation, one child run per trial tagged with its key. Workers log through :class:`RunLogger`,
which is picklable (it carries the URI and run id, not a client) and retries with backoff, so a
tracking server that restarts for a few seconds loses nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from harness import __version__
from harness.errors import HarnessError

T = TypeVar("T")

TAG = "fmbench."
KIND, SUITE, KEY, REASON = TAG + "kind", TAG + "suite", TAG + "trial_key", TAG + "failure"
PARENT_TAG = "mlflow.parentRunId"
FINISHED, FAILED, KILLED, RUNNING, SCHEDULED = "FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"


class TrackingError(HarnessError):
    """The tracking store cannot be reached or refused a request after retries."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The URI to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default SQLite store
    ``./mlflow.db``. Relative SQLite paths are made absolute so Ray workers, whose working
    directory may differ from the driver's, write to the same file."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail at once, in one line, when an HTTP tracking server does not answer its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(f"tracking server {uri} answered {resp.status} to /health")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"tracking server {uri} is unreachable ({reason})") from None


def retry_budget() -> float:
    """Seconds a tracking call keeps retrying: ``$FMBENCH_TRACKING_RETRY_S`` or 120, long enough
    for a tracking server to restart; MLflow's own HTTP retries run inside each try."""
    text = os.environ.get("FMBENCH_TRACKING_RETRY_S", "120")
    try:
        value = float(text)
    except ValueError:
        raise TrackingError(f"FMBENCH_TRACKING_RETRY_S must be a number of seconds, "
                            f"got {text!r}") from None
    if not value >= 0:
        raise TrackingError(f"FMBENCH_TRACKING_RETRY_S must be >= 0, got {text!r}")
    return value


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
            if time.monotonic() + wait > deadline:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise TrackingError(f"{what} failed after {tries} tries over {budget:g} s: "
                                    f"{first[:200]}") from None
            time.sleep(wait)
            wait = min(wait * 2, max_wait)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": "0.001"}: MLflow params are flat strings."""
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value, default=str) if not isinstance(value, str) else value
    return out


def git_commit() -> str:
    """The commit of the checkout fmbench runs from, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _client(uri: str):
    # fmbench's own retry (:func:`retry`) paces retries: MLflow's HTTP retries would otherwise
    # back off up to minutes inside every try and delay recovery long after a server is back.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from mlflow import MlflowClient  # imported lazily: the science core never needs MLflow

    return MlflowClient(tracking_uri=uri)


@dataclass(frozen=True)
class RunLogger:
    """Logs to one run from any process; every call retries with backoff."""

    uri: str
    run_id: str

    def _do(self, what: str, fn: Callable[[Any], T]) -> T:
        client = _client(self.uri)
        return retry(lambda: fn(client), f"{what} for run {self.run_id}")

    def _log_points(self, points: Iterable[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v, step in points]
        for i in range(0, len(batch), 500):  # log_batch accepts at most 1000 metrics a call
            self._do("logging metrics", lambda c, b=batch[i:i + 500]: c.log_batch(self.run_id, metrics=b))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Several metrics at one step."""
        self._log_points((k, v, step) for k, v in metrics.items())

    def log_history(self, key: str, points: Iterable[tuple[int, float]]) -> None:
        """One metric at several steps: (step, value) pairs."""
        self._log_points((key, v, step) for step, v in points)

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

    @property
    def client(self):
        return _client(self.uri)

    def connect(self) -> str:
        """Check the store answers and create the experiment once, here on the driver, before any
        worker touches the store (several processes initialising a SQLite store at once race)."""
        check_reachable(self.uri)
        if self._experiment_id is None:
            client = self.client

            def get_or_create() -> str:
                exp = client.get_experiment_by_name(self.experiment)
                if exp is not None:
                    if exp.lifecycle_stage == "deleted":
                        client.restore_experiment(exp.experiment_id)
                    return exp.experiment_id
                return client.create_experiment(self.experiment, tags={KIND: "suite"})

            self._experiment_id = retry(get_or_create, f"opening experiment {self.experiment!r} "
                                                      f"at {self.uri}", budget=10.0)
        return self._experiment_id

    def start_run(self, name: str, tags: dict[str, Any], parent_id: str | None = None,
                  status: str = RUNNING) -> RunLogger:
        """Create a run; trials start SCHEDULED and turn RUNNING when their task starts."""
        tags = {**tags, "fmbench.harness_version": __version__}
        if parent_id:
            tags[PARENT_TAG] = parent_id
        exp = self.connect()
        run = retry(lambda: self.client.create_run(exp, tags={k: str(v) for k, v in tags.items()},
                                                   run_name=name), f"creating run {name}")
        logger = RunLogger(self.uri, run.info.run_id)
        if status != RUNNING:
            logger.set_status(status)
        return logger

    def reopen(self, run_id: str) -> RunLogger:
        """Mark an unfinished run as scheduled again (its trial resumes from its checkpoint)."""
        logger = RunLogger(self.uri, run_id)
        logger.set_status(SCHEDULED)
        return logger

    def trial_runs(self) -> dict[str, Any]:
        """Latest run per trial key in this experiment (MLflow ``Run`` objects)."""
        exp = self.connect()
        runs: dict[str, Any] = {}
        token = None
        while True:
            page = retry(lambda: self.client.search_runs(
                [exp], filter_string=f"tags.`{KIND}` = 'trial'", max_results=1000,
                order_by=["attributes.start_time ASC"], page_token=token), "searching runs")
            for run in page:
                runs[run.data.tags.get(KEY, "")] = run
            token = page.token
            if not token:
                return runs
