"""Real servers for tests: a multi-node Ray cluster and an ``mlflow server``, both on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` with a SQLite backend and served artifacts, bound to 127.0.0.1.
    ``stop`` and ``start`` again keep the port and the store: a tracking server restarting.
    ``auth=(user, password)`` runs MLflow's basic-auth app (needs ``mlflow[auth]``) with that
    admin; its user database and config live in ``folder`` too. ``artifacts``: where the server
    keeps artifacts (default ``folder/artifacts``; a URI such as ``s3://bucket/prefix``)."""

    def __init__(self, folder: Path, auth: tuple[str, str] | None = None,
                 artifacts: str | None = None) -> None:
        self.folder = folder
        self.artifacts = artifacts or str(folder / "artifacts")
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.auth = auth
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 120) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
               "--artifacts-destination", self.artifacts, "--serve-artifacts",
               "--workers", "1"]
        env = dict(os.environ)
        if self.auth is not None:
            config = self.folder / "basic_auth.ini"
            config.write_text("[mlflow]\ndefault_permission = READ\n"
                              f"database_uri = sqlite:///{self.folder / 'basic_auth.db'}\n"
                              f"admin_username = {self.auth[0]}\n"
                              f"admin_password = {self.auth[1]}\n"
                              "authorization_function = "
                              "mlflow.server.auth:authenticate_request_basic_auth\n")
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
            env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", os.urandom(16).hex())  # CSRF key
            cmd += ["--app-name", "basic-auth"]
        with open(self.folder / "server.log", "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (self.folder / "server.log").read_text()[-2000:]
                    self.stop()
                    raise RuntimeError(f"mlflow server did not start: {log_text}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.proc = None


@contextmanager
def mlflow_server(folder: Path):
    """A running :class:`MlflowServer` for the ``with`` block; yields its URI."""
    server = MlflowServer(folder)
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()
