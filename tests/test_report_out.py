"""Where ``fmbench report`` writes: relative, ``.``/``..``/``~`` paths (quoted ``~`` too), the
default ``reports/<suite>/`` from the current folder, and the rule that fmbench never deletes what
it did not write: the report is built beside its folder and swapped in, so user files are refused
rather than removed, and a failure or Ctrl-C mid-build leaves the previous report whole."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import harness.report
from harness import __version__
from harness.cli import main
from harness.report import build_report, render
from tests.test_report import fill_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report-out")
    uri, suite, _ = fill_store(tmp)
    return uri, suite


def _error(capsys) -> str:
    """The one stderr line of a refused command."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmbench: error: ") and "\n" not in err, err
    return err


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, hidden ones included."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if re.search(r"\.(tmp|old)-", p.name)]


def _check_report(out: Path, suite: str = "reptest") -> None:
    """A complete report: index, markdown whose sample links resolve, the marker, nothing
    left beside it."""
    assert (out / "index.html").is_file() and (out / "comparison.csv").is_file()
    links = re.findall(r"\]\((samples/[^)]+)\)", (out / "report.md").read_text())
    assert len(links) == 2 * 7  # samples and trajectories of the 7 method x dataset cells run
    assert all((out / link).is_file() for link in links)
    marker = json.loads((out / render.MARKER).read_text())
    assert marker["suite"] == suite and marker["fmbench"] == __version__
    assert "index.html" in marker["files"] and set(marker["files"]) == set(_tree(out)) - {
        render.MARKER}
    assert _leftovers(out.parent) == []


def test_default_out_is_reports_suite_under_the_current_folder(store, tmp_path, monkeypatch,
                                                              capsys):
    uri, suite = store
    monkeypatch.chdir(tmp_path)
    assert main(["report", suite.path, "--tracking-uri", uri]) == 0
    out = tmp_path / "reports" / "reptest"
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    _check_report(out)
    mask = os.umask(0o22)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # not the temporary folder's 0700


@pytest.mark.parametrize("given, where", [
    ("rel", "cwd/rel"), ("./dot/x", "cwd/dot/x"), ("../up", "up"), ("~/in-home", "home/in-home"),
    ("~", "home"),  # quoted in a shell, so fmbench sees "~": a folder named "~" would be wrong
])
def test_out_relative_dot_dotdot_and_tilde(store, tmp_path, monkeypatch, capsys, given, where):
    uri, suite = store
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["report", suite.path, "--tracking-uri", uri, "--out", given]) == 0
    out = tmp_path / where
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    _check_report(out)
    assert not (tmp_path / "cwd" / "~").exists()


def _user_files(folder: Path) -> dict[str, bytes]:
    for rel, text in (("figures/mine.png", "my figure"), ("samples/x/samples.png", "my sample"),
                      ("report.md", "# my notes"), ("index.html", "<p>mine</p>")):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return _tree(folder)


@pytest.mark.parametrize("given", [".", "~", "mine"])
def test_a_folder_of_user_files_is_refused_and_untouched(store, tmp_path, monkeypatch, capsys,
                                                          given):
    uri, suite = store
    folder = tmp_path / "home" if given == "~" else tmp_path / "cwd" / given.strip(".")
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path / "cwd" if given != "~" else tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    before = _user_files(folder)
    assert main(["report", suite.path, "--tracking-uri", uri, "--out", given]) == 2
    assert _error(capsys) == (f"fmbench: error: --out {given}: the folder exists and holds no "
                              "fmbench report; choose an empty or new folder")
    assert _tree(folder) == before and _leftovers(folder.parent) == []


def test_the_current_folder_is_refused_even_when_empty(store, tmp_path, monkeypatch, capsys):
    """Replacing a folder renames it: the shell would be left in a deleted folder."""
    uri, suite = store
    monkeypatch.chdir(tmp_path)
    assert main(["report", suite.path, "--tracking-uri", uri, "--out", "."]) == 2
    assert "is the current folder or holds it" in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_rebuilding_replaces_the_earlier_report_and_its_stale_files(store, tmp_path):
    uri, suite = store
    out = tmp_path / "out"
    build_report(suite, uri, out, log=False)
    # an earlier report's figure of a dataset no longer in the suite, recorded as fmbench's
    (out / "figures" / "efficiency-gone.png").write_bytes(b"old")
    marker = json.loads((out / render.MARKER).read_text())
    marker["files"].append("figures/efficiency-gone.png")
    (out / render.MARKER).write_text(json.dumps(marker))
    result = build_report(suite, uri, out, log=False)
    assert result.index == out / "index.html" and result.index.is_file()
    assert not (out / "figures" / "efficiency-gone.png").exists()
    _check_report(out)


