"""Everything the report reads, read from MLflow through :mod:`harness.run.tracking`'s client: the
only report module that talks to the tracking store.

Runs come back as one pandas DataFrame laid out as ``mlflow.search_runs`` lays it out
(:func:`harness.run.record.runs_frame`), built from ``MlflowClient.search_runs`` pages with Python's
cyclic garbage collector paused: a 10,000-run suite is ~800,000 param, tag and metric objects, and
the collector's repeated full passes over them took about as long as loading them (measured in
benchmarks/report_scale.py). Curves come from metric
histories, fetched only for the runs and keys a figure or claim needs, because one history call per
run and key is what makes a 10,000-run report slow. Nothing here reads checkpoints or worker files.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from harness.errors import HarnessError
from harness.run.record import REPORT_FOLDER, SUITE, runs_frame
from harness.run.tracking import all_runs, mlflow_client
from harness.run.store import check_readable, mask_uri, resolve_tracking_uri

HISTORY_THREADS = 8
"""History calls are independent round trips: threads overlap them on an HTTP tracking server."""
PAGE = 10_000
"""Runs per search call (what ``mlflow.search_runs`` uses; servers accept up to 50,000)."""


class ReportError(HarnessError):
    """The report cannot be built (no such experiment, unreachable store)."""


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No progress bar per downloaded file: the report prints one line, its path."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many long-lived objects are made (runs hold no
    cycles worth collecting), restoring the caller's setting afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Store:
    """One suite's experiment in one tracking store: reads runs, histories and artifacts, and
    writes nothing but the finished report (as artifacts of an invocation run)."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.experiment = experiment
        check_readable(self.uri)  # a missing, empty or damaged store: one line, left untouched
        shown = mask_uri(self.uri)
        try:
            exp = mlflow_client(self.uri).get_experiment_by_name(experiment)
        except Exception as exc:  # e.g. a store from an older MLflow: one line, not a traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ReportError(f"reading tracking store {shown} failed: "
                              f"{mask_uri(first)[:200]}") from None
        if exp is None:
            raise ReportError(f"no MLflow experiment {experiment!r} at {shown}; run the suite "
                              "first or pass the --tracking-uri it ran with")
        self.experiment_id = exp.experiment_id

    def runs(self, suite: str) -> pd.DataFrame:
        """Every run of the suite (trials and invocations), newest first; missing metrics are NaN,
        missing params and tags None, as in ``mlflow.search_runs``."""
        client = mlflow_client(self.uri)
        with _collector_paused():
            return runs_frame(all_runs(lambda token: client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{SUITE}` = '{suite}'",
                max_results=PAGE, order_by=["attributes.start_time DESC"], page_token=token)))

    def histories(self, run_ids: Iterable[str], keys: Iterable[str]) -> pd.DataFrame:
        """Long table (run_id, key, step, value) of the full history of each key in each run."""
        pairs = [(r, k) for r in dict.fromkeys(run_ids) for k in dict.fromkeys(keys)]
        client = mlflow_client(self.uri)

        def one(pair: tuple[str, str]) -> list[tuple[str, str, int, float]]:
            run_id, key = pair
            return [(run_id, key, m.step, m.value) for m in client.get_metric_history(run_id, key)]

        rows: list[tuple[str, str, int, float]] = []
        with ThreadPoolExecutor(HISTORY_THREADS) as pool:
            for part in pool.map(one, pairs):
                rows.extend(part)
        return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])

    def artifacts(self, run_id: str, names: Iterable[str], dest: Path) -> dict[str, Path]:
        """Download the named top-level artifacts of a run that exist; name -> local file."""
        client = mlflow_client(self.uri)
        try:
            present = {a.path for a in client.list_artifacts(run_id)}
        except Exception:  # an artifact store that is gone costs the samples, not the report
            return {}
        out = {}
        with _quiet_downloads():
            for name in names:
                if name in present:
                    dest.mkdir(parents=True, exist_ok=True)
                    out[name] = Path(client.download_artifacts(run_id, name, str(dest)))
        return out

    def log_folder(self, run_id: str, folder: Path, artifact_path: str = REPORT_FOLDER) -> None:
        """Upload a folder's files as artifacts of ``run_id`` (replacing an earlier report)."""
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / artifact_path
            shutil.copytree(folder, copy)
            mlflow_client(self.uri).log_artifacts(run_id, str(copy), artifact_path)
