"""Suite files: the smoke suite's grid and keys, include semantics, and one-line errors for every
kind of malformed file (file name, field path and problem in the message)."""

import os
from dataclasses import replace
from pathlib import Path

import pytest

from harness.datasets import DATASETS
from harness.core.methods import METHODS
from harness.run.suite import SuiteError, load_suite, trial_key

SUITES = Path(__file__).resolve().parents[1] / "suites"

MINIMAL = "name: t\nmethods: [fm-ot]\ndatasets: [8gaussians]\nseeds: [0]\n"


def write(tmp_path, text, name="suite.yaml"):
    path = tmp_path / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


def error(path):
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def one_key(tmp_path, extra, name="s.yaml"):
    """The key of MINIMAL's one trial with the top-level sections in ``extra`` set or replaced."""
    keys = {line.split(":")[0] for line in extra.splitlines() if line and not line[0].isspace()}
    kept = "".join(line for line in MINIMAL.splitlines(True) if line.split(":")[0] not in keys)
    [trial] = load_suite(write(tmp_path, kept + extra, name)).trials()
    return trial.key


# -- the smoke suite -----------------------------------------------------------------------------

def test_smoke_suite_is_table_1s_methods_on_two_datasets_and_three_seeds():
    suite = load_suite(SUITES / "smoke.yaml")
    trials = suite.trials()
    assert len(trials) == 5 * 2 * 3 and suite.seeds == (0, 1, 2)  # paired seeds for the claims
    assert len({t.key for t in trials}) == len(trials)
    # The paper's Table 1 rows (Lipman et al. 2022), in its order; the claims compare the last two.
    assert [t.method.name for t in trials[::6]] == ["ddpm", "score-matching", "scoreflow",
                                                   "fm-diffusion", "fm-ot"]
    assert {t.dataset.name for t in trials} == {"8gaussians", "moons"}
    assert [t.name for t in trials[:4]] == ["ddpm-8gaussians-s0", "ddpm-8gaussians-s1",
                                            "ddpm-8gaussians-s2", "ddpm-moons-s0"]
    assert all(len(t.key) == 16 and int(t.key, 16) >= 0 for t in trials)
    assert suite.experiment == "smoke" and suite.tracking_uri is None
    assert suite.checkpoint_root == "~/.cache/fmbench/checkpoints"  # expanded at use, not at load
    # values from the included base survive where smoke.yaml does not override them
    assert suite.evaluation.divergence == "exact" and suite.training.steps == 300
    t = trials[0]
    assert t.spec.model == "mlp" and t.spec.train.seed == t.seed == t.spec.eval.seed
    assert t.train_resources.cpus == 1 and t.train_resources.gpus == 0


def test_keys_are_stable_across_loads():
    first = [t.key for t in load_suite(SUITES / "smoke.yaml").trials()]
    assert first == [t.key for t in load_suite(SUITES / "smoke.yaml").trials()]


@pytest.mark.parametrize("extra", [
    "training: {lr: 0.002}\n", "training: {steps: 2001}\n", "training: {ema_decay: 0.99}\n",
    "evaluation: {tol: 0.0001}\n", "evaluation: {batch_size: 100}\n",
    "model: {vector: {hidden: 128}}\n",
])
def test_key_changes_with_science(tmp_path, extra):
    assert one_key(tmp_path, extra) != one_key(tmp_path, "", "base.yaml")


def test_key_changes_with_method_option_seed_and_dataset(tmp_path):
    base = load_suite(write(tmp_path, MINIMAL)).trials()[0].spec
    assert trial_key(replace(base, method_options={"sigma_min": 0.01})) != trial_key(base)
    assert trial_key(replace(base, seed=1)) != trial_key(base)
    assert trial_key(replace(base, dataset="moons")) != trial_key(base)


@pytest.mark.parametrize("extra", [
    "training: {checkpoint_every: 7, log_every: 3}\n",
    "datasets: [{name: 8gaussians, root: /elsewhere, download: false}]\n",
    "model: {vector: {name: mlp, hidden: 256, depth: 3, activation: silu}}\n",  # defaults spelt out
    "resources: {train: {cpus: 2, gpus: 0.5}}\ntracking: {experiment: other}\n",
    "evaluation: {shard_size: 3000}\n",
    "resources: {train: {workers: 4, cpus: 2}}\n",
    "training: {compile: true, fused_adam: true, pin_memory: true, channels_last: true}\n",
])
def test_key_ignores_what_cannot_change_results(tmp_path, extra):
    assert one_key(tmp_path, extra) == one_key(tmp_path, "", "base.yaml")


