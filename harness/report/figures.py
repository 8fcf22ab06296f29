"""Report figures as PNG bytes: sampling efficiency (the paper's Figure 7: quality and numerical
error against NFE) and training curves (Figure 5), one of each per dataset.

Every figure draws a method with the same colour, line style and marker, keyed by the method's
place in the table, so a reader matches lines across figures at a glance. Matplotlib's object API
with the Agg canvas: no pyplot state, no display.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.core.metrics import METRICS
from harness.core.methods import METHODS
from harness.run.record import LOSS, State, final_column
from harness.report.curves import ERROR_SOLVER, Curves, curve_metrics, during_key
from harness.report.efficiency import NUMERICAL_ERROR, seed_means, solver_order
from harness.report.efficiency import points as efficiency_points
from harness.report.grid import Plan, display_name
from harness.report.tables import dataset_metrics, quality_pipelines, quality_title
from harness.core.solvers import SOLVERS

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896")
MARKERS = "osD^v<>ph*"


@dataclass(frozen=True)
class Style:
    colour: str
    line: str
    marker: str


@dataclass(frozen=True)
class Figure:
    """A rendered figure: ``name`` is the PNG's file stem."""

    name: str
    title: str
    caption: str
    png: bytes


def palette(plan: Plan) -> dict[str, Style]:
    """Style per method label, by table order: baselines dashed, flow matching solid."""
    out = {}
    for i, label in enumerate(plan.labels):
        name = plan.methods.get(label, label)
        family = METHODS.entry(name).meta.get("family") if name in METHODS else None
        out[label] = Style(COLOURS[i % len(COLOURS)], "-" if family == "flow-matching" else "--",
                           MARKERS[i % len(MARKERS)])
    return out


def _axis_label(frame: pd.DataFrame, dataset: str, metric: str,
                samples: str = "fid_samples") -> str:
    """The metric, with the FID pipeline(s) the dataset's runs recorded (``samples``: the eval
    setting that counts the curve's generated samples) and the unit; wrapped, since a label of
    mixed pipelines is longer than the axis."""
    spec = METRICS.get(metric)
    title = quality_title(metric, quality_pipelines(frame, dataset, metric, samples))
    return textwrap.fill(f"{title} ({spec.unit})" if spec.unit else title, 36)


# Fixed margins in inches (left, right, top, bottom without the legend, gaps between panels):
# matplotlib's constrained layout measured every tick label at each draw and took about 40% of
# the smoke report's figure time. The gaps fit tick labels and a y label; the legend gets a
# line per LEGEND_COLUMNS methods below the x labels.
LEFT, RIGHT, TOP, BOTTOM, WIDTH_GAP, HEIGHT_GAP, LEGEND_LINE = 1.0, 0.2, 0.35, 0.6, 0.8, 0.75, 0.25
LEGEND_COLUMNS = 4


def _new_grid(rows: int, cols: int, plan: Plan, width: float = 3.6, height: float = 3.2):
    """A figure of rows x cols panels of ``width`` x ``height`` inches, with room below for the
    legend of ``plan``'s methods."""
    from matplotlib.figure import Figure as MplFigure

    bottom = BOTTOM + LEGEND_LINE * -(-len(plan.labels) // LEGEND_COLUMNS)
    w = LEFT + RIGHT + cols * width + (cols - 1) * WIDTH_GAP
    h = TOP + bottom + rows * height + (rows - 1) * HEIGHT_GAP
    fig = MplFigure(figsize=(w, h))
    fig.subplots_adjust(left=LEFT / w, right=1 - RIGHT / w, top=1 - TOP / h, bottom=bottom / h,
                        wspace=WIDTH_GAP / width, hspace=HEIGHT_GAP / height)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _finish(fig, axes, plan: Plan, styles: dict[str, Style], shown: set[str]) -> None:
    from matplotlib.lines import Line2D

    for ax in axes:
        if not ax.has_data():
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes,
                    color="0.4")
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=styles[lab].colour, linestyle=styles[lab].line,
                      marker=styles[lab].marker, label=display_name(plan, lab))
               for lab in plan.labels if lab in shown]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncols=min(len(handles), LEGEND_COLUMNS),
                   fontsize="small", frameon=False)


