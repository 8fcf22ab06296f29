"""Suites on a real multi-node Ray cluster, tracked in a real ``mlflow server`` on 127.0.0.1."""

import io
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.run import record
from harness.run.record import KEY, State
from harness.run.scheduler import run_suite
from harness.run.suite import load_suite
from harness.run.tracking import Tracker
from harness.run.store import TrackingError

TINY = """\
name: {name}
methods: [fm-ot, ddpm]
datasets: [moons]
seeds: [0]
model: {{vector: {{name: mlp, hidden: 32, depth: 2}}}}
training: {{steps: 40, batch_size: 64, warmup_steps: 5, checkpoint_every: 20, log_every: 10,
           eval_every: 20}}
evaluation: {{samples: 100, nll_samples: 50, error_samples: 8, nfe_budgets: [4, 8], tol: 1e-3,
             reference_tol: 1e-5}}
resources: {{train: {{cpus: 0.5, gpus: {gpus}}}, eval: {{cpus: 0.5, gpus: 0}}}}
storage: {{checkpoints: {storage}}}
tracking: {{experiment: {name}}}
"""


def _suite(tmp_path: Path, name: str, gpus: float = 0):
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.format(name=name, gpus=gpus, storage=tmp_path / "ckpt"))
    return load_suite(path)


def test_suite_runs_and_logs_everything_to_mlflow_server(ray_cluster, mlflow_uri, tmp_path):
    suite = _suite(tmp_path, "layout")
    out = io.StringIO()
    summary = run_suite(suite, tracking_uri=mlflow_uri, stream=out)
    assert summary.count("finished") == 2 and summary.ok, out.getvalue()
    assert "0 queued · 0 running · 2 finished · 0 failed" in out.getvalue()

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("layout")
    runs = client.search_runs([exp.experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get(record.KIND) == record.TRIAL]
    parents = [r for r in runs if r.data.tags.get(record.KIND) == record.INVOCATION]
    assert len(trial_runs) == 2 and len(parents) == 1
    assert {r.data.tags[KEY] for r in trial_runs} == {t.key for t in suite.trials()}
    for run in trial_runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert run.info.status == State.FINISHED.status
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags[record.SUITE] == "layout" and tags[record.DATASET] == "moons"
        assert tags[record.SEED] == "0" and tags[record.HARNESS_VERSION]
        assert record.GIT_COMMIT in tags
        assert params["train.steps"] == "40" and params["model"] == "mlp"
        assert params["method"] in ("fm-ot", "ddpm")
        for key in map(record.final, ("nfe", "nll", "w2", "mmd", "nll_nfe")):
            assert key in metrics
        history = client.get_metric_history(run.info.run_id, record.LOSS)
        assert [m.step for m in history] == [10, 20, 30, 40]
        during = client.get_metric_history(run.info.run_id, record.during("w2"))
        assert [m.step for m in during] == [20, 40] and all(m.value > 0 for m in during)
        errors = client.get_metric_history(run.info.run_id, record.error("rk4"))
        assert [m.step for m in errors] == [4, 8]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {record.CONFIG_FILE, record.RECORD_FILE, record.SAMPLES, record.TRAJECTORIES} <= artifacts

    # A rerun of the finished suite schedules nothing ...
    again = run_suite(suite, tracking_uri=mlflow_uri, stream=io.StringIO())
    assert again.count("skipped") == 2 and again.count("finished") == 0
    # ... and after deleting one trial's run, only that trial runs again.
    client.delete_run(trial_runs[0].info.run_id)
    third = run_suite(suite, tracking_uri=mlflow_uri, stream=io.StringIO())
    assert third.count("finished") == 1 and third.count("skipped") == 1
    rerun = [s for s in third.states if s.status == "finished"][0]
    assert rerun.trial.key == trial_runs[0].data.tags[KEY]
    live = [r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get(record.KIND) == record.TRIAL]
    assert len(live) == 2 and all(r.info.status == State.FINISHED.status for r in live)
    # The resumed trial's new run still carries its whole loss curve, once.
    new_run = [r for r in live if r.data.tags[KEY] == rerun.trial.key][0]
    steps = [m.step for m in client.get_metric_history(new_run.info.run_id, record.LOSS)]
    assert steps == [10, 20, 30, 40]
    # ... and its during-training curve: step 20 from the checkpoint (training did not run
    # again), step 40 from the new evaluation, with the values the first run logged.
    def curve(run_id):
        return [(m.step, m.value) for m in client.get_metric_history(run_id, record.during("w2"))]
    old_curve = curve(trial_runs[0].info.run_id)
    assert sorted(curve(new_run.info.run_id)) == sorted(old_curve) and len(old_curve) == 2
    # --force reruns every trial from step 0 in new runs.
    forced = run_suite(suite, tracking_uri=mlflow_uri, force=True, stream=io.StringIO())
    assert forced.count("finished") == 2 and forced.count("skipped") == 0
    latest = Tracker(mlflow_uri, "layout").trial_runs()
    assert {r.info.run_id for r in latest.values()}.isdisjoint({r.info.run_id for r in live})


def test_gpu_tasks_land_only_on_gpu_nodes(ray_cluster, tmp_path):
    suite = _suite(tmp_path, "gpus", gpus=0.5)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = run_suite(suite, tracking_uri=uri, stream=io.StringIO())
    assert summary.ok
    runs = Tracker(uri, "gpus").trial_runs()
    assert len(runs) == 2
    for run in runs.values():
        assert run.data.tags[record.TRAIN_NODE] == ray_cluster.gpu_node_id
        assert run.data.tags[record.CUDA_VISIBLE_DEVICES] in ("0", "1")


def test_failed_trial_is_recorded_and_others_finish(ray_cluster, tmp_path, monkeypatch):
    suite = _suite(tmp_path, "fails")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # A corrupt checkpoint in one trial's folder makes only that trial fail, with the reason.
    bad = suite.trials()[0]
    folder = tmp_path / "ckpt" / "fails" / bad.key
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"\0garbage")
    out = io.StringIO()
    summary = run_suite(suite, tracking_uri=uri, stream=out)
    assert summary.count("failed") == 1 and summary.count("finished") == 1 and not summary.ok
    runs = Tracker(uri, "fails").trial_runs()
    failed = runs[bad.key]
    assert failed.info.status == State.FAILED.status
    assert "corrupt or truncated" in failed.data.tags[record.REASON]
    assert f"{bad.name} failed: CheckpointError" in out.getvalue()


