"""Plugins from outside fmbench: entry points, a suite's ``plugins:``, clashes and bad plugins in
one line, plugin versions in trial keys, and plugins shipped to Ray workers that cannot import
them from their own path."""

import io
import json
import sys
import textwrap
from pathlib import Path

import pytest

from harness import plugins
from harness.cli import main
from harness.core.methods import METHODS
from harness.datasets import DATASETS
from harness.plugins import PluginError
from harness.run.suite import SuiteError, load_suite, science_config
from harness.run.trial import TrialSpec

METHOD_PLUGIN = '''\
"""A test plugin: fm-ot with another sigma_min default, under a new name."""
from harness.core.methods import METHODS, FlowMatching
from harness.core.paths import OTPath


@METHODS.register("{name}", display="{name}", family="flow-matching")
def _factory(sigma_min=1e-3):
    """fm-ot with sigma_min 1e-3 (a test plugin)."""
    return FlowMatching(OTPath(sigma_min))
'''

SUITE = """\
name: {name}
{plugins}
methods: [{method}, fm-ot]
datasets: [moons]
model: {{vector: {{name: mlp, hidden: 32, depth: 2}}}}
training: {{steps: 30, batch_size: 64, warmup_steps: 5, checkpoint_every: 30, log_every: 10}}
evaluation: {{samples: 60, nll_samples: 30, error_samples: 4, nfe_budgets: [4], tol: 1e-3,
             reference_tol: 1e-4}}
resources: {{train: {{cpus: 0.5}}, eval: {{cpus: 0.5}}}}
storage: {{checkpoints: {storage}}}
tracking: {{experiment: {name}}}
"""


@pytest.fixture(autouse=True)
def clean_plugins(monkeypatch):
    """Each test's plugins, registrations and modules are gone afterwards."""
    before = set(plugins._LOADED)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(plugins._STATE, "entry_points", plugins._STATE["entry_points"])
    yield
    for name in set(plugins._LOADED) - before:
        plugins.unload(name)


