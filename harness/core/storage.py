"""Trial folders given as a local path or as an object-storage URI (``s3://bucket/prefix``,
``gs://...``, anything :func:`pyarrow.fs.FileSystem.from_uri` resolves).

Local paths stay :class:`pathlib.Path` and keep their POSIX handling (temp file, fsync, rename in
:mod:`harness.core.checkpoint`). URIs go through ``pyarrow.fs``, whose credentials and endpoint
come only from the standard environment and config files (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``,
``~/.aws/config``; ``GOOGLE_APPLICATION_CREDENTIALS`` for ``gs://``), never from a suite file.

Publishing an object: the bytes, fully serialised in memory, are written to a temporary key beside
the final one and then moved onto it. On S3 a move is a server-side CopyObject then a delete, and
an object becomes visible only once a PUT, a completed multipart upload or a copy has succeeded as
a whole ("Amazon S3 never adds partial objects", S3 User Guide, *Amazon S3 data consistency
model*), so a reader sees the previous object or the new one, never part of one, and a writer
killed mid-upload leaves at most an orphaned ``.tmp`` key, never a damaged checkpoint. A single
PUT straight to the final key would give the same guarantee on S3; the temporary key keeps it on
stores whose multipart or streaming writes are less strict.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from harness.errors import HarnessError, first_line

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
TMP_SUFFIX = ".tmp"
ENVIRONMENT = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
               "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
               "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE",
               "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST")
"""The object stores' standard variables: passed to Ray tasks on other nodes with FMBENCH_*."""


class StorageError(HarnessError):
    """A storage URI that cannot be resolved or whose endpoint does not answer."""


def is_uri(location: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (object storage), False for a plain local path."""
    return isinstance(location, str) and bool(_SCHEME.match(location))


def folder(location: str | os.PathLike) -> str | Path:
    """``location`` as a folder: a URI without its trailing slash, or a local :class:`Path`."""
    return location.rstrip("/") if is_uri(location) else Path(location)


def join(base: str | os.PathLike, *names: str) -> str | Path:
    """``base``/``names``: string joining for URIs, :class:`Path` joining for local paths."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *names])
    return Path(base).joinpath(*names)


def _resolve(uri: str):
    """The pyarrow file system and in-store path of ``uri`` (one line if the scheme is unknown)."""
    import pyarrow.fs

    _refuse_secrets(uri)
    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (ValueError, OSError, ImportError) as exc:  # unknown scheme, missing build support
        raise StorageError(f"storage {uri} cannot be opened: {first_line(exc)}") from None


SECRET_PARAMETERS = ("access_key", "secret_key", "session_token", "credentials")


def _refuse_secrets(uri: str) -> None:
    """pyarrow would take keys from the URI itself (``s3://KEY:SECRET@bucket``, ``?secret_key=``),
    which would put them in suite files, MLflow params and logs: refused in one line."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(uri)
    if parts.username or parts.password or set(parse_qs(parts.query)) & set(SECRET_PARAMETERS):
        raise StorageError(f"storage {parts.scheme}://{parts.hostname}/... carries credentials; "
                           "set them in the environment (AWS_ACCESS_KEY_ID, ...) instead")


def exists(location: str | os.PathLike) -> bool:
    """Whether a file (or object) is at ``location``."""
    if not is_uri(location):
        return Path(location).is_file()
    import pyarrow.fs

    fs, path = _resolve(location)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


READ_TRIES = 5


def read_bytes(location: str | os.PathLike) -> bytes:
    """The whole content of the file or object at ``location``; FileNotFoundError if absent.

    An object read is checked against the object as it stands afterwards: pyarrow learns an
    object's size when it opens it and then fetches that many bytes, so an object replaced in
    between (a checkpoint published while a task resumes or a monitor reads it) would come back
    as the first bytes of the new, longer object. A read whose length or the object's
    modification time changed meanwhile is retried (:data:`READ_TRIES` times)."""
    if not is_uri(location):
        return Path(location).read_bytes()
    import pyarrow.fs

    fs, path = _resolve(location)
    for _ in range(READ_TRIES):
        before = fs.get_file_info(path)
        if before.type != pyarrow.fs.FileType.File:
            raise FileNotFoundError(location)
        with fs.open_input_stream(path) as f:
            data = f.readall()
        after = fs.get_file_info(path)
        if after.size == len(data) == before.size and after.mtime == before.mtime:
            return data
    raise StorageError(f"{location} kept changing while it was read ({READ_TRIES} tries)")


def publish(uri: str, data: bytes) -> str:
    """Write ``data`` to the object ``uri`` atomically: to a temporary key, then moved onto
    ``uri`` (see the module docstring for why a reader never sees part of it)."""
    fs, path = _resolve(uri)
    tmp = f"{path}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass  # never written, or already moved
        raise
    return uri


def remove_tree(location: str | os.PathLike) -> None:
    """Delete a trial folder and everything in it; a missing folder is fine."""
    if not is_uri(location):
        shutil.rmtree(Path(location).expanduser(), ignore_errors=True)
        return
    fs, path = _resolve(str(location))
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass


def check_reachable(location: str | os.PathLike) -> None:
    """Fail in one line, before anything is scheduled, when ``location`` is a URI whose store
    does not answer (wrong endpoint, no network, no credentials, no bucket)."""
    if not is_uri(location):
        return
    fs, path = _resolve(str(location))
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise StorageError(f"storage {location} is unreachable{_endpoint()}: {first_line(exc)}"
                           ) from None
    if info.type.name == "NotFound":
        raise StorageError(f"storage {location}: bucket {bucket!r} does not exist{_endpoint()}")


def _endpoint() -> str:
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f" (endpoint {url})" if url else ""
