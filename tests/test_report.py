"""Reports from an MLflow store filled with known values: every table cell, every claim verdict,
the four formats agreeing with each other and with MLflow, and the page in a real browser.

The store holds a suite of 4 methods x 2 datasets (moons: 2-D; digits: images) x 3 seeds with a
failed trial, a running one, a missing one, a finished one without its FID, an older failed
attempt of a trial that later finished, and a run of settings no longer in the suite file.
"""

from __future__ import annotations

import csv
import gc
import html.parser
import io
import re
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from harness.run import record
from harness.cli import main
from harness.core.evaluation_types import ErrorPoint, EvalResult, QualityPoint
from harness.run.record import State, TrialRun, TrialWriter
from harness.report import build_report, collect
from harness.report.stats import METHOD as STATISTICS
from harness.run.suite import load_suite
from harness.run.tracking import Tracker
from tests.helpers import chromium, new_experiment

SUITE = """\
name: reptest
methods: [fm-ot, ddpm, fm-diffusion, score-matching]
datasets: [moons, digits]
seeds: [0, 1, 2]
training: {steps: 50}
evaluation: {tol: 1e-5}
resources: {train: {cpus: 1, gpus: 0.5}, eval: {cpus: 1, gpus: 0}}
"""

# Final metrics per (method, dataset), one value per seed; None: that seed logged no such metric.
MOONS = {  # nll (nats), w2, nfe
    "ddpm": ([2.61, 2.65, 2.69], [0.140, 0.150, 0.160], [120, 124, 128]),
    "score-matching": ([2.90, 2.80, 2.85], [0.200, 0.220, 0.210], [150, 160, 155]),
    "fm-diffusion": ([2.58, 2.62], [0.150, 0.170], [110, 126]),  # seed 2 failed
    "fm-ot": ([2.50, 2.56, 2.53], [0.100, 0.110, 0.090], [62, 64, 66]),
}
DIGITS = {  # bpd, fid_classifier, nfe
    "ddpm": ([1.52, 1.50, 1.54], [8.0, 9.0, None], [200, 210, 205]),
    "fm-diffusion": ([1.49, 1.51, 1.50], [7.5, 7.7, 7.9], [181, 184, 187]),
    "fm-ot": ([1.45, 1.47, 1.52], [7.2, 7.6, 7.4], [140, 142, 144]),
}  # score-matching on digits: seed 0 failed, seed 1 never ran, seed 2 still running
FAILED_REASON = "DivergenceError: training loss is nan at step 120"
SM_REASON = "CheckpointError: checkpoint is corrupt"
FID_WARNING = "FID unavailable: classifier weights missing"
# error/midpoint by NFE: OT lower everywhere on moons, not at NFE 16 on digits
ERRORS = {("fm-ot", "moons"): {4: 1e-2, 8: 2e-3, 16: 4e-4},
          ("fm-diffusion", "moons"): {4: 5e-2, 8: 1e-2, 16: 2e-3},
          ("fm-ot", "digits"): {4: 3e-2, 8: 5e-3, 16: 2e-3},
          ("fm-diffusion", "digits"): {4: 4e-2, 8: 6e-3, 16: 1e-3}}
# during/w2 on moons at steps 100, 200, 300 per seed; digits has during/ FID for fm-ot only
DURING = {("fm-ot", 0): [0.30, 0.12, 0.10], ("fm-ot", 1): [0.32, 0.14, 0.10],
          ("fm-ot", 2): [0.28, 0.10, 0.10], ("fm-diffusion", 0): [0.50, 0.30, 0.15],
          ("fm-diffusion", 1): [0.52, 0.28, 0.17]}
TRAIN_S, EVAL_S = 60.0, 12.0
STALE_KEY = "0123456789abcdef"
"""The key of a run whose settings the suite file no longer has."""


