"""The published numbers a paper suite's comparison table sits beside: Table 1 of Lipman et al.
(2022), read from ``paper_table1.json`` (values as printed, with the citation and the protocol
behind them), and the ways a suite's runs measured differently from it.

Only suites named ``paper-*`` (the suites/paper-*.yaml files) are compared, and only cells whose
method and dataset the paper reports: a 2-D or digits suite would otherwise sprout numbers from
another experiment.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.run.record import param_column

DATA = Path(__file__).with_name("paper_table1.json")
SUITE_PREFIX = "paper-"
"""Suites compared against the paper: ``paper-cifar10`` and its siblings."""


class PaperDataError(HarnessError):
    """The paper data file is missing a field or holds a value that is not a number."""


@dataclass(frozen=True)
class Protocol:
    """One setting the paper fixed: which run param records ours, what it is called, the
    metrics it moves and where the paper gives it."""

    param: str
    what: str
    metrics: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Paper:
    """Table 1: ``values[(dataset, method, metric)]`` as printed ("3.10"), ``settings[dataset]``
    the paper's value of each :class:`Protocol` param."""

    citation: str
    values: dict[tuple[str, str, str], str]
    protocol: tuple[Protocol, ...]
    settings: dict[str, dict[str, object]]

    def value(self, dataset: str, method: str, metric: str) -> str | None:
        return self.values.get((dataset, method, metric))


def _number(text: str, where: str) -> str:
    try:
        if not math.isfinite(float(text)):
            raise ValueError
    except (TypeError, ValueError):
        raise PaperDataError(f"{DATA.name}: {where}: {text!r} is not a finite number") from None
    return text


@lru_cache(maxsize=None)
def load(path: Path = DATA) -> Paper:
    """The data file, checked: every value a finite number written as the paper prints it."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        protocol = tuple(Protocol(name, p["what"], tuple(p["metrics"]), p["source"])
                         for name, p in raw["protocol"].items())
        values, settings = {}, {}
        for dataset, entry in raw["datasets"].items():
            settings[dataset] = dict(entry["protocol"])
            for method, metrics in entry["values"].items():
                for metric, text in metrics.items():
                    where = f"{dataset}.{method}.{metric}"
                    values[dataset, method, metric] = _number(text, where)
        return Paper(raw["citation"], values, protocol, settings)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PaperDataError(f"{Path(path).name}: cannot read the paper's values: "
                             f"{type(e).__name__}: {e}") from None


def compared(suite: str) -> bool:
    """Whether a suite's report shows the paper's values: the paper-* suites only."""
    return suite.startswith(SUITE_PREFIX)


def _shown(value: object) -> str:
    """50000 or "50000" -> "50k", 1e-05 -> "1e-05", "clean" -> "clean"."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number.is_integer() and number >= 1000 and number % 1000 == 0:
        return f"{int(number) // 1000}k"
    return f"{number:g}"


def _same(recorded: object, paper: object) -> bool:
    """A run's param (MLflow keeps params as strings) equals the paper's setting."""
    if isinstance(paper, str):
        return recorded == paper
    try:
        return math.isclose(float(recorded), float(paper), rel_tol=1e-9)
    except (TypeError, ValueError):
        return False


def protocol_notes(paper: Paper, dataset: str, metric: str, rows: pd.DataFrame) -> list[str]:
    """One note per paper setting that ``rows`` (the runs averaged into a cell) did not follow,
    e.g. "cifar10 protocol differs from the paper: training steps 1k here, 391k in the paper
    (Table 3, Iterations)". The wording names the dataset and setting, not the method, so the
    cells of a column share one footnote."""
    wanted = paper.settings.get(dataset, {})
    notes = []
    for p in paper.protocol:
        if metric not in p.metrics or p.param not in wanted or rows.empty:
            continue
        column = param_column(p.param)
        recorded = rows[column] if column in rows else pd.Series(None, rows.index, object)
        found = recorded.tolist()
        if all(isinstance(v, str) and _same(v, wanted[p.param]) for v in found):
            continue
        here = ", ".join(sorted({_shown(v) if isinstance(v, str) else "not recorded"
                                 for v in found}))
        notes.append(f"{dataset} protocol differs from the paper: {p.what} {here} here, "
                     f"{_shown(wanted[p.param])} in the paper ({p.source})")
    return notes


def params(paper: Paper) -> list[str]:
    """The run param columns the notes read."""
    return [param_column(p.param) for p in paper.protocol]