def test_a_field_checked_with_another_sees_the_suite_value(tmp_path):
    """shard_size must be a multiple of the suite's batch_size, not of the default one."""
    ok = "evaluation: {batch_size: 500, shard_size: 1500}\n"
    assert one_key(tmp_path, ok) == one_key(tmp_path, "evaluation: {batch_size: 500}\n", "b.yaml")
    message = error(write(tmp_path, MINIMAL + "evaluation: {batch_size: 500, shard_size: 1700}\n"))
    assert ": evaluation.shard_size: " in message and "batch_size=500, got 1700" in message


def test_workers_per_dataset_override_the_suite(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL.replace("[8gaussians]", "[8gaussians, {name: moons, "
                             "workers: 4}]") + "resources: {train: {workers: 2, cpus: 3}}\n"))
    workers = {t.dataset.name: t.train_resources for t in suite.trials()}
    assert workers["8gaussians"].workers == 2 and workers["moons"].workers == 4
    assert workers["moons"].cpus == 3  # per worker
    assert suite.eval_resources.workers == 1


def test_labels_tell_apart_one_method_with_different_options(tmp_path):
    suite = load_suite(write(tmp_path, "name: t\nmethods: [fm-ot, {name: fm-ot, label: "
                                       "fm-ot-smin0.01, sigma_min: 0.01}]\ndatasets: [moons]\n"
                                       "seeds: 2\n"))
    names = [t.name for t in suite.trials()]
    assert names == ["fm-ot-moons-s0", "fm-ot-moons-s1", "fm-ot-smin0.01-moons-s0",
                     "fm-ot-smin0.01-moons-s1"]
    assert suite.trials()[2].spec.method_options == {"sigma_min": 0.01}


def test_yaml_exponent_floats_are_numbers(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL + "training: {lr: 3e-4, steps: 1e3}\n"))
    assert suite.training.lr == 3e-4 and suite.training.steps == 1000


# -- include -------------------------------------------------------------------------------------

def test_include_overrides_mappings_and_replaces_lists(tmp_path):
    write(tmp_path, "name: base\nmethods: [fm-ot, ddpm]\ndatasets: [moons]\n"
                    "training: {steps: 50, lr: 0.002}\nevaluation: {nfe_budgets: [4, 8]}\n",
          "base.yaml")
    suite = load_suite(write(tmp_path, "name: child\ninclude: base.yaml\nmethods: [ddpm]\n"
                                       "training: {steps: 60}\nevaluation: {nfe_budgets: [16]}\n"))
    assert suite.name == "child" and [m.name for m in suite.methods] == ["ddpm"]
    assert suite.training.steps == 60 and suite.training.lr == 0.002
    assert suite.evaluation.nfe_budgets == (16,)
    assert "include" not in suite.source and suite.source["training"] == {"steps": 60, "lr": 0.002}


def test_includes_chain_through_subfolders(tmp_path):
    (tmp_path / "common").mkdir()
    write(tmp_path, "training: {steps: 10, batch_size: 8}\nseeds: [3]\n", "common/root.yaml")
    write(tmp_path, "include: root.yaml\ntraining: {batch_size: 16}\ndatasets: [moons]\n",
          "common/mid.yaml")
    suite = load_suite(write(tmp_path, "name: leaf\ninclude: common/mid.yaml\nmethods: [fm-ot]\n"))
    assert (suite.training.steps, suite.training.batch_size, suite.seeds) == (10, 16, (3,))
    assert [d.name for d in suite.datasets] == ["moons"]


def test_error_in_included_file_names_that_file(tmp_path):
    write(tmp_path, "training: {steps: -5}\n", "base.yaml")
    message = error(write(tmp_path, "include: base.yaml\n" + MINIMAL))
    assert "base.yaml: training.steps: must be > 0, got -5" in message


# -- malformed suites ----------------------------------------------------------------------------

