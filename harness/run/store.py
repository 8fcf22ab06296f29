"""Where the MLflow record lives: the tracking URI (resolved, refused with one line when MLflow
could not use it), the store's checks and its creation lock, a server's reachability, passwords
masked in every message, and links into the MLflow UI (docs/design.md §5.1).

No MLflow client here: opening runs and writing them is :mod:`harness.run.tracking`'s.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from harness import errors
from harness.errors import HarnessError


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
        raise refuse(f"is not a database URI SQLAlchemy understands ({first_line(exc)})") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise refuse(f"needs the Python driver {exc.name or 'for its database'}, which is not "
                     f"installed (pip install it, or pick another store)") from None
    return uri


def first_line(exc: BaseException) -> str:
    """:func:`harness.errors.first_line` with any password in it masked (:func:`mask_uri`)."""
    return mask_uri(errors.first_line(exc, 200))


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


def mark_checked(uri: str) -> None:
    """Remember that the store at ``uri`` passed :func:`check_store` in this process."""
    _CHECKED.add(uri)


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
