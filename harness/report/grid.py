"""The suite's planned grid joined with its runs: one row per trial, whatever state it is in.

A report on a suite that is still running, or partly failed, must show what is missing and why, so
the unit here is the planned trial (method label x dataset x seed), not the MLflow run. With a suite
file the plan is exact (trials are matched by key, so runs of an edited suite's older settings are
left out and counted); with only a suite name it is inferred from the runs found.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.core.methods import METHODS
from harness.run.record import State, param_column, task_gpus, trial_rows

PLANNED_GPUS = {"train": "planned_train_gpus", "eval": "planned_eval_gpus"}
"""Columns of a planned trial: the GPUs the suite file gives its train and eval tasks, for runs
that did not record theirs."""


@dataclass(frozen=True, eq=False)
class Plan:
    """What the report compares the runs against; ``labels`` are in table order."""

    suite: str
    experiment: str
    labels: tuple[str, ...]
    methods: dict[str, str]  # label -> registered method name
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    path: str | None = None
    trials: pd.DataFrame | None = None  # label, method, dataset, seed, key, PLANNED_GPUS
    # (None: a plan inferred from the runs)

    @classmethod
    def from_suite(cls, suite: Any) -> "Plan":
        trials = pd.DataFrame([(t.method.label, t.method.name, t.dataset.name, t.seed, t.key,
                                task_gpus(t.train_resources), task_gpus(t.eval_resources))
                               for t in suite.trials()],
                              columns=["label", "method", "dataset", "seed", "key",
                                       *PLANNED_GPUS.values()])
        methods = {m.label: m.name for m in suite.methods}
        return cls(suite.name, suite.experiment, _table_order(methods), methods,
                   tuple(d.name for d in suite.datasets), tuple(suite.seeds), suite.path, trials)

    @classmethod
    def inferred(cls, suite: str, runs: pd.DataFrame, experiment: str | None = None) -> "Plan":
        """The grid implied by the runs found: every label x dataset x seed seen in them."""
        trials = trial_rows(runs)
        methods = {}
        for label, group in trials.groupby("label", sort=False):
            names = group.get(param_column("method"), pd.Series(dtype=object)).dropna()
            methods[label] = names.iloc[0] if len(names) else label
        return cls(suite, experiment or suite, _table_order(methods), methods,
                   tuple(sorted(trials["dataset"].dropna().unique())),
                   tuple(sorted(int(s) for s in trials["seed"].dropna().unique())))


def _table_order(methods: dict[str, str]) -> tuple[str, ...]:
    """Baselines first, then flow matching, each in registry order (the paper's Table 1);
    labels of one method keep the suite's order; unregistered methods come last."""
    names = METHODS.names()

    def rank(item: tuple[int, str]) -> tuple:
        i, label = item
        name = methods[label]
        if name not in METHODS:
            return (2, len(names), i)
        family = METHODS.entry(name).meta.get("family", "baseline")
        return (0 if family == "baseline" else 1, names.index(name), i)

    return tuple(label for _, label in sorted(enumerate(methods), key=rank))


def display_name(plan: Plan, label: str) -> str:
    """The method's display name ("FM w/ OT"), with the label when it differs from the name."""
    name = plan.methods.get(label, label)
    shown = METHODS.entry(name).meta.get("display", name) if name in METHODS else name
    return shown if label == name else f"{shown} ({label})"


def trial_frame(plan: Plan, runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per planned trial with its newest run's columns (or none), and the number of runs
    left out because no planned trial has their key (an edited suite's older settings)."""
    found = trial_rows(runs)
    if plan.trials is not None:
        latest = found.drop_duplicates("key")
        ignored = int((~found["key"].isin(plan.trials["key"])).sum())
        runs_part = latest.drop(columns=["label", "dataset", "seed"])
        frame = plan.trials.merge(runs_part, on="key", how="left")
    else:
        latest = found.drop_duplicates(["label", "dataset", "seed"])
        grid = pd.DataFrame(list(itertools.product(plan.labels, plan.datasets, plan.seeds)),
                            columns=["label", "dataset", "seed"])
        grid["seed"] = grid["seed"].astype("Int64")
        grid["method"] = grid["label"].map(plan.methods)
        frame = grid.merge(latest, on=["label", "dataset", "seed"], how="left")
        ignored = 0
    frame["state"] = frame["state"].fillna(State.MISSING.value)
    frame["reason"] = frame["reason"].fillna("")
    frame["seed"] = frame["seed"].astype(int)
    return frame.reset_index(drop=True), ignored


@dataclass(frozen=True)
class Status:
    """Counts of planned trials by state, for the banner at the top of the report."""

    counts: dict[str, int]
    ignored: int
    inferred: bool
    driver_gone: int = 0  # invocations closed because their driver stopped beating

    @classmethod
    def of(cls, frame: pd.DataFrame, ignored: int, inferred: bool,
           driver_gone: int = 0) -> "Status":
        return cls({s.value: int((frame["state"] == s).sum()) for s in State}, ignored, inferred,
                   driver_gone)

    @property
    def planned(self) -> int:
        return sum(self.counts.values())

    @property
    def complete(self) -> bool:
        return self.planned > 0 and self.counts[State.FINISHED.value] == self.planned

    def banner(self) -> str:
        c = self.counts
        if not self.planned:
            return "No trials of this suite in MLflow yet."
        head = (f"Complete: all {self.planned} planned trials finished." if self.complete else
                f"Incomplete: {c['finished']} of {self.planned} planned trials finished, "
                f"{c['running'] + c['scheduled']} running or queued, {c['failed']} failed, "
                f"{c['killed']} killed, {c['missing']} not run; the numbers below cover finished "
                "trials only.")
        if self.inferred:
            head += " No suite file was given: the planned grid is inferred from the runs found."
        if self.ignored:
            head += (f" {self.ignored} run(s) of settings no longer in the suite file are left "
                     "out.")
        if self.driver_gone:
            n = self.driver_gone
            head += (f" {n} invocation{'s were' if n > 1 else ' was'} killed (driver gone); "
                     "a rerun resumes its unfinished trials.")
        return head