def _png(path: Path, colour: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().scatter([0, 1], [1, 0], color=colour)
    fig.savefig(path, dpi=40)
    return path


def _started(tracker: Tracker, trial, fid_mode) -> TrialWriter:
    """A trial run whose train task started: its params (the report reads the method and the
    evaluation settings) and where it trains."""
    writer = TrialWriter.create(tracker, "reptest", trial, "abc123def456")
    config = {"method": trial.method.name, "dataset": trial.dataset.name, "seed": trial.seed,
              "eval": {"tol": 1e-5, "fid_mode": fid_mode(trial), "fid_samples": 2000,
                       "fid_nfe_samples": 500}}
    writer.start(config, record.placement_tags("node-a", "cpu", ""))
    return writer


def _finished(writer: TrialWriter, trial, fid: str, pngs: Path) -> None:
    """The rest of a finished trial's record: losses, curves, final metrics, samples."""
    m, d, s = trial.method.name, trial.dataset.name, trial.seed
    nll, quality, nfe = (MOONS if d == "moons" else DIGITS)[m]
    nll_key, q_key = ("nll", "w2") if d == "moons" else ("bpd", fid)
    writer.log_losses([(step, 1.0 / (1 + step)) for step in range(0, 50, 10)])
    writer.log_train_time(TRAIN_S, TRAIN_S, 50)
    if d == "moons" and (m, s) in DURING:
        for step, value in zip((100, 200, 300), DURING[m, s]):
            writer.log_during({"w2": value}, step)
    if d == "digits" and m == "fm-ot":
        for step in (100, 200, 300):
            writer.log_during({fid: 20.0 - step / 50}, step)
    metrics = {nll_key: nll[s], "nfe": nfe[s], "eval_time": EVAL_S}
    if quality[s] is not None:
        metrics[q_key] = quality[s]
    evaluation = EvalResult(
        metrics, [ErrorPoint("midpoint", n, e) for n, e in ERRORS.get((m, d), {}).items()],
        quality_curve=[QualityPoint("euler", None, n, {fid: 30.0 / n}) for n in (4, 8, 16)
                       if d == "digits" and m in ("fm-ot", "ddpm")],
        warnings=[FID_WARNING] if quality[s] is None else [])
    writer.log_evaluation(metrics, evaluation, step=50, on_curve=False)
    writer.log_files(pngs, [record.SAMPLES, record.TRAJECTORIES])
    writer.end(State.FINISHED)


def fill_store(tmp: Path, uri: str | None = None, *, fid: str = "fid_classifier",
               fid_mode=lambda trial: "clean") -> tuple[str, object, dict]:
    """Write the suite file and its runs (into ``uri``, by default a new SQLite store in ``tmp``),
    each through the record's writer as fmbench writes it; returns (uri, suite, {trial name: run
    id}). Digits log ``fid`` (the metric's name), computed with the clean-fid mode
    ``fid_mode(trial)`` as each run's params record it."""
    suite_path = tmp / "reptest.yaml"
    suite_path.write_text(SUITE)
    suite = load_suite(suite_path)
    uri = uri or f"sqlite:///{tmp / 'mlflow.db'}"
    new_experiment(uri, "reptest", tmp / "artifacts")
    tracker = Tracker(uri, "reptest")
    _png(tmp / record.SAMPLES, "red")
    _png(tmp / record.TRAJECTORIES, "blue")
    ids: dict[str, str] = {}

    for inv in range(2):  # an older and a newer invocation: the report goes to the newer
        logger = tracker.start_run(f"invocation {inv}",
                                   record.invocation_tags("reptest", "abc123def456"))
        logger.log_metrics({record.WALL_S: 100.0 + inv})
        logger.finish(State.FINISHED.status)
        ids[f"invocation-{inv}"] = logger.run_id
        time.sleep(0.01)

    failures = {("fm-diffusion", "moons", 2): FAILED_REASON, ("score-matching", "digits", 0):
                SM_REASON}
    for t in suite.trials():
        m, d, s = t.method.name, t.dataset.name, t.seed
        if (m, d, s) in failures:
            writer = _started(tracker, t, fid_mode)
            writer.end(State.FAILED, failures[m, d, s])
        elif (m, d, s) == ("score-matching", "digits", 1):
            continue  # never ran
        elif (m, d, s) == ("score-matching", "digits", 2):  # still running
            writer = _started(tracker, t, fid_mode)
            writer.log_losses([(0, 1.0)])
        else:
            if (m, d, s) == ("ddpm", "moons", 0):  # an earlier failed attempt, then the rerun
                _started(tracker, t, fid_mode).end(State.FAILED, "OSError: disk full")
                time.sleep(0.01)
            writer = _started(tracker, t, fid_mode)
            _finished(writer, t, fid, tmp)
        ids[t.name] = writer.run_id
    # same trial, older settings: a key the suite no longer has
    stale = _started(tracker, replace(suite.trials()[0], key=STALE_KEY), fid_mode)
    stale.log_evaluation({"nfe": 999.0}, EvalResult({"nfe": 999.0}), step=50, on_curve=False)
    stale.end(State.FINISHED)
    return uri, suite, ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    uri, suite, ids = fill_store(tmp)
    return tmp, uri, suite, ids


@pytest.fixture(scope="module")
def report(store):
    tmp, uri, suite, ids = store
    return build_report(suite, uri, tmp / "out")


# -- status and plan ------------------------------------------------------------------------------

def test_status_counts_planned_trials_in_every_state(report):
    assert report.status.counts == {"finished": 20, "running": 1, "scheduled": 0, "failed": 2,
                                    "killed": 0, "missing": 1}
    assert report.status.ignored == 1  # the run whose key the suite no longer has
    banner = report.status.banner()
    assert banner.startswith("Incomplete: 20 of 24 planned trials finished, 1 running or queued, "
                             "2 failed")
    assert "1 not run" in banner and "1 run(s) of settings no longer in the suite" in banner
    for path in (report.index, report.markdown):
        assert banner in path.read_text().replace("&#x27;", "'")


# -- the comparison table, cell by cell ------------------------------------------------------

ROWS = ["DDPM", "Score Matching", "FM w/ Diffusion", "FM w/ OT"]  # baselines first, registry order
COLUMNS = [("moons/nll", "NLL (nats) ↓", 2), ("moons/w2", "W2 (data units) ↓", 3),
           ("moons/nfe", "NFE ↓", 0), ("digits/bpd", "NLL (bits/dim) ↓", 2),
           ("digits/fid_classifier", "FID (digit classifier, clean, 2k) ↓", 2),
           ("digits/nfe", "NFE ↓", 0)]
METHOD = dict(zip(ROWS, ["ddpm", "score-matching", "fm-diffusion", "fm-ot"]))
NOTES = (f"DDPM on digits, seed 2: finished without final/fid_classifier ({FID_WARNING})",
         f"Score Matching on digits, seed 0: failed: {SM_REASON}",
         "Score Matching on digits, seed 1: not run",
         "Score Matching on digits, seed 2: still running or queued",
         f"FM w/ Diffusion on moons, seed 2: failed: {FAILED_REASON}")
CELL_NOTES = {("DDPM", "digits/fid_classifier"): (1,),
              **{("Score Matching", c): (2, 3, 4) for c, _, _ in COLUMNS[3:]},
              **{("FM w/ Diffusion", c): (5,) for c, _, _ in COLUMNS[:3]}}


def expected_values(row: str, column: str) -> list[float]:
    dataset, metric = column.split("/")
    data = MOONS if dataset == "moons" else DIGITS
    if METHOD[row] not in data:
        return []
    nll, quality, nfe = data[METHOD[row]]
    values = {"nll": nll, "bpd": nll, "w2": quality, "fid_classifier": quality, "nfe": nfe}[metric]
    return [v for v in values if v is not None]


def expected_text(row: str, column: str, places: int) -> str:
    values = expected_values(row, column)
    if not values:
        return "—"
    text = f"{statistics.mean(values):.{places}f}"
    return text + (f" ± {statistics.stdev(values):.{places}f}" if len(values) > 1 else "")


def test_comparison_table_every_cell(report):
    table = report.tables["comparison"]
    assert list(table.rows) == ROWS
    assert [(c.key, c.header, c.group) for c in table.columns] == \
        [(k, h, k.split("/")[0]) for k, h, _ in COLUMNS]
    assert table.footnotes == NOTES
    for row in ROWS:
        for key, _, places in COLUMNS:
            cell = table.cell(row, key)
            values = expected_values(row, key)
            assert cell.value_text == expected_text(row, key, places), (row, key)
            assert cell.n == len(values), (row, key)
            assert cell.notes == CELL_NOTES.get((row, key), ()), (row, key)
            assert cell.bold == (row == "FM w/ OT"), (row, key)  # best everywhere, by design
    # a few cells worked out on paper
    assert table.cell("FM w/ OT", "moons/nfe").value_text == "64 ± 2"
    assert table.cell("FM w/ Diffusion", "moons/w2").value_text == "0.160 ± 0.014"
    assert table.cell("DDPM", "digits/fid_classifier").value_text == "8.50 ± 0.71"
    assert table.cell("Score Matching", "digits/bpd").value_text == "—"


# -- the four formats agree with each other and with MLflow ---------------------------------------

class _Cells(html.parser.HTMLParser):
    """(text, bold, n, notes) of each <td> of the comparison table."""

    def __init__(self) -> None:
        super().__init__()
        self.rows, self.inside, self.where = [], False, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.inside = dict(attrs).get("id") == "table-comparison"
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag == "td":
            self.rows[-1].append({"text": "", "bold": False, "n": "", "notes": ""})
            self.where = "text"
        elif self.inside and self.where and tag in ("strong", "span", "sup"):
            self.where = {"strong": "text", "span": "n", "sup": "notes"}[tag]
            self.rows[-1][-1]["bold"] |= tag == "strong"

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif tag == "td":
            self.where = None
        elif tag in ("span", "sup", "strong") and self.where:
            self.where = "text"

    def handle_data(self, data):
        if self.inside and self.where:
            self.rows[-1][-1][self.where] += data


def _parse_html(path: Path) -> list[tuple]:
    parser = _Cells()
    parser.feed(path.read_text())
    out = []
    for row in parser.rows:
        for c in row:
            notes = tuple(int(k) for k in re.findall(r"\d+", c["notes"]))
            out.append((c["text"].strip(), c["bold"], c["n"].strip("()"), notes))
    return out


MD_CELL = re.compile(r"^(?P<b>\*\*)?(?P<v>.+?)(?:\*\*)?(?: \((?P<n>n=\d+)\))?"
                     r"(?:<sup>(?P<notes>[\d,]+)</sup>)?$")
TEX_CELL = re.compile(r"^(?P<b>\\textbf\{)?(?P<v>.+?)\}?(?: \{\\scriptsize \((?P<n>n=\d+)\)\})?"
                      r"(?:\\textsuperscript\{(?P<notes>[\d,]+)\})?$")


def _parse_lines(lines: list[str], split: str, pattern: re.Pattern, untex=False) -> list[tuple]:
    out = []
    for line in lines:
        for raw in line.split(split)[1:]:
            m = pattern.match(raw.strip())
            value = m["v"]
            if untex:
                value = value.replace(r" $\pm$ ", " ± ").replace("---", "—")
            notes = tuple(int(k) for k in m["notes"].split(",")) if m["notes"] else ()
            out.append((value, bool(m["b"]), m["n"] or "", notes))
    return out


def _mlflow_values(uri: str) -> dict[tuple[str, str], list[float]]:
    """Straight from MLflow, without the report: finished runs' final metrics per cell."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("reptest").experiment_id
    out: dict[tuple[str, str], list[float]] = {}
    for r in client.search_runs([exp], record.kind_filter(record.TRIAL), max_results=1000):
        run = TrialRun.of(r)
        if run.state is not State.FINISHED or run.key == STALE_KEY:
            continue
        for metric, value in run.finals.items():
            cell = (r.data.tags[record.METHOD], f"{r.data.tags[record.DATASET]}/{metric}")
            out.setdefault(cell, []).append(value)
    return out


def test_html_markdown_csv_latex_agree_with_each_other_and_mlflow(report, store):
    out = report.out_dir
    rows = list(csv.DictReader(io.StringIO((out / "comparison.csv").read_text())))
    assert len(rows) == len(ROWS) * len(COLUMNS)
    from_csv = [(r["text"], r["best"] == "1", f"n={r['n']}" if r["n"] else "",
                 tuple(NOTES.index(t) + 1 for t in r["notes"].split(" | ") if t)) for r in rows]
    md = out.joinpath("report.md").read_text().split("## Comparison")[1].split("\n\n")[1]
    from_md = _parse_lines([line.removesuffix(" |") for line in md.splitlines()[2:]], " | ",
                           MD_CELL)
    tex = out.joinpath("comparison.tex").read_text()
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0]
    from_tex = _parse_lines([line.removesuffix(" \\\\") for line in body.splitlines()], " & ",
                            TEX_CELL, untex=True)
    from_html = _parse_html(report.index)
    assert from_html == from_csv
    assert from_md == from_csv
    assert from_tex == from_csv
    # and the full-precision numbers in the CSV are MLflow's, averaged
    logged = _mlflow_values(store[1])
    for r in rows:
        values = logged.get((r["row_key"], r["key"]), [])
        assert int(r["n"] or 0) == len(values), r
        if values:
            assert float(r["mean"]) == pytest.approx(statistics.mean(values), rel=1e-12)
            if len(values) > 1:
                assert float(r["std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)


# -- claims ---------------------------------------------------------------------------------------

def test_claim_verdicts_and_numbers(report):
    nfe, error, early = report.claims
    # NFE ratios on paired seeds: moons 62/110, 64/126 (VP seed 2 failed); digits 140/181,
    # 142/184, 144/187. With n = 2 or 3 values every resample repeats one value with probability
    # 1/n^n > 2.5%, so the 95% bootstrap interval is the values' range.
    assert nfe.verdict == "holds" and nfe.sign_p == 0.25
    assert "tol 1e-05" in nfe.statement and "FM w/ OT vs FM w/ Diffusion" in nfe.statement
    moons, digits = nfe.effects
    assert moons.seeds == (0, 1) and moons.values == pytest.approx((62 / 110, 64 / 126))
    assert moons.interval == (pytest.approx((62 / 110 * 64 / 126) ** 0.5),
                              pytest.approx(64 / 126), pytest.approx(62 / 110), 2)
    assert digits.interval[1:] == (pytest.approx(144 / 187), pytest.approx(140 / 181), 3)
    assert nfe.evidence == ("OT ahead on 2/2 datasets (one-sided sign test p = 0.25; the smallest "
                            "attainable with 2 datasets is 0.25); per-dataset verdicts: holds 2")
    assert nfe.details[0] == ("moons: NFE(OT)/NFE(VP) by seed 0: 0.564, 1: 0.508; geometric mean "
                              "0.535, 95% interval [0.508, 0.564] (n = 2): holds")
    # midpoint error ratios at NFE 4, 8, 16: moons 0.2 at each; digits 0.75, 0.833, 2, geometric
    # mean 1.25^(1/3) > 1 on every seed; the sign test: 1 of 2 ahead, p = 3/4
    assert error.verdict == "mixed" and error.sign_p == 0.75
    assert [e.verdict for e in error.effects] == ["holds", "does not hold"]
    assert error.effects[0].values == pytest.approx((0.2, 0.2))
    assert error.effects[1].values == pytest.approx((1.25 ** (1 / 3),) * 3)
    assert error.evidence.endswith("per-dataset verdicts: holds 1, does not hold 1")
    assert "error(OT)/error(VP) at NFE 4, 8, 16 by seed" in error.details[1]
    # during/w2 per seed: seed 0 good = max(0.10, 0.15), reached at step 200 (OT) and 300 (VP);
    # seed 1 good = 0.17, the same steps; VP seed 2 failed and digits has no VP curve
    assert early.verdict == "holds" and early.sign_p == 0.5
    assert early.evidence == ("OT ahead on 1/1 dataset (one-sided sign test p = 0.5; the smallest "
                              "attainable with 1 dataset is 0.5); per-dataset verdicts: holds 1; "
                              "not enough data on digits")
    assert early.details == ("moons: steps OT − VP by seed 0: -100 (200 vs 300, W2 ≤ 0.15), "
                             "1: -100 (200 vs 300, W2 ≤ 0.17); mean -100, 95% interval "
                             "[-100, -100] (n = 2): holds",)
    md, page = report.markdown.read_text(), report.index.read_text()
    for claim in report.claims:
        assert f"**{claim.verdict.capitalize()}**: {claim.evidence}" in md
        assert html.escape(claim.evidence) in page
    assert STATISTICS in md and html.escape(STATISTICS) in page


def test_not_enough_data_without_the_pair_and_a_grid_inferred_from_runs(store, tmp_path):
    """A suite known by name only, with FM w/ OT alone: claims say so instead of guessing."""
    _, uri, suite, _ = store
    new_experiment(uri, "solo", tmp_path / "artifacts")
    path = tmp_path / "solo.yaml"
    path.write_text("name: solo\nmethods: [fm-ot]\ndatasets: [moons]\nseeds: [0, 1]\n")
    tracker = Tracker(uri, "solo")
    for trial in load_suite(path).trials():
        writer = TrialWriter.create(tracker, "solo", trial, "abc123def456")
        writer.start({"method": "fm-ot"}, record.placement_tags("node-a", "cpu", ""))
        metrics = {"nfe": 60.0 + trial.seed, "w2": 0.1}
        writer.log_evaluation(metrics, EvalResult(metrics), step=1, on_curve=False)
        writer.end(State.FINISHED)
    result = build_report("solo", uri, tmp_path / "out")
    assert [c.verdict for c in result.claims] == ["not enough data"] * 3
    assert all("FM w/ Diffusion (not in suite)" in c.statement for c in result.claims)
    assert result.status.complete and "inferred from the runs found" in result.status.banner()
    assert result.tables["comparison"].cell("FM w/ OT", "moons/nfe").value_text == "60.50 ± 0.71"
    assert result.logged_to is None and "no invocation run" in result.warnings[0]


# -- reading MLflow ---------------------------------------------------------------------------------

def _search_runs_frame(uri: str, experiment: str) -> pd.DataFrame:
    """What ``mlflow.search_runs`` returns for the suite's runs: the frame Store.runs must match."""
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment],
                                  filter_string=f"tags.`{record.SUITE}` = '{experiment}'",
                                  order_by=["attributes.start_time DESC"])
    finally:
        mlflow.set_tracking_uri(before)