def _replace(old, new):
    return MINIMAL.replace(old, new)


BAD = {  # id: (file text, field path, problem fragment)
    "unknown top-level key": (MINIMAL + "trainig: {steps: 5}\n", "trainig",
                              "did you mean 'training'"),
    "unknown nested key": (MINIMAL + "training: {stpes: 5}\n", "training.stpes", "valid: steps"),
    "wrong type": (MINIMAL + "training: {lr: fast}\n", "training.lr", "must be a number"),
    "bool as int": (MINIMAL + "training: {steps: true}\n", "training.steps", "must be an integer"),
    "bool as float": (MINIMAL + "evaluation: {tol: false}\n", "evaluation.tol", "must be a number"),
    "unknown method": (_replace("[fm-ot]", "[fm-ot, fm-typo]"), "methods[1]",
                       "valid: " + ", ".join(METHODS.names())),
    "unknown dataset": (_replace("[8gaussians]", "[{name: cifar100}]"), "datasets[0].name",
                        "valid: " + ", ".join(DATASETS.names())),
    "unknown dataset key": (_replace("[8gaussians]", "[{name: moons, path: /x}]"),
                            "datasets[0].path", "valid: name, root, download, workers"),
    "unknown method option": (_replace("[fm-ot]", "[{name: fm-ot, beta_max: 3}]"),
                              "methods[0].beta_max", "valid: name, label, sigma_min"),
    "bad method option value": (_replace("[fm-ot]", "[{name: fm-ot, sigma_min: 2}]"),
                                "methods[0].sigma_min", "must be in [0, 1)"),
    "unknown model option": (MINIMAL + "model: {vector: {widht: 3}}\n", "model.vector.widht",
                             "valid: name, hidden"),
    "unknown model kind": (MINIMAL + "model: {audio: {name: mlp}}\n", "model.audio",
                           "valid: vector, image"),
    "model of the wrong kind": (MINIMAL + "model: {vector: {name: unet}}\n", "model.vector.name",
                                "for image data"),
    "negative steps": (MINIMAL + "training: {steps: -5}\n", "training.steps",
                       "must be > 0, got -5"),
    "zero batch size": (MINIMAL + "training: {batch_size: 0}\n", "training.batch_size",
                        "must be > 0"),
    "ema_decay 1.0": (MINIMAL + "training: {ema_decay: 1.0}\n", "training.ema_decay",
                      "must be in [0, 1)"),
    "bad precision": (MINIMAL + "training: {precision: fp16}\n", "training.precision",
                      "valid: fp32, bf16"),
    "seed set in training": (MINIMAL + "training: {seed: 3}\n", "training.seed", "unknown key"),
    "tol 0": (MINIMAL + "evaluation: {tol: 0}\n", "evaluation.tol", "must be > 0"),
    "solvers with dopri5": (MINIMAL + "evaluation: {solvers: [euler, dopri5]}\n",
                            "evaluation.solvers[1]", "adaptive"),
    "unknown solver": (MINIMAL + "evaluation: {solvers: [heun]}\n", "evaluation.solvers[0]",
                       "valid: dopri5"),
    "unknown divergence": (MINIMAL + "evaluation: {divergence: trace}\n", "evaluation.divergence",
                           "valid: auto, exact, hutchinson"),
    "fractional seed": (_replace("[0]", "[0, 1.5]"), "seeds[1]", "must be an integer"),
    "negative seed": (_replace("[0]", "[-1]"), "seeds[0]", "non-negative"),
    "duplicate seed": (_replace("[0]", "[2, 2]"), "seeds[1]", "duplicate seed 2"),
    "empty methods": (_replace("[fm-ot]", "[]"), "methods", "is empty"),
    "empty datasets": (_replace("[8gaussians]", "[]"), "datasets", "is empty"),
    "empty seeds": (_replace("[0]", "[]"), "seeds", "is empty"),
    "zero seeds": (_replace("[0]", "0"), "seeds", "must be in 1..1000"),
    "missing methods": (MINIMAL.replace("methods: [fm-ot]\n", ""), "methods", "missing"),
    "duplicate labels": (_replace("[fm-ot]", "[{name: fm-ot, label: a}, {name: ddpm, label: a}]"),
                         "methods[1]", "duplicate label 'a'"),
    "identical entries": (_replace("[fm-ot]", "[fm-ot, {name: fm-ot, label: again}]"),
                          "methods[1]", "identical"),
    "duplicate dataset": (_replace("[8gaussians]", "[moons, moons]"), "datasets[1]", "duplicate"),
    "huge steps as float": (MINIMAL + "training: {steps: 1e400}\n", "training.steps",
                            "reasonable integer"),
    "huge steps as int": (MINIMAL + f"training: {{steps: {10**30}}}\n", "training.steps",
                          "reasonable integer"),
    "workers not splitting the batch": (MINIMAL + "resources: {train: {workers: 3}}\n",
                                        "resources.train.workers", "must be divisible by the 3 training workers"),
    "zero workers on a dataset": (_replace("[8gaussians]", "[{name: moons, workers: 0}]"),
                                  "datasets[0].workers", "must be in 1..1024"),
    "shared GPU with workers": (MINIMAL + "resources: {train: {workers: 2, gpus: 0.5}}\n",
                                "resources.train.gpus", "must be whole with 2 workers"),
    "workers for evaluation": (MINIMAL + "resources: {eval: {workers: 2}}\n",
                               "resources.eval.workers", "valid: cpus, gpus"),
    "negative gpus": (MINIMAL + "resources: {train: {gpus: -1}}\n", "resources.train.gpus",
                      "must be >= 0"),
    "zero cpus": (MINIMAL + "resources: {eval: {cpus: 0}}\n", "resources.eval.cpus", "must be > 0"),
    "fractional gpus above one": (MINIMAL + "resources: {train: {gpus: 1.5}}\n",
                                  "resources.train.gpus", "whole number"),
    "missing name": (MINIMAL.replace("name: t\n", ""), "name", "missing"),
    "bad name characters": (MINIMAL.replace("name: t", "name: My Suite!"), "name", "[a-z0-9_-]"),
    "section not a mapping": (MINIMAL + "training: [steps, 5]\n", "training", "must be a mapping"),
    "duplicate key": (MINIMAL + "training:\n  steps: 5\n  steps: 6\n", "line 7, column 3",
                      "duplicate key"),
    "invalid YAML": (MINIMAL + "training: {steps: 5\n", "line 6, column 1", "invalid YAML"),
    "empty file": ("", "(file)", "empty file"),
    "comments only": ("# nothing here\n", "(file)", "empty file"),
    "top level a list": ("- fm-ot\n- ddpm\n", "(top level)", "must be a mapping"),
    "non-UTF-8 bytes": (b"name: t\nmethods: [fm-ot]\ndescription: caf\xe9\n", "line 3",
                        "not UTF-8"),
    "missing include": ("include: nowhere.yaml\n" + MINIMAL, "include",
                        "nowhere.yaml does not exist"),
    "self-include": ("include: suite.yaml\n" + MINIMAL, "include", "include cycle"),
    "include not a path": ("include: [a.yaml]\n" + MINIMAL, "include", "must be a file path"),
}


