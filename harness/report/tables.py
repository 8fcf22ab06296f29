"""The paper-style comparison table (Table 1 of Lipman et al. 2022) built from the trial frame.

Rows are methods (baselines first), column groups datasets, columns NLL, the dataset's sample
quality metric and NFE. A cell is mean ± std over the seeds that finished with that metric; every
seed that did not (failed, killed, running, not run, or finished without the metric) gets a
footnote saying so, so a partial mean is never mistaken for a full one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.datasets import DATASETS
from harness.metrics import METRICS
from harness.report.grid import Plan, display_name
from harness.report.table import Cell, Column, Footnotes, Table, decimals_for, mark_best

QUALITY = ("fid", "fid_classifier", "w2")
"""Sample-quality metrics in order of preference: FID where images have it, W2 for 2-D data."""


def final(metric: str) -> str:
    """The trial-frame column of a final metric."""
    return f"metrics.final/{metric}"


@dataclass(frozen=True)
class DatasetMetrics:
    """Which registered metrics a dataset's table columns and figures use."""

    nll: str
    quality: str

    @property
    def columns(self) -> tuple[str, str, str]:
        return (self.nll, self.quality, "nfe")


def _logged(frame: pd.DataFrame, metric: str) -> bool:
    return final(metric) in frame and bool(frame[final(metric)].notna().any())


def dataset_metrics(frame: pd.DataFrame, dataset: str) -> DatasetMetrics:
    """The metrics the dataset's runs logged; by data kind when none logged any yet."""
    rows = frame[frame["dataset"] == dataset]
    image = dataset in DATASETS and DATASETS.entry(dataset).meta.get("kind") == "image"
    nll = "bpd" if _logged(rows, "bpd") else "nll" if _logged(rows, "nll") else \
        ("bpd" if image else "nll")
    quality = next((q for q in QUALITY if _logged(rows, q)), "fid" if image else "w2")
    return DatasetMetrics(nll, quality)


def _why(row: dict, metric: str) -> str:
    """Why a trial adds nothing to a cell of ``metric``."""
    state = row["state"]
    if state == "finished":
        warning = row.get("tags.fmbench.warnings")
        extra = f" ({warning})" if isinstance(warning, str) and warning else ""
        return f"finished without final/{metric}{extra}"
    if state in ("failed", "killed"):
        return f"{state}: {row['reason']}" if row["reason"] else f"{state} (no reason recorded)"
    return "still running or queued" if state == "running" else "not run"


def seed_list(seeds: list[int]) -> str:
    """"seed 3", "seeds 0–2, 5": consecutive seeds as ranges, so 400 missing seeds stay short."""
    seeds = sorted(seeds)
    parts, start = [], 0
    for i in range(1, len(seeds) + 1):
        if i == len(seeds) or seeds[i] != seeds[i - 1] + 1:
            a, b = seeds[start], seeds[i - 1]
            parts.append(str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}–{b}")
            start = i
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(parts)


def seed_notes(plan: Plan, rows: pd.DataFrame, metric: str) -> list[str]:
    """One footnote per distinct reason among a cell's trials that add nothing to it."""
    groups: dict[str, list[int]] = {}
    for row in rows.to_dict("records"):  # iterrows builds a Series per row: ~3x slower
        groups.setdefault(_why(row, metric), []).append(int(row["seed"]))
    if not groups:
        return []
    first = rows.iloc[0]
    who = f"{display_name(plan, first['label'])} on {first['dataset']}"
    return [f"{who}, {seed_list(seeds)}: {why}" for why, seeds in groups.items()]


def cells(frame: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """The trials of each (method label, dataset) in seed order, with only the columns a cell
    needs (rows of a few hundred params and tags are slow to walk)."""
    keep = ["label", "dataset", "seed", "state", "reason", "tags.fmbench.warnings",
            *(c for c in frame.columns if c.startswith("metrics.final/"))]
    slim = frame[[c for c in keep if c in frame.columns]].sort_values("seed", kind="stable")
    return {key: group for key, group in slim.groupby(["label", "dataset"], sort=False)}


def summarize(values: list[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample std with n - 1, n); std is None below two values."""
    if not values:
        return None, None, 0
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None), len(arr)


def comparison_table(plan: Plan, frame: pd.DataFrame) -> Table:
    """The comparison table: one data structure for every output format. Footnotes are numbered
    in reading order (row by row)."""
    columns: list[Column] = []
    stats: list[list[tuple]] = [[] for _ in plan.labels]  # (mean, std, n) per row and column
    why: list[list[list[str]]] = [[] for _ in plan.labels]  # footnote texts per row and column
    by_cell = cells(frame)
    for dataset in plan.datasets:
        for metric in dataset_metrics(frame, dataset).columns:
            spec = METRICS.get(metric)
            columns.append(Column(f"{dataset}/{metric}", spec.display,
                                  "" if metric == "nfe" else spec.unit, dataset,
                                  spec.lower_is_better))
            for i, label in enumerate(plan.labels):
                rows = by_cell.get((label, dataset), frame.iloc[:0])
                value = rows[final(metric)] if final(metric) in rows else pd.Series(
                    np.nan, index=rows.index)
                ok = (rows["state"] == "finished") & value.notna()
                stats[i].append(summarize(value[ok].tolist()))
                why[i].append(seed_notes(plan, rows[~ok], metric))
    notes = Footnotes()
    numbers = [[notes.add(texts) for texts in row] for row in why]
    by_column = []
    for j, col in enumerate(columns):
        places = decimals_for(stats[i][j][0] for i in range(len(plan.labels)))
        column = [Cell(*stats[i][j], decimals=places, notes=numbers[i][j])
                  for i in range(len(plan.labels))]
        by_column.append(mark_best(column, col.lower_is_better))
    rows = tuple(tuple(col[i] for col in by_column) for i in range(len(plan.labels)))
    return Table("comparison", "Comparison", "Method",
                 tuple(display_name(plan, label) for label in plan.labels), tuple(columns), rows,
                 notes.texts, _caption(frame), plan.labels)


def _caption(frame: pd.DataFrame) -> str:
    tol = ""
    if "params.eval.tol" in frame:
        tols = sorted(frame["params.eval.tol"].dropna().unique())
        tol = f" at atol = rtol = {', '.join(tols)}" if tols else ""
    return ("Mean ± standard deviation over seeds (n = seeds with a result); the best of each "
            "column in bold. NLL in bits/dim for images and nats per example for 2-D data; "
            f"NFE: network evaluations to sample with dopri5{tol}; — : no result (see notes).")
