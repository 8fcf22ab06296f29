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
from harness.core.metrics import METRICS
from harness.run.record import WARNINGS, State, final, final_column, param_column, tag_column
from harness.report import paper as published
from harness.report.grid import Plan, display_name
from harness.report.table import Cell, Column, Footnotes, Table, decimals_for, mark_best

QUALITY = ("fid", "fid_classifier", "w2")
"""Sample-quality metrics in order of preference: FID where images have it, W2 for 2-D data."""
FEATURES = {"fid": "", "fid_classifier": "digit classifier"}
"""FID metrics and the feature space their labels name (none: clean-fid's Inception)."""
UNRECORDED = "pipeline not recorded"


@dataclass(frozen=True)
class DatasetMetrics:
    """Which registered metrics a dataset's table columns and figures use."""

    nll: str
    quality: str

    @property
    def columns(self) -> tuple[str, str, str]:
        return (self.nll, self.quality, "nfe")


def _logged(frame: pd.DataFrame, metric: str) -> bool:
    column = final_column(metric)
    return column in frame and bool(frame[column].notna().any())


def dataset_metrics(frame: pd.DataFrame, dataset: str) -> DatasetMetrics:
    """The metrics the dataset's runs logged; by data kind when none logged any yet."""
    rows = frame[frame["dataset"] == dataset]
    image = dataset in DATASETS and DATASETS.entry(dataset).meta.get("kind") == "image"
    nll = "bpd" if _logged(rows, "bpd") else "nll" if _logged(rows, "nll") else \
        ("bpd" if image else "nll")
    quality = next((q for q in QUALITY if _logged(rows, q)), "fid" if image else "w2")
    return DatasetMetrics(nll, quality)