@pytest.mark.parametrize("text, where, problem", BAD.values(), ids=BAD.keys())
def test_malformed_suite_is_one_line_naming_file_field_and_problem(tmp_path, text, where, problem):
    message = error(write(tmp_path, text))
    assert message.startswith(str(tmp_path / "suite.yaml") + ": "), message
    assert f": {where}: " in message, message
    assert problem in message, message


# -- names that become paths (report folders, sample and trial folders) --------------------------

def _tracking(experiment: str) -> str:
    return MINIMAL + f"tracking: {{experiment: {experiment}}}\n"


BAD_NAMES = {  # id: (file text, field path, problem fragment)
    "experiment ..": (_tracking('".."'), "tracking.experiment", "is not a name"),
    "experiment .": (_tracking('"."'), "tracking.experiment", "is not a name"),
    "experiment with a slash": (_tracking("../../x"), "tracking.experiment", "must not contain /"),
    "experiment with a backslash": (_tracking(r'"a\\b"'), "tracking.experiment",
                                    "must not contain /"),
    "experiment with a tab": (_tracking(r'"a\tb"'), "tracking.experiment", "U+0009"),
    "experiment with a newline": (_tracking(r'"a\nb"'), "tracking.experiment", "U+000A"),
    "experiment with a bidi override": (_tracking(r'"a\u202Eb"'), "tracking.experiment",
                                        "U+202E"),
    "experiment empty": (_tracking('""'), "tracking.experiment", "non-empty string"),
    "experiment padded": (_tracking('" x"'), "tracking.experiment", "whitespace"),
    "experiment too long": (_tracking("x" * 201), "tracking.experiment", "201 characters"),
    "label ..": (_replace("[fm-ot]", '[{name: fm-ot, label: ".."}]'), "methods[0].label",
                 "must match"),
    "label ...": (_replace("[fm-ot]", '[{name: fm-ot, label: "..."}]'), "methods[0].label",
                  "must match"),
    "hidden label": (_replace("[fm-ot]", "[{name: fm-ot, label: .x}]"), "methods[0].label",
                     "must match"),
    "label with a slash": (_replace("[fm-ot]", "[{name: fm-ot, label: a/b}]"),
                           "methods[0].label", "must match"),
    "name starting with -": (MINIMAL.replace("name: t", "name: -t"), "name", "must match"),
}


