"""Sampling efficiency: W2 against NFE on the exact Gaussian field, and efficiency.csv and the
budget table of a report built from runs written through the real record writer with known
curves."""

from __future__ import annotations

import csv
import io

import pytest
import torch

from harness.core.analytic import GaussianData
from harness.core.evaluate import EvalConfig, evaluate_quality_curve
from harness.core.evaluation_types import ErrorPoint, EvalResult, QualityPoint
from harness.core.methods import build_method
from harness.datasets import Dataset
from harness.report import build_report
from harness.report.efficiency import COLUMNS, NOT_REACHED
from harness.run import record
from harness.run.record import State, TrialWriter
from harness.run.suite import load_suite
from harness.run.tracking import Tracker
from tests.helpers import new_experiment

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the evaluation: W2 against NFE on a field with no training error ----------------------------

def test_w2_against_nfe_approaches_the_dopri5_value_on_the_exact_field():
    """With the exact velocity of Gaussian data the only error is the solver's: Euler's W2 (and
    MMD) move toward dopri5's as the budget grows, from the same noise and held-out points."""
    data = GaussianData(mean=torch.tensor([1.0, -0.5]), std=0.5)
    gen = torch.Generator().manual_seed(1)
    ds = Dataset("gauss", train=data.mean + data.std * torch.randn(200, 2, generator=gen),
                 test=data.mean + data.std * torch.randn(200, 2, generator=gen))
    method = build_method("fm-ot")
    cfg = EvalConfig(quality_nfe_samples=200, batch_size=200, solvers=("euler",),
                     nfe_budgets=(2, 4, 8, 16, 32), curve_tols=(1e-2, 1e-5))
    points = evaluate_quality_curve(method, data.oracle(method), ds, cfg, "cpu")
    assert [(p.solver, p.tol, p.nfe) for p in points[:5]] == \
        [("euler", None, n) for n in (2, 4, 8, 16, 32)]
    assert [(p.solver, p.tol) for p in points[5:]] == [("dopri5", 1e-2), ("dopri5", 1e-5)]
    loose, tight = points[5], points[6]
    assert tight.nfe > loose.nfe  # a tighter tolerance costs more evaluations
    for metric in ("w2", "mmd"):
        # NFE 2, 4, 8: the solver's error dominates and shrinks; from 16 on the gap is at the
        # noise of 200 samples (about 3e-3 in W2), far below where it started
        gaps = [abs(p.values[metric] - tight.values[metric]) for p in points[:5]]
        assert gaps[0] > gaps[1] > gaps[2] > max(gaps[3:]), (metric, gaps)
        assert max(gaps[3:]) < 0.05 * gaps[0], (metric, gaps)
    assert tight.values["w2"] < 0.3  # the floor: 200 samples against 200 held-out points


# -- the report: efficiency.csv and the budget table ---------------------------------------------

SUITE = """\
name: efftest
methods: [fm-ot, fm-diffusion]
datasets: [moons]
seeds: [0, 1]
training: {steps: 50}
evaluation: {tol: 1e-5, quality_nfe_samples: 100, curve_tols: [1e-2, 1e-4]}
resources: {train: {cpus: 1, gpus: 0}, eval: {cpus: 1, gpus: 0}}
"""
# Seed-mean W2 per (method, solver): {budget or tolerance: (mean NFE, W2)}; seed 0 logs W2 - 0.01
# and NFE - 1 at dopri5 points, seed 1 W2 + 0.01 and NFE + 1, so the seed means are these.
W2 = {"fm-ot": {"euler": {4: (4, 0.50), 8: (8, 0.20), 16: (16, 0.125)},
                "midpoint": {4: (4, 0.30), 8: (8, 0.11)},
                "dopri5": {1e-2: (21, 0.135), 1e-4: (41, 0.105)}},
      "fm-diffusion": {"euler": {4: (4, 0.40), 8: (8, 0.30), 16: (16, 0.25)},
                       "dopri5": {1e-2: (30, 0.26), 1e-4: (60, 0.24)}}}
ERRORS = {4: 1e-2, 8: 1e-3, 16: 1e-4}


