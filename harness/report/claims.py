"""The paper's qualitative claims, checked on this suite's data as statistical statements.

Each claim compares FM w/ OT (``fm-ot``) with FM w/ Diffusion (``fm-diffusion``): the same
objective on two paths, so a difference is the path's doing. Seeds are paired: seed s gives both
methods the same data, training noise and evaluation noise (docs/design.md §3.4, §4.3), so per
dataset each seed where both have results gives one effect (an NFE ratio, an error ratio, a
difference in training steps). A dataset's verdict reads the bootstrap interval of the mean effect
(:mod:`harness.report.stats`); across datasets a sign test counts the datasets on the claim's side.
A dataset without paired seeds is named, never guessed at, and a claim with no such dataset says
"not enough data".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from harness.core.metrics import METRICS
from harness.run.record import State, final_column, param_column
from harness.report.curves import ERROR_SOLVER, Curves, during_key, error_key
from harness.report.grid import Plan, display_name
from harness.report.stats import (LEVEL, METHOD, Interval, bootstrap_mean, inconclusive,
                                  sign_test, verdict)
from harness.report.table import Cell, Column, Table
from harness.report.tables import dataset_metrics

OT, VP = "fm-ot", "fm-diffusion"
NOT_ENOUGH = "not enough data"


@dataclass(frozen=True)
class Effect:
    """One dataset's paired-seed effect: the value per seed, their mean and interval, the
    verdict, and the line the report prints for it."""

    dataset: str
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    interval: Interval
    verdict: str
    text: str


@dataclass(frozen=True)
class Claim:
    """A verdict ("holds", "does not hold", "mixed", "inconclusive (n = k datasets)", "not enough
    data"), the evidence across datasets, one line per dataset, and the numbers behind them."""

    statement: str
    verdict: str
    evidence: str
    details: tuple[str, ...] = ()
    effects: tuple[Effect, ...] = ()
    sign_p: float | None = None  # one-sided sign test across datasets; None: no dataset


def _label(plan: Plan, method: str) -> str | None:
    """The suite's entry for a method: the one labelled by the method's name, else the first."""
    labels = [lab for lab in plan.labels if plan.methods.get(lab) == method]
    return method if method in labels else (labels[0] if labels else None)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _effect(dataset: str, values: dict[int, float], what: str, *, ratio: bool,
            notes: dict[int, str] | None = None) -> Effect:
    """Judge one dataset's per-seed effects: a ratio OT/VP (no effect 1) or a difference OT − VP
    (no effect 0); the claim's side is below no effect. Ratios are averaged on the log scale, so
    r and 1/r cancel: the mean is the geometric mean and its interval the bootstrap interval of
    the mean log ratio, exponentiated (the percentile interval respects monotone
    transformations, Efron & Tibshirani 1993, ch. 13)."""
    seeds = tuple(sorted(values))
    xs = tuple(float(values[s]) for s in seeds)
    null = 1.0 if ratio else 0.0
    iv = bootstrap_mean(np.log(xs) if ratio else xs)
    if ratio:
        iv = Interval(*(None if b is None else float(np.exp(b)) for b in iv[:3]), iv.n)
    v = verdict(iv, null, lower=True)
    per_seed = ", ".join(f"{s}: {_fmt(values[s])}" + (f" ({notes[s]})" if notes else "")
                         for s in seeds)
    bounds = (f"{LEVEL:.0%} interval [{_fmt(iv.low)}, {_fmt(iv.high)}]" if iv.low is not None
              else "no interval")
    text = (f"{dataset}: {what} by seed {per_seed}; {'geometric ' if ratio else ''}mean "
            f"{_fmt(iv.mean)}, {bounds} (n = {iv.n}): {v}")
    return Effect(dataset, seeds, xs, iv, v, text)


def _plural(n: int, word: str = "dataset") -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _judged(statement: str, effects: list[Effect], missing: list[str], null: float) -> Claim:
    """The headline: "holds" when every dataset holds, "does not hold" when every one does not,
    "mixed" when both occur, else inconclusive; and the sign test across datasets."""
    if not effects:
        named = f" ({', '.join(missing)})" if missing else ""
        return Claim(statement, NOT_ENOUGH, f"no dataset has paired seeds of both methods{named}")
    where = f"; not enough data on {', '.join(missing)}" if missing else ""
    n = len(effects)
    verdicts = [e.verdict for e in effects]
    holds, against = verdicts.count("holds"), verdicts.count("does not hold")
    headline = ("holds" if holds == n else "does not hold" if against == n
                else "mixed" if holds and against
                else inconclusive(n, "dataset" if n == 1 else "datasets"))
    means = [e.interval.mean for e in effects]
    p = sign_test(means, null, lower=True)
    m = sum(x != null for x in means)  # ties drop out of the sign test
    counts = {"holds": holds, "does not hold": against, "inconclusive": n - holds - against}
    off = _plural(m) + ("" if m == n else " off no effect")
    evidence = (f"OT ahead on {sum(x < null for x in means)}/{_plural(n)} (one-sided sign test "
                f"p = {p:.3g}; the smallest attainable with {off} is {0.5 ** m:.3g}); "
                "per-dataset verdicts: " + ", ".join(f"{v} {k}" for v, k in counts.items() if k)
                + where)
    return Claim(statement, headline, evidence, tuple(e.text for e in effects), tuple(effects), p)


def _per_dataset(plan: Plan, ot: str | None, vp: str | None,
                 effect: Callable[[str], Effect | None]) -> tuple[list[Effect], list[str]]:
    """Each dataset's effect, or its name among the missing when there are no paired seeds."""
    effects, missing = [], []
    for dataset in plan.datasets:
        e = effect(dataset) if ot and vp else None
        if e is None:
            missing.append(dataset)
        else:
            effects.append(e)
    return effects, missing


def _finals(frame: pd.DataFrame, label: str, dataset: str, metric: str) -> dict[int, float]:
    """Seed -> final value of a metric, over the finished trials that logged it."""
    rows = frame[(frame["label"] == label) & (frame["dataset"] == dataset)
                 & (frame["state"] == State.FINISHED)]
    column = final_column(metric)
    if column not in rows:
        return {}
    rows = rows[rows[column].notna()]
    return {int(s): float(v) for s, v in zip(rows["seed"], rows[column])}


def fewer_nfe(plan: Plan, frame: pd.DataFrame, ot: str | None, vp: str | None,
              who: str) -> Claim:
    tols = sorted(frame.get(param_column("eval.tol"), pd.Series(dtype=object)).dropna().unique())
    at = f", dopri5 at tol {', '.join(tols)}" if tols else ", dopri5"
    statement = (f"The OT path needs fewer NFE than the VP path ({who}{at}; effect: per-seed "
                 "ratio NFE(OT)/NFE(VP), no effect = 1).")

    def effect(dataset: str) -> Effect | None:
        a, b = _finals(frame, ot, dataset, "nfe"), _finals(frame, vp, dataset, "nfe")
        ratios = {s: a[s] / b[s] for s in a.keys() & b.keys()
                  if np.isfinite([a[s], b[s]]).all() and a[s] > 0 and b[s] > 0}
        return _effect(dataset, ratios, "NFE(OT)/NFE(VP)", ratio=True) if ratios else None

    return _judged(statement, *_per_dataset(plan, ot, vp, effect), 1.0)


def _error_ratio(a: pd.Series, b: pd.Series) -> tuple[float, tuple[int, ...]] | None:
    """Geometric mean of error(OT)/error(VP) over the NFE budgets both logged with a positive,
    finite error (a ratio of zero or infinity has no logarithm), and those budgets."""
    shared = sorted(set(a.index) & set(b.index))
    ok = [s for s in shared if all(np.isfinite([a[s], b[s]])) and a[s] > 0 and b[s] > 0]
    if not ok:
        return None
    return float(np.exp(np.mean([np.log(a[s] / b[s]) for s in ok]))), tuple(int(s) for s in ok)


def lower_error(plan: Plan, curves: Curves, ot: str | None, vp: str | None, who: str) -> Claim:
    statement = (f"Fixed-step OT sampling has lower numerical error at equal NFE ({who}, "
                 f"{ERROR_SOLVER} solver, MSE per dimension against dopri5 at 1e-7; effect: per "
                 "seed, the geometric mean over the NFE budgets both logged of "
                 "error(OT)/error(VP), no effect = 1).")

    def effect(dataset: str) -> Effect | None:
        a = curves.per_seed(ot, dataset, error_key())
        b = curves.per_seed(vp, dataset, error_key())
        found = {s: r for s in a.keys() & b.keys() if (r := _error_ratio(a[s], b[s]))}
        if not found:
            return None
        budgets = sorted({n for _, ns in found.values() for n in ns})
        same = len({ns for _, ns in found.values()}) == 1
        what = (f"error(OT)/error(VP) at NFE {', '.join(map(str, budgets))}"
                + ("" if same else " (not every seed at every budget)"))
        return _effect(dataset, {s: r for s, (r, _) in found.items()}, what, ratio=True)

    return _judged(statement, *_per_dataset(plan, ot, vp, effect), 1.0)


def _first_reaching(curve: pd.Series, threshold: float, lower: bool) -> int:
    ok = curve <= threshold if lower else curve >= threshold
    return int(curve.index[ok.to_numpy()][0])


def earlier_quality(plan: Plan, frame: pd.DataFrame, curves: Curves, ot: str | None,
                    vp: str | None, who: str) -> Claim:
    statement = (f"FM w/ OT reaches good sample quality earlier in training ({who}; good: per "
                 "seed, the worse of the two methods' final values; effect: first training step "
                 "at good quality, OT − VP, no effect = 0).")

    def effect(dataset: str) -> Effect | None:
        metric = dataset_metrics(frame, dataset).quality
        key = during_key(dataset_metrics(frame, dataset))
        a, b = curves.per_seed(ot, dataset, key), curves.per_seed(vp, dataset, key)
        spec = METRICS.get(metric)
        steps, notes = {}, {}
        for s in a.keys() & b.keys():
            if len(a[s]) < 2 or len(b[s]) < 2:
                continue
            finals = (a[s].iloc[-1], b[s].iloc[-1])
            good = max(finals) if spec.lower_is_better else min(finals)
            sa = _first_reaching(a[s], good, spec.lower_is_better)
            sb = _first_reaching(b[s], good, spec.lower_is_better)
            steps[s] = float(sa - sb)
            notes[s] = f"{sa} vs {sb}, {spec.display} {'≤' if spec.lower_is_better else '≥'} " \
                       f"{good:.3g}"
        return _effect(dataset, steps, "steps OT − VP", ratio=False, notes=notes) if steps \
            else None

    return _judged(statement, *_per_dataset(plan, ot, vp, effect), 0.0)


def check_claims(plan: Plan, frame: pd.DataFrame, curves: Curves) -> list[Claim]:
    """Every claim, in the paper's order; each names the two entries it compares."""
    ot, vp = _label(plan, OT), _label(plan, VP)
    who = (f"{display_name(plan, ot) if ot else 'FM w/ OT (not in suite)'} vs "
           f"{display_name(plan, vp) if vp else 'FM w/ Diffusion (not in suite)'}")
    return [fewer_nfe(plan, frame, ot, vp, who), lower_error(plan, curves, ot, vp, who),
            earlier_quality(plan, frame, curves, ot, vp, who)]


def claims_table(claims: list[Claim]) -> Table:
    """The claims as a table (for CSV and LaTeX): verdict, evidence with each dataset's interval,
    and the sign test's p-value; the caption names the statistics."""
    rows = tuple(c.statement for c in claims)
    cells = tuple((Cell(text=c.verdict), Cell(text="; ".join([c.evidence, *c.details])),
                   Cell(text=f"{c.sign_p:.3g}" if c.sign_p is not None else None))
                  for c in claims)
    columns = (Column("verdict", "Verdict"), Column("evidence", "Evidence"),
               Column("sign_p", "Sign test p (one-sided)"))
    return Table("claims", "Claims", "Claim", rows, columns, cells, caption=METHOD)
