"""The paper's qualitative claims, checked on this suite's data, each with its numbers.

Each claim compares FM w/ OT (``fm-ot``) with FM w/ Diffusion (``fm-diffusion``): the same
objective on two paths, so a difference is the path's doing. A claim is judged per dataset and the
verdict counts datasets; a dataset without the data a claim needs is named, never guessed at, and
a claim with no such dataset at all says "not enough data".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.core.metrics import METRICS
from harness.run.record import State, final_column, param_column
from harness.report.curves import ERROR_SOLVER, Curves, during_key, error_key
from harness.report.grid import Plan, display_name
from harness.report.table import Cell, Column, Table
from harness.report.tables import dataset_metrics

OT, VP = "fm-ot", "fm-diffusion"
NOT_ENOUGH = "not enough data"


@dataclass(frozen=True)
class Claim:
    """A verdict ("holds", "does not hold", "mixed", "not enough data") and its evidence."""

    statement: str
    verdict: str
    evidence: str
    details: tuple[str, ...] = ()


def _label(plan: Plan, method: str) -> str | None:
    """The suite's entry for a method: the one labelled by the method's name, else the first."""
    labels = [lab for lab in plan.labels if plan.methods.get(lab) == method]
    return method if method in labels else (labels[0] if labels else None)


def _verdict(results: dict[str, bool], missing: list[str], numbers: str) -> tuple[str, str]:
    if not results:
        where = f" ({', '.join(missing)})" if missing else ""
        return NOT_ENOUGH, f"no dataset has results for both methods{where}"
    k, n = sum(results.values()), len(results)
    verdict = "holds" if k == n else "does not hold" if k == 0 else "mixed"
    text = f"holds on {k}/{n} dataset{'s' if n != 1 else ''}"
    text += f", {numbers}" if numbers else ""
    if missing:
        text += f"; not enough data on {', '.join(missing)}"
    return verdict, text


def _finals(frame: pd.DataFrame, label: str, dataset: str, metric: str) -> list[float]:
    rows = frame[(frame["label"] == label) & (frame["dataset"] == dataset)
                 & (frame["state"] == State.FINISHED)]
    column = final_column(metric)
    return rows[column].dropna().tolist() if column in rows else []


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def fewer_nfe(plan: Plan, frame: pd.DataFrame, ot: str | None, vp: str | None,
              who: str) -> Claim:
    tols = sorted(frame.get(param_column("eval.tol"), pd.Series(dtype=object)).dropna().unique())
    at = f", dopri5 at tol {', '.join(tols)}" if tols else ", dopri5"
    statement = f"The OT path needs fewer NFE than the VP path ({who}{at})."
    results, missing, details, means = {}, [], [], []
    for dataset in plan.datasets:
        a = _finals(frame, ot, dataset, "nfe") if ot else []
        b = _finals(frame, vp, dataset, "nfe") if vp else []
        if not (a and b):
            missing.append(dataset)
            continue
        ma, mb = float(np.mean(a)), float(np.mean(b))
        results[dataset] = ma < mb
        means.append((ma, mb))
        details.append(f"{dataset}: {_fmt(ma)} vs {_fmt(mb)} mean NFE (n={len(a)} vs {len(b)}): "
                       f"{'holds' if ma < mb else 'does not hold'}")
    numbers = ""
    if means:
        numbers = (f"{_fmt(float(np.mean([m[0] for m in means])))} vs "
                   f"{_fmt(float(np.mean([m[1] for m in means])))} mean NFE")
    return Claim(statement, *_verdict(results, missing, numbers), tuple(details))


def lower_error(plan: Plan, curves: Curves, ot: str | None, vp: str | None, who: str) -> Claim:
    statement = (f"Fixed-step OT sampling has lower numerical error at equal NFE ({who}, "
                 f"{ERROR_SOLVER} solver, MSE per dimension against dopri5 at 1e-7).")
    results, missing, details = {}, [], []
    wins = points = 0
    for dataset in plan.datasets:
        a = curves.mean(ot, dataset, error_key()) if ot else None
        b = curves.mean(vp, dataset, error_key()) if vp else None
        shared = [] if a is None or b is None else sorted(set(a["step"]) & set(b["step"]))
        if not shared:
            missing.append(dataset)
            continue
        ea, eb = a.set_index("step")["mean"], b.set_index("step")["mean"]
        lower = [ea[s] < eb[s] for s in shared]
        wins, points = wins + sum(lower), points + len(shared)
        results[dataset] = all(lower)
        pairs = "; ".join(f"NFE {s}: {ea[s]:.2e} vs {eb[s]:.2e}" for s in shared)
        verdict = "holds" if all(lower) else "does not hold"
        details.append(f"{dataset} ({curves.seeds(ot, dataset, error_key())} vs "
                       f"{curves.seeds(vp, dataset, error_key())} seeds): {pairs}: OT lower at "
                       f"{sum(lower)}/{len(lower)} NFE: {verdict}")
    numbers = f"OT error lower at {wins}/{points} (dataset, NFE) points" if points else ""
    return Claim(statement, *_verdict(results, missing, numbers), tuple(details))


def _first_reaching(curve: pd.DataFrame, threshold: float, lower: bool) -> int:
    ok = curve["mean"] <= threshold if lower else curve["mean"] >= threshold
    return int(curve.loc[ok, "step"].iloc[0])


def earlier_quality(plan: Plan, frame: pd.DataFrame, curves: Curves, ot: str | None,
                    vp: str | None, who: str) -> Claim:
    statement = (f"FM w/ OT reaches good sample quality earlier in training ({who}; good: the "
                 "worse of the two methods' final values, on curves averaged over seeds).")
    results, missing, details = {}, [], []
    steps = []
    for dataset in plan.datasets:
        metric = dataset_metrics(frame, dataset).quality
        key = during_key(dataset_metrics(frame, dataset))
        a = curves.mean(ot, dataset, key) if ot else None
        b = curves.mean(vp, dataset, key) if vp else None
        if a is None or b is None or len(a) < 2 or len(b) < 2:
            missing.append(dataset)
            continue
        lower = METRICS.get(metric).lower_is_better
        finals = (a["mean"].iloc[-1], b["mean"].iloc[-1])
        threshold = max(finals) if lower else min(finals)
        sa, sb = _first_reaching(a, threshold, lower), _first_reaching(b, threshold, lower)
        results[dataset] = sa < sb
        steps.append((sa, sb))
        sign = "≤" if lower else "≥"
        details.append(f"{dataset}: {METRICS.get(metric).display} {sign} {threshold:.3g} first at "
                       f"step {sa} vs {sb} ({curves.seeds(ot, dataset, key)} vs "
                       f"{curves.seeds(vp, dataset, key)} seeds): "
                       f"{'holds' if sa < sb else 'does not hold'}")
    numbers = ""
    if steps:
        numbers = (f"first reached at step {_fmt(float(np.mean([s[0] for s in steps])))} vs "
                   f"{_fmt(float(np.mean([s[1] for s in steps])))} on average")
    return Claim(statement, *_verdict(results, missing, numbers), tuple(details))


def check_claims(plan: Plan, frame: pd.DataFrame, curves: Curves) -> list[Claim]:
    """Every claim, in the paper's order; each names the two entries it compares."""
    ot, vp = _label(plan, OT), _label(plan, VP)
    who = (f"{display_name(plan, ot) if ot else 'FM w/ OT (not in suite)'} vs "
           f"{display_name(plan, vp) if vp else 'FM w/ Diffusion (not in suite)'}")
    return [fewer_nfe(plan, frame, ot, vp, who), lower_error(plan, curves, ot, vp, who),
            earlier_quality(plan, frame, curves, ot, vp, who)]


def claims_table(claims: list[Claim]) -> Table:
    """The claims as a table (for CSV and LaTeX); per-dataset numbers go in the evidence."""
    rows = tuple(c.statement for c in claims)
    cells = tuple((Cell(text=c.verdict), Cell(text="; ".join([c.evidence, *c.details])))
                  for c in claims)
    return Table("claims", "Claims", "Claim", rows, (Column("verdict", "Verdict"),
                                                     Column("evidence", "Evidence")), cells)
