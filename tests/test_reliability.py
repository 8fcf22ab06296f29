"""Fault injection on the real things: a node removed mid-training, a driver killed with
SIGKILL, a diverging trial, a tracking server that restarts mid-suite."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.core.checkpoint import load_checkpoint
from harness.run import record
from harness.run.record import KEY, State
from harness.run.scheduler import run_suite
from harness.run.suite import load_suite
from harness.run.tracking import Tracker
from tests.helpers import store_client

SUITE = """\
name: {name}
methods: {methods}
datasets: [moons]
seeds: [0]
model: {{vector: {{name: mlp, hidden: 32, depth: 2}}}}
training: {{steps: {steps}, batch_size: 64, warmup_steps: 5, checkpoint_every: {every},
           log_every: 10}}
evaluation: {{samples: 100, nll_samples: 50, error_samples: 8, nfe_budgets: [4, 8], tol: 1e-3,
             reference_tol: 1e-5, trajectory_samples: 0}}
resources: {{train: {{cpus: {cpus}, gpus: 0}}, eval: {{cpus: {cpus}, gpus: 0}}}}
storage: {{checkpoints: {storage}}}
tracking: {{experiment: {name}}}
"""


def _write(folder: Path, name: str, methods: str = "[fm-ot]", steps: int = 200, every: int = 50,
           cpus: float = 1, storage: Path | None = None) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, methods=methods, steps=steps, every=every, cpus=cpus,
                                 storage=storage or folder / "ckpt"))
    return path


def _wait_for(condition, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _checkpoint_step(folder: Path) -> int:
    """The step of the checkpoint in ``folder`` (-1 while there is none)."""
    path = folder / "checkpoint.pt"
    return int(load_checkpoint(path)["step"]) if path.exists() else -1


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _all_trial_runs(uri: str, experiment: str) -> list:
    client = store_client(uri)  # polled while a driver may be creating the store
    exp = client.get_experiment_by_name(experiment) if client else None
    if exp is None:  # not created yet
        return []
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get(record.KIND) == record.TRIAL]


def _in_thread(fn, *args, **kwargs):
    """Run ``fn`` in a thread; returns (thread, box) with box["value"] or box["error"]."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _result(thread, box, timeout: float):
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- 1. a node is lost mid-training ----------------------------------------------------------------
def test_node_lost_mid_training_resumes_elsewhere_in_the_same_run(ray_cluster, tmp_path):
    """The trial asks for 3 CPUs, which only the node added here has. It is removed (processes
    killed) once training has checkpointed; a replacement node joins; Ray reruns the task there,
    which resumes from the checkpoint and logs into the same MLflow run."""
    victim = ray_cluster.add_node(num_cpus=3)
    replacement = None
    try:
        ray_cluster.wait_for_nodes()
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        suite = load_suite(_write(tmp_path, "node-loss", steps=1500, every=50, cpus=3))
        trial = suite.trials()[0]
        folder = tmp_path / "ckpt" / "node-loss" / trial.key
        thread, box = _in_thread(run_suite, suite, tracking_uri=uri, stream=io.StringIO())
        _wait_for(lambda: _checkpoint_step(folder) >= 100, 180, "the first checkpoints")
        reached = _checkpoint_step(folder)
        assert reached < 1500, "training finished before the node could be removed"
        ray_cluster.remove_node(victim, allow_graceful=False)
        replacement = ray_cluster.add_node(num_cpus=3)
        summary = _result(thread, box, 300)

        assert summary.count("finished") == 1 and summary.ok
        runs = _all_trial_runs(uri, "node-loss")
        assert len(runs) == 1 and runs[0].data.tags[KEY] == trial.key
        run = runs[0]
        assert run.info.status == State.FINISHED.status
        assert run.data.tags[record.TRAIN_NODE] == replacement.node_id != victim.node_id
        client = MlflowClient(uri)
        starts = [step for step, _ in _history(client, run.info.run_id, record.ATTEMPT_START)]
        assert starts[0] == 0 and len(starts) == 2 and reached <= starts[1] < 1500, starts
        # Continued, not restarted: every logged step exactly once, none missing.
        losses = client.get_metric_history(run.info.run_id, record.LOSS)
        assert sorted(m.step for m in losses) == list(range(10, 1501, 10))
        assert {record.final(m) for m in ("nfe", "nll", "w2", "mmd")} <= set(run.data.metrics)
    finally:
        for node in (victim, replacement):
            if node is not None and node in ray_cluster.worker_nodes:
                ray_cluster.remove_node(node)


# -- 2. the driver is killed -----------------------------------------------------------------------
FINAL = tuple(record.final(m) for m in ("nfe", "nll", "w2", "mmd", "nll_nfe"))


