"""Sampling efficiency read off the curves against NFE: every point of every seed as one long table
(``efficiency.csv``), seed means per curve point, and the budget table: the fewest network
evaluations with which each method and solver comes close to the method's best sample quality.

The curves are the record's histories (docs/design.md §5.3): ``<quality>_vs_nfe/<solver>`` (FID of
images, W2 and MMD of 2-D data; dopri5 one key per tolerance) and ``error/<solver>`` (numerical
error). Only the seeds :mod:`harness.report.curves` reads (by default the first ``CURVE_SEEDS``
finished ones) appear.
"""

from __future__ import annotations

import math

import pandas as pd

from harness.core.metrics import METRICS
from harness.core.solvers import SOLVERS
from harness.report.curves import CURVE_SEEDS, Curves, seeds_read
from harness.report.grid import Plan, display_name
from harness.report.table import Cell, Column, Table
from harness.report.tables import dataset_metrics
from harness.run import record

COLUMNS = ("method", "dataset", "seed", "solver", "tolerance", "nfe", "metric", "value")
"""The columns of ``efficiency.csv``: one row per seed and curve point; ``method`` is the suite's
label, ``tolerance`` dopri5's atol = rtol (empty for fixed-step solvers), ``nfe`` the record's
step (a fixed-step budget, or dopri5's mean NFE rounded)."""
NUMERICAL_ERROR = "numerical_error"
WITHIN = 0.10
"""How close to its best value a curve must come to count as "reached" in the budget table (10% of
the best value). A convention of this report: the paper's Figure 7 draws the curves and sets no
threshold."""
NOT_REACHED = "not reached"


def _point_of(key: str) -> tuple[str, str, float | None] | None:
    """(metric, solver, tolerance) of a curve key, None for a key that is not a curve against NFE."""
    if key.startswith(record.ERROR):
        return record.spec(key).name, key[len(record.ERROR):], None
    try:
        return record.parse_vs_nfe(key)
    except KeyError:
        return None


def points(curves: Curves) -> pd.DataFrame:
    """Every quality-against-NFE and numerical-error point of every seed read, in :data:`COLUMNS`
    (a resumed run that logged a step twice counts its last value)."""
    p = curves.points.drop_duplicates(["run_id", "key", "step"], keep="last")
    parsed = {k: _point_of(k) for k in p["key"].unique()}
    p = p[p["key"].map(lambda k: parsed[k] is not None)]
    if p.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    metric, solver, tol = zip(*(parsed[k] for k in p["key"]))
    out = pd.DataFrame({"method": p["label"].to_numpy(), "dataset": p["dataset"].to_numpy(),
                        "seed": p["seed"].astype(int).to_numpy(), "solver": solver,
                        "tolerance": pd.array(tol, dtype="Float64"),
                        "nfe": p["step"].astype(int).to_numpy(), "metric": metric,
                        "value": p["value"].astype(float).to_numpy()})
    return out.sort_values(["dataset", "method", "metric", "solver", "tolerance", "nfe", "seed"],
                           ascending=[True, True, True, True, False, True, True],
                           kind="stable").reset_index(drop=True)[list(COLUMNS)]


