"""The README's commands, run as written: the first command from the root of a fresh clone (slow:
the smoke suite trains 30 trials), then the report to relative, ``./``, ``../`` and ``~/`` folders,
and its cheap example commands from the repository root. Commands are parsed from README.md's
fenced blocks, so editing the README changes what is tested."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment's bin, where `pip install -e .` put fmbench
FIRST = "fmbench run suites/smoke.yaml && fmbench report suites/smoke.yaml"


def _blocks() -> list[list[str]]:
    """The README's fenced bash blocks, each a list of commands without their comments."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [[re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.strip()]
            for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S)]


def _readme(prefix: str) -> str:
    """The one README command that starts with ``prefix``."""
    found = [c for block in _blocks() for c in block if c.startswith(prefix)]
    assert len(found) == 1, f"README commands starting {prefix!r}: {found}"
    return found[0]


def _env(**extra: str) -> dict[str, str]:
    """The user's environment without the settings that would point fmbench elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PYTHONPATH")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="disabled", **extra)
    return env


def _bash(command: str, cwd: Path, env: dict[str, str],
          timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _shown(proc: subprocess.CompletedProcess) -> str:
    return f"rc {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


# -- the cheap commands, from the repository root ------------------------------------------------

@pytest.fixture(scope="module")
def cheap(tmp_path_factory):
    """Each cheap README command run once (a process start with torch costs seconds on 2 cores),
    with the tracking store pointed at a folder that holds none."""
    store = tmp_path_factory.mktemp("store") / "mlflow.db"
    env = _env(MLFLOW_TRACKING_URI=f"sqlite:///{store}")
    commands = {name: _readme(f"fmbench {name}") for name in
                ("validate", "plan", "list", "trial --help", "status")}
    procs = {name: subprocess.Popen(["bash", "-c", c], cwd=ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, c in commands.items()}  # side by side: each is mostly a torch import
    ran = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        ran[name] = (commands[name], subprocess.CompletedProcess(proc.args, proc.returncode,
                                                                 out, err))
    return store, ran


def test_readme_commands_are_the_ones_tested(cheap):
    _, ran = cheap
    assert {name: c for name, (c, _) in ran.items()} == {
        "validate": "fmbench validate suites/smoke.yaml", "plan": "fmbench plan suites/smoke.yaml",
        "list": "fmbench list", "trial --help": "fmbench trial --help",
        "status": "fmbench status suites/smoke.yaml"}
    assert all("Traceback" not in p.stderr for _, p in ran.values())


def test_readme_validate_plan_list_and_trial_help(cheap):
    _, ran = cheap
    for name in ("validate", "plan", "list", "trial --help"):
        assert ran[name][1].returncode == 0, _shown(ran[name][1])
    assert ran["validate"][1].stdout.strip() == "suites/smoke.yaml: ok (30 trials)"
    plan = ran["plan"][1].stdout.splitlines()
    assert plan[0] == "suite smoke: 30 trials (5 methods x 2 datasets x 3 seeds)"
    assert len(plan) == 2 + 30 and plan[2].startswith("ddpm-8gaussians-s0 ")
    listing = ran["list"][1].stdout
    assert all(f"{family}:" in listing for family in ("methods", "datasets", "solvers", "metrics"))
    assert "  fm-ot " in listing and "  moons " in listing
    help_text = ran["trial --help"][1].stdout
    assert "--method" in help_text and "optimizer steps (2000)" in help_text


def test_readme_status_on_a_store_that_does_not_exist(cheap):
    """Refused with one line naming the store (exit 2): a read-only command never creates one."""
    store, ran = cheap
    proc = ran["status"][1]
    assert proc.returncode == 2, _shown(proc)
    err = proc.stderr.strip()
    assert err.startswith("fmbench: error: ") and "\n" not in err, _shown(proc)
    assert str(store) in err and not store.exists()


# -- the first command, from a fresh clone -------------------------------------------------------

def _fresh_clone(dest: Path) -> None:
    """``git clone`` of this repository with the working tree's files laid over it, so the test
    runs the code as it is now (a clone alone holds only committed work). Untracked files that
    git does not ignore come too (new modules not yet committed), except virtual environments."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode()
    venvs = {p.parent.name for p in ROOT.glob("*/pyvenv.cfg")}
    for rel in filter(None, listed.split("\0")):
        if rel.split("/")[0] in venvs:
            continue
        src, dst = ROOT / rel, dest / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif dst.is_file():  # deleted in the working tree
            dst.unlink()


