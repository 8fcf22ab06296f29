"""Which code a process runs, so a driver never mixes numbers from different code under one key.

The identity is the fmbench version, the science version (:data:`harness.SCIENCE_VERSION`), a
hash of the package's source files and, for the record, the git commit of the checkout. The
driver passes its own with every task (the :data:`DRIVER_ENV` variable of the task's runtime
environment); each task compares it with the node's before any work and refuses in one line.
The commit is recorded but not compared: it moves on a documentation-only commit and misses
uncommitted edits, while the source hash is what the node's Python actually imports. The identity
is computed afresh for every task (a few milliseconds), so an edit made while a suite runs refuses
the tasks started after it rather than mixing code.

The alternative, shipping the driver's ``harness/`` to every worker with Ray's ``runtime_env``
``py_modules`` (as :mod:`harness.run.ray_session` does for plugins), is described in the
runbook; refusing is the default because a node's other dependencies (torch, CUDA) are not
shipped and a refused trial is visible, where mixed code is not.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.plugins import source_digest
from harness.run.tracking import git_commit

DRIVER_ENV = "FMBENCH_DRIVER_CODE"
"""The driver's identity (JSON), set in every task's runtime environment by the scheduler."""
PACKAGE = Path(__file__).resolve().parents[1]


class CodeMismatchError(HarnessError):
    """A task's node runs other code than the driver that submitted it."""


@dataclass(frozen=True)
class CodeIdentity:
    version: str
    science: str
    source: str
    commit: str = ""  # recorded, not compared (see the module docstring)

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> CodeIdentity:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise CodeMismatchError(f"{DRIVER_ENV}={text[:80]!r} is not a code identity ({exc})"
                                    ) from None

    def same_code(self, other: CodeIdentity) -> bool:
        return (self.version, self.science, self.source) == (other.version, other.science,
                                                             other.source)

    def __str__(self) -> str:
        return (f"fmbench {self.version}, science version {self.science}, source {self.source}, "
                f"commit {self.commit or 'none'}")


def source_hash(root: Path = PACKAGE) -> str:
    """SHA-256 (first 12 hex digits) over the relative paths and bytes of ``root``'s Python
    files, in sorted order: the same tree gives the same hash on every node (the digest plugins
    are keyed by, :func:`harness.plugins.source_digest`)."""
    return source_digest(root)


def local_identity() -> CodeIdentity:
    """This node's code, read now from its files (see the module docstring)."""
    from harness import SCIENCE_VERSION, __version__

    commit = git_commit()
    return CodeIdentity(__version__, str(SCIENCE_VERSION), source_hash(),
                        "" if commit == "unknown" else commit)


def check_same_code(driver: str | None = None) -> CodeIdentity:
    """Refuse, in one line naming both, when the driver's identity (``driver``, else the
    :data:`DRIVER_ENV` variable; absent outside a scheduled task) differs from this node's.
    Returns this node's identity, for the run's tags."""
    mine = local_identity()
    text = driver if driver is not None else os.environ.get(DRIVER_ENV)
    if text:
        theirs = CodeIdentity.loads(text)
        if not theirs.same_code(mine):
            raise CodeMismatchError(f"this node runs other code than the driver (node: {mine}; "
                                    f"driver: {theirs}); install the driver's commit on every "
                                    "node (runbook: Cloud cluster)")
    return mine
