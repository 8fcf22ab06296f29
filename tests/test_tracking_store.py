"""The tracking store as a user can get it wrong: a damaged or missing store, a URI
MLflow cannot use, two drivers creating one store at once, a server that wants credentials.
Every case is one line on stderr, and a read-only command leaves the store byte for byte as it
was (or absent)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness.run import record
from harness.cli import main
from harness.run.tracking import Tracker
from harness.run.store import TrackingError, check_reachable, mask_uri
from tests.servers import MlflowServer
from tests.test_suite import MINIMAL
from tests.helpers import error_line, finished_trial

ROOT = Path(__file__).resolve().parents[1]


def _suite(folder: Path) -> Path:
    path = folder / "s.yaml"
    path.write_text(MINIMAL + f"storage: {{checkpoints: {folder / 'ckpt'}}}\n")
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A store fmbench made: the suite's experiment with one finished trial run."""
    folder = tmp_path_factory.mktemp("pristine")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    finished_trial(uri, "t")
    return folder / "mlflow.db"


# -- 1. a damaged store -----------------------------------------------------------------------

def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _garbage_start(data: bytes) -> bytes:
    return b"\xde\xad\xbe\xef" * 256 + data[1024:]


def _garbage_middle(data: bytes) -> bytes:
    # Page 2 onwards holds sqlite_master's children and MLflow's tables: overwrite a run of pages.
    return data[:4096] + bytes(range(256)) * 64 + data[4096 + 16384:]


DAMAGE = {
    "cut to half": (_half, "not a readable MLflow database"),
    "garbage at the start": (_garbage_start,
                             "not a readable MLflow database (file is not a database)"),
    "garbage in the middle": (_garbage_middle, "not a readable MLflow database"),
    "a text file": (lambda data: b"experiments: none\n" * 100,
                    "not a readable MLflow database (file is not a database)"),
    "0 bytes": (lambda data: b"", "is empty (no MLflow tables)"),
}