def seed_means(rows: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per curve point of ``rows`` (one method, dataset and metric, or one per value of
    the columns ``by``, which lead the result): columns solver, tolerance, nfe (mean over seeds:
    dopri5's differs by seed), mean, std (ddof 1; NaN for one seed), low, high (min and max over
    seeds) and n (seeds), sorted by ``by``, solver and NFE. Grouping once by ``by`` is what keeps
    a figure of many methods and panels fast (one pandas pass, not one per curve).

    A fixed-step point is a budget, an adaptive one a tolerance (a dopri5 key without one, from
    fmbench before tolerances were keyed, is one point)."""
    columns = [*by, "solver", "tolerance", "nfe", "mean", "std", "low", "high", "n"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    adaptive = rows["solver"].map(lambda s: s in SOLVERS and SOLVERS.get(s).adaptive)
    at = rows["nfe"].where(~adaptive, -1)  # adaptive: the tolerance alone names the point
    g = rows.assign(at=at, tol=rows["tolerance"].fillna(-1.0)).groupby([*by, "solver", "tol", "at"])
    out = g.agg(tolerance=("tolerance", "first"), nfe=("nfe", "mean"), mean=("value", "mean"),
                std=("value", "std"), low=("value", "min"), high=("value", "max"),
                n=("value", "count")).reset_index(drop=False)
    return out.sort_values([*by, "solver", "nfe"]).reset_index(drop=True)[columns]


def solver_order(present) -> list[str]:
    """The registered solvers among ``present``: fixed-step ones first, adaptive (dopri5) last, as
    the curves run from cheap to accurate."""
    names = [s for s in SOLVERS.names() if s in set(present)]
    return sorted(names, key=lambda s: SOLVERS.get(s).adaptive)


def _budget_cell(means: pd.DataFrame, threshold: float, lower: bool) -> Cell:
    """The smallest NFE whose seed mean is within ``threshold``; dopri5 names its tolerance."""
    if means.empty:
        return Cell()
    ok = means[means["mean"] <= threshold] if lower else means[means["mean"] >= threshold]
    if ok.empty:
        return Cell(text=NOT_REACHED)
    first = ok.sort_values("nfe").iloc[0]
    tol = first["tolerance"]
    at = "" if pd.isna(tol) else f" (tol {tol:g})"
    return Cell(text=f"{int(round(first['nfe']))}{at}")


def budget_cells(rows: pd.DataFrame, solvers: list[str], lower: bool) -> list[Cell]:
    """One method's budget cells on one dataset, per solver: the smallest NFE at which the seed-mean
    curve comes within :data:`WITHIN` of the method's best seed-mean value over all its points."""
    means = seed_means(rows)
    if means.empty:
        return [Cell() for _ in solvers]
    best = means["mean"].min() if lower else means["mean"].max()
    threshold = best + WITHIN * abs(best) if lower else best - WITHIN * abs(best)
    return [_budget_cell(means[means["solver"] == s], threshold, lower) for s in solvers]


def budget_table(plan: Plan, frame: pd.DataFrame, eff: pd.DataFrame,
                 seeds: str = seeds_read(CURVE_SEEDS)) -> Table:
    """The budget table: methods x (dataset, solver), read off the quality curves of
    :func:`points` (W2 for 2-D data, FID for images)."""
    columns: list[Column] = []
    by_row: list[list[Cell]] = [[] for _ in plan.labels]
    shown = []
    for dataset in plan.datasets:
        quality = dataset_metrics(frame, dataset).quality
        rows = eff[(eff["dataset"] == dataset) & (eff["metric"] == quality)]
        solvers = solver_order(rows["solver"])
        if not solvers:
            continue
        shown.append(f"{METRICS.get(quality).display} on {dataset}")
        lower = METRICS.get(quality).lower_is_better
        columns += [Column(f"{dataset}/{s}", s, "NFE", dataset) for s in solvers]
        for i, label in enumerate(plan.labels):
            by_row[i] += budget_cells(rows[rows["method"] == label], solvers, lower)
    caption = (f"Fewest network evaluations at which the seed-mean curve of each solver comes "
               f"within {WITHIN:.0%} of the method's best value ({'; '.join(shown) or 'no curves'}"
               f"), the best taken over all its solvers, budgets and tolerances; means over "
               f"{seeds}. dopri5: the mean NFE of the tolerance named. "
               f"\"{NOT_REACHED}\": no point of that solver gets there; —: no curve. The "
               f"{WITHIN:.0%} threshold is this report's convention, not the paper's.")
    cells = tuple(tuple(row) for row in by_row)
    return Table("budget", "NFE budget", "Method",
                 tuple(display_name(plan, label) for label in plan.labels), tuple(columns), cells,
                 caption=caption, row_keys=tuple(plan.labels))


def to_csv_text(eff: pd.DataFrame) -> str:
    """``efficiency.csv``: :data:`COLUMNS`, tolerance empty for fixed-step solvers, values with
    full precision (repr) so the file reads back to the record's numbers."""
    out = eff[list(COLUMNS)].copy()
    out["tolerance"] = [("" if pd.isna(t) else repr(float(t))) for t in out["tolerance"]]
    out["value"] = [repr(float(v)) if math.isfinite(v) else str(v) for v in out["value"]]
    return out.to_csv(index=False, lineterminator="\n")