def test_killed_driver_rerun_finishes_only_missing_trials_with_the_same_results(ray_cluster,
                                                                               tmp_path):
    """Trials run one at a time (2 CPUs each); the driver is SIGKILLed after the first finished,
    while the second trains. Rerunning the same command finishes only what was missing, in the
    same runs, and gives the results of a run that was never interrupted."""
    methods = "[fm-ot, rectified-flow, ddpm]"
    # 3000 steps: the kill must land while the second trial trains. At 1000 a quiet 2-core
    # machine finished all three trials in 8 s, between two polls; the poll that sees the first
    # checkpoints also takes a while on a loaded machine.
    steps = 3000
    path = _write(tmp_path, "killed", methods=methods, steps=steps, every=50, cpus=2)
    suite = load_suite(path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "harness.cli", "run", str(path), "--address",
               ray_cluster.address, "--tracking-uri", uri]
    # A short lease: the rerun waits (--wait) only until the killed driver's heartbeat expires.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "FMBENCH_LEASE_S": "4"}
    # The store exists before the driver starts: this test's polling must not race the driver's
    # first-time creation of the SQLite schema (two processes migrating one new store fail).
    Tracker(uri, "killed").connect()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        def one_finished_one_training():
            if proc.poll() is not None:
                raise AssertionError(f"fmbench run exited early: {proc.stderr.read()[-2000:]}")
            runs = _all_trial_runs(uri, "killed")
            finished = [r for r in runs if r.info.status == State.FINISHED.status]
            training = [r for r in runs if r.info.status == State.RUNNING.status
                        and 50 <= _checkpoint_step(tmp_path / "ckpt" / "killed" /
                                                   r.data.tags[KEY]) <= steps // 2]
            return len(finished) == 1 and training
        _wait_for(one_finished_one_training, 240, "one finished trial and one training", poll=0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    before = {r.data.tags[KEY]: r for r in _all_trial_runs(uri, "killed")}
    assert sorted(r.info.status for r in before.values()).count(State.FINISHED.status) == 1

    rerun = subprocess.run([*command, "--wait"], capture_output=True, text=True, env=env,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "2 finished, 0 failed, 1 skipped" in rerun.stdout
    after = {r.data.tags[KEY]: r for r in _all_trial_runs(uri, "killed")}
    assert len(_all_trial_runs(uri, "killed")) == 3, "one run per trial, none duplicated"
    assert {k: r.info.run_id for k, r in after.items()} == {k: r.info.run_id for k, r in
                                                             before.items()}
    assert all(r.info.status == State.FINISHED.status for r in after.values())
    assert all(record.REASON not in r.data.tags for r in after.values())  # cleared on finish
    invocations = [r for r in MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("killed").experiment_id])
        if r.data.tags.get(record.KIND) == record.INVOCATION]
    assert sorted(State.of(r.info.status) for r in invocations) == [State.FINISHED, State.KILLED]
    assert [r.data.tags[record.REASON] for r in invocations if r.info.status == State.KILLED.status
            ][0].startswith("driver gone: no heartbeat since ")
    resumed = [r for r in before.values() if r.info.status == State.RUNNING.status]
    client = MlflowClient(uri)
    for run in resumed:  # the interrupted training continued from its checkpoint
        starts = _history(client, run.info.run_id, record.ATTEMPT_START)
        assert len(starts) == 2 and starts[1][0] >= 50, starts
        assert sorted(m.step for m in client.get_metric_history(
            run.info.run_id, record.LOSS)) == list(range(10, steps + 1, 10))

    # The same suite never interrupted, in its own store and checkpoint folder.
    clean_uri = f"sqlite:///{tmp_path / 'clean.db'}"
    (tmp_path / "clean").mkdir()
    clean_suite = load_suite(_write(tmp_path / "clean", "killed", methods=methods, steps=steps,
                                    every=50, cpus=2, storage=tmp_path / "clean-ckpt"))
    assert [t.key for t in clean_suite.trials()] == [t.key for t in suite.trials()]
    assert run_suite(clean_suite, tracking_uri=clean_uri, stream=io.StringIO()).ok
    clean = {r.data.tags[KEY]: r for r in _all_trial_runs(clean_uri, "killed")}
    for key, run in after.items():
        for name in FINAL:
            assert run.data.metrics[name] == pytest.approx(clean[key].data.metrics[name],
                                                           rel=1e-5, abs=1e-8), (key, name)


# -- 3. a trial diverges ---------------------------------------------------------------------------
def test_diverging_trial_fails_with_its_reason_and_the_report_shows_it(ray_cluster, tmp_path):
    """VE with sigma_max = 1e30 overflows float32 at once: a real NaN loss from a suite setting."""
    from harness.report import build_report

    methods = "[fm-ot, {name: score-matching-ve, sigma_max: 1.0e+30}]"
    path = _write(tmp_path, "diverges", methods=methods, steps=60, every=20, cpus=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = io.StringIO()
    summary = run_suite(load_suite(path), tracking_uri=uri, stream=out)
    assert summary.count("finished") == 1 and summary.count("failed") == 1
    runs = {r.data.tags[record.METHOD]: r for r in _all_trial_runs(uri, "diverges")}
    failed, ok = runs["score-matching-ve"], runs["fm-ot"]
    assert ok.info.status == State.FINISHED.status and failed.info.status == State.FAILED.status
    reason = failed.data.tags[record.REASON]
    assert reason.startswith("DivergenceError: training loss became nan between steps 1 and 10")
    assert "score-matching-ve-moons-s0 failed: DivergenceError" in out.getvalue()

    report = build_report(path, uri, tmp_path / "report")
    assert "1 failed" in report.status.banner()
    html = (tmp_path / "report" / "index.html").read_text()
    markdown = (tmp_path / "report" / "report.md").read_text()
    for text in (html, markdown):
        assert "training loss became nan between steps 1 and 10" in text


# -- 4. the tracking server restarts ---------------------------------------------------------------
def test_tracking_server_restart_mid_suite_loses_nothing(ray_cluster, tmp_path):
    """The server is stopped once training has logged, stays down for a few seconds, and comes
    back on the same port and store: workers and driver retry; every run finishes complete."""
    from tests.servers import MlflowServer

    server = MlflowServer(tmp_path / "server")
    server.start()
    try:
        path = _write(tmp_path, "outage", methods="[fm-ot, rectified-flow]", steps=800,
                      every=250, cpus=1)
        suite = load_suite(path)
        thread, box = _in_thread(run_suite, suite, tracking_uri=server.uri, stream=io.StringIO())

        def logging_started():
            runs = _all_trial_runs(server.uri, "outage")
            return len(runs) == 2 and all(record.LOSS in r.data.metrics for r in runs)
        _wait_for(logging_started, 180, "both trials to log losses", poll=0.5)
        server.stop()
        down = time.monotonic()
        time.sleep(4)
        server.start()
        outage = time.monotonic() - down
        summary = _result(thread, box, 400)
    finally:
        server.stop()
    server.start()
    try:
        assert summary.ok and summary.count("finished") == 2
        runs = _all_trial_runs(server.uri, "outage")
        assert len(runs) == 2 and all(r.info.status == State.FINISHED.status for r in runs)
        client = MlflowClient(server.uri)
        for run in runs:
            assert set(FINAL) <= set(run.data.metrics)
            assert sorted(m.step for m in client.get_metric_history(
                run.info.run_id, record.LOSS)) == list(range(10, 801, 10))
        assert outage > 4
    finally:
        server.stop()


# -- 5. the checkpoint disk is full ----------------------------------------------------------------
def _full_disk_state():
    import torch

    return {"step": 1, "w": torch.zeros(100_000)}  # 400 kB: more than the small tmpfs holds


def test_full_disk_is_one_line_naming_the_folder_on_a_real_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs root and mount): torch.save's own error ("unexpected pos") becomes
    "no space left on <folder>", and no partial file is left behind."""
    from harness.core.checkpoint import StorageFullError, save_checkpoint

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        with pytest.raises(StorageFullError) as err:
            save_checkpoint(mount / "key" / "checkpoint.pt", _full_disk_state())
        assert str(err.value).startswith(f"no space left on {mount / 'key'} (")
        assert "\n" not in str(err.value)
        assert list((mount / "key").iterdir()) == []  # the temporary file was removed
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("failure", ["torch", "enospc", "edquot"])
def test_full_disk_is_recognised_from_torch_and_os_errors(tmp_path, monkeypatch, failure):
    import errno
    import shutil
    from collections import namedtuple

    import torch

    from harness.core import checkpoint
    from harness.core.checkpoint import StorageFullError, save_checkpoint

    def fail(state, f):
        f.write(b"partial")
        if failure == "torch":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 "
                               "vs 4310")
        code = errno.ENOSPC if failure == "enospc" else errno.EDQUOT
        raise OSError(code, os.strerror(code))

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", fail)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 20, 1 << 20, 0))
    with pytest.raises(StorageFullError, match=f"^no space left on {tmp_path / 'k'} ") as err:
        save_checkpoint(tmp_path / "k" / "checkpoint.pt", {"step": 1})
    assert list((tmp_path / "k").iterdir()) == []
    assert isinstance(err.value, checkpoint.CheckpointError)


def test_a_torch_write_error_with_space_left_is_not_called_a_full_disk(tmp_path, monkeypatch):
    import torch

    from harness.core.checkpoint import save_checkpoint

    def fail(state, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")

    monkeypatch.setattr(torch, "save", fail)  # the real disk_usage: plenty of space here
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save_checkpoint(tmp_path / "k" / "checkpoint.pt", {"step": 1})
