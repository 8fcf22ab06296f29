"""Write a report folder: ``index.html`` (self-contained), ``report.md`` with its figures as PNG
files beside it, and every table as ``<name>.csv`` and ``<name>.tex``."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.report.claims import Claim
from harness.report.figures import Figure
from harness.report.formats import to_csv, to_latex, to_markdown
from harness.report.page import html_page
from harness.report.table import Table

FIGURES, SAMPLES = "figures", "samples"
TABLES = ("comparison", "claims", "cost", "provenance")


@dataclass(frozen=True)
class Sample:
    """A downloaded artifact image of one trial; ``kind`` is "samples" or "trajectories"."""

    label: str
    dataset: str
    seed: int
    kind: str
    path: Path


@dataclass(frozen=True)
class Content:
    """Everything a report shows, computed once and laid out by each format."""

    title: str
    banner: str
    complete: bool
    tables: dict[str, Table]
    claims: list[Claim]
    efficiency: list[Figure]
    training: list[Figure]
    samples: list[Sample]
    methods: list[tuple[str, str]]  # (label, display name) in table order
    datasets: list[str]
    cost_summary: str


def _md_claims(claims: list[Claim]) -> str:
    lines = []
    for c in claims:
        lines.append(f"- {c.statement} **{c.verdict.capitalize()}**: {c.evidence}")
        lines += [f"  - {d}" for d in c.details]
    return "\n".join(lines)


def _md_figures(figures: list[Figure]) -> str:
    return "\n\n".join(f"![{f.title}]({FIGURES}/{f.name}.png)\n\n*{f.caption}*"
                       for f in figures) or "No curves logged yet."


def _md_samples(content: Content, out: Path, kind: str) -> str:
    grid = {(s.label, s.dataset): s for s in content.samples if s.kind == kind}
    if not grid:
        return f"No {kind} figures logged yet."
    lines = ["| Method | " + " | ".join(content.datasets) + " |",
             "|" + "---|" * (len(content.datasets) + 1)]
    for label, shown in content.methods:
        cells = []
        for d in content.datasets:
            s = grid.get((label, d))
            cells.append("—" if s is None else
                         f"![{shown} {d}]({s.path.relative_to(out).as_posix()}) seed {s.seed}")
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(content: Content, out: Path) -> str:
    t = content.tables
    return "\n\n".join([
        f"# {content.title}", f"> {content.banner}",
        "## Comparison", to_markdown(t["comparison"]),
        "## Claims", _md_claims(content.claims),
        "## Sampling efficiency", _md_figures(content.efficiency),
        "## Training curves", _md_figures(content.training),
        "## Samples", _md_samples(content, out, "samples"),
        "### Trajectories", _md_samples(content, out, "trajectories"),
        "## Cost", content.cost_summary,
        f"<details><summary>Every trial</summary>\n\n{to_markdown(t['cost'])}\n\n</details>",
        "## Provenance", to_markdown(t["provenance"]),
    ]) + "\n"


def clean(out: Path) -> None:
    """Remove what an earlier report wrote here (its figures may name datasets no longer run)."""
    shutil.rmtree(out / FIGURES, ignore_errors=True)
    shutil.rmtree(out / SAMPLES, ignore_errors=True)
    for name in [*(f"{t}.{ext}" for t in TABLES for ext in ("csv", "tex")), "index.html",
                 "report.md"]:
        (out / name).unlink(missing_ok=True)


def write_report(content: Content, out: Path) -> dict[str, Path]:
    """Write every file; samples are already under ``out/samples``. Returns name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / FIGURES).mkdir(exist_ok=True)
    files = {}
    for fig in [*content.efficiency, *content.training]:
        files[f"{fig.name}.png"] = out / FIGURES / f"{fig.name}.png"
        files[f"{fig.name}.png"].write_bytes(fig.png)
    for name, table in content.tables.items():
        for ext, render in (("csv", to_csv), ("tex", to_latex)):
            files[f"{name}.{ext}"] = out / f"{name}.{ext}"
            files[f"{name}.{ext}"].write_text(render(table), encoding="utf-8")
    files["report.md"] = out / "report.md"
    files["report.md"].write_text(markdown(content, out), encoding="utf-8")
    files["index.html"] = out / "index.html"
    files["index.html"].write_text(html_page(content), encoding="utf-8")
    return files
