"""fmbench's on-disk cache of derived files (FID reference statistics, feature classifiers).

Files are computed once and shared by every process of a machine: a lock file lets one compute
while the others wait, and writers replace files atomically, so a reader never sees half a file.
The root is ``$FMBENCH_CACHE`` (default ``~/.cache/fmbench``), outside any package's folder.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from harness.errors import HarnessError

DEFAULT_CACHE = "~/.cache/fmbench"

T = TypeVar("T")


def cache_dir() -> Path:
    """fmbench's cache root: ``$FMBENCH_CACHE``, else ``~/.cache/fmbench``."""
    return Path(os.environ.get("FMBENCH_CACHE", DEFAULT_CACHE)).expanduser()


def compute_once(path: Path, write: Callable[[Path], None], read: Callable[[Path], T | None]) -> T:
    """Read ``path``, computing it first (``write``) if missing or stale (``read`` -> None).

    An flock on ``<path>.lock`` lets one process compute while the others wait, then read. Writers
    must be atomic (temp file + os.replace), so the unlocked first read never sees half a file.
    """
    if path.exists() and (value := read(path)) is not None:
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on error
        value = read(path) if path.exists() else None
        if value is None:  # nobody finished it while we waited: our turn
            write(path)
            value = read(path)
    if value is None:
        raise HarnessError(f"cache file {path} was written but cannot be read back")
    return value


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez to a temp file in the same folder, then os.replace (atomic on POSIX)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
