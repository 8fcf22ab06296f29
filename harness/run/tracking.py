"""MLflow tracking: the only module that talks to the tracking store (docs/design.md §5).

Layout users see in the MLflow UI: one experiment per suite, a parent run per ``fmbench run``
invocation, one child run per trial tagged with its key; what each run holds, and every name in
it, is :mod:`harness.run.record`'s. Workers log through :class:`RunLogger`, which is picklable (it
carries the URI and run id, not a client) and retries with backoff, so a tracking server that
restarts for a few seconds loses nothing.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from harness import __version__
from harness.errors import HarnessError
from harness.run.record import (EXPERIMENT_KIND, HARNESS_VERSION, KEY, KIND, PARENT, REASON,
                            SUITE_KIND, TRAINING_KIND, TRIAL, State, flatten, kind_filter)
from harness.settings import env_seconds

T = TypeVar("T")


class TrackingError(HarnessError):
    """The tracking store cannot be reached or refused a request after retries."""


ACCEPTED = ("sqlite:///relative/path.db, sqlite:////absolute/path.db, http(s)://host:port, or a "
            "postgresql://, mysql:// or mssql:// URI whose Python driver is installed")
"""What ``--tracking-uri`` takes, said in every message that refuses one."""
DATABASES = ("postgresql", "mysql", "mssql")
"""Server databases MLflow keeps runs in besides SQLite (``scheme`` or ``scheme+driver``)."""
MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs"})
"""Tables every MLflow SQLite store has: a database without them is someone else's."""

CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
"""MLflow's variables for a server's credentials: also passed to Ray tasks on other nodes."""

_USERINFO = re.compile(r"(://[^/\s:@]*):[^\s/]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&\s]*", re.IGNORECASE)


