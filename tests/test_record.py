"""A trial's record written through the real writer (a RunLogger on a SQLite store) and read back
through the real readers: the run as ``fmbench status`` and the driver read it, the report's
collector and trial table, and the report's cost; plus the states and their transitions."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from harness.run import record
from harness.cli import main
from harness.core.evaluation_types import ErrorPoint, EvalResult, QualityPoint
from harness.run.record import State, TrialRun, TrialWriter
from harness.report.collect import Store
from harness.report.grid import Plan, trial_frame
from harness.report.provenance import cost_frame
from harness.run.suite import load_suite
from harness.run.tracking import Tracker
from tests.helpers import new_experiment

SUITE = """\
name: rt
methods: [fm-ot]
datasets: [moons]
seeds: [0]
training: {{steps: 20, batch_size: 64}}
resources: {{train: {{cpus: 1, gpus: {gpus}, workers: 2}}, eval: {{cpus: 1, gpus: 0.25}}}}
"""
CONFIG = {"method": "fm-ot", "dataset": "moons", "seed": 0, "train": {"lr": 0.001, "steps": 20},
          "eval": {"tol": 1e-05, "solvers": ["euler", "midpoint"]}}
METRICS = {"nfe": 40.0, "nll": 2.5, "w2": 0.2, "eval_time": 5.0}
EVALUATION = EvalResult(METRICS, error_curve=[ErrorPoint("midpoint", 4, 1e-2),
                                              ErrorPoint("midpoint", 8, 1e-3),
                                              ErrorPoint("euler", 4, 0.1)],
                        quality_curve=[QualityPoint("dopri5", 1e-5, 37.6, {"fid": 9.0}),
                                       QualityPoint("euler", None, 4, {"fid": 12.0}),
                                       QualityPoint("euler", None, 8, {"fid": 10.0}),
                                       QualityPoint("dopri5", 1e-3, 20.4, {"fid": 11.0})],
                        warnings=["first", "second"])
TRAIN_S, EVAL_S = 30.0, METRICS["eval_time"]


def _suite(tmp_path, gpus: int = 1):
    path = tmp_path / f"rt-{gpus}.yaml"
    path.write_text(SUITE.format(gpus=gpus))
    return load_suite(path)


def _write_trial(tracker: Tracker, suite, parent: str) -> TrialWriter:
    """Everything a trial's tasks write, in the order they write it."""
    trial = suite.trials()[0]
    writer = TrialWriter.create(tracker, suite.name, trial, "abc123", parent)
    writer.start(CONFIG, record.placement_tags("node-a", "cuda:0", "0,1", workers=2,
                                               batch_size=64))
    writer.log_attempt_start(0)
    writer.log_losses([(10, 0.5), (20, 0.25)])
    writer.log_train_time(TRAIN_S, 20.0, 20)
    writer.log_during({"nfe": 50.0, "w2": 0.3}, 10)
    writer.log_eval_shards(3)
    writer.log_evaluation(METRICS, EVALUATION, step=20, on_curve=True)
    return writer


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """One SQLite store for the module (making one costs seconds); each test its experiment."""
    folder = tmp_path_factory.mktemp("record")
    return f"sqlite:///{folder / 'mlflow.db'}", folder


def _experiment(database, name: str) -> tuple[str, Tracker]:
    uri, folder = database
    new_experiment(uri, name, folder / name)
    return uri, Tracker(uri, name)


