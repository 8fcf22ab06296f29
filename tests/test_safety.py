"""Safe by default: no input can run code, files are written atomically, and the servers
fmbench and its tests start listen on loopback only."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "harness").rglob("*.py"))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else \
                f"{getattr(func.value, 'id', '?')}.{func.attr}" if isinstance(func, ast.Attribute) \
                else "?"
            yield name, node


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return ast.unparse(kw.value)
    return None


IMPORTS_BY_NAME = {
    "harness/datasets/images.py": "numpy reconstructors for the restricted CIFAR-10 unpickler",
    "harness/plugins.py": "the modules a user names as plugins (suite `plugins:`, `--plugin`, "
                          "entry points): running that code is what the user asked for",
}
"""The only modules that may import by name, and why."""


def test_no_module_evaluates_strings_or_unpickles_freely():
    """What a suite, a checkpoint or a dataset file holds is data: never eval'd, exec'd, imported
    by name or unpickled without a restriction."""
    problems = []
    for path in SOURCES:
        where = path.relative_to(ROOT)
        for name, call in _calls(ast.parse(path.read_text(), str(path))):
            line = f"{where}:{call.lineno}"
            if name in ("eval", "exec", "__import__", "pickle.load", "pickle.loads",
                        "marshal.loads", "os.system"):
                problems.append(f"{line}: {name}")
            if name == "torch.load" and _keyword(call, "weights_only") != "True":
                problems.append(f"{line}: torch.load without weights_only=True")
            if name == "np.load" and _keyword(call, "allow_pickle") != "False":
                problems.append(f"{line}: np.load without allow_pickle=False")
            if name == "yaml.load" and _keyword(call, "Loader") != "_Loader":
                problems.append(f"{line}: yaml.load with another loader")
            if name.startswith("subprocess.") and _keyword(call, "shell") == "True":
                problems.append(f"{line}: subprocess with shell=True")
            if name == "importlib.import_module" and where.as_posix() not in IMPORTS_BY_NAME:
                problems.append(f"{line}: import by name")
    assert not problems, problems


def test_yaml_loader_is_safe_and_imports_only_in_the_restricted_unpickler():
    from harness.datasets import images
    from harness.run.suite.reading import _Loader

    # SafeLoader or libyaml's CSafeLoader: both construct through SafeConstructor only, never
    # FullConstructor (whose subclasses build arbitrary Python objects).
    assert issubclass(_Loader, yaml.constructor.SafeConstructor)
    assert not issubclass(_Loader, yaml.constructor.FullConstructor)
    # The one import by name finds numpy's own reconstruction helpers; the CIFAR unpickler resolves
    # nothing outside its allow-list, which holds no callable that can run code.
    assert all(module.startswith(("numpy", "_codecs", "builtins"))
               for module, _ in images._SAFE_GLOBALS)
    assert ("builtins", "eval") not in images._SAFE_GLOBALS
    assert "_SAFE_GLOBALS.get" in inspect.getsource(images._RestrictedUnpickler.find_class)


def test_checkpoints_and_small_files_are_written_through_a_rename():
    """Checkpoints, caches, configs and results: a temporary file renamed into place."""
    from harness.core import checkpoint

    source = inspect.getsource(checkpoint._atomic_write)
    assert "os.replace" in source and "fsync" in source
    for path in SOURCES:
        text = path.read_text()
        assert "torch.save(" not in text or path.name == "checkpoint.py", path


def test_servers_listen_on_loopback_by_default():
    from harness.cli import build_parser

    ui = build_parser().parse_args(["ui"])
    assert ui.host == "127.0.0.1"
    servers = (ROOT / "tests" / "servers.py").read_text()
    assert '"--host", "127.0.0.1"' in servers and "0.0.0.0" not in servers
    for doc in ("README.md", "runbook.md"):
        text = (ROOT / doc).read_text()
        for line in text.splitlines():
            if "mlflow server" in line and "--host" in line:
                assert "--host 127.0.0.1" in line, f"{doc}: {line}"


def test_runbook_says_how_to_secure_an_exposed_tracking_server():
    text = (ROOT / "runbook.md").read_text()
    section = text.split("## Security", 1)[1].split("\n## ", 1)[0]
    for needle in ("--app-name basic-auth", "TLS", "--allowed-hosts", "RAY_AUTH_MODE",
                   "weights_only"):
        assert needle in section, needle