def mask_uri(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``
    (``http://u:secret@h`` -> ``http://u:***@h``, also ``?password=``): every message, log line
    and report that names a store goes through this, so none shows a password."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The URI to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default SQLite store
    ``./mlflow.db``, checked here so every command refuses a URI MLflow would answer with a
    traceback. Relative SQLite paths are made absolute so Ray workers, whose working directory
    may differ from the driver's, write to the same file."""
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db").strip()
    shown = mask_uri(uri)

    def refuse(why: str) -> TrackingError:
        return TrackingError(f"tracking URI {shown!r} {why}; use {ACCEPTED}")

    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    scheme = match.group(1).lower() if match else ""
    if scheme == "":
        return _refuse_path(uri, refuse)
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise refuse("needs three slashes before a relative path, four before an absolute one")
        path, sep, query = uri[len("sqlite:///"):].partition("?")
        if not path or path == ":memory:":
            raise refuse("names no database file")
        return "sqlite:///" + str(Path(path).resolve()) + sep + query
    if scheme in ("http", "https"):
        parts = urllib.parse.urlsplit(uri)
        try:
            parts.port  # noqa: B018 -- raises on a port that is not a number
        except ValueError:
            raise refuse("has a port that is not a number") from None
        if not parts.hostname:
            raise refuse("names no host")
        return uri
    if scheme.split("+")[0] in DATABASES:
        return _check_database_uri(uri, refuse)
    if scheme == "file":
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
            raise refuse("is MLflow's file store, which MLflow 3 refuses unless "
                         "MLFLOW_ALLOW_FILE_STORE=true")
        parts = urllib.parse.urlsplit(uri)
        if parts.netloc or not parts.path:
            raise refuse("is not a local folder (file:///absolute/path or file:./relative/path)")
        return Path(urllib.parse.unquote(parts.path)).resolve().as_uri()
    raise refuse(f"has a scheme fmbench cannot track to ({scheme})")


def _refuse_path(uri: str, refuse: Callable[[str], TrackingError]) -> str:
    raise refuse(f"is a path, not a URI (a SQLite file at that path is sqlite:///{uri})")


def _check_database_uri(uri: str, refuse: Callable[[str], TrackingError]) -> str:
    """A database URI SQLAlchemy understands and whose driver imports (MLflow would otherwise
    fail with ``ModuleNotFoundError`` deep inside its store)."""
    from sqlalchemy.engine import make_url

    try:
        dialect = make_url(uri).get_dialect()
    except Exception as exc:  # ArgumentError, NoSuchModuleError: not a usable database URI
        raise refuse(f"is not a database URI SQLAlchemy understands ({_first_line(exc)})") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise refuse(f"needs the Python driver {exc.name or 'for its database'}, which is not "
                     f"installed (pip install it, or pick another store)") from None
    return uri


def _first_line(exc: BaseException) -> str:
    return mask_uri((str(exc).strip().splitlines() or [type(exc).__name__])[0][:200])


def sqlite_path(uri: str) -> Path | None:
    """The database file of a resolved ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].partition("?")[0])


def _sqlite_tables(path: Path, shown: str) -> set[str]:
    """The tables of a SQLite file, after SQLite's own consistency check; read-only, so a
    damaged or foreign file is reported and left exactly as it was."""
    def inspect(uri: str) -> set[str]:
        con = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            rows = con.execute("PRAGMA quick_check(1)").fetchall()
            if rows != [("ok",)]:
                detail = str(rows[0][0]).splitlines()[0][:160] if rows else "no answer"
                raise sqlite3.DatabaseError(f"database disk image is malformed: {detail}")
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()

    location = path.resolve().as_uri()
    try:
        try:
            return inspect(location + "?mode=ro")
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc) and "read-only" not in str(exc):
                raise
            # A hot journal left by a killed writer: only a read-write open rolls it back,
            # which is SQLite's own recovery (MLflow's first access would do the same).
            return inspect(location)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise TrackingError(f"tracking store {shown} stayed locked by another process for "
                                "30 s; try again") from None
        problem = str(exc)
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    raise TrackingError(f"tracking store {shown} is not a readable MLflow database ({problem})")


def check_store(uri: str, *, create: bool = False) -> bool:
    """Check a local store before MLflow opens it: MLflow would create a missing SQLite file,
    migrate an empty one and answer a damaged one with a long traceback. Read-only commands pass
    ``create=False`` and get one line for a store that is missing, empty, damaged or not
    MLflow's. Returns True when the store does not exist yet (or is an empty file) and
    ``create`` lets the caller make it; server stores are checked by :func:`check_reachable`."""
    shown = mask_uri(uri)
    if uri.startswith("file:"):
        folder = Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
        if not create and not folder.is_dir():
            raise TrackingError(f"no tracking store at {shown} (no such folder); run the suite "
                                "first or pass the --tracking-uri it ran with")
        return not folder.exists()
    path = sqlite_path(uri)
    if path is None:
        return False
    if not path.exists():
        if not create:
            raise TrackingError(f"no tracking store at {shown} (no such file); run the suite "
                                "first or pass the --tracking-uri it ran with")
        folder = path.parent
        if not folder.is_dir():
            raise TrackingError(f"cannot create tracking store {shown}: folder {folder} "
                                f"{'is not a folder' if folder.exists() else 'does not exist'}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise TrackingError(f"cannot create tracking store {shown}: folder {folder} is not "
                                "writable")
        return True
    if path.is_dir():
        raise TrackingError(f"tracking store {shown} is a folder, not a SQLite database file")
    tables = _sqlite_tables(path, shown)
    if not tables:  # a 0-byte file or an empty SQLite database: nothing to lose
        if create:
            return True
        raise TrackingError(f"tracking store {shown} is empty (no MLflow tables); run the suite "
                            "first or pass the --tracking-uri it ran with")
    missing = sorted(MLFLOW_TABLES - tables)
    if missing:
        raise TrackingError(f"tracking store {shown} is a SQLite database but not an MLflow "
                            f"one (no {missing[0]!r} table)")
    return False


_CHECKED: set[str] = set()
"""Stores checked in this process: the check (a read of the whole file) runs once per process."""


def check_readable(uri: str) -> None:
    """Everything a read-only command checks before MLflow touches the store: a server answers
    and accepts the credentials, a local store exists and is an intact MLflow store."""
    if uri not in _CHECKED:
        check_reachable(uri)
        check_store(uri, create=False)
        _CHECKED.add(uri)


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<db>.lock`` next to a SQLite store (nothing for other stores):
    two processes creating one new store at once race in MLflow's first migration
    (``table latest_metrics already exists``), so its creation happens under this lock. The lock
    file stays: removing it would let a third process lock a different file."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    lock = Path(str(path) + ".lock")
    try:
        handle = open(lock, "a")
    except OSError as exc:
        raise TrackingError(f"cannot create the lock file {lock} next to tracking store "
                            f"{mask_uri(uri)} ({exc.strerror})") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def split_credentials(uri: str) -> tuple[str, dict[str, str], bool]:
    """(URI without user:password, HTTP auth headers, whether credentials were given), from the
    URI's user info or MLflow's own variables (MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN)."""
    parts = urllib.parse.urlsplit(uri)
    bare = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    user, password = parts.username, parts.password
    if user is None:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    else:
        user, password = urllib.parse.unquote(user), urllib.parse.unquote(password or "")
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        return bare, {"Authorization": f"Basic {token}"}, True
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return bare, {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}, True
    return bare, {}, False


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail at once, in one line, when an HTTP tracking server does not answer its health check
    or refuses the credentials (basic auth: from the URI or MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    if not uri.startswith(("http://", "https://")):
        return
    shown = mask_uri(uri)
    bare, headers, given = split_credentials(uri)
    base = bare.rstrip("/")
    # /health answers without credentials; one cheap authenticated read tells whether they work
    # (given longer: a basic-auth server checks a password with a deliberately slow hash).
    for path, wait in (("/health", timeout),
                       ("/api/2.0/mlflow/experiments/search?max_results=1", 6 * timeout)):
        request = urllib.request.Request(base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=wait) as resp:
                if path == "/health" and resp.status != 200:
                    raise TrackingError(f"tracking server {shown} answered {resp.status} to "
                                        "/health")
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                what = ("refused the credentials" if exc.code == 401 or not given
                        else "refused access")
                raise TrackingError(
                    f"tracking server {shown} {what} ({exc.code}): set MLFLOW_TRACKING_USERNAME "
                    f"and MLFLOW_TRACKING_PASSWORD{' to a user with access' if given else ''}"
                ) from None
            if path == "/health":
                raise TrackingError(f"tracking server {shown} answered {exc.code} to /health") \
                    from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking server {shown} is unreachable "
                                f"({mask_uri(str(reason))})") from None


def ui_url(base: str, experiment_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment's training runs (or of all experiments).
    MLflow 3.17's UI opens an experiment in its GenAI view (Overview, Traces, Prompts) unless the
    page's ``workflowType`` is ``machine_learning``; it derives the experiment kind from that
    switch, not from the ``mlflow.experimentKind`` tag (read in its bundled JavaScript, checked
    in headless Chromium by tests/test_mlflow_ui.py)."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


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
                raise TrackingError(f"{what} failed: {_first_line(exc)}") from None
            if time.monotonic() + wait > deadline:
                raise TrackingError(f"{what} failed after {tries} tries over {budget:g} s: "
                                    f"{_first_line(exc)}") from None
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
                _CHECKED.add(self.uri)
                client = mlflow_client(self.uri)

                def get_or_create() -> str:
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
