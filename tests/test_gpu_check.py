"""benchmarks/gpu_check.py in its CPU form: every row of its table, with sane numbers, and the
offline path of its Inception FID check (a line in the table, not a traceback)."""

import math
import re
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from tests.test_benchmarks_training import ROOT, run_script

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

UNET_SETTINGS = ["fp32 eager", "bf16", "compile", "channels_last", "pin_memory", "fused_adam", "all"]


def table(stdout: str) -> dict[tuple[str, str], list[str]]:
    """(check, setting) -> [measured, vs baseline, note] for every row of the printed table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and cells[0] not in ("check", "---"):
            assert (cells[0], cells[1]) not in rows, f"row twice: {line}"
            rows[cells[0], cells[1]] = cells[2:]
    return rows


def number(text: str, unit: str) -> float:
    match = re.fullmatch(rf"([0-9.]+) ?{re.escape(unit)}", text)
    assert match, f"{text!r} is not a number in {unit}"
    return float(match.group(1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU form; on CUDA run it by hand")
def test_tiny_run_prints_every_row_with_sane_numbers():
    proc = run_script("benchmarks/gpu_check.py", "--tiny", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table(proc.stdout)
    expected = ([("unet step", s) for s in UNET_SETTINGS]
                + [("fractional GPUs", "1 GPU per trial"), ("fractional GPUs", "0.25 GPU per trial"),
                   ("digits trial", "Inception FID"), ("digits trial", "classifier FID")])
    assert list(rows) == expected, proc.stdout

    for setting in UNET_SETTINGS:
        measured, ratio, note = rows["unet step", setting]
        if setting == "compile":  # left out of the CPU form, and the table says why
            assert (measured, ratio) == ("n/a", "n/a") and "inductor" in note
            continue
        assert number(measured, "ms/step") > 0 and number(ratio, "x") > 0
    assert rows["unet step", "fp32 eager"][1] == "1.00x"
    assert "no-op off CUDA" in rows["unet step", "pin_memory"][2]

    alone, packed = rows["fractional GPUs", "1 GPU per trial"], rows["fractional GPUs", "0.25 GPU per trial"]
    assert number(alone[0], "s wall") > 0 and number(packed[0], "s wall") > 0
    # A whole (fake) GPU per trial lets only one train at a time; a quarter lets them overlap.
    assert "at most 1 training at once" in alone[2]
    together = int(re.search(r"at most (\d) training at once", packed[2]).group(1))
    assert 2 <= together <= 4, packed[2]

    assert rows["digits trial", "Inception FID"][0] == "n/a"
    fid = float(rows["digits trial", "classifier FID"][0])
    assert math.isfinite(fid) and fid > 0
    summary = [line for line in proc.stdout.splitlines() if line.startswith("SUMMARY gpu_check: ")]
    assert len(summary) == 1 and "CPU form" in summary[0], proc.stdout[-2000:]


def test_offline_inception_is_a_table_line_and_the_classifier_fid_stands_in(tmp_path,
                                                                               monkeypatch):
    import cleanfid.downloads_helper

    from harness.core import fid

    path, url = fid.inception_weights("clean")
    if Path(path).exists():
        pytest.skip(f"Inception weights present at {path}")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(cleanfid.downloads_helper.urllib.request, "urlopen", offline)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script does on CPU: more threads only fight on a busy machine
    try:
        rows = gpu_check.digits_rows(gpu_check.TINY_SIZES, torch.device("cpu"), "inception",
                                     tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert [(r.setting, r.value) for r in rows][0] == ("Inception FID", "unavailable")
    assert path in rows[0].note and "\n" not in rows[0].note
    assert rows[1].setting == "classifier FID" and float(rows[1].value) > 0
    assert not Path(path).exists()


@pytest.mark.parametrize("intervals, most", [
    ([], 0), ([(0, 1)], 1), ([(0, 1), (1, 2)], 1), ([(0, 2), (1, 3), (2.5, 4)], 2),
    ([(0, 10), (1, 2), (1.5, 3), (2.5, 4)], 3)])
def test_max_overlap_counts_trials_running_together(intervals, most):
    assert gpu_check.max_overlap(intervals) == most
