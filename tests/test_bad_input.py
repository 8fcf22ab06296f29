"""Bad input through the command line: every case is one line on stderr naming the file
and the problem, a non-zero exit, no traceback, and finished work left exactly as it was."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.core.checkpoint import save_checkpoint
from harness.cli import main
from tests.servers import free_port
from tests.test_suite import BAD, MINIMAL
from tests.helpers import error_line, finished_trial

SUITE_CASES = {**BAD,
               "python tag runs no code": (
                   MINIMAL + "description: !!python/object/apply:os.system ['touch {marker}']\n",
                   "line 5", "could not determine a constructor"),
               "binary file": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "line 1",
                               "not UTF-8 text (byte 0x89)"),
               "NaN learning rate": (MINIMAL + "training: {lr: .nan}\n", "training.lr", ""),
               "infinite tolerance": (MINIMAL + "evaluation: {tol: .inf}\n", "evaluation.tol", ""),
               "deeply nested": (MINIMAL + "description: " + "[" * 5000 + "]" * 5000 + "\n",
                                 "", "")}


def _digest(*paths: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def finished_work(tmp_path_factory):
    """A tracking store with a finished trial run and a checkpoint: what bad input must not touch.
    Yields the store's URI and a check that both files are byte for byte as they were."""
    folder = tmp_path_factory.mktemp("finished")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    finished_trial(uri, "t")
    ckpt = save_checkpoint(folder / "ckpt" / "t" / "key" / "checkpoint.pt",
                           {"step": 10, "w": torch.ones(3)})
    files = [folder / "mlflow.db", ckpt]
    before = _digest(*files)

    def untouched() -> bool:
        return _digest(*files) == before

    yield uri, untouched


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
@pytest.mark.parametrize("text, where, problem", SUITE_CASES.values(), ids=SUITE_CASES.keys())
def test_malformed_suite_is_one_line_and_touches_nothing(tmp_path, capsys, finished_work, command,
                                                         text, where, problem):
    capsys.readouterr()  # what creating the fixture's store printed
    marker = tmp_path / "code-ran"
    path = tmp_path / "suite.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text.replace("{marker}", str(marker)))
    uri, untouched = finished_work
    args = [command, str(path)] + (["--tracking-uri", uri] if command == "run" else [])
    assert main(args) == 2
    line = error_line(capsys)
    assert line.startswith(f"fmbench: error: {path}: "), line
    assert where in line and problem in line, line
    assert not marker.exists(), "a suite executed code"
    assert untouched(), "bad input changed finished work"


def test_unreadable_suite_through_the_cli(tmp_path, capsys):
    path = tmp_path / "locked.yaml"
    path.write_text(MINIMAL)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running with privileges that read any file (root)")
        assert main(["validate", str(path)]) == 2
        assert "cannot read" in error_line(capsys)
    finally:
        path.chmod(0o644)


# -- checkpoints ---------------------------------------------------------------------------------
def _trial(out: Path, *extra: str) -> list[str]:
    return ["trial", "--method", "fm-ot", "--dataset", "moons", "--steps", "20", "--out", str(out),
            "--samples", "20", "--nll-samples", "10", "--error-samples", "4", "--nfe-budgets", "4",
            "--tol", "1e-3", *extra]


def _good_checkpoint_bytes(tmp_path) -> bytes:
    """What a 20-step training writes: the file the damaged variants start from."""
    from harness.core.train import TrainConfig
    from harness.run.trial import TrialSpec, prepare, train_trial

    spec = TrialSpec("fm-ot", "moons", train=TrainConfig(steps=20, batch_size=64))
    train_trial(prepare(spec), tmp_path / "good")
    return (tmp_path / "good" / "checkpoint.pt").read_bytes()


def _damage(good: bytes) -> dict[str, bytes]:
    middle = len(good) // 2
    return {"garbage": b"not a checkpoint", "empty": b"", "truncated half": good[:middle],
            "truncated tail": good[:-64],
            "zeroed bytes": good[:middle] + b"\0" * 64 + good[middle + 64:]}


