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


def store_client(uri: str):
    """An MlflowClient on ``uri`` once its store exists, else None. A client opens its store when
    constructed and creates (migrates) a missing SQLite file, which races the driver creating the
    same store (``table ... already exists``); the driver creates it under ``store_lock``, so the
    file is looked for under that lock. For tests that poll a store a driver process is making."""
    from mlflow import MlflowClient

    from harness.run.store import sqlite_path, store_lock

    path = sqlite_path(uri)
    if path is not None:
        with store_lock(uri):
            if not path.exists():
                return None
    return MlflowClient(uri)


def new_experiment(uri: str, name: str, folder) -> str:
    """An experiment whose artifacts stay under ``folder`` (MLflow's default root is the current
    folder); :class:`harness.run.tracking.Tracker` then opens it as its own. Returns its id."""
    from mlflow import MlflowClient

    return MlflowClient(uri).create_experiment(name, artifact_location=str(folder))


def finished_trial(uri: str, experiment: str, name: str = "fm-ot-8gaussians-s0",
                   suite: str | None = None) -> str:
    """One finished trial run with one final metric (``w2`` = 0.25), written through the record
    as fmbench writes it; returns its run id."""
    from harness.run import record
    from harness.run.tracking import Tracker

    tags = {record.KIND: record.TRIAL, **({record.SUITE: suite} if suite else {})}
    writer = record.TrialWriter(Tracker(uri, experiment).start_run(name, tags))
    writer.logger.log_metrics({record.final("w2"): 0.25}, step=10)
    writer.end(record.State.FINISHED)
    return writer.run_id
