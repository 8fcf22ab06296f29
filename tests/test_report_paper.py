"""A paper suite's comparison table sits beside the paper's Table 1: each cell shows the paper's
value and ours − paper, notes name the protocol settings the runs did not share with the paper,
and the CSV carries each cell's 95% Student-t interval of the mean over seeds. Other suites show
no paper values. The store is written through the record's writer, as fmbench writes it."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import replace

import pytest

from harness.core.evaluation_types import EvalResult
from harness.report import build_report, paper
from harness.report.collect import Store
from harness.report.formats import to_csv
from harness.report.grid import Plan, trial_frame
from harness.report.table import Cell
from harness.report.tables import comparison_table
from harness.run import record
from harness.run.record import State, TrialWriter
from harness.run.suite import load_suite
from harness.run.tracking import Tracker
from tests.helpers import new_experiment

SUITE = """\
name: paper-synthetic
methods: [ddpm, score-matching, scoreflow, fm-diffusion, fm-ot,
          {name: fm-ot, label: fm-ot-smin0.01, sigma_min: 0.01}]
datasets: [{name: cifar10, download: false}, digits]
seeds: [0, 1, 2]
training: {steps: 50}
resources: {train: {cpus: 1, gpus: 0}, eval: {cpus: 1, gpus: 0}}
"""
ROWS = ["DDPM", "Score Matching", "ScoreFlow", "FM w/ Diffusion", "FM w/ OT",
        "FM w/ OT (fm-ot-smin0.01)"]
# Final (bpd, fid, nfe) per seed on cifar10; scoreflow's seed 2 is still running.
CIFAR = {
    "ddpm": ([3.20, 3.24, 3.22], [9.0, 9.4, 9.2], [280, 290, 300]),
    "score-matching": ([3.30, 3.28, 3.26], [21.0, 22.0, 23.0], [250, 240, 260]),
    "scoreflow": ([3.10, 3.14], [20.0, 21.0], [430, 440]),
    "fm-diffusion": ([3.11, 3.13, 3.12], [8.0, 8.2, 8.4], [180, 190, 185]),
    "fm-ot": ([3.01, 3.05, 3.03], [6.30, 6.50, 6.40], [140, 150, 145]),
    "fm-ot-smin0.01": ([3.04, 3.06, 3.08], [6.2, 6.3, 6.4], [141, 142, 143]),
}
DIGITS = ([1.45, 1.47, 1.49], [7.2, 7.6, 7.4], [140, 142, 144])  # fm-ot only: bpd, fid, nfe
# What the runs record of the paper's protocol: K, steps and FID samples differ from it,
# pipeline, NFE samples, tolerance and batch size match it (cifar10, Table 3 / 4, App. E.2, §6).
EVAL = {"fid_samples": 10000, "fid_mode": "legacy_tensorflow", "samples": 50000,
        "dequant_draws": 1, "tol": 1e-05}
TRAIN = {"steps": 1000, "batch_size": 256}
T975 = {2: 4.302653, 1: 12.706205}  # t(0.975, n - 1) for n = 3, 2: any Student-t table
STEPS = ("cifar10 protocol differs from the paper: training steps 1k here, 391k in the paper "
         "(Table 3, Iterations)")
DRAWS = ("cifar10 protocol differs from the paper: dequantization draws K 1 here, 50 in the "
         "paper (Table 4: its largest K gives Table 1's bits/dim)")
FID_N = "cifar10 protocol differs from the paper: FID generated samples 10k here, 50k in the paper"


def _write(tracker: Tracker, suite_name: str, trial, values) -> None:
    writer = TrialWriter.create(tracker, suite_name, trial, "abc123def456")
    config = {"method": trial.method.name, "dataset": trial.dataset.name, "seed": trial.seed,
              "train": TRAIN, "eval": EVAL}
    writer.start(config, record.placement_tags("node-a", "cpu", ""))
    if values is None:  # still running
        return
    metrics = dict(zip(("bpd", "fid", "nfe"), values))
    writer.log_evaluation(metrics, EvalResult(metrics), step=TRAIN["steps"],
                          on_curve=False)
    writer.end(State.FINISHED)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report-paper")
    (tmp / "suite.yaml").write_text(SUITE)
    suite = load_suite(tmp / "suite.yaml")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    new_experiment(uri, suite.experiment, tmp / "artifacts")
    tracker = Tracker(uri, suite.experiment)
    for t in suite.trials():
        if t.dataset.name == "cifar10":
            per_seed = CIFAR[t.method.label]
            values = None if t.seed >= len(per_seed[0]) else [v[t.seed] for v in per_seed]
            _write(tracker, suite.name, t, values)
        elif t.method.label == "fm-ot":
            _write(tracker, suite.name, t, [v[t.seed] for v in DIGITS])
    return tmp, uri, suite


@pytest.fixture(scope="module")
def report(store):
    tmp, uri, suite = store
    return build_report(suite, uri, tmp / "out", log=False)


def test_data_file_holds_table_1_with_its_citation():
    data = json.loads(paper.DATA.read_text(encoding="utf-8"))
    assert "Lipman" in data["citation"] and "2210.02747" in data["citation"]
    assert "Table 1" in data["citation"]
    loaded = paper.load()
    methods = ["ddpm", "score-matching", "scoreflow", "fm-diffusion", "fm-ot"]
    assert {k[0] for k in loaded.values} == {"cifar10", "imagenet32", "imagenet64"}
    assert len(loaded.values) == 3 * 5 * 3  # every cell of Table 1 (left)
    # a few cells read against the paper's text, one per dataset and metric
    assert loaded.value("cifar10", "fm-ot", "bpd") == "2.99"
    assert loaded.value("cifar10", "scoreflow", "nfe") == "428"
    assert loaded.value("imagenet32", "fm-diffusion", "nfe") == "193"
    assert loaded.value("imagenet32", "scoreflow", "fid") == "14.14"
    assert loaded.value("imagenet64", "score-matching", "nfe") == "441"
    assert loaded.value("imagenet64", "fm-ot", "fid") == "14.45"
    for dataset in ("cifar10", "imagenet32", "imagenet64"):  # FM w/ OT best everywhere (§6.1)
        for metric in ("bpd", "fid", "nfe"):
            best = min(methods, key=lambda m: float(loaded.value(dataset, m, metric)))
            assert best == "fm-ot", (dataset, metric)


@pytest.mark.parametrize("name", ["paper-cifar10", "paper-imagenet32", "paper-imagenet64"])
def test_the_paper_suites_resolve_to_the_data_files_protocol(name):
    """The suites and the data file transcribe the same settings (checked against each other)."""
    suite = load_suite(f"suites/{name}.yaml")
    dataset = suite.datasets[0].name
    want = paper.load().settings[dataset]
    for trial in suite.iter_trials():
        spec = trial.spec
        got = {p: getattr(spec.eval if p.startswith("eval.") else spec.train, p.split(".")[1])
               for p in want}
        expected = dict(want, **{"eval.samples": got["eval.samples"]})  # 10k: the suites' cost
        assert got == expected, trial.name


def test_bad_data_file_is_one_line_naming_the_problem(tmp_path):
    bad = json.loads(paper.DATA.read_text(encoding="utf-8"))
    bad["datasets"]["cifar10"]["values"]["fm-ot"]["fid"] = "6,35"
    path = tmp_path / "table1.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(paper.PaperDataError, match=r"cifar10\.fm-ot\.fid: '6,35' is not a finite"):
        paper.load(path)


def _expected(method: str, metric: str) -> tuple[float, float | None, int]:
    values = CIFAR[method][("bpd", "fid", "nfe").index(metric)]
    return statistics.mean(values), statistics.stdev(values), len(values)


def test_cells_show_the_papers_value_and_the_difference(report):
    table = report.tables["comparison"]
    assert list(table.rows) == ROWS
    data = paper.load()
    for row, method in zip(ROWS, CIFAR):
        for metric, places in (("bpd", 2), ("fid", 2), ("nfe", 0)):
            cell = table.cell(row, f"cifar10/{metric}")
            if method == "fm-ot-smin0.01":  # a labelled variant: other options than the paper's
                assert cell.reference is None and cell.reference_text == ""
                continue
            printed = data.value("cifar10", method, metric)
            mean, _, _ = _expected(method, metric)
            assert cell.reference == printed
            assert cell.difference == pytest.approx(mean - float(printed))
            assert cell.reference_text == f"paper {printed}, {mean - float(printed):+.{places}f}"
    ot = table.cell("FM w/ OT", "cifar10/bpd")  # worked by hand: 3.03 - 2.99
    assert ot.reference_text == "paper 2.99, +0.04"
    assert table.cell("FM w/ OT", "cifar10/nfe").reference_text == "paper 142, +3"
    assert table.cell("DDPM", "cifar10/fid").reference_text == "paper 7.48, +1.72"
    md = report.markdown.read_text()
    assert "| FM w/ OT | **3.03 ± 0.02** (n=3) · paper 2.99, +0.04<sup>" in md
    assert "· paper 2.99, +0.04" in report.index.read_text()
    assert r"$\cdot$ paper 2.99, +0.04" in (report.out_dir / "comparison.tex").read_text()
    for row in ROWS:  # digits is not in the paper
        for column in ("digits/bpd", "digits/fid", "digits/nfe"):
            assert table.cell(row, column).reference is None
    assert "Lipman" in table.caption and "ours − paper" in table.caption


def test_protocol_differences_are_footnoted_on_the_cells_they_move(report):
    table = report.tables["comparison"]
    number = {text: k for k, text in enumerate(table.footnotes, 1)}
    steps, draws = number[STEPS], number[DRAWS]
    fid_n = next(k for text, k in number.items() if text.startswith(FID_N))
    assert not any("pipeline" in t or "NFE samples" in t or "batch size" in t or "atol" in t
                   for t in table.footnotes)  # the settings the runs share with the paper
    ot = "FM w/ OT"
    assert table.cell(ot, "cifar10/bpd").notes == tuple(sorted((steps, draws)))
    assert table.cell(ot, "cifar10/fid").notes == tuple(sorted((steps, fid_n)))
    assert table.cell(ot, "cifar10/nfe").notes == (steps,)
    assert table.cell(ot, "digits/bpd").notes == ()
    unfinished = number["ScoreFlow on cifar10, seed 2: still running or queued"]
    assert table.cell("ScoreFlow", "cifar10/nfe").notes == tuple(sorted((unfinished, steps)))
    assert STEPS in report.markdown.read_text()


def test_csv_has_the_student_t_interval_and_the_papers_value(report):
    rows = list(csv.DictReader(io.StringIO((report.out_dir / "comparison.csv").read_text())))
    by = {(r["row_key"], r["key"]): r for r in rows}
    for method in CIFAR:
        for metric in ("bpd", "fid", "nfe"):
            r = by[method, f"cifar10/{metric}"]
            mean, std, n = _expected(method, metric)
            half = T975[n - 1] * std / math.sqrt(n)  # mean ± t(0.975, n - 1) s / √n
            assert float(r["ci95_low"]) == pytest.approx(mean - half, rel=1e-6)
            assert float(r["ci95_high"]) == pytest.approx(mean + half, rel=1e-6)
            printed = paper.load().value("cifar10", method, metric)
            assert r["paper"] == (printed or "")
            if printed:
                assert float(r["paper_diff"]) == pytest.approx(mean - float(printed))
    lone = Cell(3.0, None, 1)  # one seed: no interval
    assert lone.interval is None
    assert Cell(reference="2.99").reference_text == "paper 2.99"  # no result yet: no difference
    assert Cell(2.994, 0.01, 2, reference="2.99").reference_text == "paper 2.99, +0.00"  # not -0
    assert Cell(2.986, 0.01, 2, reference="2.99").reference_text == "paper 2.99, +0.00"
    # by hand: 3.03 ± 4.302653 · 0.02 / √3 = 3.03 ± 0.049683
    assert float(by["fm-ot", "cifar10/bpd"]["ci95_low"]) == pytest.approx(2.980317, abs=1e-6)
    assert float(by["fm-ot", "cifar10/bpd"]["ci95_high"]) == pytest.approx(3.079683, abs=1e-6)
    assert by["ddpm", "digits/bpd"]["ci95_low"] == "" and by["ddpm", "digits/bpd"]["paper"] == ""


def test_interval_of_a_hand_worked_cell():
    """n = 2, s = 0.25: 2.5 ± 12.706205 · 0.25 / √2 = 2.5 ± 2.246161."""
    low, high = Cell(2.5, 0.25, 2).interval
    assert (low, high) == (pytest.approx(0.253839, abs=1e-6), pytest.approx(4.746161, abs=1e-6))
    line = to_csv(replace(_one_cell_table(), cells=((Cell(2.5, 0.25, 2),),))).splitlines()[1]
    assert line.split(",")[-4:-2] == [repr(low), repr(high)]


def _one_cell_table():
    from harness.report.table import Column, Table

    return Table("t", "T", "Method", ("A",), (Column("d/x", "X"),), ((Cell(),),))


def test_other_suites_show_no_paper_values(store):
    """The same runs read as a suite not named paper-*: no paper values, notes or caption."""
    tmp, uri, suite = store
    plan = Plan.from_suite(suite)
    frame, _ = trial_frame(plan, Store(uri, suite.experiment).runs(suite.name))
    mine = comparison_table(replace(plan, suite="cifar-mine"), frame)
    ours = comparison_table(plan, frame)
    assert all(c.reference is None for row in mine.cells for c in row)
    assert not any("paper" in t for t in mine.footnotes) and "paper" not in mine.caption
    assert [[c.value_text for c in row] for row in mine.cells] == \
        [[c.value_text for c in row] for row in ours.cells]
    lines = list(csv.DictReader(io.StringIO(to_csv(mine))))
    assert {r["paper"] for r in lines} == {r["paper_diff"] for r in lines} == {""}
