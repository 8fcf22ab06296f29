"""Render a :class:`~harness.report.table.Table` as HTML, Markdown, CSV or LaTeX.

Each renderer only arranges the strings the table already holds (``value_text``, ``count_text``,
``header``), so the four outputs show the same rounded numbers by construction.
"""

from __future__ import annotations

import csv
import html
import io
import re

from harness.report.table import Cell, Table

# -- HTML --------------------------------------------------------------------------------------


def _html_cell(table: Table, cell: Cell) -> str:
    value = html.escape(cell.value_text)
    if cell.bold:
        value = f"<strong>{value}</strong>"
    if cell.count_text:
        value += f' <span class="n">({cell.count_text})</span>'
    if cell.reference_text:
        value += f' <span class="paper">· {html.escape(cell.reference_text)}</span>'
    if cell.notes:
        value += "<sup>" + ",".join(f'<a href="#{table.name}-fn{k}">{k}</a>'
                                    for k in cell.notes) + "</sup>"
    return value


def to_html(table: Table) -> str:
    e = html.escape
    out = [f'<table class="report" id="table-{table.name}">']
    if table.caption:
        out.append(f"<caption>{e(table.caption)}</caption>")
    out.append("<thead>")
    if table.grouped:
        out.append(f'<tr><th rowspan="2">{e(table.row_header)}</th>' + "".join(
            f'<th colspan="{span}" class="group">{e(group)}</th>' for group, span in table.groups())
            + "</tr><tr>" + "".join(f"<th>{e(c.header)}</th>" for c in table.columns) + "</tr>")
    else:
        out.append(f"<tr><th>{e(table.row_header)}</th>"
                   + "".join(f"<th>{e(c.header)}</th>" for c in table.columns) + "</tr>")
    out.append("</thead><tbody>")
    for row, cells in zip(table.rows, table.cells):
        out.append(f'<tr><th scope="row">{e(row)}</th>'
                   + "".join(f"<td>{_html_cell(table, c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    if table.footnotes:
        out.append('<ol class="footnotes">' + "".join(
            f'<li id="{table.name}-fn{k}">{e(text)}</li>'
            for k, text in enumerate(table.footnotes, 1)) + "</ol>")
    return "\n".join(out)


# -- Markdown ----------------------------------------------------------------------------------


def _md(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def _md_cell(cell: Cell) -> str:
    value = _md(cell.value_text)
    if cell.bold:
        value = f"**{value}**"
    if cell.count_text:
        value += f" ({cell.count_text})"
    if cell.reference_text:
        value += f" · {_md(cell.reference_text)}"
    if cell.notes:
        value += "<sup>" + ",".join(str(k) for k in cell.notes) + "</sup>"
    return value


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured table; column groups become a prefix of each header ("moons NLL")."""
    heads = [_md(f"{c.group} {c.header}".strip()) for c in table.columns]
    out = ["| " + " | ".join([_md(table.row_header), *heads]) + " |",
           "|" + "---|" * (len(heads) + 1)]
    for row, cells in zip(table.rows, table.cells):
        out.append("| " + " | ".join([_md(row), *(_md_cell(c) for c in cells)]) + " |")
    if table.caption:
        out += ["", _md(table.caption)]
    if table.footnotes:
        out.append("")
        out += [f"{k}. {_md(text)}" for k, text in enumerate(table.footnotes, 1)]
    return "\n".join(out)


# -- CSV ---------------------------------------------------------------------------------------

CSV_FIELDS = ("row_key", "row", "group", "column", "unit", "key", "mean", "std", "n", "text",
              "best", "notes", "ci95_low", "ci95_high", "paper", "paper_diff")
"""``ci95_low``/``ci95_high``: :attr:`Cell.interval` (empty below two seeds); ``paper``: the
published value as printed, ``paper_diff`` ours minus it (paper suites only)."""


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def to_csv(table: Table) -> str:
    """Long form, one line per cell: full-precision mean, std, 95% interval and difference from
    the paper beside the text shown."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    keys = table.row_keys or table.rows
    for key, row, cells in zip(keys, table.rows, table.cells):
        for col, c in zip(table.columns, cells):
            writer.writerow([
                key, row, col.group, col.title, col.unit, col.key,
                _number(c.mean), _number(c.std), c.n if c.numeric else "",
                c.value_text, int(c.bold), " | ".join(table.footnotes[k - 1] for k in c.notes),
                *(_number(v) for v in c.interval or (None, None)), c.reference or "",
                _number(c.difference)])
    return buf.getvalue()


# -- LaTeX -------------------------------------------------------------------------------------

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "—": "---", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "²": r"$^2$",
        "·": r"$\cdot$", "×": r"$\times$", "−": "$-$"}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX))


def tex(text: str) -> str:
    """Escape LaTeX specials and spell out the few non-ASCII signs the report uses."""
    return _TEX_RE.sub(lambda m: _TEX[m.group()], text)


def _tex_cell(cell: Cell) -> str:
    value = tex(cell.value_text)
    if cell.bold:
        value = rf"\textbf{{{value}}}"
    if cell.count_text:
        value += rf" {{\scriptsize ({cell.count_text})}}"
    if cell.reference_text:
        value += rf" {{\scriptsize {tex('· ' + cell.reference_text)}}}"
    if cell.notes:
        value += r"\textsuperscript{" + ",".join(str(k) for k in cell.notes) + "}"
    return value


def to_latex(table: Table) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``), footnotes below it."""
    n = len(table.columns)
    out = [r"% generated by fmbench report; needs \usepackage{booktabs}", r"\begin{table}[t]",
           r"\centering", r"\begin{tabular}{l" + "c" * n + "}", r"\toprule"]
    if table.grouped:
        heads, rules, start = [""], [], 2
        for group, span in table.groups():
            heads.append(rf"\multicolumn{{{span}}}{{c}}{{{tex(group)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        out += [" & ".join(heads) + r" \\", " ".join(rules)]
    out.append(" & ".join([tex(table.row_header), *(tex(c.header) for c in table.columns)])
               + r" \\")
    out.append(r"\midrule")
    for row, cells in zip(table.rows, table.cells):
        out.append(" & ".join([tex(row), *(_tex_cell(c) for c in cells)]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if table.caption:
        out.append(rf"\caption{{{tex(table.caption)}}}")
    out.append(rf"\label{{tab:{table.name}}}")
    for k, text in enumerate(table.footnotes, 1):
        out.append(rf"\par\footnotesize\textsuperscript{{{k}}} {tex(text)}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"
