"""Metric histories (curves against step or NFE) averaged over seeds, for figures and claims.

Only finished trials contribute, and per method and dataset only the lowest ``CURVE_SEEDS`` seeds
unless the report asks for more (``fmbench report --curve-seeds``; 0 reads every seed): each history
is one tracking-store call per run and key, so this bound is what keeps a report on 10,000 runs
fast. Every figure, table and claim says how many seeds its curves average.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.run import record
from harness.run.record import LOSS, State, logged_keys
from harness.report.tables import DatasetMetrics

CURVE_SEEDS = 5
"""Seeds per (method, dataset) whose histories a report reads by default."""
ERROR_SOLVER = "midpoint"
"""The fixed-step solver of the numerical-error panel and claim (the paper's Figure 7, left)."""


def error_key(solver: str = ERROR_SOLVER) -> str:
    return record.error(solver)


def during_key(metrics: DatasetMetrics) -> str:
    return record.during(metrics.quality)


def vs_nfe_prefix(metrics: DatasetMetrics) -> str:
    return record.vs_nfe_prefix(metrics.quality)


def keys_for(frame: pd.DataFrame, metrics: DatasetMetrics) -> list[str]:
    """The history keys one dataset's figures and claims need, among those logged."""
    logged = logged_keys(frame)
    wanted = [LOSS, during_key(metrics), error_key()]
    wanted += sorted(k for k in logged if k.startswith(record.ERROR) and k != error_key())
    prefixes = tuple(record.vs_nfe_prefix(m) for m in curve_metrics(metrics))
    wanted += sorted(k for k in logged if k.startswith(prefixes))
    return [k for k in wanted if k in logged]


def curve_runs(frame: pd.DataFrame, per_cell: int = CURVE_SEEDS) -> pd.DataFrame:
    """Finished trials whose histories are read: the lowest ``per_cell`` seeds of each cell (0:
    all of them)."""
    done = frame[(frame["state"] == State.FINISHED) & frame["run_id"].notna()].sort_values("seed")
    return done if per_cell == 0 else done.groupby(["label", "dataset"], sort=False).head(per_cell)


def seeds_read(per_cell: int) -> str:
    """How many seeds the curves average, as a caption says it."""
    if per_cell == 0:
        return "every finished seed"
    return f"the first {per_cell} finished seed{'s' if per_cell > 1 else ''}"


@dataclass(frozen=True, eq=False)
class Curves:
    """Histories joined with their trial's identity: run_id, key, step, value, label, dataset."""

    points: pd.DataFrame
    per_cell: int = CURVE_SEEDS
    """The bound on seeds read per (method, dataset), 0 for none (:func:`curve_runs`)."""

    @classmethod
    def join(cls, histories: pd.DataFrame, runs: pd.DataFrame,
             per_cell: int = CURVE_SEEDS) -> "Curves":
        ids = runs[["run_id", "label", "dataset", "seed"]].astype({"run_id": str})
        return cls(histories.astype({"run_id": str}).merge(ids, on="run_id", how="inner"),
                   per_cell)

    @property
    def seeds_read(self) -> str:
        return seeds_read(self.per_cell)

    def _select(self, label: str, dataset: str, key: str) -> pd.DataFrame:
        p = self.points
        sel = p[(p["label"] == label) & (p["dataset"] == dataset) & (p["key"] == key)]
        # a resumed run may log a step twice: keep its last value
        return sel.drop_duplicates(["run_id", "step"], keep="last")

    def mean(self, label: str, dataset: str, key: str) -> pd.DataFrame:
        """Columns step, mean, std, n: the curve averaged over the seeds that logged each step."""
        g = self._select(label, dataset, key).groupby("step")["value"]
        out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()})
        return out.reset_index().sort_values("step")

    def per_seed(self, label: str, dataset: str, key: str) -> dict[int, pd.Series]:
        """Each seed's own curve (value indexed by step, ascending), for claims that pair seeds:
        the same seed gives two methods the same data and noise, so their curves compare."""
        sel = self._select(label, dataset, key).sort_values("step")
        return {int(seed): g.set_index("step")["value"] for seed, g in sel.groupby("seed")}

    def seeds(self, label: str, dataset: str, key: str) -> int:
        p = self.points
        sel = p[(p["label"] == label) & (p["dataset"] == dataset) & (p["key"] == key)]
        return int(sel["run_id"].nunique())


CURVE_METRICS = {"w2": ("w2", "mmd")}
"""Quality metrics drawn against NFE beside a dataset's quality metric (2-D data: W2 and MMD);
any other quality metric (FID) is drawn alone."""


def curve_metrics(metrics: DatasetMetrics) -> tuple[str, ...]:
    """The metrics of a dataset's quality-against-NFE curves, its quality metric first."""
    return CURVE_METRICS.get(metrics.quality, (metrics.quality,))
