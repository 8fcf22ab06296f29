"""A trial's record in MLflow: the one module that names what fmbench writes there and reads back
(docs/design.md §5).

Writers (the driver in :mod:`harness.run.scheduler`, the tasks in :mod:`harness.run.tasks`,
:mod:`harness.run.invocation`) and readers (``fmbench status``, :mod:`harness.report`) meet only here,
so a key cannot be written under one spelling and read under another. Four parts:

- names: tags, metric keys, artifact names, params (the resolved config flattened), and the
  columns of a runs table laid out as ``mlflow.search_runs`` lays it out;
- states: what a run's MLflow status says about its trial, and the changes a trial may go
  through;
- the writer, :class:`TrialWriter`, which logs through a :class:`harness.run.tracking.RunLogger`;
- readers: :class:`TrialRun` (one MLflow run, for ``status`` and the driver), :func:`runs_frame`
  and :func:`trial_rows` (many runs as a table, for the report).

It imports neither MLflow nor torch (the store is :mod:`harness.run.tracking`'s, metric metadata
:mod:`harness.core.metrics`', looked up when asked), so the tracking store depends on it, never the
other way round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import pandas as pd

    from harness.core.metrics import MetricSpec

# -- tags -------------------------------------------------------------------------------------
TAG = "fmbench."
KIND = TAG + "kind"
"""What an experiment or run is: :data:`SUITE_KIND`, :data:`INVOCATION` or :data:`TRIAL`."""
SUITE_KIND, INVOCATION, TRIAL = "suite", "invocation", "trial"
SUITE = TAG + "suite"
KEY = TAG + "trial_key"
"""The trial's key (:func:`harness.run.suite.trial_key`): its runs share it, the newest counts."""
REASON = TAG + "failure"
"""Why a run failed or was killed, one line; deleted when its reopened trial finishes."""
METHOD, DATASET, SEED = TAG + "method", TAG + "dataset", TAG + "seed"
"""A trial's place in the grid; ``METHOD`` holds the suite's label of the method."""
GIT_COMMIT, HARNESS_VERSION = TAG + "git_commit", TAG + "harness_version"
TRAIN_GPUS, EVAL_GPUS = TAG + "train_gpus", TAG + "eval_gpus"
"""GPUs the trial's train and eval tasks hold (all data-parallel workers): the report's
accelerator-hours, which must not depend on a suite file edited since the run."""
TRAIN_NODE, DEVICE, CUDA_VISIBLE_DEVICES = (TAG + "train_node", TAG + "device",
                                            TAG + "cuda_visible_devices")
TRAIN_WORKERS, PER_WORKER_BATCH = TAG + "train_workers", TAG + "per_worker_batch"
EVAL_SHARDS, WARNINGS = TAG + "eval_shards", TAG + "warnings"
NODE_VERSION, NODE_COMMIT, NODE_SCIENCE, NODE_SOURCE = (
    TAG + "node_version", TAG + "node_commit", TAG + "node_science_version", TAG + "node_source")
"""The code of the node a task ran on (:mod:`harness.run.identity`; equal to the driver's, which
the task checked before any work)."""
HOST, PID, STARTED_AT, HEARTBEAT, LEASE = (TAG + "host", TAG + "pid", TAG + "started_at",
                                           TAG + "heartbeat", TAG + "lease")
"""An invocation's driver and its lease on the suite (:mod:`harness.run.invocation`)."""
PARENT = "mlflow.parentRunId"
"""MLflow's own tag: a trial run's invocation (the one that last ran it) in MLflow's UI."""
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
"""The experiment tag MLflow 3's UI offers for "model training" experiments (the GenAI kind is
``genai_development``); see :func:`harness.run.tracking.ui_url` for what the UI really reads."""

# -- metric keys ------------------------------------------------------------------------------
LOSS = "train/loss"
ATTEMPT_START = "train/started_at_step"
"""Logged once per training attempt, at the step it resumed from."""
TRAIN_S, TRAIN_ATTEMPT_S = "time/train_s", "time/train_attempt_s"
"""Training seconds over every attempt, and of the last attempt alone."""
WALL_S = "time/wall_s"
"""An invocation's wall time."""
FINAL, DURING, ERROR = "final/", "during/", "error/"
DURING_AT_END = ("nfe", "w2", "mmd", "fid", "fid_classifier")
"""Final metrics also logged as the last point of the during-training curves."""


