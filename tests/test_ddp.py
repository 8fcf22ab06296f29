"""Data-parallel training through Ray Train (gloo DDP on CPU workers of a local Ray cluster).

Two workers with half the global batch each must end where one process with the whole batch
ends, and a worker killed mid-training must cost nothing but a restart from the last checkpoint.
"""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from harness.run import record
from harness.core.checkpoint import load_checkpoint
from harness.run.ddp import train_distributed
from harness.errors import ConfigError
from harness.run.tracking import Tracker
from harness.core.train import CHECKPOINT_NAME, TrainConfig, train
from harness.run.trial import TrialSpec, prepare

ATOL = 1e-6
"""2 gloo workers vs 1 process differ by float reduction order only (weights are O(1)): measured
max |difference| of any weight 3.4e-7 for fm-ot after 30 steps, 1.8e-7 for ot-cfm after 240 steps
with a restart. Training on the wrong rows or with other noise moves weights by ~1e-3."""


def _spec(method: str, steps: int, checkpoint_every: int) -> TrialSpec:
    return TrialSpec(method, "moons", seed=3, model_options={"hidden": 32, "depth": 2},
                     train=TrainConfig(steps=steps, batch_size=64, warmup_steps=5, lr=3e-3,
                                       ema_decay=0.9, checkpoint_every=checkpoint_every,
                                       log_every=10))


def _single_process(spec: TrialSpec, folder: Path) -> dict:
    prep = prepare(spec)
    train(prep.method, prep.dataset, prep.new_network(), prep.spec.train, checkpoint_dir=folder)
    return load_checkpoint(folder / CHECKPOINT_NAME)


def _assert_same_training(ddp: dict, single: dict) -> None:
    assert ddp["step"] == single["step"]
    for part in ("net", "ema"):
        assert ddp[part].keys() == single[part].keys()  # the plain module: no "module." prefix
        for name, value in single[part].items():
            torch.testing.assert_close(ddp[part][name], value, rtol=0, atol=ATOL,
                                       msg=f"{part}.{name}")
    assert [s for s, _ in ddp["losses"]] == [s for s, _ in single["losses"]]
    for (_, a), (_, b) in zip(ddp["losses"], single["losses"]):
        assert a == pytest.approx(b, rel=1e-5)  # the mean over ranks is the global batch's mean


@pytest.fixture(autouse=True)
def _quick_health_checks(monkeypatch):
    """Ray Train's controller polls its workers every 2 s by default; finishing and noticing a dead
    worker take a poll each, so the tests poll faster (the setting travels to the controller)."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@pytest.fixture
def tracker(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "ddp")
    tracker.connect()
    return tracker


def test_two_workers_reach_the_parameters_of_one_with_the_whole_batch(ray_cluster, tracker,
                                                                        tmp_path):
    spec = _spec("fm-ot", steps=30, checkpoint_every=10)
    logger = tracker.start_run("fm-ot", {})
    out = train_distributed(spec, str(tmp_path / "ddp"), logger, workers=2)
    assert out["step"] == 30 and out["resumed_from"] == 0 and out["device"] == "cpu"
    _assert_same_training(load_checkpoint(tmp_path / "ddp" / CHECKPOINT_NAME),
                          _single_process(spec, tmp_path / "single"))
    run = tracker.client.get_run(logger.run_id)
    assert run.data.tags[record.TRAIN_WORKERS] == "2"
    assert run.data.tags[record.PER_WORKER_BATCH] == "32"
    history = tracker.client.get_metric_history(logger.run_id, record.LOSS)
    assert sorted(m.step for m in history) == [10, 20, 30]  # rank 0 alone logs


def _train_workers() -> list[int]:
    """PIDs of the Ray Train worker processes of this test's cluster: descendants of this process
    (its raylets' workers) that Ray titles after the actor class (Linux /proc)."""
    parent, titled = {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            if b"RayTrainWorker" in (entry / "cmdline").read_bytes():
                titled.add(int(entry.name))
        except (OSError, IndexError, ValueError):  # the process ended while we looked
            pass

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return sorted(pid for pid in titled if ours(pid))


def test_a_killed_worker_resumes_from_the_checkpoint_in_the_same_run(ray_cluster, tracker,
                                                                     tmp_path):
    """The coupling case too: ot-cfm's OT plan is solved over the global batch on every rank, so
    the resumed 2-worker run still ends with the parameters of one uninterrupted process."""
    spec = _spec("ot-cfm", steps=240, checkpoint_every=30)
    logger = tracker.start_run("ot-cfm", {})
    folder = tmp_path / "ddp"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = train_distributed(spec, str(folder), logger, workers=2)
        except BaseException as exc:  # re-raised below, in the test's thread
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run)
    thread.start()
    while not (folder / CHECKPOINT_NAME).exists() and thread.is_alive():
        time.sleep(0.02)
    workers = _train_workers()
    assert len(workers) == 2, f"expected 2 Ray Train workers, found {workers}"
    os.kill(workers[-1], signal.SIGKILL)  # one worker, once, mid-training
    thread.join(timeout=240)
    assert not thread.is_alive(), "training did not finish after the kill"
    if "error" in outcome:
        raise outcome["error"]
    seconds = time.monotonic() - started
    out = outcome["value"]
    assert out["step"] == 240 and 0 < out["resumed_from"] < 240, out

    client = tracker.client
    runs = client.search_runs([tracker.connect()])
    assert [r.info.run_id for r in runs] == [logger.run_id]  # one MLflow run for both attempts
    starts = [m.value for m in client.get_metric_history(logger.run_id, record.ATTEMPT_START)]
    assert sorted(starts) == [0, out["resumed_from"]], starts
    steps = [m.step for m in client.get_metric_history(logger.run_id, record.LOSS)]
    assert sorted(steps) == list(range(10, 241, 10))  # each step once: no gap, no repeat
    ddp = load_checkpoint(folder / CHECKPOINT_NAME)
    assert ddp["step"] == 240
    _assert_same_training(ddp, _single_process(spec, tmp_path / "single"))
    print(f"killed worker {workers[-1]}; resumed from step {out['resumed_from']}; "
          f"{seconds:.0f} s in all")


def test_a_batch_that_does_not_split_evenly_is_refused_before_any_worker_starts(tmp_path):
    spec = _spec("fm-ot", steps=10, checkpoint_every=0)  # batch 64
    with pytest.raises(ConfigError, match="batch_size 64 must be divisible by the 3 training "
                                          "workers") as info:
        train_distributed(spec, str(tmp_path), None, workers=3)
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())