def _evaluation(method: str, seed: int) -> EvalResult:
    shift = -1 if seed == 0 else 1
    points = []
    for solver, curve in W2[method].items():
        for at, (nfe, w2) in curve.items():
            tol = at if solver == "dopri5" else None
            value = w2 + 0.01 * shift
            points.append(QualityPoint(solver, tol, nfe + (shift if tol else 0),
                                       {"w2": value, "mmd": value / 10}))
    errors = [ErrorPoint("midpoint", n, e * (seed + 1)) for n, e in ERRORS.items()]
    metrics = {"nll": 2.5, "w2": 0.2, "nfe": 50.0}
    return EvalResult(metrics, errors, quality_curve=points)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The suite and its store, every trial written through the real record writer."""
    tmp = tmp_path_factory.mktemp("eff")
    (tmp / "efftest.yaml").write_text(SUITE)
    suite = load_suite(tmp / "efftest.yaml")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    new_experiment(uri, "efftest", tmp / "artifacts")
    tracker = Tracker(uri, "efftest")
    for trial in suite.trials():
        writer = TrialWriter.create(tracker, "efftest", trial, "abc123")
        writer.start({"method": trial.method.name, "dataset": "moons", "seed": trial.seed},
                     record.placement_tags("node-a", "cpu", ""))
        evaluation = _evaluation(trial.method.name, trial.seed)
        writer.log_evaluation(evaluation.metrics, evaluation, step=50, on_curve=False)
        writer.end(State.FINISHED)
    return suite, uri, tmp


@pytest.fixture(scope="module")
def report(written):
    suite, uri, tmp = written
    return build_report(suite, uri, tmp / "out", log=False)


def _rows(report) -> list[dict]:
    text = (report.out_dir / "efficiency.csv").read_text()
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames) == COLUMNS
    return list(reader)


def test_efficiency_csv_has_every_point_of_every_seed(report):
    rows = _rows(report)
    # fm-ot: 7 W2 points, 7 MMD points, 3 error points; fm-diffusion: 5 + 5 + 3; two seeds each
    assert len(rows) == 2 * (17 + 13)
    assert {r["metric"] for r in rows} == {"w2", "mmd", "numerical_error"}
    assert {(r["method"], r["dataset"]) for r in rows} == {("fm-ot", "moons"),
                                                         ("fm-diffusion", "moons")}
    by = {(r["method"], r["seed"], r["solver"], r["tolerance"], r["nfe"], r["metric"]): r["value"]
          for r in rows}
    assert len(by) == len(rows)  # one row per seed and point
    assert float(by["fm-ot", "1", "dopri5", "0.0001", "42", "w2"]) == pytest.approx(0.115)
    assert float(by["fm-ot", "0", "dopri5", "0.01", "20", "mmd"]) == pytest.approx(0.0125)
    assert float(by["fm-diffusion", "0", "euler", "", "16", "w2"]) == pytest.approx(0.24)
    assert float(by["fm-diffusion", "1", "midpoint", "", "8", "numerical_error"]) == 2e-3
    assert all(r["tolerance"] == "" for r in rows if r["solver"] != "dopri5")
    assert all(r["tolerance"] in ("0.01", "0.0001") for r in rows if r["solver"] == "dopri5")


@pytest.mark.parametrize("per_cell,seeds,said", [(1, {"0"}, "the first 1 finished seed."),
                                                  (0, {"0", "1"}, "every finished seed.")])
def test_curve_seeds_bounds_the_seeds_read_and_every_caption_says_so(written, per_cell, seeds,
                                                                      said):
    suite, uri, tmp = written
    report = build_report(suite, uri, tmp / f"out-{per_cell}", log=False, curve_seeds=per_cell)
    assert {r["seed"] for r in _rows(report)} == seeds
    assert said in report.tables["budget"].caption
    page = report.markdown.read_text()  # the figures' captions
    assert f"Lines: mean over {said[:-1]};" in page and f"mean over {said}" in page


def test_budget_table_against_hand_computed_answers(report):
    """fm-ot's best seed-mean W2 is 0.105 (dopri5 at 1e-4), so it must reach 0.1155: Euler never
    does (0.125 at 16), midpoint at 8 (0.11), dopri5 at its 1e-4 point (mean NFE 41).
    fm-diffusion's best is 0.24, threshold 0.264: Euler at 16 (0.25), dopri5 at 1e-2 (NFE 30, 0.26);
    it has no midpoint curve."""
    table = report.tables["budget"]
    assert [c.key for c in table.columns] == ["moons/euler", "moons/midpoint", "moons/dopri5"]
    cell = lambda label, solver: table.cell(table.rows[table.row_keys.index(label)],  # noqa: E731
                                            f"moons/{solver}").value_text
    assert [cell("fm-ot", s) for s in ("euler", "midpoint", "dopri5")] == \
        [NOT_REACHED, "8", "41 (tol 0.0001)"]
    assert [cell("fm-diffusion", s) for s in ("euler", "midpoint", "dopri5")] == \
        ["16", "—", "30 (tol 0.01)"]
    assert "10%" in table.caption
    for ext in ("csv", "tex"):
        assert (report.out_dir / f"budget.{ext}").exists()
    assert "NFE budget" in report.markdown.read_text()
    assert "NFE budget" in report.index.read_text()


def test_efficiency_figure_draws_the_curves(report):
    figure = report.out_dir / "figures" / "efficiency-moons.png"
    assert figure.stat().st_size > 10_000
    md = report.markdown.read_text()
    assert "W2 and MMD² against NFE per solver" in md and "± one standard deviation" in md
