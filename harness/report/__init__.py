"""Reports rebuilt from MLflow alone: the comparison table, sampling-efficiency and training curves,
samples, the paper's claims checked on the data, and cost and provenance (docs/design.md §1.1).

Data flow one way: :mod:`collect` (MLflow -> pandas) -> :mod:`grid` (planned trials with their
runs) -> :mod:`tables`, :mod:`claims`, :mod:`figures`, :mod:`provenance` -> :mod:`render` (files).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import ConfigError
from harness.report.claims import Claim, check_claims, claims_table
from harness.report.collect import ReportError, Store
from harness.report.curves import CURVE_SEEDS, Curves, curve_runs, keys_for
from harness.report.efficiency import budget_table, to_csv_text
from harness.report.efficiency import points as efficiency_points
from harness.report.figures import efficiency_figure, training_figure
from harness.report.grid import Plan, Status, display_name, trial_frame
from harness.report.provenance import cost_summary, cost_table, provenance_table
from harness.report.render import (SAMPLES, Content, OutError, Sample, resolve_out, staged,
                                   write_report)
from harness.report.table import Table
from harness.report.tables import comparison_table, dataset_metrics
from harness.run import record
from harness.run.invocation import close_stale, gone_count
from harness.run.record import INVOCATION, State, of_kind

ARTIFACTS = {"samples": record.SAMPLES, "trajectories": record.TRAJECTORIES}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
"""A bare suite name: also the default folder ``reports/<name>``, so never ``.``, ``..`` or
hidden."""


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and what it says (tables and claims, for callers and tests)."""

    out_dir: Path
    index: Path
    markdown: Path
    files: dict[str, Path]
    status: Status
    tables: dict[str, Table]
    claims: list[Claim]
    logged_to: str | None = None
    warnings: list[str] = field(default_factory=list)


def _load(suite: Any) -> Any:
    """A Suite for a Suite or a suite file path; a bare suite name stays a string."""
    from harness.run.suite import Suite, load_suite

    if isinstance(suite, Suite):
        return suite
    text = os.fspath(suite)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return load_suite(text)
    if not NAME.fullmatch(text):
        raise ReportError(f"{text!r} is neither a suite file nor a suite name")
    return text


def _out(out_dir: str | Path | None, name: str) -> tuple[Path, str]:
    """The checked report folder: ``out_dir``, or ``reports/<name>``, where the name (from a
    suite file or the command line) must be one plain folder name so it stays in ``reports/``."""
    if out_dir is not None:
        return resolve_out(out_dir, Path("reports") / name)
    if not NAME.fullmatch(name):
        raise OutError(f"suite name {name!r} cannot name a folder under reports/; pass --out")
    return resolve_out(None, Path("reports") / name)


def _samples(store: Store, frame: pd.DataFrame, out: Path) -> list[Sample]:
    """Artifacts of the lowest finished seed of each method x dataset, downloaded under ``out``
    (the report's temporary folder, so a failed build leaves none behind)."""
    done = frame[(frame["state"] == State.FINISHED) & frame["run_id"].notna()].sort_values("seed")
    found = []
    for _, r in done.drop_duplicates(["label", "dataset"]).iterrows():
        folder = out / SAMPLES / f"{r['label']}-{r['dataset']}-s{r['seed']}"
        files = store.artifacts(r["run_id"], ARTIFACTS.values(), folder)
        found += [Sample(r["label"], r["dataset"], int(r["seed"]), kind, files[name])
                  for kind, name in ARTIFACTS.items() if name in files]
    return found


def build_report(suite: Any, tracking_uri: str | None = None, out_dir: str | Path | None = None,
                 *, log: bool = True, curve_seeds: int = CURVE_SEEDS) -> ReportResult:
    """Build ``out_dir`` (default ``reports/<suite>/``) from the suite's MLflow runs and log it as
    an artifact of the suite's latest invocation run (``log=False`` skips that). ``curve_seeds``
    bounds the seeds per method and dataset whose curves are read (0: every seed)."""
    if not isinstance(curve_seeds, int) or curve_seeds < 0:
        raise ConfigError(f"curve_seeds must be a whole number >= 0 (0: every seed), "
                          f"got {curve_seeds!r}")
    suite = _load(suite)
    out, shown = _out(out_dir, suite if isinstance(suite, str) else suite.name)  # before MLflow
    if isinstance(suite, str):  # no suite file: experiment named after the suite, grid inferred
        store = Store(tracking_uri, suite)
        close_stale(store.uri, store.experiment, suite)  # a killed driver's runs become KILLED
        runs = store.runs(suite)
        plan = Plan.inferred(suite, runs)
    else:
        store = Store(tracking_uri or suite.tracking_uri, suite.experiment)
        close_stale(store.uri, store.experiment, suite.name)  # a killed driver's runs: KILLED
        runs = store.runs(suite.name)
        plan = Plan.from_suite(suite)
    name = plan.suite
    frame, ignored = trial_frame(plan, runs)
    status = Status.of(frame, ignored, inferred=plan.trials is None, driver_gone=gone_count(runs))

    chosen = curve_runs(frame, curve_seeds)
    parts = [store.histories(chosen.loc[chosen["dataset"] == d, "run_id"],
                             keys_for(runs, dataset_metrics(frame, d))) for d in plan.datasets]
    histories = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["run_id", "key", "step", "value"])
    curves = Curves.join(histories, chosen, curve_seeds)
    claims = check_claims(plan, frame, curves)
    invocations = of_kind(runs, INVOCATION)
    latest = invocations.iloc[0] if len(invocations) else None
    efficiency = efficiency_points(curves)
    tables = {"comparison": comparison_table(plan, frame), "claims": claims_table(claims),
              "budget": budget_table(plan, frame, efficiency, curves.seeds_read), "cost": cost_table(plan, frame),
              "provenance": provenance_table(plan, frame, store.uri, latest)}

    with staged(out, shown, name) as tmp:
        content = Content(
            title=f"fmbench report: {name}", banner=status.banner(), complete=status.complete,
            tables=tables, claims=claims,
            efficiency=[efficiency_figure(plan, frame, curves, d, efficiency) for d in plan.datasets],
            training=[training_figure(plan, frame, curves, d) for d in plan.datasets],
            samples=_samples(store, frame, tmp),
            methods=[(label, display_name(plan, label)) for label in plan.labels],
            datasets=list(plan.datasets), cost_summary=cost_summary(plan, frame),
            efficiency_csv=to_csv_text(efficiency))
        files = {k: out / p.relative_to(tmp) for k, p in write_report(content, tmp).items()}

    warnings, logged = [], None
    if log and latest is not None:
        try:
            store.log_folder(latest["run_id"], out)
            logged = latest["run_id"]
        except Exception as exc:  # the report on disk is still good; say why it is not in MLflow
            warnings.append(f"could not log the report to run {latest['run_id']}: "
                            f"{str(exc).splitlines()[0][:200]}")
    elif log:
        warnings.append("no invocation run of this suite in MLflow: the report was not logged")
    return ReportResult(out, files["index.html"], files["report.md"], files, status, tables,
                        claims, logged, warnings)


__all__ = ["ReportError", "ReportResult", "build_report"]
