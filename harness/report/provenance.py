"""What the results cost and where they came from: per-trial time and accelerator-hours, and the
suite file, versions, commits and hardware behind them.

Accelerator-hours are task seconds times the GPUs the task held (every data-parallel worker's):
as the run recorded them when it was scheduled, else as the suite file plans them, else 0 (CPU
only, or a plan inferred from runs that recorded none).
"""

from __future__ import annotations

import platform
import time
from importlib import metadata

import numpy as np
import pandas as pd

from harness import __version__
from harness.run.record import (DEVICE, EVAL_GPUS, GIT_COMMIT, HARNESS_VERSION, TRAIN_GPUS, TRAIN_NODE,
                            TRAIN_S, WALL_S, final_column, metric_column, tag_column)
from harness.report.grid import PLANNED_GPUS, Plan, display_name
from harness.report.table import Cell, Column, Table
from harness.run.store import mask_uri

PACKAGES = ("torch", "torchdiffeq", "numpy", "scipy", "pandas", "mlflow", "ray", "pot",
            "clean-fid", "matplotlib")


def _number(frame: pd.DataFrame, *columns: str) -> pd.Series:
    """The first of ``columns`` that is logged, row by row, as floats (NaN where none is)."""
    out = pd.Series(np.nan, index=frame.index)
    for c in columns:
        if c in frame:
            out = out.fillna(pd.to_numeric(frame[c], errors="coerce"))
    return out


def _gpus(frame: pd.DataFrame, task: str) -> pd.Series:
    """GPUs ``task`` ("train" or "eval") held: as recorded, else as planned, else 0."""
    recorded = {"train": TRAIN_GPUS, "eval": EVAL_GPUS}[task]
    return _number(frame, tag_column(recorded), PLANNED_GPUS[task]).fillna(0.0)


def cost_frame(plan: Plan, frame: pd.DataFrame) -> pd.DataFrame:
    """Per trial with a run: train, eval and wall seconds, GPUs, accelerator-hours."""
    order = {label: i for i, label in enumerate(plan.labels)}
    runs = frame[frame["run_id"].notna()].copy()
    runs["_row"] = runs["label"].map(order)
    runs["_col"] = runs["dataset"].map({d: i for i, d in enumerate(plan.datasets)})
    runs = runs.sort_values(["_row", "_col", "seed"], kind="stable")
    runs["train_s"] = _number(runs, metric_column(TRAIN_S))
    runs["eval_s"] = _number(runs, final_column("eval_time"))
    runs["wall_s"] = runs["train_s"].add(runs["eval_s"], fill_value=0)  # NaN when neither is
    runs["train_gpus"], runs["eval_gpus"] = _gpus(runs, "train"), _gpus(runs, "eval")
    runs["accel_h"] = (runs["train_s"].fillna(0) * runs["train_gpus"]
                       + runs["eval_s"].fillna(0) * runs["eval_gpus"]) / 3600
    return runs


def cost_summary(plan: Plan, frame: pd.DataFrame) -> str:
    """One sentence of totals for the top of the cost section."""
    c = cost_frame(plan, frame)
    hours = c["wall_s"].sum() / 3600  # NaN-skipping sums: trials without timings add nothing
    return (f"{len(c)} runs; total task time {hours:.3f} h (train "
            f"{c['train_s'].sum() / 3600:.3f} h, eval {c['eval_s'].sum() / 3600:.3f} h); "
            f"{c['accel_h'].sum():.4f} accelerator-hours.")


def _tag(row: dict, tag: str) -> str:
    value = row.get(tag_column(tag))
    return value if isinstance(value, str) and value else "—"