def test_a_user_file_added_to_a_report_folder_is_refused_and_kept(store, tmp_path, capsys):
    uri, suite = store
    out = tmp_path / "out"
    build_report(suite, uri, out, log=False)
    (out / "figures" / "notes.txt").write_text("mine")
    before = _tree(out)
    assert main(["report", suite.path, "--tracking-uri", uri, "--out", str(out)]) == 2
    assert _error(capsys) == (f"fmbench: error: --out {out}: holds figures/notes.txt, which "
                              "fmbench did not write; move it out or choose an empty or new folder")
    assert _tree(out) == before


@pytest.mark.parametrize("fault", [RuntimeError("disk on fire"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_a_failure_mid_build_keeps_the_previous_report(store, tmp_path, monkeypatch, fault):
    uri, suite = store
    out = tmp_path / "out"
    build_report(suite, uri, out, log=False)
    before = _tree(out)
    real = harness.report.write_report

    def half_written(content, folder):
        real(content, folder)  # everything written into the temporary folder, then the fault
        raise fault

    monkeypatch.setattr(harness.report, "write_report", half_written)
    with pytest.raises(type(fault)):
        build_report(suite, uri, out, log=False)
    assert _tree(out) == before and _leftovers(tmp_path) == []


def test_a_failed_swap_puts_the_previous_report_back(store, tmp_path, monkeypatch):
    uri, suite = store
    out = tmp_path / "out"
    build_report(suite, uri, out, log=False)
    before = _tree(out)
    real, calls = os.rename, []

    def rename(src, dst):  # the old report moves aside, then the new one cannot move in
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise OSError(18, "Invalid cross-device link")
        real(src, dst)

    monkeypatch.setattr(render.os, "rename", rename)
    with pytest.raises(render.OutError, match=r"--out .*: cannot put the report in place: "
                                              r"invalid cross-device link"):
        build_report(suite, uri, out, log=False)
    assert [c[0] for c in calls] == ["out", calls[1][0], calls[0][1]]  # aside, (fails), back
    assert _tree(out) == before and _leftovers(tmp_path) == []


def test_ctrl_c_during_the_swap_waits_for_it_to_finish(store, tmp_path, monkeypatch):
    import signal

    uri, suite = store
    out = tmp_path / "out"
    build_report(suite, uri, out, log=False)
    first = out.stat().st_ino
    real = os.rename

    def rename(src, dst):  # Ctrl-C right between moving the old report aside and the new in
        os.kill(os.getpid(), signal.SIGINT)
        real(src, dst)

    monkeypatch.setattr(render.os, "rename", rename)
    # Python's own Ctrl-C handler, whatever an earlier test (Ray Train's trainer) installed.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            build_report(suite, uri, out, log=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, before)
    assert out.stat().st_ino != first  # the new report, whole, and nothing left beside it
    _check_report(out)


def test_unusable_out_paths_are_one_line_each(store, tmp_path, monkeypatch, capsys):
    uri, suite = store
    monkeypatch.chdir(tmp_path)
    Path("afile.txt").write_text("keep me")
    expected = {
        "afile.txt": f"--out afile.txt: {tmp_path / 'afile.txt'} exists and is a file, "
                     "not a folder",
        "afile.txt/sub": f"--out afile.txt/sub: {tmp_path / 'afile.txt'} is a file, not a folder",
        "/proc/x": "--out /proc/x: cannot create a folder in /proc: ",
        "~nosuchuser-fmbench/x": "--out ~nosuchuser-fmbench/x: cannot expand ~nosuchuser-fmbench",
    }
    for given, message in expected.items():
        assert main(["report", suite.path, "--tracking-uri", uri, "--out", given]) == 2, given
        assert _error(capsys).startswith(f"fmbench: error: {message}")
    assert sorted(os.listdir(tmp_path)) == ["afile.txt"]
    assert Path("afile.txt").read_text() == "keep me" and not Path("/proc/x").exists()


def test_the_default_folder_stays_under_reports(store, tmp_path, monkeypatch, capsys):
    uri, _ = store
    monkeypatch.chdir(tmp_path)
    for name in ("..", ".", ".hidden", "a/b"):
        assert main(["report", name, "--tracking-uri", uri]) == 2, name
        assert "is neither a suite file nor a suite name" in _error(capsys)
    with pytest.raises(render.OutError, match="cannot name a folder under reports/"):
        harness.report._out(None, "..")  # a name that reached here another way
    assert os.listdir(tmp_path) == []
