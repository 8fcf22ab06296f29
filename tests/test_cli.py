"""The command line: list, a real trial end to end, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from harness.cli import main
from harness.datasets import DATASETS
from harness.core.methods import METHODS


def test_list_json_names_every_component(capsys):
    assert main(["list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in out["methods"]] == METHODS.names()
    assert [d["name"] for d in out["datasets"]] == DATASETS.names()
    assert {"mlp", "unet"} <= {m["name"] for m in out["models"]}
    assert {"dopri5", "euler", "midpoint", "rk4"} == {s["name"] for s in out["solvers"]}
    assert {"nfe", "nll", "bpd", "w2", "mmd"} <= {m["name"] for m in out["metrics"]}


def test_trial_json_end_to_end(tmp_path):
    """The installed console script trains, evaluates (quality-vs-NFE curves included) and prints
    one JSON object on stdout."""
    cmd = ["fmbench", "trial", "--method", "rectified-flow", "--dataset", "moons", "--steps", "150",
           "--batch-size", "64", "--samples", "200", "--nll-samples", "100", "--error-samples", "32",
           "--nfe-budgets", "4", "8", "--quality-nfe-samples", "50", "--curve-tols", "1e-2", "1e-3",
           "--device", "cpu", "--out", str(tmp_path), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert (payload["method"], payload["dataset"], payload["seed"], payload["steps"]) == \
        ("rectified-flow", "moons", 0, 150)
    metrics = payload["metrics"]
    for key in ("nfe", "nll", "w2", "mmd"):
        assert isinstance(metrics[key], float)
    assert metrics["nfe"] >= 6 and metrics["w2"] > 0
    assert {p["solver"] for p in payload["error_vs_nfe"]} == {"euler", "midpoint", "rk4"}
    curve = payload["quality_vs_nfe"]  # fixed-step solvers at each budget, dopri5 at each tol
    assert sorted((p["solver"], p["nfe"]) for p in curve if p["tol"] is None) == \
        [(s, b) for s in ("euler", "midpoint", "rk4") for b in (4, 8)]
    assert sorted(p["tol"] for p in curve if p["solver"] == "dopri5") == [1e-3, 1e-2]
    assert all(set(p["values"]) == {"w2", "mmd"} for p in curve)
    assert "train rectified-flow-moons-s0" in proc.stderr  # the progress bar
    trial_dir = tmp_path / "rectified-flow-moons-s0"
    config = json.loads((trial_dir / "config.json").read_text())
    assert config["method_constants"]["sigma_min"] == 0.0 and config["train"]["steps"] == 150
    assert (trial_dir / "checkpoint.pt").exists() and (trial_dir / "result.json").exists()


def test_image_trial_reports_bits_per_dim(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FMBENCH_CACHE", str(tmp_path / "cache"))
    code = main(["trial", "--method", "fm-ot", "--dataset", "digits", "--steps", "20",
                 "--batch-size", "16", "--samples", "16", "--nll-samples", "8",
                 "--dequant-draws", "2", "--tol", "1e-3", "--error-samples", "2",
                 "--nfe-budgets", "4", "8", "--fid-samples", "32", "--fid-features", "classifier", "--device", "cpu", "--out",
                 str(tmp_path), "--json"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert "bpd" in metrics and "nll" not in metrics and "w2" not in metrics
    assert metrics["fid_classifier"] > 0
    assert 0 < metrics["bpd"] < 20


BAD = [
    (["--method", "fm-sb", "--dataset", "moons"], "unknown method 'fm-sb'; valid: ddpm"),
    (["--method", "fm-ot", "--dataset", "swissroll"], "unknown dataset 'swissroll'; valid:"),
    (["--method", "fm-ot", "--dataset", "moons", "--steps", "0"], "--steps: must be > 0"),
    (["--method", "fm-ot", "--dataset", "moons", "--steps", "ten"], "expected a int"),
    (["--method", "fm-ot", "--dataset", "moons", "--tol", "0"], "--tol: must be > 0"),
    (["--method", "fm-ot", "--dataset", "moons", "--tol=-1e-5"], "--tol: must be > 0"),
    (["--method", "fm-ot", "--dataset", "moons", "--sigma-min", "1.5"], "sigma_min must be in [0, 1)"),
    (["--method", "fm-ot", "--dataset", "moons", "--sigma-min", "-0.1"], "sigma_min must be in [0, 1)"),
    (["--method", "ddpm", "--dataset", "moons", "--sigma-min", "0.1"], "no option 'sigma_min'"),
    (["--method", "fm-ot", "--dataset", "cifar10", "--data-root", "/nonexistent/data"],
     "data root /nonexistent/data does not exist"),
    (["--method", "fm-ot", "--dataset", "mnist", "--data-root", "{tmp}", "--no-download"],
     "MNIST"),
    (["--method", "fm-ot", "--dataset", "moons", "--device", "tpu"], "unknown device 'tpu'"),
    (["--method", "fm-ot"], "required: --dataset"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_without_traceback(argv, message, capsys, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["trial", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmbench: error: ") and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_console_script_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "trial", "--method", "nope",
                           "--dataset", "moons"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"fmbench: error: unknown method 'nope'; valid: {', '.join(METHODS.names())}"]