def final(metric: str) -> str:
    """The key of a final metric: ``final/nll``."""
    return FINAL + metric


def during(metric: str) -> str:
    """The key of a metric's curve over training steps: ``during/w2``."""
    return DURING + metric


def error(solver: str) -> str:
    """The key of a fixed-step solver's numerical error against NFE: ``error/midpoint``."""
    return ERROR + solver


def vs_nfe_prefix(metric: str) -> str:
    """What every solver's ``metric``-against-NFE key starts with: ``fid_vs_nfe/``."""
    return f"{metric}_vs_nfe/"


TOL_MARK = "_tol"
"""Joins dopri5 and its tolerance in a key: MLflow keys allow only alphanumerics, ``_ - . /`` and
spaces, so neither ``@`` nor ``+`` (:func:`tol_text`)."""


def tol_text(tol: float) -> str:
    """A tolerance as key text that reads back exactly: 1e-3 -> ``1e-03``, 2.5e-4 -> ``2.5e-04``,
    10 -> ``1e01`` (no ``+``)."""
    mantissa, exponent = f"{tol:.15e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{exponent.lstrip('+')}"


def vs_nfe(metric: str, solver: str, tol: float | None = None) -> str:
    """The key of sample quality against a solver's NFE (step: the NFE, rounded):
    ``w2_vs_nfe/euler``, ``fid_classifier_vs_nfe/rk4``; dopri5 at tolerance ``tol``, one key per
    tolerance: ``w2_vs_nfe/dopri5_tol1e-03``."""
    return vs_nfe_prefix(metric) + solver + ("" if tol is None else TOL_MARK + tol_text(tol))


def parse_vs_nfe(key: str) -> tuple[str, str, float | None]:
    """(metric, solver, tolerance or None) of a :func:`vs_nfe` key; a dopri5 key of fmbench
    before tolerances were keyed (``fid_vs_nfe/dopri5``) has no tolerance."""
    family, _, rest = key.partition("/")
    if not family.endswith("_vs_nfe") or not rest:
        raise KeyError(f"{key!r} is not a quality-against-NFE key")
    solver, _, tol = rest.partition(TOL_MARK)
    return family.removesuffix("_vs_nfe"), solver, float(tol) if tol else None


def trial_count(outcome: str) -> str:
    """An invocation's count of trials that ended ``outcome`` (finished, failed, skipped)."""
    return f"trials/{outcome}"


_REGISTERED = {LOSS: "train_loss", TRAIN_S: "train_time", TRAIN_ATTEMPT_S: "train_time"}


def spec(key: str) -> MetricSpec:
    """The registered metric (display name, unit, direction) behind a metric key: ``final/nll``
    and ``during/nll`` are ``nll``, ``error/<solver>`` is ``numerical_error``,
    ``w2_vs_nfe/<solver>`` is ``w2``. Read from :data:`harness.core.metrics.METRICS`, never copied."""
    from harness.core.metrics import METRICS

    if key in _REGISTERED:
        return METRICS.get(_REGISTERED[key])
    family, _, rest = key.partition("/")
    if key.startswith((FINAL, DURING)):
        return METRICS.get(rest)
    if key.startswith(ERROR):
        return METRICS.get("numerical_error")
    if family.endswith("_vs_nfe"):
        return METRICS.get(family.removesuffix("_vs_nfe"))
    raise KeyError(f"{key!r} is not a metric key of a trial's record")