def _count(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def fid_pipelines(frame: pd.DataFrame, samples: str = "fid_samples") -> pd.Series:
    """Each run's FID pipeline as its params recorded it: the clean-fid mode and the generated
    samples (``samples``: the eval setting that counts them), e.g. "legacy_tensorflow, 50k".
    Read from the runs, never from the suite file, which may have changed since they ran."""
    def param(name: str) -> pd.Series:
        column = param_column(f"eval.{name}")
        return frame[column] if column in frame else pd.Series(None, frame.index, object)

    def one(mode, count) -> str:
        if not isinstance(mode, str):
            return UNRECORDED
        n = int(float(count)) if isinstance(count, str) else 0
        return f"{mode}, {_count(n)}" if n else mode

    return pd.Series([one(m, c) for m, c in zip(param("fid_mode"), param(samples))],
                     index=frame.index, dtype=object)


def quality_title(metric: str, pipelines) -> str:
    """A quality metric's label with the FID pipeline(s) behind it: "FID (legacy_tensorflow,
    50k)", "FID (digit classifier, clean, 2k)"; several are all named, as mixed."""
    if metric not in FEATURES:
        return METRICS.get(metric).display
    found = sorted(set(pipelines))
    shown = found[0] if len(found) == 1 else "mixed pipelines: " + "; ".join(found) if found \
        else ""
    parts = [p for p in (FEATURES[metric], shown) if p]
    base = METRICS.get("fid").display
    return f"{base} ({', '.join(parts)})" if parts else base


def _values(rows: pd.DataFrame, metric: str) -> tuple[pd.Series, pd.Series]:
    """The final ``metric`` of each row, and which rows a cell averages: finished with a value."""
    column = final_column(metric)
    value = rows[column] if column in rows else pd.Series(np.nan, index=rows.index)
    return value, (rows["state"] == State.FINISHED) & value.notna()


def quality_pipelines(frame: pd.DataFrame, dataset: str, metric: str,
                      samples: str = "fid_samples") -> list[str]:
    """The FID pipelines of a dataset's finished runs that logged the metric (empty for W2)."""
    if metric not in FEATURES:
        return []
    rows = frame[frame["dataset"] == dataset]
    return sorted(set(fid_pipelines(rows[_values(rows, metric)[1]], samples)))


def _why(row: dict, metric: str) -> str:
    """Why a trial adds nothing to a cell of ``metric``."""
    state = State(row["state"])
    if state is State.FINISHED:
        warning = row.get(tag_column(WARNINGS))
        extra = f" ({warning})" if isinstance(warning, str) and warning else ""
        return f"finished without {final(metric)}{extra}"
    if state.ended:
        return f"{state}: {row['reason']}" if row["reason"] else f"{state} (no reason recorded)"
    return "still running or queued" if state is not State.MISSING else state.shown


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


def cells(frame: pd.DataFrame, params: tuple[str, ...] = ()) -> dict[tuple[str, str],
                                                                     pd.DataFrame]:
    """The trials of each (method label, dataset) in seed order, with only the columns a cell
    needs (rows of a few hundred params and tags are slow to walk) and the ``params`` columns."""
    keep = ["label", "dataset", "seed", "state", "reason", tag_column(WARNINGS), "pipeline",
            *(c for c in frame.columns if c.startswith(final_column(""))), *params]
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
    in reading order (row by row).

    An FID column's header names the pipeline (clean-fid mode, generated samples) its runs
    recorded. Where a dataset's runs used several, each gets its own column and the caption says
    so: FIDs of different pipelines differ by more than methods do, so they are never averaged
    into one cell or ranked against each other (a per-cell label would still invite both)."""
    columns: list[Column] = []
    stats: list[list[tuple]] = [[] for _ in plan.labels]  # (mean, std, n) per row and column
    why: list[list[list[str]]] = [[] for _ in plan.labels]  # footnote texts per row and column
    refs: list[list[str | None]] = [[] for _ in plan.labels]  # the paper's value, as printed
    paper = published.load() if published.compared(plan.suite) else None
    with_pipeline = frame.assign(pipeline=fid_pipelines(frame))
    by_cell = cells(with_pipeline, tuple(published.params(paper)) if paper else ())
    mixed = {}
    for dataset in plan.datasets:
        for metric in dataset_metrics(frame, dataset).columns:
            spec = METRICS.get(metric)
            found = quality_pipelines(frame, dataset, metric)
            if len(found) > 1:
                mixed[dataset] = found
            for pipeline in found if len(found) > 1 else [None]:
                key = f"{dataset}/{metric}" + (f" [{pipeline}]" if pipeline else "")
                columns.append(Column(key, quality_title(metric, [pipeline] if pipeline else found),
                                      "" if metric == "nfe" else spec.unit, dataset,
                                      spec.lower_is_better))
                for i, label in enumerate(plan.labels):
                    rows = by_cell.get((label, dataset), with_pipeline.iloc[:0])
                    value, ok = _values(rows, metric)
                    if pipeline:  # values of another pipeline belong to its own column
                        keep = ~ok | (rows["pipeline"] == pipeline)
                        rows, value, ok = rows[keep], value[keep], ok[keep]
                    stats[i].append(summarize(value[ok].tolist()))
                    refs[i].append(_reference(paper, plan, label, dataset, metric))
                    why[i].append(seed_notes(plan, rows[~ok], metric) + (published.protocol_notes(
                        paper, dataset, metric, rows[ok]) if refs[i][-1] else []))
    notes = Footnotes()
    numbers = [[notes.add(texts) for texts in row] for row in why]
    by_column = []
    for j, col in enumerate(columns):
        places = decimals_for(stats[i][j][0] for i in range(len(plan.labels)))
        column = [Cell(*stats[i][j], decimals=places, notes=numbers[i][j], reference=refs[i][j])
                  for i in range(len(plan.labels))]
        by_column.append(mark_best(column, col.lower_is_better))
    rows = tuple(tuple(col[i] for col in by_column) for i in range(len(plan.labels)))
    return Table("comparison", "Comparison", "Method",
                 tuple(display_name(plan, label) for label in plan.labels), tuple(columns), rows,
                 notes.texts, _caption(frame, mixed, paper if any(map(any, refs)) else None),
                 plan.labels)


def _reference(paper: published.Paper | None, plan: Plan, label: str, dataset: str,
               metric: str) -> str | None:
    """The paper's value of a cell, as printed: in a paper suite, for a method under its own
    name (a labelled variant runs other options than the paper's) and a metric it reports."""
    if paper is None or plan.methods.get(label) != label:
        return None
    return paper.value(dataset, label, metric)


def _caption(frame: pd.DataFrame, mixed: dict[str, list[str]],
             paper: published.Paper | None = None) -> str:
    tol = ""
    tol_column = param_column("eval.tol")
    if tol_column in frame:
        tols = sorted(frame[tol_column].dropna().unique())
        tol = f" at atol = rtol = {', '.join(tols)}" if tols else ""
    text = ("Mean ± standard deviation over seeds (n = seeds with a result); the best of each "
            "column in bold. NLL in bits/dim for images and nats per example for 2-D data; "
            f"NFE: network evaluations to sample with dopri5{tol}; — : no result (see notes).")
    if any(final_column(m) in frame for m in FEATURES):
        text += (" FID headers name the clean-fid mode and generated-sample count that the runs "
                 "recorded.")
    for dataset, found in mixed.items():
        text += (f" Mixed FID pipelines on {dataset} ({'; '.join(found)}): one column each, "
                 "not comparable across columns.")
    if paper is not None:
        text += (f" \"paper\": the value {paper.citation} prints for that method and dataset, "
                 "then ours − paper at the cell's places; the notes name every protocol setting "
                 "in which the runs averaged differ from the paper's.")
    return text
