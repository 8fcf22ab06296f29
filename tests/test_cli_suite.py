"""Suite commands end to end: validate, plan, run, status, and Ctrl-C during a run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.run import record
from harness.cli import main
from harness.run.record import State
from tests.helpers import store_client
from tests.test_scheduler import TINY

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, name="cli", steps=40):
    text = TINY.format(name=name, gpus=0, storage=tmp_path / "ckpt").replace("steps: 40",
                                                                             f"steps: {steps}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_validate_and_plan(tmp_path, capsys):
    assert main(["validate", str(ROOT / "suites" / "smoke.yaml")]) == 0
    assert "ok (30 trials)" in capsys.readouterr().out
    assert main(["plan", str(_write(tmp_path))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "suite cli: 2 trials (2 methods x 1 datasets x 1 seeds)"
    assert out[2].startswith("fm-ot-moons-s0") and "0.5 CPU, 0 GPU" in out[2]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmethods: [fm-ot]\ndatasets: [moons]\nseeds: [0]\ntraining: {steps: -3}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.yaml: training.steps:" in err


def test_run_then_status(ray_cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    suite = _write(tmp_path)
    assert main(["run", str(suite), "--address", ray_cluster.address]) == 0
    out = capsys.readouterr().out
    assert "2 finished, 0 failed, 0 skipped" in out and "fm-ot-moons-s0" in out
    assert main(["status", str(suite)]) == 0
    out = capsys.readouterr().out
    assert "2 finished" in out and "nfe" in out.splitlines()[0]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_kills_outstanding_runs_and_exits_cleanly(ray_cluster, tmp_path, sig):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    suite = _write(tmp_path, name="interrupt", steps=100000)
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(suite), "--address",
                             ray_cluster.address, "--tracking-uri", uri],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    client = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until training has logged its first losses
        client = client or store_client(uri)  # never open a store the driver is still making
        exp = client.get_experiment_by_name("interrupt") if client else None
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if any(r.data.metrics.get(record.LOSS) is not None for r in runs):
            break
        time.sleep(1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "fmbench: interrupted"
    assert "Traceback" not in err
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("interrupt").experiment_id])
    trials = [r for r in runs if r.data.tags.get(record.KIND) == record.TRIAL]
    assert len(trials) == 2 and all(r.info.status == State.KILLED.status for r in trials)
    assert all(r.data.tags[record.REASON] == "interrupted (Ctrl-C)" for r in trials)


def test_ui_serves_the_store_on_loopback(tmp_path):
    from tests.servers import free_port
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--tracking-uri",
                             f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip().endswith(f"at http://127.0.0.1:{port} (Ctrl-C stops it)")
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_every_shipped_suite_validates_and_plans(capsys):
    import yaml

    suites = [p for p in sorted((ROOT / "suites").glob("*.yaml"))
              if "name" in (yaml.safe_load(p.read_text()) or {})]
    assert {"smoke.yaml", "digits.yaml", "paper-cifar10.yaml", "paper-imagenet32.yaml",
            "paper-imagenet64.yaml"} <= {p.name for p in suites}
    for path in suites:
        assert main(["validate", str(path)]) == 0, capsys.readouterr().err
        assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "suite paper-cifar10: 5 trials" in out and "8 CPU, 1 GPU" in out
