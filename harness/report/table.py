"""One table structure that every output format renders, so HTML, Markdown, CSV and LaTeX can
never disagree: numbers are rounded once, here, and the renderers only lay the strings out."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

MISSING = "—"


@dataclass(frozen=True)
class Column:
    """A column; ``group`` heads a column group (a dataset), ``lower_is_better`` is None for
    columns that are not ranked."""

    key: str
    title: str
    unit: str = ""
    group: str = ""
    lower_is_better: bool | None = None

    @property
    def arrow(self) -> str:
        return {True: "↓", False: "↑", None: ""}[self.lower_is_better]

    @property
    def header(self) -> str:
        """"NLL (nats) ↓" — the title, its unit and which direction is better."""
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.title}{unit} {self.arrow}".rstrip()


@dataclass(frozen=True)
class Cell:
    """A number as mean ± std over ``n`` seeds shown to ``decimals`` places, or a plain ``text``;
    ``notes`` are footnote numbers (1-based) that explain a gap or a partial count; ``reference``
    a published value as printed ("2.99"), shown beside the mean with the difference."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    decimals: int = 2
    text: str | None = None
    bold: bool = False
    notes: tuple[int, ...] = ()
    reference: str | None = None

    @property
    def numeric(self) -> bool:
        return self.text is None and self.mean is not None

    @property
    def rounded(self) -> float | None:
        return round(self.mean, self.decimals) if self.numeric else None

    @property
    def value_text(self) -> str:
        """"2.99 ± 0.02" (n >= 2), "2.99" (one seed), the text, or "—"."""
        if self.text is not None:
            return self.text
        if self.mean is None:
            return MISSING
        shown = f"{self.mean:.{self.decimals}f}"
        if self.n >= 2 and self.std is not None:
            shown += f" ± {self.std:.{self.decimals}f}"
        return shown

    @property
    def count_text(self) -> str:
        return f"n={self.n}" if self.numeric and self.n else ""

    @property
    def difference(self) -> float | None:
        """Ours minus the reference, at full precision; None without both."""
        if self.reference is None or not self.numeric:
            return None
        return float(self.mean) - float(self.reference)

    @property
    def reference_text(self) -> str:
        """"paper 2.99, +0.13": the reference as printed and the difference at the cell's places
        ("paper 2.99" while the cell has no mean; "" without a reference)."""
        if self.reference is None:
            return ""
        if self.difference is None:
            return f"paper {self.reference}"
        shown = round(self.difference, self.decimals) or 0.0  # never "-0.00"
        return f"paper {self.reference}, {shown:+.{self.decimals}f}"

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% Student-t interval of the mean over the ``n`` seeds, mean ± t(0.975, n - 1) ·
        std / √n (Student 1908; Casella & Berger, Statistical Inference, 2nd ed., ch. 9); None
        below two seeds, where no spread is known."""
        if not self.numeric or self.n < 2 or self.std is None:
            return None
        from scipy.stats import t  # here: scipy.stats costs a second to import

        half = float(t.ppf(0.975, self.n - 1)) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half


@dataclass(frozen=True)
class Table:
    """Rows x columns of cells, with numbered footnotes; ``name`` is the file stem."""

    name: str
    title: str
    row_header: str
    rows: tuple[str, ...]
    columns: tuple[Column, ...]
    cells: tuple[tuple[Cell, ...], ...]
    footnotes: tuple[str, ...] = ()
    caption: str = ""
    row_keys: tuple[str, ...] = ()

    @property
    def grouped(self) -> bool:
        return any(c.group for c in self.columns)

    def groups(self) -> list[tuple[str, int]]:
        """Consecutive column groups as (group, span)."""
        out: list[tuple[str, int]] = []
        for c in self.columns:
            if out and out[-1][0] == c.group:
                out[-1] = (c.group, out[-1][1] + 1)
            else:
                out.append((c.group, 1))
        return out

    def cell(self, row: str, column_key: str) -> Cell:
        """Look a cell up by row label and column key (for tests and claims)."""
        j = [c.key for c in self.columns].index(column_key)
        return self.cells[self.rows.index(row)][j]


def decimals_for(values: Iterable[float]) -> int:
    """Places that show about three significant digits of a column's typical value, at least two
    below 100 (the paper's 2.99 / 6.35) and none from 100 up (NFE 142)."""
    finite = sorted(abs(v) for v in values if v is not None and math.isfinite(v) and v != 0)
    if not finite:
        return 2
    typical = finite[len(finite) // 2]
    if typical >= 100:
        return 0
    return min(6, max(2, 2 - math.floor(math.log10(typical))))


def mark_best(cells: Sequence[Cell], lower_is_better: bool | None) -> list[Cell]:
    """Bold every cell whose shown mean is the column's best (ties, as printed, share it)."""
    shown = [c.rounded for c in cells if c.numeric]
    if lower_is_better is None or not shown:
        return list(cells)
    best = min(shown) if lower_is_better else max(shown)
    return [replace(c, bold=True) if c.numeric and c.rounded == best else c for c in cells]


class Footnotes:
    """Numbers distinct footnote texts in order of first use."""

    def __init__(self) -> None:
        self._texts: dict[str, int] = {}

    def add(self, texts: Iterable[str]) -> tuple[int, ...]:
        out = []
        for text in texts:
            out.append(self._texts.setdefault(text, len(self._texts) + 1))
        return tuple(sorted(set(out)))  # ascending, as a reader looks them up

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(self._texts)
