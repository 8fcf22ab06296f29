"""Checkpoints on object storage, against a real S3 protocol server (moto's) on 127.0.0.1: atomic
publish, checked loads, resumption, one-line errors for a damaged object or an unreachable
endpoint, and the code-identity guard of Ray tasks."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from harness.core import storage
from harness.core.checkpoint import load_checkpoint, save_checkpoint
from harness.errors import CheckpointError

try:  # the dev extra's moto[server] runs the S3 test server: skipped without it, except in CI
    import boto3  # noqa: F401
    import moto  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("moto[server] is not installed (pip install -e '.[dev]')", allow_module_level=True)

BUCKET = "fmbench-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server as a subprocess on loopback, with one bucket; yields its endpoint URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "moto did not start"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The standard AWS variables pointed at the test server (dummy credentials); a fresh bucket."""
    for name, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _keys(client, prefix: str = "") -> list[str]:
    """The objects under ``prefix``, without the empty "folder/" markers pyarrow leaves."""
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
                  .get("Contents", []) if not o["Key"].endswith("/"))


def test_uris_and_paths_are_told_apart():
    assert storage.is_uri("s3://b/p") and storage.is_uri("gs://b/p")
    assert not storage.is_uri("/tmp/x") and not storage.is_uri("relative/s3:")
    assert storage.join("s3://b/p/", "suite", "key") == "s3://b/p/suite/key"
    assert str(storage.join("/tmp/x", "suite")) == "/tmp/x/suite"


def test_checkpoint_round_trip_publishes_one_object_and_no_temporary_key(s3):
    uri = f"s3://{BUCKET}/ckpt/suite/key/checkpoint.pt"
    state = {"step": 7, "w": torch.arange(6.0).reshape(2, 3), "name": "x"}
    save_checkpoint(uri, state)
    save_checkpoint(uri, {**state, "step": 8})  # replaced whole
    assert _keys(s3) == ["ckpt/suite/key/checkpoint.pt"]  # the temporary key was moved away
    back = load_checkpoint(uri)
    assert back["step"] == 8 and back["name"] == "x" and torch.equal(back["w"], state["w"])


def test_a_failed_upload_leaves_the_previous_object_intact(s3, monkeypatch):
    uri = f"s3://{BUCKET}/ckpt/checkpoint.pt"
    save_checkpoint(uri, {"step": 1})

    def boom(buffer):
        buffer.write(b"half a checkpoint")
        raise RuntimeError("killed mid-write")

    from harness.core import checkpoint

    with pytest.raises(RuntimeError):
        checkpoint._atomic_write(uri, boom)
    assert load_checkpoint(uri)["step"] == 1 and _keys(s3) == ["ckpt/checkpoint.pt"]