def _curve(ax, curves: Curves, plan: Plan, styles, dataset: str, key: str, shown: set) -> None:
    for label in plan.labels:
        c = curves.mean(label, dataset, key)
        if len(c):
            s = styles[label]
            ax.plot(c["step"], c["mean"], color=s.colour, linestyle=s.line, marker=s.marker,
                    markersize=4, markevery=max(1, len(c) // 8))  # dense curves: few markers
            shown.add(label)


def _positive(ax, axis: str) -> None:
    """Log scale where every value drawn is positive (errors and losses span decades); NFE
    budgets double, so their axis is base 2 with plain numbers."""
    from matplotlib.ticker import NullLocator, ScalarFormatter

    values = [v for line in ax.get_lines() for v in (line.get_ydata() if axis == "y"
                                                      else line.get_xdata())]
    if not values or min(np.asarray(values, dtype=float)) <= 0:
        return
    if axis == "y":
        ax.set_yscale("log")
    else:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())  # unlabelled minor ticks: ~30% of the drawing


def _band(ax, means: pd.DataFrame, style: Style) -> None:
    """A seed-mean curve against NFE with a band of ± one standard deviation over seeds."""
    means = means.sort_values("nfe")
    ax.plot(means["nfe"], means["mean"], color=style.colour, linestyle=style.line,
            marker=style.marker, markersize=4)
    for _, point in means.dropna(subset=["tolerance"]).iterrows():  # dopri5: name each tolerance
        ax.annotate(f"{point['tolerance']:g}", (point["nfe"], point["mean"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points", color=style.colour)
    spread = means.dropna(subset=["std"])
    if len(spread) > 1:
        ax.fill_between(spread["nfe"], spread["mean"] - spread["std"],
                        spread["mean"] + spread["std"], color=style.colour, alpha=0.15,
                        linewidth=0)


def _final_points(ax, plan: Plan, frame: pd.DataFrame, styles, dataset: str, quality: str,
                  shown: set) -> None:
    """Each method's final dopri5 (NFE, quality) at the suite's tolerance, mean ± std over every
    finished seed: the panel of runs that logged no quality curve."""
    nfe, value = final_column("nfe"), final_column(quality)
    for label in plan.labels:
        done = frame[(frame["label"] == label) & (frame["dataset"] == dataset)
                     & (frame["state"] == State.FINISHED)]
        if nfe not in done or value not in done:
            continue
        pts = done[[nfe, value]].dropna()
        if len(pts):
            s = styles[label]
            ax.errorbar(pts.iloc[:, 0].mean(), pts.iloc[:, 1].mean(),
                        xerr=pts.iloc[:, 0].std(ddof=1) if len(pts) > 1 else None,
                        yerr=pts.iloc[:, 1].std(ddof=1) if len(pts) > 1 else None,
                        color=s.colour, marker=s.marker, capsize=3)
            shown.add(label)
    ax.set_title("dopri5 at the suite's tolerance")


def _panels(ax, means: pd.DataFrame, plan: Plan, styles, metric: str, solver: str,
            shown: set) -> None:
    """One metric against NFE for one solver: a band per method (``means``: :func:`seed_means`
    by method and metric)."""
    rows = means[(means["metric"] == metric) & (means["solver"] == solver)]
    for label in plan.labels:
        means = rows[rows["method"] == label]
        if len(means):
            _band(ax, means, styles[label])
            shown.add(label)
    _positive(ax, "x")


def efficiency_figure(plan: Plan, frame: pd.DataFrame, curves: Curves, dataset: str,
                      eff: pd.DataFrame | None = None) -> Figure:
    """Sample quality against NFE (rows: W2 and MMD for 2-D data, FID for images; columns: the
    solvers, dopri5 as a curve over its tolerances), then the numerical error against NFE.
    ``eff``: the curves' points (:func:`harness.report.efficiency.points`) when the caller has
    them already."""
    dm = dataset_metrics(frame, dataset)
    eff = efficiency_points(curves) if eff is None else eff
    eff = eff[eff["dataset"] == dataset]
    means = seed_means(eff, by=("method", "metric"))
    quality = eff[eff["metric"] != NUMERICAL_ERROR]
    metrics = [m for m in curve_metrics(dm) if m in set(quality["metric"])] or [dm.quality]
    solvers = solver_order(quality["solver"])
    styles, shown = palette(plan), set()
    fig, grid = _new_grid(len(metrics), max(len(solvers), 1) + 1, plan)
    for r, metric in enumerate(metrics):
        for c, solver in enumerate(solvers):
            _panels(grid[r][c], means, plan, styles, metric, solver, shown)
            grid[r][c].set_title(solver if solver in SOLVERS and not SOLVERS.get(solver).adaptive
                                 else f"{solver} over tolerances")
        if not solvers:
            _final_points(grid[r][0], plan, frame, styles, dataset, metric, shown)
        grid[r][0].set_ylabel(_axis_label(frame, dataset, metric,
                                          "fid_nfe_samples" if solvers else "fid_samples"))
    error = grid[0][-1]
    _panels(error, means, plan, styles, NUMERICAL_ERROR, ERROR_SOLVER, shown)
    _positive(error, "y")
    error.set_title(f"numerical error, {ERROR_SOLVER}")
    error.set_ylabel("MSE per dim vs dopri5 at 1e-7")
    for row in grid[1:]:
        row[-1].set_axis_off()
    axes = [ax for row in grid for ax in row if ax.axison]
    for ax in axes:
        ax.set_xlabel("NFE (network evaluations)")
    _finish(fig, axes, plan, styles, shown)
    names = " and ".join(METRICS.get(m).display for m in metrics)
    drawn = ("per solver (fixed-step solvers at their NFE budgets, dopri5 at the mean NFE of each "
             "tolerance)" if solvers else "(dopri5 at the suite's tolerance, every finished seed)")
    caption = (f"{dataset}: {names} against NFE {drawn}, and {ERROR_SOLVER} numerical error "
               f"against NFE. Lines: mean over {curves.seeds_read}; bands and "
               "error bars: ± one standard deviation over seeds. Lower is better.")
    return Figure(f"efficiency-{dataset}", f"Sampling efficiency: {dataset}", caption, _png(fig))


def training_figure(plan: Plan, frame: pd.DataFrame, curves: Curves, dataset: str) -> Figure:
    """Training loss and sample quality against training step."""
    metrics = dataset_metrics(frame, dataset)
    styles, shown = palette(plan), set()
    fig, grid = _new_grid(1, 2, plan, width=4.2)
    axes = grid[0]
    _curve(axes[0], curves, plan, styles, dataset, LOSS, shown)
    _positive(axes[0], "y")
    axes[0].set_title("training loss")
    axes[0].set_ylabel("loss (each method's own objective)")
    _curve(axes[1], curves, plan, styles, dataset, during_key(metrics), shown)
    axes[1].set_title(f"{METRICS.get(metrics.quality).display} during training")
    axes[1].set_ylabel(_axis_label(frame, dataset, metrics.quality))
    for ax in axes:
        ax.set_xlabel("training step")
    _finish(fig, axes, plan, styles, shown)
    caption = (f"{dataset}: loss and {METRICS.get(metrics.quality).display} of the EMA weights "
               f"against training step, mean over {curves.seeds_read}. Losses "
               "are each method's own objective and are not comparable across methods.")
    return Figure(f"training-{dataset}", f"Training curves: {dataset}", caption, _png(fig))