def test_unreachable_tracking_server_fails_at_once():
    from tests.servers import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=f"tracking server {uri} is unreachable"):
        Tracker(uri, "x").connect()


DIGITS = """\
name: digits-ci
methods: [fm-ot]
datasets: [digits]
seeds: [0]
model: {{image: {{name: unet, channels: 8, channel_mult: [1, 2], num_res_blocks: 1,
                 attention_resolutions: [], groups: 4}}}}
training: {{steps: 200, batch_size: 32, lr: 1e-3, warmup_steps: 20, checkpoint_every: 100,
           log_every: 20, eval_every: 100}}
evaluation: {{tol: 1e-3, samples: 32, nll_samples: 16, dequant_draws: 2, error_samples: 4,
             nfe_budgets: [4, 8], reference_tol: 1e-5, fid_samples: 64, fid_nfe_samples: 32,
             fid_features: classifier, trajectory_samples: 4}}
resources: {{train: {{cpus: 1, gpus: 0}}, eval: {{cpus: 1, gpus: 0}}}}
storage: {{checkpoints: {storage}}}
tracking: {{experiment: digits-ci}}
"""


def test_image_suite_logs_every_metric(ray_cluster, tmp_path, monkeypatch):
    """A few hundred steps on digits through Ray and MLflow: bits/dim, NFE, classifier FID (final,
    during training and against NFE), numerical error, sample grid and trajectories."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FMBENCH_CACHE", str(cache))  # the driver passes FMBENCH_* to its tasks
    path = tmp_path / "digits.yaml"
    path.write_text(DIGITS.format(storage=tmp_path / "ckpt"))
    suite = load_suite(path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = run_suite(suite, tracking_uri=uri, stream=io.StringIO())
    assert summary.ok, [s.reason for s in summary.states]
    run = Tracker(uri, "digits-ci").trial_runs()[suite.trials()[0].key]
    client = MlflowClient(uri)
    metrics = run.data.metrics
    for key in map(record.final, ("bpd", "nfe", "nll_nfe", "fid_classifier")):
        assert key in metrics and metrics[key] > 0, key
    assert 0 < metrics[record.final("bpd")] < 12
    during = client.get_metric_history(run.info.run_id, record.during("fid_classifier"))
    assert [m.step for m in during] == [100, 200]
    curve = client.get_metric_history(run.info.run_id, record.vs_nfe("fid_classifier", "rk4"))
    assert [m.step for m in curve] == [4, 8]
    assert client.get_metric_history(run.info.run_id,
                                     record.vs_nfe("fid_classifier", "dopri5", 1e-3))
    errors = client.get_metric_history(run.info.run_id, record.error("euler"))
    assert [m.step for m in errors] == [4, 8]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {record.SAMPLES, record.TRAJECTORIES, record.RECORD_FILE,
            record.CONFIG_FILE} <= artifacts
    assert (cache / "classifiers" / "digits.pt").exists()


def test_queued_trials_are_scheduled_until_their_task_starts(tmp_path):
    from harness.run.tasks import train_task  # noqa: F401 - the task marks its run RUNNING

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "states")
    logger = tracker.start_run("t", {record.KIND: record.TRIAL}, status=State.SCHEDULED.status)
    assert tracker.client.get_run(logger.run_id).info.status == State.SCHEDULED.status
    logger.set_status(State.RUNNING.status)
    assert tracker.client.get_run(logger.run_id).info.status == State.RUNNING.status


def test_sharded_evaluation_through_ray_gives_the_single_task_metrics(ray_cluster, tmp_path):
    """The same checkpoint evaluated by one eval task and by shard tasks fanned out over the
    cluster: NFE and samples exactly equal, NLL within 1e-6."""
    text = TINY.format(name="shards", gpus=0, storage=tmp_path / "ckpt").replace(
        "tol: 1e-3,", "tol: 1e-3, batch_size: 40,")
    whole = tmp_path / "whole.yaml"
    whole.write_text(text)
    split = tmp_path / "split.yaml"
    split.write_text(text.replace("batch_size: 40,", "batch_size: 40, shard_size: 40,"))
    results = {}
    for path in (whole, split):
        uri = f"sqlite:///{tmp_path / (path.stem + '.db')}"
        suite = load_suite(path)
        assert run_suite(suite, tracking_uri=uri, stream=io.StringIO()).ok
        results[path.stem] = {r.data.tags[KEY]: r for r in Tracker(uri, "shards").trial_runs().values()}
    assert results["whole"].keys() == results["split"].keys()  # shard_size is not in the key
    for key, one in results["whole"].items():
        many = results["split"][key]
        assert record.EVAL_SHARDS not in one.data.tags
        assert int(many.data.tags[record.EVAL_SHARDS]) >= 5  # sampling 3, likelihood 2, ...
        m1, m2 = one.data.metrics, many.data.metrics
        for name in map(record.final, ("nfe", "nfe_se", "nll_nfe", "w2", "mmd")):
            assert m2[name] == m1[name], name
        assert m2[record.final("nll")] == pytest.approx(m1[record.final("nll")], rel=1e-6)
        assert m2[record.final("nll_se")] == pytest.approx(m1[record.final("nll_se")], rel=1e-6)


def test_suite_with_two_training_workers_trains_with_ddp(ray_cluster, tmp_path):
    """resources.train.workers: 2 sends the trial through Ray Train (gloo on CPU): one run, rank 0's
    tags and curve, the per-worker batch recorded, and the evaluation of the trained weights."""
    text = TINY.format(name="ddp", gpus=0, storage=tmp_path / "ckpt").replace(
        "train: {cpus: 0.5, gpus: 0}", "train: {cpus: 1, gpus: 0, workers: 2}").replace(
        "methods: [fm-ot, ddpm]", "methods: [ot-cfm]")
    path = tmp_path / "ddp.yaml"
    path.write_text(text)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    suite = load_suite(path)
    assert suite.trials()[0].train_resources.workers == 2
    summary = run_suite(suite, tracking_uri=uri, stream=io.StringIO())
    assert summary.ok, [s.reason for s in summary.states]
    (run,) = Tracker(uri, "ddp").trial_runs().values()
    assert run.info.status == State.FINISHED.status
    assert run.data.tags[record.TRAIN_WORKERS] == "2"
    assert run.data.tags[record.PER_WORKER_BATCH] == "32"
    client = MlflowClient(uri)
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, record.LOSS))
    assert steps == [10, 20, 30, 40]
    assert {record.final("nfe"), record.final("nll"), record.final("w2")} <= set(run.data.metrics)


def test_test_cluster_and_local_nodes_address_ray_at_loopback(ray_cluster):
    """Every node of the test cluster (head, GPU node, nodes tests add) is on 127.0.0.1, and a
    local node fmbench starts is pinned there too (a subprocess: this one already has Ray)."""
    import os
    import subprocess
    import sys

    import ray

    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    assert ray_cluster.address.startswith("127.0.0.1:")
    code = ("import os, ray\n"
            "os.environ.pop('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', None)\n"
            "from harness.run.ray_session import init_ray\n"
            "session = init_ray()\n"
            "print(sorted({n['NodeManagerAddress'] for n in ray.nodes()}), session.started)\n"
            "session.close()\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**env, "RAY_AUTH_MODE": "disabled"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['127.0.0.1'] True"


def test_progress_eta_is_the_remaining_trials_at_the_rate_they_have_finished():
    """30 of 72 finished in 60 s, 2 running and 40 queued: 42 left at 2 s each is 84 s, however
    long each trial waited in the queue before it ran."""
    from harness.run.scheduler import TrialState, _Progress

    now = [0.0]
    out = io.StringIO()
    progress = _Progress(out, 72, clock=lambda: now[0])
    states = [TrialState(trial=None, state=State.FINISHED, seconds=55.0) for _ in range(30)]
    states += [TrialState(trial=None, task="training") for _ in range(2)]
    states += [TrialState(trial=None) for _ in range(40)]
    now[0] = 60.0
    progress.show(states, force=True)
    assert out.getvalue().strip() == ("40 queued · 2 running · 30 finished · 0 failed · 0 skipped"
                                      " · elapsed 1m00s · ETA 1m24s")
    progress.show(states[:30], force=True)
    assert out.getvalue().strip().endswith("ETA 0s")