def test_training_resumes_from_the_object_store_as_if_never_stopped(s3, tmp_path):
    """30 steps straight on local disk == 20 steps to s3://, then a fresh process-like restart
    that finds the step-20 checkpoint there and trains the last 10 (bitwise, as on disk)."""
    from harness.core.methods import build_method
    from harness.core.train import TrainConfig, train
    from harness.datasets import load_dataset
    from harness.models import build_model

    cfg = TrainConfig(steps=30, batch_size=32, warmup_steps=5, checkpoint_every=10, log_every=5,
                      ema_decay=0.9)

    def fresh():
        torch.manual_seed(0)
        ds = load_dataset("8gaussians", seed=0)
        return build_method("ot-cfm"), ds, build_model("mlp", ds.shape, hidden=32, depth=2)

    full = train(*fresh(), cfg, checkpoint_dir=tmp_path / "full")
    folder = f"s3://{BUCKET}/ckpt/resume"
    part = train(*fresh(), cfg, checkpoint_dir=folder, stop_after=20)
    assert part.step == 20 and load_checkpoint(f"{folder}/checkpoint.pt")["step"] == 20
    resumed = train(*fresh(), cfg, checkpoint_dir=folder)
    assert resumed.resumed_from == 20 and resumed.step == 30
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert full.losses == resumed.losses


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_damaged_object_is_one_line_naming_the_uri(s3, damage):
    uri = f"s3://{BUCKET}/ckpt/bad/checkpoint.pt"
    buffer = io.BytesIO()
    torch.save({"step": 3, "w": torch.ones(1000)}, buffer)
    data = bytearray(buffer.getvalue())
    if damage == "flip":  # inside the tensor bytes: only the CRC check can notice
        at = data.find(b"\x00\x00\x80?")  # float32 1.0
        assert at > 0
        data[at + 3] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not a checkpoint")
    s3.put_object(Bucket=BUCKET, Key="ckpt/bad/checkpoint.pt", Body=bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(uri)
    message = str(info.value)
    assert "\n" not in message and uri in message and ("corrupt" in message)


def test_a_missing_object_is_one_line(s3):
    with pytest.raises(CheckpointError, match=r"checkpoint s3://\S+/none/checkpoint.pt does not"):
        load_checkpoint(f"s3://{BUCKET}/none/checkpoint.pt")


def test_a_missing_bucket_is_one_line_before_scheduling(s3):
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.check_reachable("s3://no-such-bucket/ckpt")
    storage.check_reachable(f"s3://{BUCKET}/ckpt")  # the one that exists passes


def test_an_unreachable_endpoint_fails_fmbench_run_in_one_line(tmp_path, monkeypatch, capsys):
    """Nothing listens on the port: ``fmbench run`` exits 2 with one line naming the URI and the
    endpoint, before it starts Ray or creates a run."""
    from harness.cli import main
    from tests.helpers import error_line
    from tests.test_reliability import _write

    endpoint = f"http://127.0.0.1:{_free_port()}"
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    suite = _write(tmp_path, "away")
    db = tmp_path / "mlflow.db"
    code = main(["run", str(suite), "--tracking-uri", f"sqlite:///{db}",
                 "--storage", f"s3://{BUCKET}/ckpt"])
    line = error_line(capsys)
    assert code == 2
    assert f"storage s3://{BUCKET}/ckpt is unreachable (endpoint {endpoint})" in line
    from mlflow import MlflowClient

    exp = MlflowClient(f"sqlite:///{db}").get_experiment_by_name("away")
    assert exp is None or not MlflowClient(f"sqlite:///{db}").search_runs([exp.experiment_id])


def test_credentials_and_endpoint_reach_ray_tasks_with_fmbench_settings(monkeypatch):
    """The driver passes the object store's standard variables to its tasks, as it passes
    FMBENCH_*; other variables stay home."""
    from harness.run.scheduler import _Driver

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("FMBENCH_DATA", "/data")
    monkeypatch.setenv("UNRELATED_SECRET", "x")

    class Suite:
        def iter_trials(self):
            return []

    driver = _Driver(Suite(), None, None, "s3://b", False, "c", io.StringIO(), address=None,
                     timeout=None, session=None)
    env = driver.runtime_env["runtime_env"]["env_vars"]
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1" and env["AWS_SECRET_ACCESS_KEY"] == "s"
    assert env["FMBENCH_DATA"] == "/data" and "UNRELATED_SECRET" not in env
    assert os.environ["UNRELATED_SECRET"] == "x"


# -- the same code on every node -------------------------------------------------------------------
class _Recorder:
    """A stand-in for the trial's MLflow logger that notes every call: none may happen."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append(name)


def _other_code():
    from dataclasses import replace

    from harness.run.identity import local_identity

    return replace(local_identity(), source="0" * 12)


@pytest.mark.parametrize("task", ["train", "shard", "eval"])
def test_a_task_from_a_driver_with_other_code_refuses_in_one_line_and_does_nothing(
        task, tmp_path, monkeypatch):
    from harness.run import tasks
    from harness.run.identity import DRIVER_ENV, CodeMismatchError, local_identity
    from harness.run.suite import load_suite
    from tests.test_reliability import _write

    spec = load_suite(_write(tmp_path, "guard")).trials()[0].spec
    folder, logger = tmp_path / "ckpt", _Recorder()
    monkeypatch.setenv(DRIVER_ENV, _other_code().dumps())
    call = {"train": lambda: tasks.train_task(spec, str(folder), logger),
            "shard": lambda: tasks.shard_task(spec, str(folder), None),
            "eval": lambda: tasks.eval_task(spec, str(folder), logger)}[task]
    with pytest.raises(CodeMismatchError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "source 000000000000" in message
    assert f"source {local_identity().source}" in message
    assert logger.calls == [] and not folder.exists()  # refused before any work or logging


def test_the_same_code_passes_and_is_recorded_as_tags(monkeypatch):
    from harness import SCIENCE_VERSION, __version__
    from harness.run import record
    from harness.run.identity import DRIVER_ENV, check_same_code, local_identity, source_hash

    monkeypatch.setenv(DRIVER_ENV, local_identity().dumps())
    mine = check_same_code()
    tags = record.code_tags(mine)
    assert tags[record.NODE_VERSION] == __version__
    assert tags[record.NODE_SCIENCE] == str(SCIENCE_VERSION)
    assert tags[record.NODE_SOURCE] == source_hash() and len(source_hash()) == 12
    assert len(tags[record.NODE_COMMIT]) == 40 or tags[record.NODE_COMMIT] == "none"
    # Another commit with the same files (a documentation commit) is the same code.
    from dataclasses import replace

    assert check_same_code(replace(mine, commit="f" * 40).dumps()) == mine


def test_the_source_hash_changes_with_any_source_byte(tmp_path):
    from harness.run.identity import source_hash

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    before = source_hash(tmp_path)
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    changed = source_hash(tmp_path)
    (tmp_path / "pkg" / "a.py").rename(tmp_path / "pkg" / "b.py")
    assert len({before, changed, source_hash(tmp_path)}) == 3


# -- a cluster without a shared folder -------------------------------------------------------------
def test_nodes_without_a_shared_folder_train_resume_and_evaluate_through_s3(ray_cluster, s3,
                                                                            tmp_path):
    """Only added nodes fit the trial (train 3 CPUs, eval 4). Node A trains and publishes
    checkpoints to s3://; it is killed mid-training; node B resumes from the object store and
    finishes training; B is removed and node C, the only one that fits the eval task, reads the
    final checkpoint from the bucket. The Ray nodes never had the AWS variables: the driver passed
    them with the tasks. Nothing is written to a local checkpoint folder."""
    from mlflow import MlflowClient

    from harness.run import record
    from harness.run.scheduler import run_suite
    from harness.run.suite import load_suite
    from tests.test_reliability import _in_thread, _result, _wait_for, _write

    path = _write(tmp_path, "cloud", steps=600, every=50, cpus=3)
    path.write_text(path.read_text().replace("eval: {cpus: 3", "eval: {cpus: 4"))
    suite = load_suite(path)
    trial = suite.trials()[0]
    ckpt = f"s3://{BUCKET}/ckpt/cloud/{trial.key}/checkpoint.pt"

    def step() -> int:
        return int(load_checkpoint(ckpt)["step"]) if storage.exists(ckpt) else -1

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def node(name: str, cpus: int):
        """A node whose processes have their own temporary folder (TMPDIR), as on separate hosts."""
        (tmp_path / name).mkdir()
        return ray_cluster.add_node(num_cpus=cpus, env_vars={"TMPDIR": str(tmp_path / name)})

    nodes = [node("a", 3)]
    try:
        ray_cluster.wait_for_nodes()
        thread, box = _in_thread(run_suite, suite, tracking_uri=uri, storage=f"s3://{BUCKET}/ckpt",
                                 stream=io.StringIO())
        _wait_for(lambda: step() >= 100, 180, "node A's first checkpoints in the bucket")
        reached = step()
        assert reached < 600, "training finished before node A could be removed"
        ray_cluster.remove_node(nodes[0], allow_graceful=False)
        nodes.append(node("b", 3))
        _wait_for(lambda: step() == 600, 240, "node B to finish training from the bucket")
        # The last checkpoint is written before the train task returns; removing B in between
        # would rerun the task on C (found in CI). Its CPUs are free once it has returned.
        _wait_for(_all_cpus_free, 60, "node B's train task to return")
        ray_cluster.remove_node(nodes[1])
        nodes.append(node("c", 4))
        summary = _result(thread, box, 240)
    finally:
        for node in nodes:
            if node in ray_cluster.worker_nodes:
                ray_cluster.remove_node(node)
    assert summary.ok and summary.count("finished") == 1, [s.reason for s in summary.states]
    run = _trial_run(uri, "cloud")
    assert run.data.tags[record.TRAIN_NODE] == nodes[1].node_id != nodes[0].node_id
    from harness.run.identity import local_identity

    assert run.data.tags[record.NODE_SOURCE] == local_identity().source
    client = MlflowClient(uri)
    starts = sorted(m.step for m in client.get_metric_history(run.info.run_id,
                                                             record.ATTEMPT_START))
    assert starts[0] == 0 and len(starts) == 2 and reached <= starts[1] < 600, starts
    assert {record.final(m) for m in ("nfe", "nll", "w2", "mmd")} <= set(run.data.metrics)
    assert _keys(s3, "ckpt/cloud/") == [f"ckpt/cloud/{trial.key}/checkpoint.pt",
                                         f"ckpt/cloud/{trial.key}/config.json"]
    assert not (tmp_path / "ckpt").exists()  # the suite's own (local) folder was never used
    assert not any(tmp_path.rglob("checkpoint.pt"))  # nor any node's temporary folder


def _all_cpus_free() -> bool:
    """No task holds a CPU (the evaluation that fits no node yet is pending, holding none)."""
    import ray

    return ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0)


def _trial_run(uri: str, experiment: str):
    """The one trial run of ``experiment``."""
    from harness.run.tracking import Tracker

    runs = list(Tracker(uri, experiment).trial_runs().values())
    assert len(runs) == 1
    return runs[0]


def test_mlflow_server_with_s3_artifacts_keeps_samples_and_reports_in_the_bucket(ray_cluster, s3,
                                                                                 tmp_path):
    """``mlflow server --artifacts-destination s3://...`` (credentials and endpoint from the
    server's environment only): a suite run logs its samples through the server into the bucket,
    the report reads them back, and the report itself lands in the bucket too."""
    from mlflow import MlflowClient

    from harness.report import build_report
    from harness.run import record
    from harness.run.scheduler import run_suite
    from harness.run.suite import load_suite
    from tests.servers import MlflowServer
    from tests.test_reliability import _write

    server = MlflowServer(tmp_path / "mlflow", artifacts=f"s3://{BUCKET}/mlflow")
    server.start()
    try:
        path = _write(tmp_path, "artifacts", steps=40, every=20)
        summary = run_suite(load_suite(path), tracking_uri=server.uri,
                            storage=f"s3://{BUCKET}/ckpt", stream=io.StringIO())
        assert summary.ok and summary.count("finished") == 1
        run = _trial_run(server.uri, "artifacts")
        keys = _keys(s3, "mlflow/")
        stored = [k for k in keys if k.endswith(f"{run.info.run_id}/artifacts/{record.SAMPLES}")]
        assert len(stored) == 1, keys
        local = MlflowClient(server.uri).download_artifacts(run.info.run_id, record.SAMPLES,
                                                           str(tmp_path / "back"))
        body = s3.get_object(Bucket=BUCKET, Key=stored[0])["Body"].read()
        assert open(local, "rb").read() == body and body[:8] == b"\x89PNG\r\n\x1a\n"

        report = build_report(path, server.uri, tmp_path / "report")
        assert report.logged_to and not report.warnings, report.warnings
        assert (tmp_path / "report" / "index.html").is_file()
        shown = list((tmp_path / "report" / "samples").rglob(record.SAMPLES))  # read back from S3
        assert len(shown) == 1 and shown[0].read_bytes() == body
        assert any(k.endswith(f"{report.logged_to}/artifacts/{record.REPORT_FOLDER}/index.html")
                   for k in _keys(s3, "mlflow/")), _keys(s3, "mlflow/")
    finally:
        server.stop()


def test_a_write_to_a_store_that_went_away_is_one_line(s3, monkeypatch):
    uri = f"s3://{BUCKET}/ckpt/gone/checkpoint.pt"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(uri, {"step": 1})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"could not write {uri} (")


@pytest.mark.parametrize("uri", ["s3://AKIA:hunter2@bucket/ckpt", "s3://bucket/ckpt?secret_key=x"])
def test_credentials_inside_the_uri_are_refused_without_echoing_them(uri):
    with pytest.raises(storage.StorageError) as info:
        storage.check_reachable(uri)
    message = str(info.value)
    assert "environment" in message and "hunter2" not in message and "secret_key=x" not in message


def test_an_object_replaced_while_it_is_read_is_read_again_whole(s3, monkeypatch):
    """pyarrow sizes an object when it opens it and then fetches that many bytes: an object
    replaced in between (a checkpoint published while another process reads it) comes back as
    the first bytes of the new one. The read sees the change and reads again."""
    key, uri = "ckpt/torn/checkpoint.pt", f"s3://{BUCKET}/ckpt/torn/checkpoint.pt"
    old, new = b"a" * 1000, b"b" * 1500
    s3.put_object(Bucket=BUCKET, Key=key, Body=old)
    real_resolve, torn = storage._resolve, []

    class Replacing:
        """The real filesystem, except that its first read is raced by a publish."""

        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def open_input_stream(self, path):
            stream = self.fs.open_input_stream(path)  # sized now: 1000 bytes
            if not torn:
                s3.put_object(Bucket=BUCKET, Key=key, Body=new)
                torn.append(True)
            return stream

    monkeypatch.setattr(storage, "_resolve", lambda u: (Replacing(real_resolve(u)[0]),
                                                        real_resolve(u)[1]))
    first = real_resolve(uri)[0]
    s3.put_object(Bucket=BUCKET, Key=key, Body=old)
    with first.open_input_stream(real_resolve(uri)[1]) as f:  # the race, shown without the check
        s3.put_object(Bucket=BUCKET, Key=key, Body=new)
        assert f.readall() == new[:1000]  # a torn read: neither object
    s3.put_object(Bucket=BUCKET, Key=key, Body=old)
    assert storage.read_bytes(uri) == new and torn