def cost_table(plan: Plan, frame: pd.DataFrame) -> Table:
    costs = cost_frame(plan, frame)
    columns = (Column("state", "State"), Column("train_s", "Train", "s"),
               Column("eval_s", "Eval", "s"), Column("wall_s", "Wall", "s"),
               Column("gpus", "GPUs (train/eval)"), Column("accel_h", "Accelerator-hours"),
               Column("device", "Device"), Column("node", "Node"), Column("commit", "Git commit"),
               Column("harness", "Harness"))
    rows, keys, cells = [], [], []
    keep = ["label", "dataset", "seed", "state", "train_s", "eval_s", "wall_s", "train_gpus",
            "eval_gpus", "accel_h",
            *map(tag_column, (DEVICE, TRAIN_NODE, GIT_COMMIT, HARNESS_VERSION))]
    for r in costs[[c for c in keep if c in costs.columns]].to_dict("records"):
        rows.append(f"{display_name(plan, r['label'])} · {r['dataset']} · seed {r['seed']}")
        keys.append(f"{r['label']}-{r['dataset']}-s{r['seed']}")
        cells.append((Cell(text=r["state"]), *_seconds(r["train_s"], r["eval_s"], r["wall_s"]),
                      Cell(text=f"{r['train_gpus']:g}/{r['eval_gpus']:g}"),
                      Cell(mean=float(r["accel_h"]), decimals=4),
                      Cell(text=_tag(r, DEVICE)), Cell(text=_tag(r, TRAIN_NODE)[:12]),
                      Cell(text=_tag(r, GIT_COMMIT)[:10]),
                      Cell(text=_tag(r, HARNESS_VERSION))))
    total = (Cell(text=f"{len(costs)} runs"),
             *_seconds(costs["train_s"].sum(min_count=1), costs["eval_s"].sum(min_count=1),
                       costs["wall_s"].sum()),
             Cell(text=""), Cell(mean=float(costs["accel_h"].sum()), decimals=4),
             *(Cell(text="") for _ in range(4)))
    caption = ("Wall time is train + eval task time; accelerator-hours are task time x GPUs "
               "asked for (0 on CPU). Trials never started are not listed.")
    return Table("cost", "Cost", "Trial", (*rows, "Total"), columns, (*cells, total), (),
                 caption, (*keys, "total"))


def _seconds(*values: float) -> list[Cell]:
    return [Cell(text="—") if pd.isna(v) else Cell(mean=float(v), decimals=1) for v in values]


def _distinct(frame: pd.DataFrame, column: str) -> str:
    if column not in frame:
        return "not logged"
    values = sorted(str(v) for v in frame[column].dropna().unique())
    return ", ".join(values) if values else "not logged"


def provenance_table(plan: Plan, frame: pd.DataFrame, uri: str,
                     invocation: pd.Series | None) -> Table:
    """Key facts as a two-column table: where the numbers came from and with what."""
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    facts = [
        ("Suite", plan.suite),
        ("Suite file", plan.path or "not given (grid inferred from the runs)"),
        ("MLflow experiment", f"{plan.experiment} at {mask_uri(uri)}"),  # never a password
        ("Harness version (trials)", _distinct(frame, tag_column(HARNESS_VERSION))),
        ("Git commit (trials)", _distinct(frame, tag_column(GIT_COMMIT))),
        ("Devices (trials)", _distinct(frame, tag_column(DEVICE))),
        ("Nodes (trials)", _distinct(frame, tag_column(TRAIN_NODE))),
        ("Packages (report environment; trials do not log theirs)",
         f"python {platform.python_version()}, " + ", ".join(versions)),
        ("Report built", f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} by fmbench {__version__} "
                         f"on {platform.node() or 'unknown host'}"),
    ]
    if invocation is not None:
        wall = invocation.get(metric_column(WALL_S))
        shown = "still running or not recorded" if pd.isna(wall) else f"{float(wall):.1f} s"
        facts.append(("Latest invocation", f"run {invocation['run_id']} ({invocation['status']}),"
                                           f" wall time {shown}"))
    return Table("provenance", "Provenance", "Item", tuple(f[0] for f in facts),
                 (Column("value", "Value"),), tuple((Cell(text=f[1]),) for f in facts))