def _foreign_db(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (x TEXT)")
    con.commit()
    con.close()


# `run` and `ui` turn an empty file into a store (nothing is lost): see test_an_empty_file_...
CASES = [(d, c) for d in DAMAGE for c in ("status", "report", "run", "ui")
         if d != "0 bytes" or c in ("status", "report")]


@pytest.mark.parametrize("damage, command", CASES, ids=[f"{d}-{c}" for d, c in CASES])
def test_damaged_store_is_one_line_and_left_as_it_was(pristine, tmp_path, capsys, command, damage):
    corrupt, problem = DAMAGE[damage]
    db = tmp_path / "mlflow.db"
    db.write_bytes(corrupt(pristine.read_bytes()))
    before = _digest(db)
    uri = f"sqlite:///{db}"
    capsys.readouterr()
    args = [command] + ([] if command == "ui" else [str(_suite(tmp_path))])
    assert main(args + ["--tracking-uri", uri]) == 2
    line = error_line(capsys)
    assert line.startswith(f"fmbench: error: tracking store sqlite:///{db} "), line
    assert problem in line, line
    assert _digest(db) == before
    assert not (tmp_path / "ckpt").exists()


def test_sqlite_database_of_another_program_is_refused(tmp_path, capsys):
    db = tmp_path / "other.db"
    _foreign_db(db)
    before = _digest(db)
    for command in ("status", "report", "run", "ui"):
        args = [command] + ([] if command == "ui" else [str(_suite(tmp_path))])
        assert main(args + ["--tracking-uri", f"sqlite:///{db}"]) == 2
        assert "is a SQLite database but not an MLflow one (no 'alembic_version' table)" \
            in error_line(capsys)
    assert _digest(db) == before


def test_a_folder_is_not_a_store(tmp_path, capsys):
    (tmp_path / "x.db").mkdir()
    assert main(["status", str(_suite(tmp_path)), "--tracking-uri",
                 f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "is a folder, not a SQLite database file" in error_line(capsys)


def test_an_empty_file_becomes_a_store_only_for_a_writer(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    assert main(["status", str(_suite(tmp_path)), "--tracking-uri", f"sqlite:///{db}"]) == 2
    assert "is empty" in error_line(capsys) and db.stat().st_size == 0
    Tracker(f"sqlite:///{db}", "t").connect()
    assert f"creating tracking store sqlite:///{db}" in capsys.readouterr().err
    assert db.stat().st_size > 0


def test_intact_store_is_read_without_being_written(pristine, tmp_path, capsys):
    """status on a good store reads it and writes nothing (no migration, no experiment)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(pristine, db)
    before = _digest(db)
    other = _suite(tmp_path)
    other.write_text(other.read_text().replace("name: t", "name: never-ran"))
    assert main(["status", str(other), "--tracking-uri", f"sqlite:///{db}"]) == 0
    out = capsys.readouterr().out
    assert "1 not run" in out
    assert _digest(db) == before


# -- 2. a URI MLflow cannot use -----------------------------------------------------------------

BAD_URIS = {
    "file:./mlruns": "is MLflow's file store, which MLflow 3 refuses unless "
                     "MLFLOW_ALLOW_FILE_STORE=true",
    "./mlruns": "is a path, not a URI (a SQLite file at that path is sqlite:///./mlruns)",
    "/tmp/x": "is a path, not a URI (a SQLite file at that path is sqlite:////tmp/x)",
    "ftp://x": "has a scheme fmbench cannot track to (ftp)",
    "postgresql://u@127.0.0.1/db": "needs the Python driver",
    "mysql+nosuchdriver://u@127.0.0.1/db": "is not a database URI SQLAlchemy understands",
    "sqlite://relative.db": "needs three slashes before a relative path, four before an "
                            "absolute one",
    "sqlite:///": "names no database file",
    "http://127.0.0.1:port": "has a port that is not a number",
}


@pytest.mark.parametrize("command", ["run", "status", "report", "ui"])
@pytest.mark.parametrize("uri", BAD_URIS, ids=BAD_URIS)
def test_unusable_uri_says_what_is_wrong_and_what_works(tmp_path, capsys, monkeypatch, command,
                                                        uri):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    suite = str(_suite(tmp_path))
    args = [command] + ([] if command == "ui" else [suite])
    assert main(args + ["--tracking-uri", uri]) == 2
    line = error_line(capsys)
    assert line.startswith(f"fmbench: error: tracking URI {uri!r} {BAD_URIS[uri]}"), line
    assert line.endswith("; use sqlite:///relative/path.db, sqlite:////absolute/path.db, "
                         "http(s)://host:port, or a postgresql://, mysql:// or mssql:// URI "
                         "whose Python driver is installed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # nothing created


def test_environment_uri_is_checked_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://x")
    assert main(["status", str(_suite(tmp_path))]) == 2
    assert "tracking URI 'ftp://x' has a scheme" in error_line(capsys)


# -- 3. a store that does not exist -------------------------------------------------------------

@pytest.mark.parametrize("command", ["status", "report"])
def test_readers_refuse_a_missing_store_and_create_nothing(tmp_path, capsys, command):
    db = tmp_path / "dir" / "x.db"
    suite = str(_suite(tmp_path))
    for target in (db, tmp_path / "y.db"):  # missing folder, and a folder that exists
        assert main([command, suite, "--tracking-uri", f"sqlite:///{target}"]) == 2
        assert error_line(capsys) == (f"fmbench: error: no tracking store at sqlite:///{target} "
                                       "(no such file); run the suite first or pass the "
                                       "--tracking-uri it ran with")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_run_refuses_a_store_whose_folder_is_missing(tmp_path, capsys):
    db = tmp_path / "nonexistent" / "dir" / "x.db"
    assert main(["run", str(_suite(tmp_path)), "--tracking-uri", f"sqlite:///{db}"]) == 2
    assert error_line(capsys) == (f"fmbench: error: cannot create tracking store "
                                   f"sqlite:///{db}: folder {db.parent} does not exist")
    assert not (tmp_path / "nonexistent").exists() and not (tmp_path / "ckpt").exists()


def test_a_writer_creates_the_store_and_says_so(tmp_path, capsys):
    db = tmp_path / "new.db"
    tracker = Tracker(f"sqlite:///{db}", "fresh")
    exp = tracker.connect()
    err = capsys.readouterr().err.splitlines()  # then MLflow's own log lines
    assert err[0] == f"creating tracking store sqlite:///{db}"
    assert db.is_file() and (tmp_path / "new.db.lock").is_file()
    tags = tracker.client.get_experiment(exp).tags
    assert tags[record.EXPERIMENT_KIND] == record.TRAINING_KIND
    assert tags[record.KIND] == record.SUITE_KIND
    Tracker(f"sqlite:///{db}", "fresh").connect()  # an existing store: nothing said
    assert "creating" not in capsys.readouterr().err


def test_an_older_experiment_gets_the_training_kind_when_opened_for_writing(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'old.db'}"
    Tracker(uri, "bootstrap").connect()  # the store, made the way fmbench makes it
    exp = MlflowClient(tracking_uri=uri).create_experiment("old",
                                                           tags={record.KIND: record.SUITE_KIND})
    Tracker(uri, "old").trial_runs()  # reading changes nothing
    assert record.EXPERIMENT_KIND not in MlflowClient(tracking_uri=uri).get_experiment(exp).tags
    Tracker(uri, "old").connect()
    assert MlflowClient(tracking_uri=uri).get_experiment(exp).tags[record.EXPERIMENT_KIND] == \
        record.TRAINING_KIND


# -- 4. two drivers create one new store at the same moment -------------------------------------

RACER = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    from harness.run.tracking import Tracker
    folder, name, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for i in range(rounds):
        (folder / f"ready-{i}-{name}").touch()
        while not (folder / f"go-{i}").exists():
            time.sleep(0.005)
        exp = Tracker(f"sqlite:///{folder / f'store-{i}.db'}", "race").connect()
        print(i, exp, flush=True)
""")


def test_two_processes_create_one_new_store_at_once(tmp_path):
    """Both processes are released by one barrier file per round, onto a store that does not
    exist yet; without the lock the second dies in MLflow's migration, most rounds."""
    rounds = 3
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FMBENCH_TRACKING_RETRY_S": "0"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), name, str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for name in ("a", "b")]
    try:
        for i in range(rounds):
            deadline = time.monotonic() + 120
            while not all((tmp_path / f"ready-{i}-{n}").exists() for n in "ab"):
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                assert time.monotonic() < deadline, "the racers never got ready"
                time.sleep(0.01)
            (tmp_path / f"go-{i}").touch()
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
        assert [line.split()[0] for line in out.splitlines()] == [str(i) for i in range(rounds)]
    for i in range(rounds):  # both saw the same single experiment, created once
        ids = {out.splitlines()[i].split()[1] for out, _ in results}
        assert len(ids) == 1, results
        errs = [err for _, err in results]
        assert sum(f"creating tracking store sqlite:///{tmp_path / f'store-{i}.db'}" in e
                   for e in errs) == 1, errs


# -- 5. a server that asks for credentials ------------------------------------------------------

def test_mask_uri_hides_every_password():
    assert mask_uri("http://u:secret@127.0.0.1:5000") == "http://u:***@127.0.0.1:5000"
    assert mask_uri("postgresql://u:p%40ss@db.example/x") == "postgresql://u:***@db.example/x"
    assert mask_uri("mysql+pymysql://u:a@b@h/x?password=z&ssl=1") == \
        "mysql+pymysql://u:***@h/x?password=***&ssl=1"
    assert mask_uri("see http://u:pw@h/a and https://v:q@k") == \
        "see http://u:***@h/a and https://v:***@k"
    for plain in ("http://127.0.0.1:5000", "http://user@h:1/x", "sqlite:////a:b@c/x.db"):
        assert mask_uri(plain) == plain


class _Refusing(http.server.BaseHTTPRequestHandler):
    """/health answers 200; everything else 401 unless the basic-auth header is u:right."""

    def do_GET(self):  # noqa: N802 -- http.server's name
        good = "Basic " + base64.b64encode(b"u:right").decode()
        if self.path == "/health" or self.headers.get("Authorization") == good:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")
        else:
            self.send_response(401)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_credentials_come_from_the_uri_or_the_environment(refusing_server, monkeypatch):
    host = refusing_server[len("http://"):]
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    check_reachable(f"http://u:right@{host}")
    with pytest.raises(TrackingError) as info:
        check_reachable(f"http://u:wrong@{host}")
    assert str(info.value) == (f"tracking server http://u:***@{host} refused the credentials "
                               "(401): set MLFLOW_TRACKING_USERNAME and "
                               "MLFLOW_TRACKING_PASSWORD to a user with access")
    with pytest.raises(TrackingError, match="refused the credentials"):
        check_reachable(refusing_server)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "u")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "right")
    check_reachable(refusing_server)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """``mlflow server --app-name basic-auth`` on 127.0.0.1 (needs Flask-WTF, mlflow[auth])
    with an admin and a suite already run through it."""
    try:
        import flask_wtf  # noqa: F401 -- what `mlflow[auth]` adds
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("mlflow[auth] is not installed; the dev extra installs it")
        pytest.skip("mlflow[auth] is not installed (pip install -e '.[dev]'); CI fails here")
    folder = tmp_path_factory.mktemp("auth")
    server = MlflowServer(folder, auth=("admin", "s3cret-Pa55-long"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow  # about 2 minutes on 2 shared cores: the auth server's start and slow hashes
def test_basic_auth_server_one_line_and_no_password_shown(auth_server, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    suite = str(_suite(tmp_path))
    uri = auth_server.uri
    host = uri[len("http://"):]
    for command in ("status", "report", "run"):
        assert main([command, suite, "--tracking-uri", uri]) == 2
        assert error_line(capsys) == (f"fmbench: error: tracking server {uri} refused the "
                                       "credentials (401): set MLFLOW_TRACKING_USERNAME and "
                                       "MLFLOW_TRACKING_PASSWORD")
        assert main([command, suite, "--tracking-uri", f"http://admin:wrong-Pa55-long@{host}"]) == 2
        line = error_line(capsys)
        assert f"tracking server http://admin:***@{host} refused the credentials (401)" in line
        assert "wrong-Pa55-long" not in line
    assert not (tmp_path / "ckpt").exists()

    # The right password in the URI: status reads the store and never prints the password.
    Tracker(f"http://admin:s3cret-Pa55-long@{host}", "t").connect()
    assert main(["status", suite, "--tracking-uri", f"http://admin:s3cret-Pa55-long@{host}"]) == 0
    captured = capsys.readouterr()
    assert "s3cret" not in captured.out + captured.err
    assert f"(tracking http://admin:***@{host})" in captured.out
    # ... and from MLflow's own variables.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-Pa55-long")
    assert main(["status", suite, "--tracking-uri", uri]) == 0
    assert "1 not run" in capsys.readouterr().out


def test_file_store_only_when_mlflow_allows_it(tmp_path, capsys, monkeypatch):
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE=true; so does fmbench, and
    with it a relative file: URI is made absolute and a missing folder is refused by readers."""
    from harness.run.store import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert resolve_tracking_uri("file:./mlruns") == (tmp_path / "mlruns").resolve().as_uri()
    assert main(["status", str(_suite(tmp_path)), "--tracking-uri", "file:./mlruns"]) == 2
    assert error_line(capsys) == (f"fmbench: error: no tracking store at "
                                   f"{(tmp_path / 'mlruns').resolve().as_uri()} (no such "
                                   "folder); run the suite first or pass the --tracking-uri it "
                                   "ran with")
    assert not (tmp_path / "mlruns").exists()


def test_a_store_another_program_creates_at_the_same_moment_fails_one_try_not_the_run(
        tmp_path, monkeypatch):
    """MlflowClient opens, and on a new file migrates, its store when constructed: a UI or script
    creating the same new store at that moment makes the driver's first client fail with
    ``table ... already exists``. The driver makes its client inside the retried call."""
    import sqlalchemy.exc

    from harness.run import tracking

    real, calls = tracking.mlflow_client, []

    def racing(uri):
        calls.append(uri)
        if len(calls) == 1:
            real(uri)  # the other program's migration wins the race...
            raise sqlalchemy.exc.OperationalError(  # ...and ours loses it
                "CREATE TABLE latest_metrics", {}, Exception("table latest_metrics already exists"))
        return real(uri)

    monkeypatch.setattr(tracking, "mlflow_client", racing)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "race")
    assert tracker.connect() and len(calls) == 2
    assert tracker.find() == tracker.connect()
