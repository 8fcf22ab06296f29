"""Small assertions and tool lookups shared by several test modules."""

from __future__ import annotations

import os
import shutil

import pytest


def error_line(capsys) -> str:
    """The one stderr line of a refused command: no traceback, ``fmbench: error:`` first."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("fmbench: error: ")
    return lines[0]


def chromium() -> str:
    """Debian's chromium for browser tests: skipped on a developer machine without it, a failure
    under CI (``.ci/run`` installs it)."""
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium); CI fails here")
    return exe
