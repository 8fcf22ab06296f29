"""Write a report folder: ``index.html`` (self-contained), ``report.md`` with its figures as PNG
files beside it, and every table as ``<name>.csv`` and ``<name>.tex``.

The folder is built whole in a hidden temporary folder beside the target and swapped in by
renames (:func:`staged`), so a failure or Ctrl-C leaves the previous report as it was, and a folder
is only ever replaced when its marker file says fmbench wrote it and it holds nothing else
(:func:`resolve_out`): fmbench never deletes what it did not write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from harness import __version__
from harness.errors import HarnessError
from harness.report.claims import Claim
from harness.report.figures import Figure
from harness.report.formats import to_csv, to_latex, to_markdown
from harness.report.page import html_page
from harness.report.stats import METHOD as STATISTICS
from harness.report.table import Table

FIGURES, SAMPLES = "figures", "samples"
TABLES = ("comparison", "claims", "budget", "cost", "provenance")
EFFICIENCY_CSV = "efficiency.csv"
"""Every point of the curves against NFE, long format (:mod:`harness.report.efficiency`)."""
MARKER = ".fmbench-report"
"""JSON file in every report folder (suite, time, version, the files written): the proof that the
folder is fmbench's to replace."""


class OutError(HarnessError):
    """A ``--out`` folder that cannot be used; the message names the path and the problem."""


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
    efficiency_csv: str = ""  # efficiency.csv's text; written even when empty (header only)


def _md_claims(claims: list[Claim]) -> str:
    lines = []
    for c in claims:
        lines.append(f"- {c.statement} **{c.verdict.capitalize()}**: {c.evidence}")
        lines += [f"  - {d}" for d in c.details]
    return "\n".join(lines) + f"\n\n{STATISTICS}"


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
            rel = None if s is None else Path(os.path.relpath(Path(s.path).absolute(),
                                                              Path(out).absolute()))
            cells.append("—" if s is None else f"![{shown} {d}]({rel.as_posix()}) seed {s.seed}")
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(content: Content, out: Path) -> str:
    t = content.tables
    return "\n\n".join([
        f"# {content.title}", f"> {content.banner}",
        "## Comparison", to_markdown(t["comparison"]),
        "## Claims", _md_claims(content.claims),
        "## Sampling efficiency", _md_figures(content.efficiency),
        *(["### NFE budget", to_markdown(t["budget"])] if "budget" in t else []),
        "## Training curves", _md_figures(content.training),
        "## Samples", _md_samples(content, out, "samples"),
        "### Trajectories", _md_samples(content, out, "trajectories"),
        "## Cost", content.cost_summary,
        f"<details><summary>Every trial</summary>\n\n{to_markdown(t['cost'])}\n\n</details>",
        "## Provenance", to_markdown(t["provenance"]),
    ]) + "\n"


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
    files[EFFICIENCY_CSV] = out / EFFICIENCY_CSV
    files[EFFICIENCY_CSV].write_text(content.efficiency_csv, encoding="utf-8")
    files["report.md"] = out / "report.md"
    files["report.md"].write_text(markdown(content, out), encoding="utf-8")
    files["index.html"] = out / "index.html"
    files["index.html"].write_text(html_page(content), encoding="utf-8")
    return files


# -- the output folder ---------------------------------------------------------------------------

def _problem(e: OSError) -> str:
    """"no such file or directory", as the OS says it, without the path (the message has it)."""
    return e.strerror.lower() if e.strerror else str(e) or type(e).__name__