def test_damaged_checkpoints_are_one_line_and_left_as_they_are(tmp_path, capsys):
    good = _good_checkpoint_bytes(tmp_path)
    capsys.readouterr()
    for name, data in _damage(good).items():
        out = tmp_path / name.replace(" ", "-")
        ckpt = out / "fm-ot-moons-s0" / "checkpoint.pt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(data)
        assert main(_trial(out)) == 2, name
        line = error_line(capsys)
        assert f"checkpoint {ckpt} is corrupt" in line, (name, line)
        assert ckpt.read_bytes() == data, f"{name}: the damaged file was replaced"


def test_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'code-ran'}",))

    ckpt = tmp_path / "evil" / "fm-ot-moons-s0" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"step": 1, "net": Payload()}, ckpt)
    assert main(_trial(tmp_path / "evil")) == 2
    line = error_line(capsys)
    assert f"checkpoint {ckpt} was refused, it could run code" in line, line
    assert not (tmp_path / "code-ran").exists()


def test_checkpoint_of_other_settings_keeps_the_finished_trial(tmp_path, capsys):
    out = tmp_path / "trials"
    assert main(_trial(out)) == 0
    folder = out / "fm-ot-moons-s0"
    before = _digest(folder / "checkpoint.pt", folder / "config.json", folder / "result.json")
    capsys.readouterr()
    assert main(_trial(out, "--lr", "0.5")) == 2
    line = error_line(capsys)
    assert f"checkpoint {folder / 'checkpoint.pt'} was written with different training" in line
    assert _digest(*map(Path, before)) == before


# -- data, names, numbers, servers ---------------------------------------------------------------
@pytest.mark.parametrize("dataset, problem", [
    ("mnist", "missing train-images-idx3-ubyte"),
    ("cifar10", "missing data_batch_1"),
    ("imagenet32", "no train_data_batch_*.npz under"),
    ("imagenet64", "no train_data_batch_*.npz under"),
])
def test_data_root_without_the_expected_files(tmp_path, capsys, dataset, problem):
    root = tmp_path / "data"
    root.mkdir()
    assert main(["trial", "--method", "fm-ot", "--dataset", dataset, "--data-root", str(root),
                 "--no-download", "--steps", "5", "--out", str(tmp_path / "t")]) == 2
    line = error_line(capsys)
    assert problem in line and str(root) in line, line


@pytest.mark.parametrize("args, problem", [
    (["trial", "--method", "fm-typo", "--dataset", "moons"], "valid: "),
    (["trial", "--method", "fm-ot", "--dataset", "moonz"], "valid: "),
    (["trial", "--method", "fm-ot", "--dataset", "moons", "--steps", "0"], "must be > 0"),
    (["trial", "--method", "fm-ot", "--dataset", "moons", "--steps", "many"], "expected a int"),
    (["trial", "--method", "fm-ot", "--dataset", "moons", "--lr", "nan"], "lr"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_command_line_values(capsys, args, problem):
    assert main(args) == 2
    assert problem in error_line(capsys)


def test_unreachable_tracking_server_names_the_uri_and_touches_nothing(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(MINIMAL + f"storage: {{checkpoints: {tmp_path / 'ckpt'}}}\n")
    uri = f"http://127.0.0.1:{free_port()}"
    for command in ("run", "status"):
        assert main([command, str(path), "--tracking-uri", uri]) == 2
        line = error_line(capsys)
        assert line == f"fmbench: error: tracking server {uri} is unreachable " \
                       "([Errno 111] Connection refused)", line
    assert not (tmp_path / "ckpt").exists()


def test_bad_retry_setting_is_one_line(tmp_path, capsys, monkeypatch):
    from harness.run.tracking import retry

    monkeypatch.setenv("FMBENCH_TRACKING_RETRY_S", "soon")
    with pytest.raises(Exception, match="FMBENCH_TRACKING_RETRY_S must be a number of seconds"):
        retry(lambda: 1, "anything")


def test_a_real_process_prints_no_traceback(tmp_path):
    """The installed entry point, end to end: exit 2 and one line, for a suite that is not UTF-8."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: t\nmethods: [fm-ot]\ndescription: caf\xe9\n")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"fmbench: error: {path}: line 3: not UTF-8 text (byte 0xe9); save the file as UTF-8"]
    assert not (tmp_path / "mlflow.db").exists()
