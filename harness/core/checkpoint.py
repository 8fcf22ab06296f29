"""Atomic, safe checkpoints: written to a temporary file and renamed, loaded with weights_only.
A path may also be an object-storage URI (:mod:`harness.core.storage`): the same checks run on
the object's bytes.

A crash mid-write leaves the previous checkpoint intact; a corrupt or truncated file gives one
clear :class:`~harness.errors.CheckpointError` instead of a pickle traceback.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from harness.core import storage
from harness.errors import CheckpointError, first_line


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path | str:
    """Write through ``write`` into a temporary file beside ``path``, fsync, then rename it over
    ``path``: readers see the old file or the new one, never half of one. A URI gets the whole
    serialised bytes published at once (:func:`harness.core.storage.publish`)."""
    if storage.is_uri(path):
        buffer = io.BytesIO()
        write(buffer)
        try:
            return storage.publish(path, buffer.getvalue())
        except OSError as exc:  # the store went away, refused the credentials, ...
            raise CheckpointError(f"could not write {path} ({first_line(exc)}); the "
                                  "previous object, if any, is intact") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX
    except BaseException as exc:
        full = _disk_full(exc, path.parent)  # measured before the partial file frees its space
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise StorageFullError(f"no space left on {path.parent} ({full}) while writing "
                                   f"{path.name}; free space there or choose another --storage"
                                   ) from None
        raise
    return path


class StorageFullError(CheckpointError):
    """The checkpoint folder's file system is full (or the user's quota is used up)."""


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "inline_container")
"""What torch.save's zip writer says when a write comes up short: it reports the position it
expected, not the errno (``[enforce fail at inline_container.cc:672] . unexpected pos ...``)."""
LOW_SPACE_BYTES = 1 << 20


def _disk_full(exc: BaseException, folder: Path) -> str:
    """Why a failed write means a full disk ("" when it does not): ENOSPC/EDQUOT, or a torch
    write failure with under 1 MiB left on ``folder``'s file system."""
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return os.strerror(exc.errno)
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in TORCH_WRITE_FAILURES):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return ""
        if free < LOW_SPACE_BYTES:
            return f"{free} bytes free"
    return ""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path | str:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""
    return _atomic_write(path, lambda f: torch.save(state, f))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path | str:
    """Replace a small text file (a config, a result) atomically."""
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; refuses anything but plain data."""
    path = path if storage.is_uri(path) else Path(path)
    source = _open_checkpoint(path)
    size = source.getbuffer().nbytes if isinstance(source, io.BytesIO) else path.stat().st_size
    if not zipfile.is_zipfile(_start(source)):  # torch.save writes a zip: anything else is damaged
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (not a PyTorch zip "
                              f"archive, {size} bytes)")
    try:  # torch does not check the archive's CRCs: damaged tensor bytes would load silently
        damaged = zipfile.ZipFile(_start(source)).testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        damaged = str(exc) or type(exc).__name__
    if damaged is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt (damaged member {damaged})")
    try:
        state = torch.load(_start(source), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: code, not data
        refused = next((line.strip() for line in str(exc).splitlines()
                        if "GLOBAL" in line or "global" in line.split("weights_only")[0]),
                       "objects other than tensors and plain data")
        raise CheckpointError(f"checkpoint {path} was refused, it could run code ({refused[:160]}); "
                              "only tensors and plain data are loaded") from None
    except Exception as exc:  # damaged archive members, bad CRC, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({reason[:160]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dictionary")
    return state


def _open_checkpoint(path: Path | str) -> Path | io.BytesIO:
    """A local checkpoint's path, or an object's bytes read once (every check reads them)."""
    try:
        if storage.is_uri(path):
            return io.BytesIO(storage.read_bytes(path))
    except FileNotFoundError:
        pass
    except OSError as exc:  # the store did not answer
        raise CheckpointError(f"checkpoint {path} cannot be read ({first_line(exc)})"
                              ) from None
    else:
        if path.is_file():
            return path
    raise CheckpointError(f"checkpoint {path} does not exist")


def _start(source: Path | io.BytesIO) -> Path | io.BytesIO:
    """``source`` read from its beginning again (each check reads the in-memory bytes anew)."""
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return source
