"""The MLflow UI shows a suite's training runs, not its GenAI view, checked in a real
browser: an ``mlflow server`` on 127.0.0.1 over a store fmbench wrote, opened in headless Debian
Chromium at the link ``fmbench ui`` prints."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.run import record
from harness.cli import main
from harness.run.tracking import Tracker
from harness.run.store import ui_url
from tests.servers import MlflowServer
from tests.helpers import chromium, finished_trial

RUN_NAME = "fm-ot-8gaussians-s0"


def _browse(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--window-size=1400,900",
           "--virtual-time-budget=15000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A store with one fmbench suite experiment and a finished trial, served on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("ui")
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", "smoke")
    finished_trial(tracker.uri, "smoke", RUN_NAME, suite="smoke")
    server = MlflowServer(folder)
    server.start()
    try:
        yield server, tracker.connect(), folder
    finally:
        server.stop()


def test_fmbench_ui_prints_the_training_runs_link(served, capsys, monkeypatch):
    """On a tracking server `fmbench ui` starts nothing and prints each suite's link."""
    server, exp, _ = served
    assert main(["ui", "--tracking-uri", server.uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"runs are on a tracking server: open {ui_url(server.uri)}",
                   f"  smoke: {ui_url(server.uri, exp)}"]
    assert out[1].endswith(f"/#/experiments/{exp}/runs?workflowType=machine_learning")


def test_experiment_opens_on_its_training_runs_in_chromium(served, tmp_path):
    server, exp, folder = served
    url = ui_url(server.uri, exp)
    shot = tmp_path / "experiment.png"
    proc = _browse(url, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    keep = os.environ.get("FMBENCH_UI_SCREENSHOT")  # where to keep it for a person to look at
    if keep:
        shutil.copy(shot, keep)

    proc = _browse(url, tmp_path / "profile-dom", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    # The page's title is the selected view: "Runs" (the GenAI view's is "Overview").
    assert re.findall(r"<h2[^>]*>([^<]*)</h2>", dom) == ["Runs"], dom[-3000:]
    text = re.sub(r"<[^>]+>", " ", dom)
    assert RUN_NAME in text  # the runs table lists the trial
    # None of the GenAI view's sidebar or landing page (checked against it by hand).
    for genai in ("Sessions", "Judges", "Prompts", "Detect Issues"):
        assert genai not in text, genai
    for tag in (record.EXPERIMENT_KIND, record.KIND):
        assert tag in Tracker(f"sqlite:///{folder / 'mlflow.db'}", "smoke").client \
            .get_experiment(exp).tags
