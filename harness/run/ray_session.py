"""Joining a Ray cluster, or starting a local Ray node, for a suite's driver.

A cluster given with ``--address`` must answer within a bounded time (Ray itself retries for
minutes), and a node fmbench starts is pinned to 127.0.0.1 and shut down with the driver, even
when the driver is killed (:mod:`harness.run.reaper`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError
from harness.settings import env_seconds

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
    shuts down (:meth:`close`), also when the driver is killed (:mod:`harness.run.reaper`)."""

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
            from harness.run.reaper import Watchdog

            info = context.address_info
            session.watchdog = Watchdog(info["node_id"], info["session_dir"])
        return session
    _join(address, connect_timeout(timeout), options)
    return RaySession()


def ship_modules(paths: list[str]) -> list[str]:
    """Upload Python modules (``.py`` files, package folders) to the cluster Ray is connected
    to, and return the ``py_modules`` URIs a task's runtime environment names them by: every
    node that runs the task fetches them and imports from them. Ray takes local paths only in
    ``ray.init`` (the job level), too late for a Ray joined before the driver knew its plugins
    (a test's cluster, a notebook's); this is the upload ``ray.init`` does for them."""
    import inspect
    import logging
    import tempfile

    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    options: dict[str, Any] = {"logger": logging.getLogger(__name__)}
    if "include_gitignore" in inspect.signature(upload_py_modules_if_needed).parameters:
        options["include_gitignore"] = True  # as ray.init: a plugin's ignored files stay home
    with tempfile.TemporaryDirectory(prefix="fmbench-ship-") as scratch:
        env = upload_py_modules_if_needed({"py_modules": list(paths)}, scratch_dir=scratch,
                                          **options)
    return list(env["py_modules"])


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