def _check_smoke_report(folder: Path) -> None:
    """What the smoke report promises: three seeds in every cell of the comparison, an interval
    and a verdict for every claim, and W2 against NFE for every solver, method and dataset."""
    import pandas as pd

    comparison = pd.read_csv(folder / "comparison.csv")
    assert set(comparison["n"]) == {3}, comparison[comparison["n"] != 3]
    assert comparison["ci95_low"].notna().all() and comparison["ci95_high"].notna().all()
    claims = pd.read_csv(folder / "claims.csv")  # one line per cell
    verdicts = claims.loc[claims["column"] == "Verdict", "text"]
    assert len(verdicts) == 3
    assert verdicts.str.match(r"holds|does not hold|mixed|inconclusive").all(), verdicts
    for evidence in claims.loc[claims["column"] == "Evidence", "text"]:
        assert evidence.count("95% interval") == 2, evidence  # one per dataset
    curves = pd.read_csv(folder / "efficiency.csv")
    w2 = curves[curves["metric"] == "w2"]
    cells = w2.groupby(["method", "dataset"])["solver"].agg(set)
    assert len(cells) == 5 * 2 and all(s == {"euler", "midpoint", "rk4", "dopri5"} for s in cells)
    assert (w2.groupby(["method", "dataset"])["seed"].nunique() == 3).all()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_readme_first_command_from_a_fresh_clone(tmp_path):
    """The README's first command minus its ``pip install -e . &&`` (fmbench is installed in this
    environment; PYTHONPATH points it at the clone), with the default stores: ./mlflow.db and
    reports/smoke/. Then the report again to folders given as the README's users would."""
    first = _blocks()[0][0]
    assert first.startswith("pip install -e . && ")
    command = first.removeprefix("pip install -e . && ")
    assert command == FIRST
    clone = tmp_path / "fmbench"
    _fresh_clone(clone)
    assert not (clone / "mlflow.db").exists() and not (clone / "reports" / "smoke").exists()
    home = tmp_path / "home"  # checkpoints (~/.cache/fmbench) and ~/rep4 go here
    home.mkdir()
    env = _env(PYTHONPATH=str(clone), HOME=str(home))

    proc = _bash(command, clone, env, 3000)
    assert proc.returncode == 0, _shown(proc)
    assert (clone / "mlflow.db").is_file()
    assert (clone / "reports" / "smoke" / "index.html").is_file()
    assert proc.stdout.strip().splitlines()[-1] == str(clone / "reports" / "smoke" / "index.html")
    assert "30 finished, 0 failed" in proc.stdout
    _check_smoke_report(clone / "reports" / "smoke")

    for out, where in (("rep1", clone / "rep1"), ("./rep2", clone / "rep2"),
                       (f"../{clone.name}-rep3", tmp_path / f"{clone.name}-rep3"),
                       ("~/rep4", home / "rep4")):
        proc = _bash(f"fmbench report suites/smoke.yaml --out {out}", clone, env, 600)
        assert proc.returncode == 0, f"--out {out}\n{_shown(proc)}"
        assert proc.stdout.strip() == str(where / "index.html")
        assert (where / "index.html").is_file() and (where / "report.md").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_your_own_method_from_a_fresh_clone(tmp_path):
    """The "Your own method" block, every command as written, from a fresh clone's root with the
    default stores: the conformance check of a plugin method, then its suite and report."""
    (block,) = [b for b in _blocks() if "fmbench run examples/suite.yaml" in b]
    assert [c.split()[1] for c in block] == ["check", "run", "report"]
    clone = tmp_path / "fmbench"
    _fresh_clone(clone)
    home = tmp_path / "home"
    home.mkdir()
    env = _env(PYTHONPATH=str(clone), HOME=str(home))
    for command in block:
        proc = _bash(command, clone, env, 1200)
        assert proc.returncode == 0, f"{command}\n{_shown(proc)}"
    import pandas as pd

    comparison = pd.read_csv(clone / "reports" / "examples" / "comparison.csv")
    assert {"fm-cosine", "edm"} <= set(comparison["row_key"])
    nfe = comparison[comparison["column"] == "NFE"]
    assert len(nfe) == 4 * 2 and (nfe["n"].fillna(0) == 1).all(), nfe  # every trial finished
