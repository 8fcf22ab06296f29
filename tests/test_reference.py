"""The drift check: reference intervals are right, and a moved metric fails the check.

The quick form of ``benchmarks/reference.py check`` runs here against the committed reference
(every method on 8gaussians, first seed); the full form is ``python benchmarks/reference.py check``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys

import pytest

from tests.test_benchmarks_training import ROOT, run_script

spec = importlib.util.spec_from_file_location("reference", ROOT / "benchmarks" / "reference.py")
reference = importlib.util.module_from_spec(spec)
sys.modules["reference"] = reference  # dataclasses look their module up while the class is built
spec.loader.exec_module(reference)

COMMITTED = ROOT / reference.REFERENCE


def test_intervals_are_student_t_over_seeds():
    values = [1.0, 2.0, 4.0, 3.0, 5.0]
    s = reference.summarize(values)
    sd = statistics.stdev(values)  # sqrt(2.5)
    q = 2.7764451051977987  # t_{0.975, 4}
    assert s["mean"] == 3.0 and s["std"] == pytest.approx(math.sqrt(2.5))
    assert s["ci95"] == pytest.approx([3 - q * sd / math.sqrt(5), 3 + q * sd / math.sqrt(5)])
    assert s["pi95"] == pytest.approx([3 - q * sd * math.sqrt(1.2), 3 + q * sd * math.sqrt(1.2)])
    assert reference.summarize([2.0])["ci95"] is None


def test_compare_holds_a_mean_to_the_ci_and_a_seed_to_the_prediction_interval():
    cell = {"method": "m", "dataset": "d", "seeds": [0, 1, 2, 3, 4],
            **{k: reference.summarize([100.0, 110.0, 120.0, 130.0, 140.0])
               for k in reference.METRICS}}
    ref = {"cells": [cell]}
    full_ok = {("m", "d"): {s: {k: 121.0 for k in reference.METRICS} for s in range(5)}}
    assert all(r["ok"] and r["form"] == "mean" for r in reference.compare(ref, full_ok))
    # A mean off by 30 (outside the CI, 120 +- 19.6) drifts though every seed would pass the PI.
    full_off = {("m", "d"): {s: {k: 150.0 for k in reference.METRICS} for s in range(5)}}
    assert not any(r["ok"] for r in reference.compare(ref, full_off))
    one_seed = {("m", "d"): {0: {"nfe": 150.0, "nll": 175.0, "w2": 60.0}}}
    ok = {r["metric"]: r["ok"] for r in reference.compare(ref, one_seed)}
    assert ok == {"nfe": True, "nll": False, "w2": False}  # PI is 120 +- 48.7


def test_an_nfe_interval_is_at_least_one_dopri5_step_wide():
    """Every seed gave 32: one more step (38) elsewhere is rounding, two more (44) is drift."""
    cell = {"method": "m", "dataset": "d", "seeds": [0, 1, 2],
            **{k: reference.summarize([32.0, 32.0, 32.0]) for k in reference.METRICS}}
    rows = reference.compare({"cells": [cell]},
                             {("m", "d"): {0: {"nfe": 38.0, "nll": 32.0, "w2": 32.0}}})
    assert [r["ok"] for r in rows] == [True, True, True]
    rows = reference.compare({"cells": [cell]},
                             {("m", "d"): {0: {"nfe": 44.0, "nll": 32.0, "w2": 32.001}}})
    assert [r["ok"] for r in rows] == [False, True, False]


def test_committed_reference_has_every_method_and_dataset_over_five_seeds():
    from harness.core.methods import METHODS
    from harness.run.suite import load_suite

    ref = json.loads(COMMITTED.read_text())
    suite = load_suite(ref["suite"])
    assert {(c["method"], c["dataset"]) for c in ref["cells"]} == \
        {(m, d.name) for m in METHODS.names() for d in suite.datasets}
    for c in ref["cells"]:
        assert len(c["seeds"]) >= 5
        for k in reference.METRICS:
            assert c[k]["ci95"][0] <= c[k]["mean"] <= c[k]["ci95"][1]
    assert ref["command"].startswith("python benchmarks/reference.py make")


def test_quick_check_passes_on_the_committed_reference():
    proc = run_script("benchmarks/reference.py", "check", "--quick", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("SUMMARY reference: ")]
    assert len(summary) == 1 and "within their 95% intervals" in summary[0], proc.stdout[-2000:]


def test_a_moved_metric_fails_the_check(tmp_path):
    ref = json.loads(COMMITTED.read_text())
    cell = next(c for c in ref["cells"] if (c["method"], c["dataset"]) == ("fm-ot", "8gaussians"))
    mean = cell["nfe"]["mean"]
    cell["nfe"].update(mean=3 * mean, pi95=[2.5 * mean, 3.5 * mean])  # as if NFE had been 3x
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(ref))
    proc = run_script("benchmarks/reference.py", "check", "--quick", "--methods", "fm-ot",
                      "--reference", str(moved), timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "drift in fm-ot/8gaussians nfe" in proc.stdout


def test_a_reference_made_with_other_settings_is_refused(tmp_path):
    ref = json.loads(COMMITTED.read_text())
    for c in ref["cells"]:
        c["settings_sha256"] = "0" * 16  # as if the suite's steps had changed since
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(ref))
    proc = run_script("benchmarks/reference.py", "check", "--quick", "--reference", str(stale))
    assert proc.returncode == 2
    assert "settings differ" in proc.stderr and "regenerate it with: python benchmarks/reference.py make" \
        in proc.stderr