# -- artifacts and params ---------------------------------------------------------------------
CONFIG_FILE, RECORD_FILE = "config.json", "metrics.json"
"""A trial run's resolved configuration, and its final record (:meth:`TrialResult.dumps`)."""
SAMPLES, TRAJECTORIES = "samples.png", "trajectories.png"
REPORT_FOLDER = "report"
"""Where ``fmbench report`` puts the report among an invocation's artifacts."""


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The params of a resolved config: ``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": "0.001"}``
    (MLflow params are flat strings; non-strings JSON-encoded)."""
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value, default=str) if not isinstance(value, str) else value
    return out


# -- columns of a runs table (the ``mlflow.search_runs`` layout) ------------------------------
def tag_column(tag: str) -> str:
    return "tags." + tag


def metric_column(key: str) -> str:
    return "metrics." + key


def param_column(name: str) -> str:
    """The column of a param, named as :func:`flatten` names it (``eval.tol``)."""
    return "params." + name


def final_column(metric: str) -> str:
    """The column of a final metric; ``final_column("")`` is what every one starts with."""
    return metric_column(final(metric))


def kind_filter(kind: str) -> str:
    """An MLflow search filter for experiments or runs of ``kind``."""
    return f"tags.`{KIND}` = '{kind}'"


# -- states -----------------------------------------------------------------------------------
class State(StrEnum):
    """A trial's state: one vocabulary for the driver, ``status`` and the report. Every state but
    ``missing`` (no run yet) is the MLflow status of the trial's newest run, in lower case.
    Invocation runs use ``running`` and the three ends."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    KILLED = "killed"
    MISSING = "missing"

    @property
    def status(self) -> str:
        """The MLflow run status that records this state."""
        if self is State.MISSING:
            raise ValueError("a missing trial has no run, so no run status")
        return self.name

    @classmethod
    def of(cls, status: str | None) -> State:
        """The state of a run with MLflow ``status`` (None: no run)."""
        return cls.MISSING if status is None else cls[status]

    @property
    def shown(self) -> str:
        """The state as ``fmbench status`` and the report's notes say it."""
        return "not run" if self is State.MISSING else self.value

    @property
    def ended(self) -> bool:
        return self in (State.FINISHED, State.FAILED, State.KILLED)

    def to(self, new: State) -> State:
        """``new``, after checking that a trial in this state may go there (:data:`TRANSITIONS`)."""
        if new not in TRANSITIONS[self]:
            raise ValueError(f"a trial cannot go from {self} to {new}")
        return new


TRANSITIONS: dict[State, frozenset[State]] = {
    # The driver creates the run (or reopens an unfinished one, which resumes its checkpoint).
    State.MISSING: frozenset({State.SCHEDULED}),
    # Its train task starts; or it fails before training (bad data), or the driver stops.
    State.SCHEDULED: frozenset({State.SCHEDULED, State.RUNNING, State.FAILED, State.KILLED}),
    State.RUNNING: frozenset({State.SCHEDULED, State.FINISHED, State.FAILED, State.KILLED}),
    State.FAILED: frozenset({State.SCHEDULED}),
    State.KILLED: frozenset({State.SCHEDULED}),
    State.FINISHED: frozenset(),  # final: --force starts a new run
}
"""The changes a trial's run may go through (docs/design.md §5.2)."""


# -- the writer -------------------------------------------------------------------------------
def task_gpus(resources: Any) -> float:
    """GPUs a task holds: every data-parallel worker holds ``resources.gpus``."""
    return resources.workers * resources.gpus


def resource_tags(trial: Any) -> dict[str, float]:
    """The GPUs ``trial``'s tasks hold, as tags (rewritten when a run is reopened)."""
    return {TRAIN_GPUS: task_gpus(trial.train_resources),
            EVAL_GPUS: task_gpus(trial.eval_resources)}


def trial_tags(suite: str, trial: Any, commit: str) -> dict[str, Any]:
    """The tags a trial run is created with: what it is, where in the grid, from which code."""
    return {KIND: TRIAL, SUITE: suite, KEY: trial.key, METHOD: trial.method.label,
            DATASET: trial.dataset.name, SEED: trial.seed, GIT_COMMIT: commit,
            **resource_tags(trial)}


def invocation_tags(suite: str, commit: str) -> dict[str, Any]:
    """The tags every invocation run has (the lease adds its own: :mod:`harness.run.invocation`)."""
    return {KIND: INVOCATION, SUITE: suite, GIT_COMMIT: commit}


def invocation_totals(finished: int, failed: int, skipped: int, seconds: float) -> dict[str, float]:
    """An invocation's metrics once its trials are done."""
    return {trial_count("finished"): finished, trial_count("failed"): failed,
            trial_count("skipped"): skipped, WALL_S: seconds}


