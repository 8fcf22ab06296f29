"""The report's table structure and renderers on hand-made tables (no MLflow)."""

import pytest

from harness.report.formats import tex, to_csv, to_latex, to_markdown
from harness.report.table import Cell, Column, Footnotes, Table, decimals_for, mark_best


@pytest.mark.parametrize("values, places", [
    ([2.99, 3.12, 3.16], 2),    # bits/dim: the paper's two places
    ([142, 183, 274], 0),       # NFE: whole evaluations
    ([0.05, 0.12, 0.2], 3),     # W2 of 2-D data: three significant digits
    ([6.35, 19.94, 20.78], 2),
    ([None, 0.0], 2),           # nothing to go by
])
def test_decimals_show_about_three_significant_digits(values, places):
    assert decimals_for(values) == places


def test_best_is_judged_on_the_shown_number_and_ties_share_it():
    cells = [Cell(1.234, decimals=2), Cell(1.231, decimals=2), Cell(1.30, decimals=2), Cell()]
    assert [c.bold for c in mark_best(cells, lower_is_better=True)] == [True, True, False, False]
    assert [c.bold for c in mark_best(cells, lower_is_better=False)] == [False, False, True, False]
    assert [c.bold for c in mark_best(cells, lower_is_better=None)] == [False] * 4


def test_cell_text_by_seed_count():
    assert Cell(2.5, 0.1, 3).value_text == "2.50 ± 0.10" and Cell(2.5, 0.1, 3).count_text == "n=3"
    assert Cell(2.5, None, 1).value_text == "2.50"
    assert Cell().value_text == "—" and Cell().count_text == ""
    assert Cell(text="cpu").value_text == "cpu"


def test_footnotes_are_numbered_once_in_order_of_use():
    notes = Footnotes()
    assert notes.add(["a", "b"]) == (1, 2)
    assert notes.add(["b", "c", "b"]) == (2, 3)
    assert notes.texts == ("a", "b", "c")


def _table() -> Table:
    columns = (Column("d/nll", "NLL", "nats", "d", True), Column("d/nfe", "NFE", "", "d", True))
    cells = ((Cell(2.5, 0.25, 2, bold=True), Cell(text="—", notes=(1,))),
             (Cell(3.0, None, 1), Cell(10.0, 1.0, 3, decimals=0, bold=True)))
    return Table("t", "T", "Method", ("A | x", "B_1"), columns, cells, ("seed 1 failed: 100%",))


def test_renderers_show_the_same_strings():
    t = _table()
    md = to_markdown(t)
    assert "| A \\| x | **2.50 ± 0.25** (n=2) | —<sup>1</sup> |" in md
    assert "| d NLL (nats) ↓ | d NFE ↓ |" in md and "1. seed 1 failed: 100%" in md
    latex = to_latex(t)
    assert r"\multicolumn{2}{c}{d} \\" in latex and r"\cmidrule(lr){2-3}" in latex
    assert r"B\_1 & 3.00 {\scriptsize (n=1)} & \textbf{10 $\pm$ 1} {\scriptsize (n=3)} \\" in latex
    assert r"\textsuperscript{1} seed 1 failed: 100\%" in latex
    lines = to_csv(t).splitlines()
    assert lines[1].startswith("A | x,A | x,d,NLL,nats,d/nll,2.5,0.25,2,2.50 ± 0.25,1,,")
    assert lines[2].endswith(",,,,—,0,seed 1 failed: 100%,,,,")  # no interval, no paper value


def test_latex_escapes_specials():
    assert tex("50% of x_1 & {y} ± 1 — ok") == \
        r"50\% of x\_1 \& \{y\} $\pm$ 1 --- ok"


def test_seed_lists_collapse_runs_of_seeds():
    from harness.report.tables import seed_list

    assert seed_list([3]) == "seed 3"
    assert seed_list([1, 0]) == "seeds 0, 1"
    assert seed_list([0, 1, 2, 5, 7, 8, 9, 11, 12]) == "seeds 0–2, 5, 7–9, 11, 12"
