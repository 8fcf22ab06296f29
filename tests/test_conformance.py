"""fmbench check: every built-in method passes the battery, and each kind of broken method fails
the check that is about its mistake, with a line that names it."""

import math
import textwrap

import pytest
import torch

from harness import plugins
from harness.cli import main
from harness.core.conformance import (CHECKS, CheckResult, check_continuity, check_exact_nll,
                                      check_minimiser, check_pushforward, moment_z_scores,
                                      run_checks)
from harness.core.methods import METHODS, EpsilonPrediction, FlowMatching, per_example_mse
from harness.core.paths import OTPath, VPPath
from tests.helpers import error_line

LINE_NAMES = ["target = dx_t/dt (AD)", "continuity equation", "exact NLL = density",
              "dopri5 pushforward", "loss minimiser"]


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.strip().splitlines()


def test_every_builtin_method_passes(method_name, capsys):
    assert main(["check", method_name]) == 0
    lines = _lines(capsys)
    assert len(lines) == len(CHECKS) + 1
    for name, line in zip(LINE_NAMES, lines):
        assert line.startswith(name)
        verdict = "SKIP" if (method_name == "ot-cfm" and name == "loss minimiser") else "PASS"
        assert f"  {verdict}" in line, line
    assert lines[-1] == f"{method_name}: {len(CHECKS)}/{len(CHECKS)} checks passed"


BROKEN_PLUGIN = '''
from harness.core.methods import METHODS, FlowMatching
from harness.core.paths import OTPath


class LateOTPath(OTPath):
    """The OT path with d_alpha off by a factor of 1.5."""

    def d_alpha(self, t):
        return 1.5 * super().d_alpha(t)


@METHODS.register("broken-ot", display="Broken", family="flow-matching")
def broken_ot():
    """Flow Matching on a path whose d_alpha disagrees with alpha."""
    return FlowMatching(LateOTPath(0.0))
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path for plugin modules; the test's plugins are unloaded afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("broken_ot_plugin", "typo_plugin"):
        plugins.unload(module)


def test_a_path_whose_derivative_is_off_fails_the_target_check(plugin_dir, capsys):
    (plugin_dir / "broken_ot_plugin.py").write_text(textwrap.dedent(BROKEN_PLUGIN))
    assert main(["check", "broken-ot", "--plugin", "broken_ot_plugin"]) == 1
    lines = _lines(capsys)
    target = lines[0]
    assert target.startswith("target = dx_t/dt (AD)") and target.endswith("FAIL")
    # alpha' = 1.5 instead of 1: the gap is |0.5 x1| / (1 + |x1 - x0|) at some point, O(0.1).
    assert float(target.split()[4]) > 0.05
    assert "FAILED: target = dx_t/dt (AD)" in lines[-1]
    assert METHODS.entry("broken-ot").source == "broken_ot_plugin"


def test_unknown_method_is_one_line_exit_2(capsys):
    assert main(["check", "fm-sb"]) == 2
    assert "unknown method 'fm-sb'; valid: ddpm" in error_line(capsys)


def test_a_plugin_that_does_not_import_is_one_line(plugin_dir, capsys):
    (plugin_dir / "typo_plugin.py").write_text("import harness.nowhere\n")
    assert main(["check", "fm-ot", "--plugin", "typo_plugin"]) == 2
    line = error_line(capsys)
    assert "plugin 'typo_plugin'" in line and "harness.nowhere" in line


def test_a_method_option_reaches_the_method(capsys):
    assert main(["check", "score-matching-ve", "--option", "sigma_max=5"]) == 0
    assert main(["check", "fm-ot", "--option", "sigma_min"]) == 2
    assert "expected KEY=NUMBER" in error_line(capsys)


# -- each check catches its own kind of mistake ---------------------------------------------------

class _SignFlippedConversion(EpsilonPrediction):
    """Turns the noise estimate into a velocity with the wrong sign."""

    def velocity(self, output, x, t):
        return super().velocity(-output, x, t)


class _BiasedLoss(EpsilonPrediction):
    """Regresses onto x0 + 0.1 x1: its minimiser is not E[x0 | x_t]."""

    def objective(self, output, sample):
        return per_example_mse(output, sample.x0 + 0.1 * sample.x1)


class _WrongShape(FlowMatching):
    def velocity(self, output, x, t):
        return output[:, :1]


def test_a_wrong_conversion_fails_continuity_likelihood_and_pushforward():
    m = _SignFlippedConversion(VPPath())
    for check in (check_continuity, check_exact_nll, check_pushforward):
        assert not check(m).passed, check.__name__
    assert check_minimiser(m).passed  # the loss itself is DDPM's


def test_a_biased_loss_fails_only_the_minimiser_check():
    results = {r.name: r for r in run_checks(_BiasedLoss(VPPath()))}
    assert not results["loss minimiser"].passed and results["loss minimiser"].value > 10
    assert all(r.passed for n, r in results.items() if n != "loss minimiser")


def test_a_check_that_raises_is_a_failed_line_naming_the_error():
    results = run_checks(_WrongShape(OTPath()))
    failed = [r for r in results if not r.passed]
    assert failed and all("raised" in r.line() and r.line().endswith(r.note) for r in failed)
    assert results[0].passed  # the path is fine


def test_moment_z_scores_by_hand():
    """Four points (+-1, +-1): mean 0, covariance diag(4/3) with n - 1 = 3; against N(0, I):
    z_mean = 0, z_var = (4/3 - 1) / (sqrt(2/4)) , z_cov = 0 / (1/2)."""
    x = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    z = moment_z_scores(x, torch.zeros(2, dtype=torch.float64), 1.0)
    expected = [0.0, 0.0, (4 / 3 - 1) / math.sqrt(0.5), 0.0, (4 / 3 - 1) / math.sqrt(0.5)]
    torch.testing.assert_close(z, torch.tensor(expected, dtype=torch.float64))
    shifted = moment_z_scores(x + 0.5, torch.zeros(2, dtype=torch.float64), 1.0)
    assert shifted[0] == pytest.approx(0.5 / (1 / 2))  # mean 0.5, standard error 1/sqrt(4)


def test_result_lines():
    assert CheckResult("x", 2e-7, 1e-6).line().endswith("PASS")
    assert CheckResult("x", 2e-5, 1e-6).line().endswith("FAIL")
    assert not CheckResult("x", math.nan, 1.0).passed
    skip = CheckResult("x", None, 1.0, note="why")
    assert skip.passed and skip.line().endswith("SKIP  why")


def test_check_prints_no_warning_of_torch_internals():
    """torch's first forward-mode call warns about its own use of torch.jit.script; as an error
    here, a leak would fail the check lines."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-m", "harness.cli",
                           "check", "fm-ot"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "FAIL" not in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("fm-ot: 5/5 checks passed")
