"""``fmbench plan SUITE --json``: one JSON document with every trial as a run resolves it, the
same keys as the text plan, data-dependent defaults named rather than computed, nothing loaded."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import harness.datasets
import harness.core.methods
import harness.run.trial
from harness.cli import main
from harness.run.plan import RUN_TIME
from harness.run.suite import load_suite
from tests.helpers import error_line

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "suites" / "paper-cifar10.yaml"


@pytest.fixture(autouse=True)
def no_data_no_gpu(monkeypatch):
    """Planning must not load a dataset, compute a data-dependent default or ask for a GPU."""
    def refuse(*args, **kwargs):
        raise AssertionError("plan --json touched data or the GPU")

    for module, name in ((harness.datasets, "load_dataset"), (harness.run.trial, "load_dataset"),
                         (harness.core.methods, "max_pairwise_distance"), (torch.cuda, "is_available"),
                         (torch.cuda, "init")):
        monkeypatch.setattr(module, name, refuse)


def _plan(capsys, path: Path) -> dict:
    assert main(["plan", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _plain(value):
    """A suite value as JSON gives it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def test_paper_cifar10_trials_as_the_suite_resolves_them(capsys):
    doc = _plan(capsys, CIFAR)
    suite = load_suite(CIFAR)
    assert doc["suite"] == suite.name and doc["trial_count"] == suite.size == len(doc["trials"])
    assert main(["plan", str(CIFAR)]) == 0
    text_keys = [line.split()[1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [t["key"] for t in doc["trials"]] == text_keys
    model, options = suite.models["image"]
    for t, trial in zip(doc["trials"], suite.trials()):
        assert (t["name"], t["method"], t["seed"]) == (trial.name, trial.method.name, trial.seed)
        assert t["train"]["lr"] == suite.training.lr
        assert t["train"]["batch_size"] == suite.training.batch_size
        assert t["train"]["precision"] == suite.training.precision
        assert t["model"] == model and t["model_options"] == _plain(options)
        for k in ("channels", "channel_mult", "num_res_blocks", "attention_resolutions",
                  "num_heads", "dropout"):
            assert t["model_options"][k] == _plain(options[k]), k
        for k in ("fid_mode", "fid_samples", "dequant_draws", "tol", "divergence"):
            assert t["eval"][k] == getattr(suite.evaluation, k), k
        assert t["eval"]["seed"] == t["train"]["seed"] == trial.seed
        assert t["resources"] == {"train": asdict(suite.train_resources),
                                  "eval": asdict(suite.eval_resources)}
        assert t["dataset"] == {"name": "cifar10", "kind": "image", "root": None, "download": True}
    ddpm = next(t for t in doc["trials"] if t["method"] == "ddpm")
    assert ddpm["method_options"] == {"beta_min": 0.1, "beta_max": 20.0, "eps": 1e-5}
    assert ddpm["method_constants"] == {"prediction": "epsilon", "path": "VPPath",
                                        "t_max": 1 - 1e-5, "prior_std": 1.0, "beta_min": 0.1,
                                        "beta_max": 20.0, "eps": 1e-5}
    ot = next(t for t in doc["trials"] if t["method"] == "fm-ot")
    assert ot["method_constants"]["path"] == "OTPath"
    assert ot["method_constants"]["sigma_min"] == 1e-4


def test_data_dependent_defaults_are_named_not_computed(tmp_path, capsys):
    suite = tmp_path / "ve.yaml"
    suite.write_text("name: ve\nmethods: [score-matching-ve, {name: score-matching-ve, label: set, "
                     "sigma_max: 7}]\ndatasets: [moons]\nseeds: [0, 1]\n")
    doc = _plan(capsys, suite)
    default, given = doc["trials"][0], doc["trials"][2]
    assert default["method_options"] == {"sigma_min": 0.01, "sigma_max": RUN_TIME}
    # prior_std is sigma_max: it moves with it, so it is not known before the data either
    assert {k for k, v in default["method_constants"].items() if v == RUN_TIME} == \
        {"sigma_max", "prior_std"}
    assert given["label"] == "set" and given["method_options"]["sigma_max"] == 7.0
    assert given["method_constants"]["prior_std"] == 7.0


def test_a_bad_suite_is_one_line_and_no_json(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmethods: [fm-ot]\ndatasets: [moons]\ntraining: {lr: -1}\n")
    assert main(["plan", str(bad), "--json"]) == 2
    assert "bad.yaml: training.lr:" in error_line(capsys)
    assert main(["plan", str(tmp_path / "missing.yaml"), "--json"]) == 2
    assert capsys.readouterr().out == ""