@pytest.fixture(scope="module")
def store(database):
    """An experiment holding one invocation and one finished trial written through the record."""
    uri, tracker = _experiment(database, "rt")
    folder = database[1]
    suite = _suite(folder)
    invocation = tracker.start_run("rt @ now", record.invocation_tags("rt", "abc123"))
    writer = _write_trial(tracker, suite, invocation.run_id)
    for name in (record.CONFIG_FILE, record.SAMPLES):
        (folder / name).write_text(name)
    writer.log_files(folder, [record.CONFIG_FILE, record.SAMPLES])
    writer.end(State.FINISHED)
    invocation.log_metrics(record.invocation_totals(1, 0, 0, 60.0))
    invocation.finish(State.FINISHED.status)
    return uri, suite, tracker, invocation.run_id, writer.run_id


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_every_field_of_a_trial_record_round_trips(store):
    uri, suite, tracker, parent, run_id = store
    trial = suite.trials()[0]
    run = tracker.trial_runs()[trial.key]
    read = TrialRun.of(run)
    assert read == TrialRun(run_id, trial.key, State.FINISHED, METRICS, None)
    tags = run.data.tags
    assert {k: tags[k] for k in (record.KIND, record.SUITE, record.METHOD, record.DATASET,
                                 record.SEED, record.GIT_COMMIT, record.PARENT)} == {
        record.KIND: record.TRIAL, record.SUITE: "rt", record.METHOD: "fm-ot",
        record.DATASET: "moons", record.SEED: "0", record.GIT_COMMIT: "abc123",
        record.PARENT: parent}
    assert tags[record.HARNESS_VERSION]
    assert (tags[record.TRAIN_GPUS], tags[record.EVAL_GPUS]) == ("2.0", "0.25")  # 2 workers x 1
    assert (tags[record.TRAIN_NODE], tags[record.DEVICE], tags[record.CUDA_VISIBLE_DEVICES],
            tags[record.TRAIN_WORKERS], tags[record.PER_WORKER_BATCH]) == \
        ("node-a", "cuda:0", "0,1", "2", "32")
    assert tags[record.EVAL_SHARDS] == "3" and tags[record.WARNINGS] == "first | second"
    assert run.data.params == record.flatten(CONFIG)
    assert run.data.params["eval.tol"] == "1e-05"
    assert _history(uri, run_id, record.LOSS) == [(10, 0.5), (20, 0.25)]
    assert _history(uri, run_id, record.ATTEMPT_START) == [(0, 0.0)]
    assert _history(uri, run_id, record.TRAIN_S) == [(20, TRAIN_S)]
    assert _history(uri, run_id, record.TRAIN_ATTEMPT_S) == [(20, 20.0)]
    assert _history(uri, run_id, record.during("w2")) == [(10, 0.3), (20, 0.2)]  # + the final
    assert _history(uri, run_id, record.during("nll")) == []  # not a curve metric
    assert _history(uri, run_id, record.error("midpoint")) == [(4, 1e-2), (8, 1e-3)]
    assert _history(uri, run_id, record.error("euler")) == [(4, 0.1)]
    # one key per dopri5 tolerance, spelled with characters MLflow allows; steps: NFE rounded
    assert _history(uri, run_id, "fid_vs_nfe/dopri5_tol1e-05") == [(38, 9.0)]
    assert _history(uri, run_id, record.vs_nfe("fid", "dopri5", 1e-3)) == [(20, 11.0)]
    assert _history(uri, run_id, record.vs_nfe("fid", "euler")) == [(4, 12.0), (8, 10.0)]
    for name, value in METRICS.items():
        assert _history(uri, run_id, record.final(name)) == [(20, value)]
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run_id)}
    assert artifacts == {record.CONFIG_FILE, record.SAMPLES}


def test_the_report_collector_reads_what_the_writer_wrote(store, tmp_path):
    uri, suite, _, parent, run_id = store
    trial = suite.trials()[0]
    collected = Store(uri, "rt")
    runs = collected.runs("rt")
    (row,) = record.trial_rows(runs).to_dict("records")
    assert {k: row[k] for k in ("run_id", "label", "dataset", "seed", "key", "state")} == {
        "run_id": run_id, "label": "fm-ot", "dataset": "moons", "seed": 0, "key": trial.key,
        "state": "finished"}
    assert row["reason"] is None  # a finished run has no failure
    for name, value in METRICS.items():
        assert row[record.final_column(name)] == value
    assert row[record.param_column("eval.tol")] == "1e-05"
    assert row[record.tag_column(record.WARNINGS)] == "first | second"
    (invocation,) = record.of_kind(runs, record.INVOCATION).to_dict("records")
    assert invocation["run_id"] == parent
    assert invocation[record.metric_column(record.WALL_S)] == 60.0
    assert invocation[record.metric_column(record.trial_count("finished"))] == 1
    assert {record.LOSS, record.error("midpoint"), record.final("nll")} <= \
        record.logged_keys(runs)
    curves = collected.histories([run_id], [record.LOSS, record.vs_nfe("fid", "dopri5", 1e-5)])
    assert sorted(map(tuple, curves[["key", "step", "value"]].values.tolist())) == [
        ("fid_vs_nfe/dopri5_tol1e-05", 38, 9.0), ("train/loss", 10, 0.5),
        ("train/loss", 20, 0.25)]
    files = collected.artifacts(run_id, [record.SAMPLES, record.TRAJECTORIES], tmp_path / "got")
    assert set(files) == {record.SAMPLES}
    assert files[record.SAMPLES].read_text() == record.SAMPLES


def test_cost_uses_the_gpus_the_run_recorded(store, tmp_path):
    """Accelerator-hours come from the GPUs a run's tasks held (2 workers x 1 GPU to train),
    also when the suite file has since been edited; the train time is what the train task
    logged. A reader of a key nothing writes would fall back to the suite's 1 GPU per task."""
    uri, suite, *_ = store
    for plan in (Plan.from_suite(suite), Plan.from_suite(_suite(tmp_path, gpus=3))):
        frame, _ = trial_frame(plan, Store(uri, "rt").runs("rt"))
        (cost,) = cost_frame(plan, frame).to_dict("records")
        assert (cost["train_s"], cost["eval_s"]) == (TRAIN_S, EVAL_S)
        assert (cost["train_gpus"], cost["eval_gpus"]) == (2.0, 0.25)
        assert cost["accel_h"] == pytest.approx((TRAIN_S * 2 + EVAL_S * 0.25) / 3600)