@pytest.mark.parametrize("page", [7, 10_000], ids=["pages-of-7", "one-page"])
def test_runs_frame_is_what_mlflow_search_runs_returns(store, monkeypatch, page):
    _, uri, _, ids = store
    monkeypatch.setattr(collect, "PAGE", page)
    ours = collect.Store(uri, "reptest").runs("reptest")
    assert gc.isenabled()  # paused while reading, restored after
    assert len(ours) == len(ids) + 2 and ours["start_time"].is_monotonic_decreasing
    pd.testing.assert_frame_equal(ours, _search_runs_frame(uri, "reptest"), check_like=True)


def test_report_from_an_http_tracking_server_matches_the_sqlite_one(report, mlflow_uri, tmp_path,
                                                                   monkeypatch):
    """``fmbench report --tracking-uri http://...``: the same runs logged to an ``mlflow server``
    give the same tables, read in several pages."""
    _, suite, _ = fill_store(tmp_path, mlflow_uri)
    monkeypatch.setattr(collect, "PAGE", 10)
    ours = collect.Store(mlflow_uri, "reptest").runs("reptest")
    pd.testing.assert_frame_equal(ours, _search_runs_frame(mlflow_uri, "reptest"), check_like=True)
    remote = build_report(suite, mlflow_uri, tmp_path / "out")
    assert remote.status == report.status and remote.claims == report.claims
    for name in ("comparison", "claims", "cost"):
        assert remote.tables[name] == report.tables[name], name
    assert remote.logged_to and not remote.warnings