def placement_tags(node: str, device: str, cuda_visible_devices: str, workers: int = 1,
                   batch_size: int = 0) -> dict[str, Any]:
    """Where a trial trains, as tags; with ``workers`` > 1 also the per-worker share of the
    global ``batch_size``."""
    tags: dict[str, Any] = {TRAIN_NODE: node, DEVICE: device,
                            CUDA_VISIBLE_DEVICES: cuda_visible_devices}
    if workers > 1:
        tags.update({TRAIN_WORKERS: workers, PER_WORKER_BATCH: batch_size // workers})
    return tags


def code_tags(identity: Any) -> dict[str, str]:
    """A :class:`harness.run.identity.CodeIdentity` as the run's node-code tags."""
    return {NODE_VERSION: identity.version, NODE_COMMIT: identity.commit or "none",
            NODE_SCIENCE: identity.science, NODE_SOURCE: identity.source}


@dataclass(frozen=True)
class TrialWriter:
    """Writes one trial's record to its run. Picklable like the
    :class:`harness.run.tracking.RunLogger` it wraps (a URI and a run id), so Ray tasks get one; every
    write retries while the store is away. Typed ``Any`` (and the trackers below): the store
    depends on the record, not the other way round."""

    logger: Any

    @classmethod
    def create(cls, tracker: Any, suite: str, trial: Any, commit: str,
               parent_id: str | None = None) -> TrialWriter:
        """A new run for ``trial``, SCHEDULED until its train task starts."""
        return cls(tracker.start_run(trial.name, trial_tags(suite, trial, commit),
                                     parent_id=parent_id, status=State.SCHEDULED.status))

    @classmethod
    def reopen(cls, tracker: Any, run: TrialRun, trial: Any, parent_id: str) -> TrialWriter:
        """The unfinished ``run`` scheduled again (its trial resumes from its checkpoint), now
        under invocation ``parent_id`` and with the resources this driver gives it."""
        run.state.to(State.SCHEDULED)
        writer = cls(tracker.reopen(run.run_id))
        writer.logger.set_tags({PARENT: parent_id, **resource_tags(trial)})
        return writer

    @property
    def run_id(self) -> str:
        return self.logger.run_id

    def start(self, config: dict[str, Any], placement: dict[str, Any]) -> None:
        """The train task started: RUNNING, the resolved config as params (:func:`flatten`),
        where it runs (:func:`placement_tags`)."""
        self.logger.set_status(State.RUNNING.status)
        self.logger.log_params(config)
        self.logger.set_tags(placement)

    def logged_loss_steps(self) -> set[int]:
        return self.logger.logged_steps(LOSS)

    def log_attempt_start(self, step: int) -> None:
        self.logger.log_metrics({ATTEMPT_START: step}, step=step)

    def log_losses(self, points: list[tuple[int, float]]) -> None:
        """(step, loss) pairs of the training curve."""
        self.logger.log_history(LOSS, points)

    def log_train_time(self, total: float, attempt: float, step: int) -> None:
        self.logger.log_metrics({TRAIN_S: total, TRAIN_ATTEMPT_S: attempt}, step=step)

    def evaluated_steps(self) -> set[int]:
        """Steps with a during-training evaluation (every one logs ``nfe``)."""
        return self.logger.logged_steps(during("nfe"))

    def log_during(self, metrics: dict[str, float], step: int) -> None:
        self.logger.log_metrics({during(k): v for k, v in metrics.items()}, step=step)

    def log_code(self, identity: Any) -> None:
        """The code of the node that evaluates (the train task's are set with its placement)."""
        self.logger.set_tags(code_tags(identity))

    def log_eval_shards(self, count: int) -> None:
        self.logger.set_tags({EVAL_SHARDS: count})

    def log_evaluation(self, metrics: dict[str, float], evaluation: Any, *, step: int,
                       on_curve: bool) -> None:
        """The final metrics (also the last point of the during-training curves when ``step`` is
        one of theirs: ``on_curve``), the error curves by solver, the quality-vs-NFE curves by
        metric, solver and dopri5 tolerance (:func:`vs_nfe`), and any warnings.
        ``evaluation``: an :class:`harness.core.evaluation_types.EvalResult`. One store call
        for all of them."""
        points = [(final(k), v, step) for k, v in metrics.items()]
        if on_curve:
            points += [(during(k), metrics[k], step) for k in DURING_AT_END if k in metrics]
        points += [(error(p.solver), p.error, p.nfe) for p in evaluation.error_curve]
        for p in evaluation.quality_curve:  # MLflow steps are ints
            points += [(vs_nfe(metric, p.solver, p.tol), value, round(p.nfe))
                       for metric, value in p.values.items()]
        self.logger.log_points(points)
        if evaluation.warnings:
            self.logger.set_tags({WARNINGS: " | ".join(evaluation.warnings)[:5000]})

    def log_files(self, folder: Path, names: Iterable[str]) -> None:
        """Artifacts: the named files of ``folder`` (:data:`CONFIG_FILE`, :data:`SAMPLES`, ...)."""
        for name in names:
            self.logger.log_artifact(folder / name)

    def end(self, state: State, reason: str | None = None) -> None:
        """The trial ended ``state`` (finished, failed or killed), with why when it did not
        finish."""
        if not state.ended:
            raise ValueError(f"{state} is not how a trial ends")
        self.logger.finish(state.status, reason)

    def clear_reason(self) -> None:
        """Forget an earlier attempt's failure (the reopened trial finished)."""
        self.logger.delete_tag(REASON)


# -- readers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialRun:
    """One trial run as ``fmbench status`` and the driver read it."""

    run_id: str
    key: str
    state: State
    finals: dict[str, float]
    reason: str | None

    @classmethod
    def of(cls, run: Any) -> TrialRun:
        """From an MLflow ``Run``."""
        tags, metrics = run.data.tags, run.data.metrics
        finals = {k[len(FINAL):]: v for k, v in metrics.items() if k.startswith(FINAL)}
        return cls(run.info.run_id, tags.get(KEY, ""), State.of(run.info.status), finals,
                   tags.get(REASON))


def trial_runs(tracker: Any) -> dict[str, TrialRun]:
    """The newest run of each trial key in a :class:`harness.run.tracking.Tracker`'s experiment."""
    return {key: TrialRun.of(run) for key, run in tracker.trial_runs().items()}


RUN_INFO = ("run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time")


def runs_frame(runs: Iterable[Any]) -> pd.DataFrame:
    """MLflow ``Run`` objects as one table laid out as ``mlflow.search_runs`` lays it out: the
    :data:`RUN_INFO` columns, ``metrics.<key>`` (NaN where a run lacks it), ``params.<name>`` and
    ``tags.<tag>`` (None where it lacks them), and always a :data:`KIND` column."""
    import pandas as pd

    info: dict[str, list] = {k: [] for k in RUN_INFO}
    data: dict[str, list[dict]] = {"metrics": [], "params": [], "tags": []}
    for run in runs:
        for k in RUN_INFO:
            info[k].append(getattr(run.info, k))
        data["metrics"].append(run.data.metrics)
        data["params"].append(run.data.params)
        data["tags"].append(run.data.tags)
    columns: dict[str, object] = dict(info)
    for k in ("start_time", "end_time"):
        columns[k] = pd.to_datetime(pd.Series(info[k], dtype="float64"), unit="ms", utc=True)
    for prefix, dicts in data.items():
        missing = float("nan") if prefix == "metrics" else None
        for key in dict.fromkeys(k for d in dicts for k in d):
            columns[f"{prefix}.{key}"] = [d.get(key, missing) for d in dicts]
    frame = pd.DataFrame(columns)
    if tag_column(KIND) not in frame:
        frame[tag_column(KIND)] = pd.Series(dtype=object)
    return frame


def of_kind(runs: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The rows of a runs table whose runs are of ``kind``."""
    return runs[runs[tag_column(KIND)] == kind]


IDENTITY = {"label": METHOD, "dataset": DATASET, "seed": SEED, "key": KEY, "reason": REASON}
"""Columns :func:`trial_rows` adds, and the tags they come from."""


def trial_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """The trial runs of a runs table, newest first, with tidy columns: ``label``, ``dataset``,
    ``seed`` (an integer), ``key``, ``reason`` and ``state`` (a :class:`State` value)."""
    import pandas as pd

    rows = of_kind(runs, TRIAL).copy()
    for name, tag in IDENTITY.items():
        rows[name] = rows[tag_column(tag)] if tag_column(tag) in rows else None
    rows["seed"] = pd.to_numeric(rows["seed"], errors="coerce").astype("Int64")
    rows["state"] = rows["status"].map(lambda s: State.of(s).value)
    return rows.sort_values("start_time", ascending=False, kind="stable")


def logged_keys(runs: pd.DataFrame) -> set[str]:
    """Metric keys some run of a runs table logged."""
    prefix = metric_column("")
    return {c[len(prefix):] for c in runs.columns if c.startswith(prefix) and runs[c].notna().any()}
