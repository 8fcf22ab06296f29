"""The scale benchmarks run end to end in their CI-sized ``--tiny`` modes: exit 0, a table row with
the numbers they measured, and the one-line summary; the Ray one leaves no Ray process behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(\d+(?:\.\d+)?)"


def run_tiny(script: str, timeout: float) -> list[str]:
    """stdout lines of ``python benchmarks/<script> --tiny``; on a timeout the benchmark gets
    SIGTERM first, so it can shut down what it started."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / script), "--tiny"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        pytest.fail(f"{script} --tiny took over {timeout:.0f} s")
    assert proc.returncode == 0, err[-3000:]
    return out.strip().splitlines()


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if text in line:
            found.append(line[:200])
    return found


def test_report_scale_tiny():
    lines = run_tiny("report_scale.py", timeout=120)
    row = next(line.split() for line in lines if line.split()[:1] == ["100"])
    runs, finished, synth, search, report, *_ = row
    assert 0 < int(finished) <= 100 and float(search) > 0 and float(report) > 0
    assert re.fullmatch(rf"summary: 100 runs in {NUMBER} s", lines[-1]), lines[-1]


def test_ray_scaling_tiny_and_its_cluster_is_gone():
    lines = run_tiny("ray_scaling.py", timeout=150)
    folder = re.search(r"\(files under (\S+)\)", lines[0]).group(1)
    header = lines.index(next(line for line in lines if line.split()[:2] == ["steps", "trials"]))
    steps, trials, per_trial, serial, parallel, efficiency, *_ = map(float, lines[header + 1].split())
    assert (steps, trials) == (10, 2) and serial > 0 and parallel > 0
    assert efficiency == pytest.approx(serial / (2 * parallel), abs=0.02)
    m = re.fullmatch(rf"summary: parallel efficiency on 2 workers {NUMBER} at {NUMBER} s trials "
                     rf"\({NUMBER} at {NUMBER} s\); target >= 0.9 .+; per-trial overhead "
                     rf"-?{NUMBER} ms \(median over 1 sizes\)", lines[-1])
    assert m and float(m.group(1)) == efficiency, lines[-1]
    # Ray's own processes (GCS, raylets, monitors) exit within seconds of the cluster's shutdown.
    deadline = time.monotonic() + 20
    while _processes_mentioning(folder) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_mentioning(folder)
    assert not Path(folder).exists()