def _module(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(text)
    return path


def _method_plugin(folder: Path, module: str, method: str) -> Path:
    return _module(folder, module, METHOD_PLUGIN.format(name=method))


def _dist_info(site: Path, dist: str, version: str, entry_points: dict[str, str],
               top_level: str) -> None:
    """An installed distribution as pip leaves it: METADATA, entry_points.txt, top_level.txt."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\n{lines}")
    (info / "top_level.txt").write_text(top_level + "\n")


def _reload_entry_points(site: Path) -> None:
    sys.path.insert(0, str(site))
    plugins._STATE["entry_points"] = False
    plugins.ensure_loaded()


def _write_suite(tmp_path: Path, name: str, method: str, plugin_list: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, method=method, storage=tmp_path / "ckpt",
                                 plugins=f"plugins: {plugin_list}" if plugin_list else ""))
    return path


# -- entry points --------------------------------------------------------------------------------

def test_an_installed_package_is_found_through_its_entry_point(tmp_path, capsys):
    site = tmp_path / "site"
    package = site / "fmbtest_ep_pkg"
    _method_plugin(package, "__init__", "ep-fm")
    _dist_info(site, "fmbtest-ep-pkg", "0.3.1", {"ep": "fmbtest_ep_pkg"}, "fmbtest_ep_pkg")
    assert "ep-fm" not in METHODS
    _reload_entry_points(site)

    entry = METHODS.entry("ep-fm")
    assert entry.source == "fmbtest_ep_pkg"
    plugin = plugins.loaded("fmbtest_ep_pkg")
    assert plugin.path == str(package.resolve())
    assert plugin.version.startswith("fmbtest-ep-pkg==0.3.1 sha256:")
    assert "entry point 'ep' of fmbtest-ep-pkg 0.3.1" in plugin.origin

    assert main(["list", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["methods"]}
    assert listed["ep-fm"]["source"] == f"fmbtest_ep_pkg ({plugin.version})"
    assert listed["fm-ot"]["source"] == "harness"
    assert main(["list"]) == 0
    assert "[fmbtest_ep_pkg (fmbtest-ep-pkg==0.3.1" in capsys.readouterr().out

    # Usable in a suite without naming it; the trial using it carries its version, fm-ot none.
    suite = load_suite(_write_suite(tmp_path, "ep", "ep-fm"))
    by_method = {t.spec.method: t for t in suite.trials()}
    assert by_method["ep-fm"].spec.plugins == {"fmbtest_ep_pkg": plugin.version}
    assert by_method["fm-ot"].spec.plugins == {}
    assert science_config(by_method["ep-fm"].spec)["plugins"] == {"fmbtest_ep_pkg": plugin.version}


def test_an_entry_point_whose_module_is_missing_fails_in_one_line(tmp_path):
    site = tmp_path / "site"
    _dist_info(site, "fmbtest-gone", "1.0", {"gone": "fmbtest_gone_module"}, "fmbtest_gone")
    with pytest.raises(PluginError) as info:
        _reload_entry_points(site)
    assert str(info.value) == ("plugin 'fmbtest_gone_module' (entry point 'gone' of fmbtest-gone "
                               "1.0): no such module")
    with pytest.raises(PluginError, match="no such module"):  # tried again, not skipped
        plugins.ensure_loaded()


def test_an_entry_point_naming_an_object_is_refused(tmp_path):
    site = tmp_path / "site"
    _dist_info(site, "fmbtest-obj", "1.0", {"obj": "fmbtest_obj:register"}, "fmbtest_obj")
    with pytest.raises(PluginError, match=r"entry point 'obj' of fmbtest-obj 1.0: "
                                          r"'fmbtest_obj:register' must name a module"):
        _reload_entry_points(site)


# -- clashes and bad plugins ---------------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_a_clash_with_a_builtin_names_both_sources_and_leaves_nothing_behind(tmp_path):
    path = _module(tmp_path, "fmbtest_clash", textwrap.dedent('''\
        from harness.core.methods import METHODS, FlowMatching
        from harness.core.paths import OTPath
        METHODS.register("fmbtest-first", lambda: FlowMatching(OTPath(0.0)))
        METHODS.register("fm-ot", lambda: FlowMatching(OTPath(0.0)))
        '''))
    with pytest.raises(PluginError) as info:
        plugins.load_plugins([str(path)], "test")
    assert _one_line(info.value) == (
        "plugin 'fmbtest_clash' (test): method 'fm-ot' from fmbtest_clash clashes with the "
        "method of that name from harness; rename one of them")
    assert METHODS.entry("fm-ot").source == "harness"
    assert "fmbtest-first" not in METHODS and "fmbtest_clash" not in sys.modules
    assert plugins.loaded("fmbtest_clash") is None


def test_a_clash_between_two_plugins_names_both(tmp_path):
    first = _method_plugin(tmp_path, "fmbtest_one", "twice-fm")
    second = _method_plugin(tmp_path, "fmbtest_two", "twice-fm")
    plugins.load_plugins([str(first)], "test")
    with pytest.raises(PluginError, match="method 'twice-fm' from fmbtest_two clashes with the "
                                          "method of that name from fmbtest_one"):
        plugins.load_plugins([str(second)], "test")
    assert METHODS.entry("twice-fm").source == "fmbtest_one"


@pytest.mark.parametrize("text, problem", [
    ("import math\nraise RuntimeError('no GPU found\\nsecond line')\n",
     "failed to import: RuntimeError: no GPU found"),
    ("def broken(:\n", "failed to import: SyntaxError: "),
    ("import fmbtest_not_installed_dependency\n",
     "it imports 'fmbtest_not_installed_dependency', which is not installed"),
    ("from harness.core.methods import METHODS\nMETHODS.register('fmbtest-int', 42)\n",
     "method 'fmbtest-int' must be a factory returning a Method, got int"),
    ("from harness.core.methods import METHODS\nMETHODS.register('fmbtest-none', lambda: None)\n",
     "method 'fmbtest-none' factory returned NoneType, not a Method"),
    ("from harness.datasets import DATASETS\nDATASETS.register('fmbtest-d', lambda **k: None)\n",
     "dataset 'fmbtest-d' needs kind= one of vector, image, got None"),
])
def test_a_bad_plugin_fails_in_one_line_naming_it(tmp_path, text, problem):
    path = _module(tmp_path, "fmbtest_bad", text)
    with pytest.raises(PluginError) as info:
        plugins.load_plugins([str(path)], "suite")
    message = _one_line(info.value)
    assert message.startswith("plugin 'fmbtest_bad' (suite")
    assert problem in message
    assert "fmbtest-int" not in METHODS and "fmbtest-d" not in DATASETS


def test_a_module_name_that_does_not_exist():
    with pytest.raises(PluginError, match=r"^plugin 'fmbtest_nowhere' \(test\): no such module$"):
        plugins.load_plugins(["fmbtest_nowhere"], "test")
    with pytest.raises(PluginError, match="fmbench's own modules are not plugins"):
        plugins.load_plugins(["harness.core.paths"], "test")


# -- suites --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, where, problem", [
    ("fmbtest_mod", "plugins", "must be a list of module names or .py files, got 'fmbtest_mod'"),
    ("[3]", "plugins[0]", "must be a non-empty string, got 3 (integer)"),
    ("[missing.py]", "plugins[0]", "plugin 'missing.py': no such .py file"),
    ("['not a module']", "plugins[0]", "not a module name"),
    ("[fmbtest_absent]", "plugins[0]", "plugin 'fmbtest_absent' (suite): no such module"),
])
def test_bad_plugins_values_are_suite_errors_at_the_field(tmp_path, value, where, problem):
    path = _write_suite(tmp_path, "bad", "rectified-flow", value)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert info.value.where == where and problem in info.value.problem, str(info.value)
    assert info.value.file == str(path) and "\n" not in str(info.value)


def test_a_suite_imports_a_py_file_next_to_it_and_its_version_keys_the_trial(tmp_path):
    source = _method_plugin(tmp_path, "fmbtest_local", "local-fm")
    path = _write_suite(tmp_path, "local", "local-fm", "[fmbtest_local.py]")
    suite = load_suite(path)
    assert suite.plugins == ("fmbtest_local",)
    keys = {t.spec.method: t.key for t in suite.trials()}
    version = plugins.loaded("fmbtest_local").version
    assert version == f"sha256:{plugins.source_digest(source)}"

    # The same plugin with one more line: its trial gets a new key, fm-ot keeps its own.
    source.write_text(source.read_text() + "# tuned\n")
    plugins.unload("fmbtest_local")
    again = {t.spec.method: t.key for t in load_suite(path).trials()}
    assert again["local-fm"] != keys["local-fm"] and again["fm-ot"] == keys["fm-ot"]
    assert plugins.loaded("fmbtest_local").version != version


def test_builtin_trials_keep_the_fields_of_their_key():
    spec = TrialSpec(method="fm-ot", dataset="moons")
    assert set(science_config(spec)) == {"science_version", "method", "method_options",
                                         "dataset", "seed", "model", "model_options", "train",
                                         "eval"}
    with_plugin = TrialSpec(method="fm-ot", dataset="moons", plugins={"p": "sha256:0"})
    assert science_config(with_plugin)["plugins"] == {"p": "sha256:0"}


def test_a_worker_refuses_a_copy_other_than_the_one_keyed(tmp_path):
    path = _method_plugin(tmp_path, "fmbtest_copy", "copy-fm")
    plugin = plugins.load_plugins([str(path)], "test")[0]
    plugins.import_plugins({"fmbtest_copy": plugin.version})  # the same copy: nothing to say
    with pytest.raises(PluginError, match=r"plugin 'fmbtest_copy' here .* has source "
                                          r"[0-9a-f:sha256]+, the trial was keyed with "
                                          r"sha256:000000000000"):
        plugins.import_plugins({"fmbtest_copy": "sha256:000000000000"})
    assert plugins.plugin_files([{}, {"fmbtest_copy": plugin.version}] * 2) == [
        str(path.resolve())]
    assert plugins.plugin_files([{}]) == []


def test_fmbench_trial_with_a_plugin_records_its_version(tmp_path, capsys):
    path = _method_plugin(tmp_path, "fmbtest_cli", "cli-fm")
    argv = ["trial", "--plugin", str(path), "--method", "cli-fm", "--dataset", "moons",
            "--steps", "20", "--batch-size", "32", "--samples", "30", "--nll-samples", "20",
            "--error-samples", "2", "--nfe-budgets", "4", "--out", str(tmp_path / "trials"),
            "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    version = plugins.loaded("fmbtest_cli").version
    assert result["config"]["plugins"] == {"fmbtest_cli": version}
    written = json.loads((tmp_path / "trials" / "cli-fm-moons-s0" / "config.json").read_text())
    assert written["plugins"] == {"fmbtest_cli": version}
    assert main(["trial", "--plugin", "fmbtest_nope", "--method", "fm-ot", "--dataset",
                 "moons"]) == 2
    assert capsys.readouterr().err.strip() == ("fmbench: error: plugin 'fmbtest_nope' "
                                               "(fmbench trial --plugin): no such module")


# -- on a cluster --------------------------------------------------------------------------------

def test_a_suite_plugin_ships_to_workers_that_cannot_import_it(ray_cluster, mlflow_uri, tmp_path):
    import ray
    from mlflow import MlflowClient

    from harness.run import record
    from harness.run.scheduler import run_suite

    folder = tmp_path / "driver-only"
    _method_plugin(folder, "fmbtest_shipped", "shipped-fm")
    sys.path.insert(0, str(folder))  # the driver's path only: no worker has this folder

    def try_import():
        import importlib

        try:
            importlib.import_module("fmbtest_shipped")
        except ModuleNotFoundError:
            return "missing"
        return "found"

    assert ray.get(ray.remote(try_import).options(num_cpus=0.1).remote()) == "missing"

    path = _write_suite(tmp_path, "shipped", "shipped-fm", "[fmbtest_shipped]")
    path.write_text(path.read_text().replace("methods: [shipped-fm, fm-ot]",
                                             "methods: [shipped-fm]"))
    suite = load_suite(path)
    out = io.StringIO()
    summary = run_suite(suite, tracking_uri=mlflow_uri, stream=out)
    assert summary.ok and summary.count("finished") == 1, out.getvalue()

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("shipped")
    [run] = [r for r in client.search_runs([exp.experiment_id])
             if r.data.tags.get(record.KIND) == record.TRIAL]
    version = plugins.loaded("fmbtest_shipped").version
    assert run.data.tags[record.KEY] == suite.trials()[0].key
    assert run.data.params["method"] == "shipped-fm"
    assert run.data.params["plugins.fmbtest_shipped"] == version
    for metric in ("nfe", "nll", "w2"):
        assert record.final(metric) in run.data.metrics



def test_a_plugin_solver_in_the_evaluation_keys_every_trial(tmp_path):
    _module(tmp_path, "fmbtest_solver", textwrap.dedent('''\
        from harness.core.solvers import SOLVERS, SolverSpec
        SOLVERS.register("fmbtest-euler", SolverSpec("fmbtest-euler", "euler", 1),
                         summary="Euler under another name")
        '''))
    path = _write_suite(tmp_path, "solver", "rectified-flow", "[fmbtest_solver.py]")
    path.write_text(path.read_text().replace("nfe_budgets: [4]",
                                             "nfe_budgets: [4], solvers: [fmbtest-euler]"))
    version = None
    for trial in load_suite(path).trials():
        version = plugins.loaded("fmbtest_solver").version
        assert trial.spec.plugins == {"fmbtest_solver": version}, trial.name
    assert version is not None