def test_cost_of_a_run_without_recorded_gpus_uses_the_planned_workers(database, tmp_path):
    """Runs of an older fmbench recorded no GPUs: the suite file's plan counts every worker."""
    uri, tracker = _experiment(database, "older")
    suite = _suite(tmp_path)
    writer = _write_trial(tracker, suite, "")
    writer.logger.delete_tag(record.TRAIN_GPUS)
    writer.logger.delete_tag(record.EVAL_GPUS)
    writer.end(State.FINISHED)
    plan = Plan.from_suite(suite)
    frame, _ = trial_frame(plan, Store(uri, "older").runs("rt"))
    (cost,) = cost_frame(plan, frame).to_dict("records")
    assert (cost["train_gpus"], cost["eval_gpus"]) == (2.0, 0.25)


def test_status_shows_the_record(store, capsys):
    uri, suite, *_ = store
    assert main(["status", suite.path, "--tracking-uri", uri]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split() == ["trial", "key", "status", "nfe", "nll", "w2"]
    assert row.split() == [suite.trials()[0].name, suite.trials()[0].key, "finished", "40",
                           "2.5", "0.2"]


def test_a_failed_trial_reopened_and_finished_forgets_its_failure(database, tmp_path):
    _, tracker = _experiment(database, "reopened")
    suite = _suite(tmp_path)
    trial = suite.trials()[0]
    TrialWriter.create(tracker, "rt", trial, "abc123").end(State.FAILED, "OSError: disk full")
    failed = TrialRun.of(tracker.trial_runs()[trial.key])
    assert (failed.state, failed.reason) == (State.FAILED, "OSError: disk full")
    parent = tracker.start_run("rt @ later", record.invocation_tags("rt", "abc123"))
    writer = TrialWriter.reopen(tracker, failed, trial, parent.run_id)
    run = tracker.trial_runs()[trial.key]
    assert TrialRun.of(run).state is State.SCHEDULED and run.data.tags[record.PARENT] == \
        parent.run_id
    writer.clear_reason()
    writer.end(State.FINISHED)
    assert TrialRun.of(tracker.trial_runs()[trial.key]) == TrialRun(
        writer.run_id, trial.key, State.FINISHED, {}, None)
    with pytest.raises(ValueError, match="from finished to scheduled"):
        TrialWriter.reopen(tracker, TrialRun.of(tracker.trial_runs()[trial.key]), trial, "")
    with pytest.raises(ValueError, match="running is not how a trial ends"):
        writer.end(State.RUNNING)


def test_states_map_to_mlflow_statuses_and_back():
    for state in State:
        if state is State.MISSING:
            assert State.of(None) is state and state.shown == "not run"
            with pytest.raises(ValueError):
                state.status  # noqa: B018 -- a trial without a run has no status
        else:
            assert State.of(state.status) is state and state.status == state.value.upper()
            assert state.shown == state.value


def test_transitions():
    ok = [(State.MISSING, State.SCHEDULED), (State.SCHEDULED, State.RUNNING),
          (State.RUNNING, State.FINISHED), (State.RUNNING, State.FAILED),
          (State.SCHEDULED, State.KILLED), (State.FAILED, State.SCHEDULED),
          (State.KILLED, State.SCHEDULED), (State.RUNNING, State.SCHEDULED)]
    for old, new in ok:
        assert old.to(new) is new
    for old, new in [(State.FINISHED, State.SCHEDULED), (State.MISSING, State.RUNNING),
                     (State.FAILED, State.FINISHED), (State.RUNNING, State.MISSING)]:
        with pytest.raises(ValueError, match=f"from {old} to {new}"):
            old.to(new)
    assert set(record.TRANSITIONS) == set(State)
    assert all(State.MISSING not in targets for targets in record.TRANSITIONS.values())


def test_metric_keys_name_registered_metrics():
    from harness.core.metrics import METRICS

    cases = {record.final("nll"): "nll", record.during("w2"): "w2",
             record.final("eval_time"): "eval_time", record.error("midpoint"): "numerical_error",
             record.vs_nfe("fid_classifier", "euler"): "fid_classifier",
             record.vs_nfe("mmd", "dopri5", 1e-3): "mmd",
             record.LOSS: "train_loss", record.TRAIN_S: "train_time"}
    for key, name in cases.items():
        assert record.spec(key) == METRICS.get(name), key
    assert record.spec(record.final("nll")).unit == "nats"
    assert record.spec(record.final("nll")).lower_is_better
    with pytest.raises(KeyError):
        record.spec("nonsense")
