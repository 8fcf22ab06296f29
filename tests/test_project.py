"""Project hygiene that CI relies on: the README's commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].startswith("pip install -e . && fmbench ")
    assert commands[1].startswith("pip install -e '.[dev]' && ")


def test_ci_runs_the_readme_test_command_verbatim():
    """.ci/run builds a new venv, runs the README's test line as written (``|| exit`` only makes
    a failed install stop the script, which ``set -e`` misses in an ``&&`` list), then the slow
    tests the README's line leaves out."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    command = _readme_commands()[1]
    at = [i for i, line in enumerate(ci) if line in (command, f"{command} || exit")]
    assert at, f"{command!r} not in .ci/run"
    venv = [i for i, line in enumerate(ci) if line.startswith("python3 -m venv ")]
    assert venv and venv[0] < at[0], "the tests must run in a venv made by this run"
    assert "python -m pytest -m slow" in ci[at[0] + 1:]
