"""Ends the local Ray node that fmbench started when its driver dies, even by SIGKILL.

Ray 2.60 ties its GCS and raylet to the driver (PR_SET_PDEATHSIG), but the raylet's
DashboardAgent and RuntimeEnvAgent notice the raylet's death and then hang on their way out
(checked: both still alive minutes after a ``kill -9`` of the driver). So the driver starts this
watchdog in its own session with a pipe on its stdin: the pipe reads EOF when the driver is gone,
however it ended. The watchdog then stops every process of that node: those with the node's id in
their environment (``RAY_NODE_ID``) or a file open in the node's session folder
(``/tmp/ray/session_<time>_<driver pid>``, where every Ray process of the node logs). Both are
unique to the node, so it never touches another Ray node, another user's processes or a reused pid.

    python -m harness.run.reaper NODE_ID SESSION_DIR      # stdin: the driver's pipe
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_S = 3.0
"""Seconds between SIGTERM and SIGKILL: agents that exit properly do so within a second."""


def node_processes(node_id: str, session_dir: str, spare: frozenset[int] = frozenset()
                   ) -> list[int]:
    """Pids of this user's processes with ``RAY_NODE_ID=node_id`` in their environment or a file
    open under ``session_dir``, except this one and ``spare``."""
    marker = f"RAY_NODE_ID={node_id}".encode()
    folder = session_dir.rstrip("/") + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spare or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0") or any(
                    os.readlink(fd).startswith(folder) for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


def reap(node_id: str, session_dir: str, spare: frozenset[int] = frozenset(),
         grace: float = GRACE_S) -> list[int]:
    """SIGTERM the node's processes, SIGKILL those left after ``grace``; returns the pids hit.
    ``spare``: the driver, which still holds its own log in the session folder when it exits
    normally."""
    pids = node_processes(node_id, session_dir, spare)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and node_processes(node_id, session_dir, spare):
        time.sleep(0.1)
    for pid in node_processes(node_id, session_dir, spare):
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


class Watchdog:
    """The driver's side: starts the watchdog for the node (``ray.init``'s ``address_info``);
    :meth:`close` after ``ray.shutdown()`` lets it sweep what is left and exit."""

    def __init__(self, node_id: str, session_dir: str) -> None:
        read, self._write = os.pipe()  # non-inheritable: Ray's later children never hold it
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "harness.run.reaper", node_id,
                                          session_dir],
                                         stdin=read, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True,
                                         cwd=Path(__file__).resolve().parent.parent)
        finally:
            os.close(read)

    def close(self, timeout: float = 10.0) -> None:
        os.close(self._write)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:  # still sweeping: it finishes on its own
            pass


def main(argv: list[str]) -> int:
    if not sys.platform.startswith("linux") or len(argv) != 2:
        return 2
    driver = os.getppid()  # read now: once the driver is dead the parent is someone else
    while sys.stdin.buffer.read(4096):  # returns b"" once the driver's end is closed
        pass
    time.sleep(0.5)  # a driver that exits normally has shut Ray down by now
    reap(*argv, spare=frozenset({driver}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