# -- files, self-containment, MLflow artifact, cost ------------------------------------------

def test_report_files_and_self_contained_page(report):
    out = report.out_dir
    for name in ("comparison", "claims", "cost", "provenance"):
        assert (out / f"{name}.csv").stat().st_size and (out / f"{name}.tex").stat().st_size
    md = report.markdown.read_text()
    pngs = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert len(pngs) == 4 + 14  # 2 datasets x 2 figures; 7 trials x (samples + trajectories)
    assert all((out / p).is_file() for p in pngs)
    page = report.index.read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 18 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing fetched from anywhere
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_report_is_logged_to_the_latest_invocation_run(report, store):
    _, uri, _, ids = store
    assert report.logged_to == ids["invocation-1"] and not report.warnings
    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(ids["invocation-1"], "report")}
    assert {"report/index.html", "report/report.md", "report/comparison.csv"} <= logged
    assert not client.list_artifacts(ids["invocation-0"], "report")


def test_cost_per_trial_and_total(report):
    rows = list(csv.DictReader(io.StringIO((report.out_dir / "cost.csv").read_text())))
    by = {(r["row_key"], r["key"]): r for r in rows}
    assert len({r["row_key"] for r in rows}) == 23 + 1  # runs (finished, failed, running) + total
    assert float(by["fm-ot-moons-s0", "wall_s"]["mean"]) == TRAIN_S + EVAL_S
    assert float(by["fm-ot-moons-s0", "accel_h"]["mean"]) == pytest.approx(TRAIN_S * 0.5 / 3600)
    assert by["fm-diffusion-moons-s2", "wall_s"]["text"] == "—"  # failed before any timing
    assert float(by["total", "wall_s"]["mean"]) == pytest.approx(20 * (TRAIN_S + EVAL_S))
    assert float(by["total", "accel_h"]["mean"]) == pytest.approx(20 * TRAIN_S * 0.5 / 3600)
    facts = {r["row_key"]: r["text"] for r in csv.DictReader(
        io.StringIO((report.out_dir / "provenance.csv").read_text()))}
    assert facts["Git commit (trials)"] == "abc123def456" and facts["Suite"] == "reptest"
    assert facts["Suite file"].endswith("reptest.yaml")