@pytest.mark.parametrize("text, where, problem", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_names_that_become_paths_are_one_plain_component(tmp_path, text, where, problem):
    message = error(write(tmp_path, text))
    assert message.startswith(str(tmp_path / "suite.yaml") + f": {where}: "), message
    assert problem in message, message


def test_ordinary_names_still_pass(tmp_path):
    suite = load_suite(write(tmp_path, _replace("[fm-ot]", "[{name: fm-ot, label: OT.v2+x_1}]")
                             + "tracking: {experiment: 'My runs (v2), 2026'}\n"))
    assert suite.methods[0].label == "OT.v2+x_1" and suite.experiment == "My runs (v2), 2026"
    assert suite.trials()[0].name == "OT.v2+x_1-8gaussians-s0"


# -- grid size -----------------------------------------------------------------------------------

def _big(methods: int, datasets: int, seeds, extra: str = "") -> str:
    labels = ", ".join(f"{{name: fm-ot, label: m{i}, sigma_min: {i / 1000}}}"
                       for i in range(methods))
    return (f"name: big\nmethods: [{labels}]\ndatasets: [{', '.join(DATASETS.names()[:datasets])}]"
            f"\nseeds: {seeds}\n{extra}")


def test_a_huge_grid_is_refused_quickly_without_expanding_it(tmp_path, monkeypatch):
    import time

    from harness.run.suite import Suite

    def built(*args, **kwargs):
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr(Suite, "iter_trials", built)
    started = time.perf_counter()
    message = error(write(tmp_path, _big(50, 10, 1000)))
    assert time.perf_counter() - started < 3
    assert message == (f"{tmp_path / 'suite.yaml'}: methods x datasets x seeds: 500000 trials "
                       "(50 methods x 10 datasets x 1000 seeds) is above the cap of 10000; set "
                       "max_trials: 500000 in the suite if you mean it")
    message = error(write(tmp_path, _big(50, 10, 1000, "max_trials: 499999\n")))
    assert ": max_trials: 500000 trials" in message and "cap of 499999" in message


def test_max_trials_raises_the_cap_and_is_checked(tmp_path):
    assert load_suite(write(tmp_path, _big(3, 2, 2, "max_trials: 12\n"))).size == 12
    assert "cap of 11" in error(write(tmp_path, _big(3, 2, 2, "max_trials: 11\n")))
    assert ": max_trials: must be >= 1" in error(write(tmp_path, _big(1, 1, 1, "max_trials: 0\n")))
    assert "must be an integer" in error(write(tmp_path, _big(1, 1, 1, "max_trials: lots\n")))


def test_a_1mb_file_of_entries_is_refused_fast(tmp_path):
    """Refusing costs about what reading the YAML costs (measured side by side, since the parse
    alone took 2.4-3.2 s on a loaded 2-core machine): nothing is expanded or keyed first."""
    import time

    import yaml

    from harness.run.suite.reading import _Loader

    seeds = "[" + ", ".join(str(i) for i in range(140_000)) + "]"  # just under 1 MB of seeds
    methods = "[" + ", ".join(["fm-ot"] * 1500) + "]"
    for text, where in ((_big(1, 1, seeds), "seeds: 140000 seeds; a suite lists at most 1000"),
                        (f"name: x\nmethods: {methods}\ndatasets: [moons]\n",
                         "methods: 1500 entries; a suite lists at most 1000")):
        started = time.perf_counter()
        yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
        parse = time.perf_counter() - started
        started = time.perf_counter()
        assert where in error(write(tmp_path, text))
        assert time.perf_counter() - started < 2 * parse + 0.5


def test_plan_prints_trials_as_they_are_built(tmp_path, monkeypatch, capsys):
    """Interrupted at the 5th trial key, ``fmbench plan`` has already printed the first four."""
    import harness.run.suite.model
    from harness.cli import main

    real, calls = harness.run.suite.model.trial_key, []

    def key(spec):
        calls.append(spec)
        if len(calls) == 5 + 3:  # load_suite keys one trial per method (3) for its own check
            raise KeyboardInterrupt
        return real(spec)

    path = write(tmp_path, _big(3, 2, 2))
    expected = [t.name for t in load_suite(path).trials()]
    monkeypatch.setattr(harness.run.suite.model, "trial_key", key)
    assert main(["plan", str(path)]) == 130
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "suite big: 12 trials (3 methods x 2 datasets x 2 seeds)"
    assert [line.split()[0] for line in out[2:]] == expected[:4]
    column = out[1].index("key")  # the width computed without the grid still aligns the keys
    assert column == max(map(len, expected)) + 2
    assert all(line[column - 2:column] == "  " and line[column] != " " for line in out[2:])


def test_trials_and_iter_trials_agree(tmp_path):
    suite = load_suite(write(tmp_path, _big(3, 2, 2)))
    assert [t.key for t in suite.iter_trials()] == [t.key for t in suite.trials()]
    assert suite.size == len(suite.trials()) == 12
    assert [t.name for t in suite.iter_trials(datasets=suite.datasets[1:], seeds=(1,))] == [
        f"m{i}-{suite.datasets[1].name}-s1" for i in range(3)]


def test_include_cycle_names_the_chain(tmp_path):
    write(tmp_path, "include: a.yaml\n", "b.yaml")
    message = error(write(tmp_path, "include: b.yaml\n" + MINIMAL, "a.yaml"))
    assert "include" in message and "include cycle" in message
    assert message.split("include cycle: ")[1].split(" -> ") == [
        str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), str(tmp_path / "a.yaml")]