def _remove_empty(folders: list[Path]) -> None:
    """Remove folders fmbench made, deepest first, only while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _report_files(folder: Path) -> list[str]:
    """Every file under ``folder`` as a POSIX path relative to it, sorted."""
    out = []
    for root, _, names in os.walk(folder):
        out += [(Path(root) / n).relative_to(folder).as_posix() for n in names]
    return sorted(out)


def _check_ours(target: Path, shown: str) -> None:
    """Refuse a folder that is not empty unless its marker lists everything in it: replacing the
    folder deletes its contents, and only what fmbench wrote may go."""
    try:
        if not any(target.iterdir()):
            return
        marker = target / MARKER
        if not marker.is_file():
            raise OutError(f"--out {shown}: the folder exists and holds no fmbench report; choose "
                           "an empty or new folder")
        try:
            written = set(json.loads(marker.read_text(encoding="utf-8"))["files"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise OutError(f"--out {shown}: its {MARKER} file is damaged, so fmbench cannot tell "
                           "its files from yours; choose an empty or new folder") from None
        allowed = written | {MARKER} | {p.as_posix() for w in written
                                        for p in Path(w).parents if p != Path(".")}
        for root, dirs, names in os.walk(target):
            for n in [*dirs, *names]:
                rel = (Path(root) / n).relative_to(target).as_posix()
                if rel not in allowed:
                    raise OutError(f"--out {shown}: holds {rel}, which fmbench did not write; "
                                   "move it out or choose an empty or new folder")
    except PermissionError as e:
        raise OutError(f"--out {shown}: cannot read the folder: {_problem(e)}") from None


def resolve_out(out: str | os.PathLike | None, default: Path) -> tuple[Path, str]:
    """The absolute report folder for ``--out`` (or ``default``) and the path as the user wrote
    it, checked before any work. ``~`` is expanded here too, because a quoted ``'~'`` reaches
    fmbench unexpanded and would otherwise become a folder named ``~``."""
    shown = os.fspath(default if out is None else out)
    text = shown
    if not text.strip():
        raise OutError("--out: the path is empty")
    if "\0" in text:
        raise OutError(f"--out {shown!r}: the path holds a NUL character")
    if text.startswith("~"):
        text = os.path.expanduser(text)
        if text.startswith("~"):
            raise OutError(f"--out {shown}: cannot expand {shown.split('/')[0]} (no such user, or "
                           "HOME is not set)")
    try:
        target = Path(text).resolve()
        cwd = Path.cwd().resolve()
    except (OSError, RuntimeError) as e:
        raise OutError(f"--out {shown}: cannot resolve the path: "
                       f"{_problem(e) if isinstance(e, OSError) else e}") from None
    existing = target
    while not os.path.lexists(existing):
        existing = existing.parent
    if existing != target:
        if not existing.is_dir():
            raise OutError(f"--out {shown}: {existing} is a file, not a folder")
    elif not target.is_dir():
        raise OutError(f"--out {shown}: {target} exists and is a file, not a folder")
    else:
        _check_ours(target, shown)
        if target == cwd or target in cwd.parents:
            raise OutError(f"--out {shown}: is the current folder or holds it, and a report folder "
                           "is replaced whole; choose a new folder inside it")
    if target.parent == target:
        raise OutError(f"--out {shown}: the root folder cannot be a report folder")
    return target, shown


@contextmanager
def _interrupts_held() -> Iterator[list[int]]:
    """Hold Ctrl-C for the two renames of a swap, so it cannot land between them; yields the
    list of signals held, for the caller to act on once it is safe (main thread only: that is
    where Python runs signal handlers)."""
    import signal
    import threading

    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    before = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        signal.signal(signal.SIGINT, before)


def _swap(new: Path, target: Path, shown: str) -> None:
    """Put ``new`` at ``target``; an earlier report there is renamed aside, then removed."""
    old = new.with_name(new.name.replace(".tmp-", ".old-", 1))
    had_old = os.path.lexists(target)
    if had_old:
        _check_ours(target, shown)  # again: files may have been added while the report was built
    try:
        with _interrupts_held() as held:
            if had_old:
                os.rename(target, old)
            try:
                os.rename(new, target)
            except BaseException:
                if had_old:
                    os.rename(old, target)
                raise
    except OSError as e:
        raise OutError(f"--out {shown}: cannot put the report in place: {_problem(e)}") from None
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
    if held:  # the new report is in place; now the Ctrl-C
        raise KeyboardInterrupt


@contextmanager
def staged(target: Path, shown: str, suite: str) -> Iterator[Path]:
    """An empty hidden folder beside ``target`` to build the report in. On success it gets the
    marker and replaces ``target``; on any failure, Ctrl-C included, it is removed (with any
    parent folders made for it) and ``target`` is left as it was."""
    made = []
    parent = target.parent
    while not os.path.lexists(parent):
        made.append(parent)
        parent = parent.parent
    try:
        for folder in reversed(made):
            folder.mkdir()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        umask = os.umask(0o22)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the report from others
    except OSError as e:
        _remove_empty(made)
        raise OutError(f"--out {shown}: cannot create a folder in {parent}: {_problem(e)}") \
            from None
    try:
        yield tmp
        files = _report_files(tmp)
        (tmp / MARKER).write_text(json.dumps({
            "suite": suite, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "fmbench": __version__, "files": files}, indent=1) + "\n", encoding="utf-8")
        _swap(tmp, target, shown)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        raise