# -- a real browser -------------------------------------------------------------------------------


def test_index_renders_in_headless_chromium_with_every_image(report, tmp_path):
    """The page's load handler writes data-images="<images>/<failed>" on <html>; --dump-dom
    prints the DOM after it ran, and --enable-logging prints console messages to stderr."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
           "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000",
           "--dump-dom", report.index.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    marker = re.search(r'<html[^>]*data-images="(\d+)/(\d+)"', proc.stdout)
    assert marker, "the page's load handler did not run"
    assert marker.groups() == ("18", "0")  # every image decoded, none failed
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    assert 'id="table-comparison"' in proc.stdout and "FM w/ OT" in proc.stdout


# -- the command line -----------------------------------------------------------------------------

def test_cli_report_prints_the_index_path(store, tmp_path, capsys):
    tmp, uri, suite, _ = store
    out = tmp_path / "cli"
    assert main(["report", suite.path, "--tracking-uri", uri, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str((out / "index.html").resolve())
    assert "Incomplete: 20 of 24" in captured.err
    assert main(["report", "nosuch", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmbench: error: no MLflow experiment 'nosuch'") and "\n" not in err
    assert main(["report", suite.path, "--tracking-uri", uri, "--curve-seeds", "-1"]) == 2
    assert capsys.readouterr().err.strip() == \
        "fmbench: error: fmbench report: argument --curve-seeds: must be >= 0, got -1"
    assert main(["report", suite.path, "--tracking-uri", uri, "--out", str(out),
                 "--curve-seeds", "1"]) == 0
    assert "mean over the first 1 finished seed" in (out / "report.md").read_text()
