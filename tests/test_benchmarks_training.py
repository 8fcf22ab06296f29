"""The training and likelihood benchmarks run end to end in their --tiny form and print a summary.

They run as users run them (``python benchmarks/NAME.py``) in a subprocess; the ratios of a tiny
run are too noisy to assert on, so only completion and the summary line are checked here.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCHCFM = importlib.util.find_spec("torchcfm") is not None
# .ci/run installs the peers (benchmarks/requirements.txt): there, a missing torchcfm is a failure.
SKIP_WITHOUT_TORCHCFM = not HAS_TORCHCFM and not os.environ.get("CI")


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # The repository root on the path, so the checkout under test is what runs.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("name", [
    "train_overhead", "likelihood",
    pytest.param("vs_torchcfm", marks=pytest.mark.skipif(
        SKIP_WITHOUT_TORCHCFM, reason='torchcfm not installed (pip install --no-deps -r benchmarks/requirements.txt)')),
])
def test_tiny_run_prints_summary(name):
    proc = run_script(f"benchmarks/{name}.py", "--tiny")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith(f"SUMMARY {name}: ")]
    assert len(summary) == 1, proc.stdout[-2000:]
    assert "target" in summary[0]


def test_vs_torchcfm_without_torchcfm_says_how_to_install():
    # sys.modules[name] = None makes "import torchcfm" fail as if it were not installed.
    code = ("import runpy, sys; sys.modules['torchcfm'] = None; sys.path.insert(0, 'benchmarks'); "
            "sys.argv = ['vs_torchcfm.py', '--tiny']; "
            "runpy.run_path('benchmarks/vs_torchcfm.py', run_name='__main__')")
    proc = run_script("-c", code)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        'vs_torchcfm: torchcfm is not installed; install it with pip install --no-deps -r benchmarks/requirements.txt']


def test_sharded_evaluation_benchmark_runs_and_agrees():
    proc = run_script("benchmarks/sharded_eval.py", "--tiny", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("SUMMARY sharded_eval: ")]
    assert len(summary) == 1 and "NFE equal: True" in summary[0], proc.stdout[-2000:]


def test_method_table_tiny_run_prints_the_table_and_the_claim():
    proc = run_script("benchmarks/method_table.py", "--tiny")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 8gaussians | ")]
    assert [r.split(" | ")[1] for r in rows] == ["fm-ot", "fm-diffusion"]
    assert "8gaussians: OT needs fewer NFE than the VP path: " in proc.stdout