def test_missing_include_down_the_chain_names_the_chain(tmp_path):
    write(tmp_path, "include: gone.yaml\n", "b.yaml")
    message = error(write(tmp_path, "include: b.yaml\n" + MINIMAL, "a.yaml"))
    assert message.startswith(str(tmp_path / "b.yaml") + ": include: ")
    assert "a.yaml -> " in message and "gone.yaml" in message


def test_missing_file_and_directory(tmp_path):
    assert "no such file" in error(tmp_path / "absent.yaml")
    assert "is a directory" in error(tmp_path)


def test_unreadable_file(tmp_path):
    path = write(tmp_path, MINIMAL)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running with privileges that read any file (root)")
        assert "cannot read" in error(path)
    finally:
        path.chmod(0o644)


def test_dataset_with_declared_shape_builds_the_model_at_load(tmp_path, monkeypatch):
    # A bad model value is caught before scheduling once a dataset declares its shape.
    monkeypatch.setitem(DATASETS.entry("8gaussians").meta, "shape", (2,))
    message = error(write(tmp_path, MINIMAL + "model: {vector: {hidden: 0}}\n"))
    assert ": model.vector: " in message and "hidden must be a positive integer" in message


def test_readme_documents_every_field():
    from dataclasses import fields

    from harness.core.evaluate import EvalConfig
    from harness.run.suite import TOP_KEYS
    from harness.core.train import TrainConfig

    text = (SUITES / "README.md").read_text()
    names = [*TOP_KEYS, *(f.name for cls in (TrainConfig, EvalConfig) for f in fields(cls)
                          if f.name != "seed"), "cpus", "gpus", "checkpoints", "uri", "experiment",
             "root", "download", "label"]
    assert [n for n in names if f"`{n}`" not in text] == []
