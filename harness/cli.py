"""The ``fmbench`` command line. User mistakes become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from functools import partial
from typing import TYPE_CHECKING, Any

from harness import __version__
from harness.errors import ConfigError, DataError, HarnessError

if TYPE_CHECKING:
    from harness.run.trial import TrialSpec

EXAMPLES = """\
Examples:
  fmbench run suites/smoke.yaml
  fmbench plan suites/smoke.yaml
  fmbench plan suites/paper-cifar10.yaml --json
  fmbench status suites/smoke.yaml
  fmbench ui
  fmbench list
  fmbench check fm-ot
  fmbench trial --method fm-ot --dataset 8gaussians
  fmbench trial --method ddpm --dataset moons --steps 3000 --json
  fmbench trial --method fm-ot --dataset digits --steps 2000 --batch-size 128
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        raise ConfigError(f"{self.prog}: {message}")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _declared_default(section: str, name: str, method: str = "") -> Any:
    """A setting's default where it is declared: a field of TrialSpec ("trial"), TrainConfig
    ("train") or EvalConfig ("eval"), or an option ("method") of ``method``'s registration."""
    if section == "method":
        from harness.core.methods import method_options

        return method_options(method)[name]
    from harness.core.evaluate import EvalConfig
    from harness.core.train import TrainConfig
    from harness.run.trial import TrialSpec

    owner = {"trial": TrialSpec, "train": TrainConfig, "eval": EvalConfig}[section]
    return next(f.default for f in fields(owner) if f.name == name)


def _shown(value: Any) -> str:
    """A default as one would type it on the command line."""
    if isinstance(value, (tuple, list)):
        return " ".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class _HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """Ends each setting's help with its default, looked up only when help is printed: the
    configs import torch, which parsing every other command must not wait for."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action) or ""
        lookup = getattr(action, "default_from", None)
        return text if lookup is None else f"{text} ({_shown(lookup())})".replace("%", "%%")


def _setting(parser: argparse.ArgumentParser, section: str, name: str, text: str,
             default_of: str = "", **kwargs: Any) -> None:
    """``--name`` for one setting of ``section`` (see :func:`_declared_default`). Left out, it
    stays out of the parsed arguments (:func:`_given`), so the declared default applies and is
    written nowhere else."""
    action = parser.add_argument("--" + name.replace("_", "-"), dest=f"{section}.{name}",
                                 default=argparse.SUPPRESS, help=text,
                                 metavar=None if "choices" in kwargs else name.upper(), **kwargs)
    action.default_from = partial(_declared_default, section, name, default_of)


def _given(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The settings of ``section`` given on the command line (lists as tuples, like the configs)."""
    prefix = section + "."
    return {k[len(prefix):]: tuple(v) if isinstance(v, list) else v
            for k, v in vars(args).items() if k.startswith(prefix)}


def _add_trial(sub) -> None:
    """``fmbench trial``: one setting per flag, each default read where it is declared."""
    p = sub.add_parser("trial", help="train and evaluate one (method, dataset, seed)",
                       epilog=EXAMPLES, formatter_class=_HelpWithDefaults)
    p.add_argument("--method", required=True, help="a method name (fmbench list)")
    p.add_argument("--dataset", required=True, help="a dataset name (fmbench list)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module or .py file first (it registers components); "
                        "repeatable")
    _setting(p, "trial", "seed", "seeds data, init, noise", type=int)
    _setting(p, "train", "steps", "optimizer steps", type=_positive(int))
    _setting(p, "train", "batch_size", "batch size", type=_positive(int))
    _setting(p, "train", "lr", "peak learning rate", type=_positive(float))
    _setting(p, "method", "sigma_min", "sigma_min of fm-ot / ot-cfm", type=float,
             default_of="fm-ot")
    _setting(p, "eval", "tol", "dopri5 atol = rtol for NFE and NLL", type=_positive(float))
    _setting(p, "eval", "samples", "dopri5 samples for NFE and W2/MMD", type=_positive(int))
    _setting(p, "eval", "nll_samples", "held-out examples for NLL", type=_positive(int))
    _setting(p, "eval", "dequant_draws", "uniform dequantization draws K for bits/dim",
             type=_positive(int))
    _setting(p, "eval", "error_samples", "noise draws for numerical error vs NFE",
             type=_positive(int))
    _setting(p, "eval", "nfe_budgets", "NFE budgets of the fixed-step solvers",
             type=_positive(int), nargs="+")
    _setting(p, "eval", "fid_samples", "generated samples for FID of image data, 0 for none",
             type=int)
    _setting(p, "eval", "fid_features", "Inception (fid) or a small digit classifier "
             "(fid_classifier)", choices=("inception", "classifier"))
    _setting(p, "eval", "fid_nfe_samples", "samples per point of FID vs NFE, 0 for no curve",
             type=int)
    _setting(p, "train", "precision", "bf16 autocasts the forward pass", choices=("fp32", "bf16"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto)")
    p.add_argument("--data-root", help="folder with dataset files ($FMBENCH_DATA)")
    p.add_argument("--no-download", action="store_true", help="never download datasets")
    p.add_argument("--out", default="trials", help="parent folder for the trial's files (trials)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fmbench", description="Benchmark Flow Matching and diffusion models.",
                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fmbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", help="check a suite file and exit")
    p.add_argument("suite", help="path to a suite YAML file")

    p = sub.add_parser("plan", help="print a suite's trial grid with keys and resources")
    p.add_argument("suite", help="path to a suite YAML file")
    p.add_argument("--json", action="store_true",
                   help="print every trial's fully resolved configuration as one JSON document "
                        "(loads no data)")

    p = sub.add_parser("run", help="run a suite on Ray, tracked in MLflow",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", help="path to a suite YAML file")
    p.add_argument("--address", help="Ray cluster to join (host:port or auto); default: "
                                     "$RAY_ADDRESS, else start Ray here")
    p.add_argument("--tracking-uri", help="MLflow URI (default: suite, $MLFLOW_TRACKING_URI, "
                                          "sqlite:///mlflow.db)")
    p.add_argument("--storage", help="checkpoint root every node can reach (default: suite's)")
    p.add_argument("--force", action="store_true", help="rerun every trial from scratch")
    p.add_argument("--wait", action="store_true",
                   help="if another driver runs this suite on this store, wait for it to end")
    p.add_argument("--connect-timeout", type=_positive(float), metavar="S",
                   help="seconds to wait for the Ray cluster at --address "
                        "($FMBENCH_CONNECT_TIMEOUT_S or 30)")

    p = sub.add_parser("status", help="each trial's state and headline metrics from MLflow")
    p.add_argument("suite", help="path to a suite YAML file")
    p.add_argument("--tracking-uri", help="MLflow URI (as for run)")

    p = sub.add_parser("report", help="build a suite's report (HTML, Markdown, CSV, LaTeX) from "
                       "MLflow", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Examples:\n  fmbench report suites/smoke.yaml\n"
                              "  fmbench report suites/smoke.yaml --out /tmp/smoke-report\n")
    p.add_argument("suite", help="path to a suite YAML file (or a suite name: the grid is then "
                                 "inferred from its runs)")
    p.add_argument("--tracking-uri", help="MLflow URI (as for run)")
    p.add_argument("--out", help="report folder (default: reports/<suite name>/), replaced whole; "
                                 "must be new, empty or an earlier fmbench report")

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the tracking store")
    p.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI or "
                                          "sqlite:///mlflow.db)")
    p.add_argument("--port", type=_positive(int), default=5000, help="port (5000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (127.0.0.1; anything else exposes the UI)")

    p = sub.add_parser("list", help="list methods, datasets, models, solvers and metrics, and "
                                    "where each comes from")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module or .py file first; repeatable")

    _add_trial(sub)
    _add_check(sub)
    return parser


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="run a method's conformance battery against Gaussian closed "
                                     "forms (seconds, CPU)")
    p.add_argument("method", help="a registered method name (see fmbench list)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="a module name or .py file to import first (it registers the method); "
                        "repeatable")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option (a number), e.g. sigma_max=5; repeatable")


def cmd_check(args) -> int:
    """One line per check; exit 1 if any fails."""
    from harness.core.methods import build_method

    from harness.plugins import load_plugins

    load_plugins(args.plugin, "fmbench check --plugin")
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        try:
            options[key] = float(value)
        except ValueError:
            raise ConfigError(f"--option {item!r}: expected KEY=NUMBER") from None
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=NUMBER")
    method = build_method(args.method, **options)  # a bad name or option: one line, exit 2
    from harness.core.conformance import run_checks

    results = run_checks(method)
    for r in results:
        print(r.line())
    failed = [r.name for r in results if not r.passed]
    print(f"{args.method}: {len(results) - len(failed)}/{len(results)} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cmd_list(args) -> int:
    from harness.datasets import DATASETS
    from harness.core.methods import METHODS
    from harness.core.metrics import METRICS
    from harness.models import MODELS
    from harness.core.solvers import SOLVERS
    from harness.plugins import describe_source, load_plugins

    load_plugins(args.plugin, "fmbench list --plugin")
    families = {"methods": METHODS, "datasets": DATASETS, "models": MODELS, "solvers": SOLVERS,
                "metrics": METRICS}
    if args.json:
        out = {k: [{"name": e.name, "summary": e.summary,
                    **{m: v for m, v in e.meta.items() if isinstance(v, (str, int, float))},
                    "source": describe_source(e.source)}
                   for e in reg.entries()] for k, reg in families.items()}
        print(json.dumps(out, indent=2))
        return 0
    for title, reg in families.items():
        print(f"{title}:")
        for e in reg.entries():
            print(f"  {e.name:<16} {e.summary}  [{describe_source(e.source)}]")
    return 0


def _trial_spec(args) -> TrialSpec:
    """The trial the flags describe, its names and method options checked before any data is
    loaded or any step trained."""
    from pathlib import Path

    from harness.datasets import DATASETS
    from harness.core.evaluate import EvalConfig
    from harness.core.methods import METHODS, build_method
    from harness.core.train import TrainConfig
    from harness.plugins import load_plugins, plugins_of
    from harness.run.trial import TrialSpec

    if args.data_root is not None and not Path(args.data_root).expanduser().is_dir():
        raise DataError(f"data root {args.data_root} does not exist or is not a folder")
    load_plugins(args.plugin, "fmbench trial --plugin")
    options = _given(args, "method")
    spec = TrialSpec(method=args.method, dataset=args.dataset, method_options=options,
                     data_root=args.data_root, download=not args.no_download,
                     train=TrainConfig(**_given(args, "train")),
                     eval=EvalConfig(**_given(args, "eval")), **_given(args, "trial"),
                     plugins=plugins_of(METHODS.entry(args.method), DATASETS.entry(args.dataset)))
    if options:
        build_method(spec.method, **options)
    return spec


class _ProgressBar:
    """Training progress on stderr; the bar appears at the first step, so an error before
    training prints none."""

    def __init__(self, total: int, title: str) -> None:
        self.total, self.title, self.bar = total, title, None

    def __call__(self, step: int, loss: float) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.title, file=sys.stderr, unit="step",
                            dynamic_ncols=True, mininterval=0.5)
        self.bar.n = step
        if step % 50 == 0 or step == self.total:
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_trial(result, spec, device, as_json: bool) -> None:
    """A finished trial: its record (JSON) or a short table on stdout, its warnings on stderr."""
    if as_json:
        payload = result.to_json()
        payload.pop("losses")
        print(json.dumps(payload, default=str))
    else:
        print(f"{spec.name}: {result.training.step} steps on {device}, files in {result.out_dir}")
        for name, value in result.metrics.items():
            print(f"  {name:<12} {value:.6g}")
        for p in result.evaluation.error_curve:
            print(f"  error {p.solver:<8} NFE {p.nfe:<4} {p.error:.3e}")
        for p in result.evaluation.quality_curve:
            where = p.solver if p.tol is None else f"{p.solver} tol {p.tol:g}"
            shown = " ".join(f"{k} {v:.4g}" for k, v in p.values.items())
            print(f"  {where:<18} NFE {p.nfe:<6.1f} {shown}")
    for warning in result.evaluation.warnings:
        print(f"fmbench: warning: {warning}", file=sys.stderr)


def cmd_trial(args) -> int:
    from pathlib import Path

    from harness.core.device import resolve_device
    from harness.run.trial import run_trial

    spec = _trial_spec(args)
    device = resolve_device(args.device)
    progress = _ProgressBar(spec.train.steps, f"train {spec.name}")
    try:
        result = run_trial(spec, Path(args.out) / spec.name, device=device, progress=progress,
                           announce=lambda message: print(message, file=sys.stderr))
    finally:
        progress.close()
    _print_trial(result, spec, device, args.json)
    return 0


def cmd_validate(args) -> int:
    from harness.run.suite import load_suite

    suite = load_suite(args.suite)
    print(f"{args.suite}: ok ({suite.size} trials)")
    return 0


def _resources(r) -> str:
    return f"{r.cpus:g} CPU, {r.gpus:g} GPU"


def cmd_plan(args) -> int:
    from harness.run.suite import load_suite

    suite = load_suite(args.suite)
    if args.json:
        from harness.run.plan import plan_json

        for part in plan_json(suite):
            print(part, end="")
        return 0
    # Streamed: the column width comes from the longest parts, not from the built grid.
    width = (max(len(m.label) for m in suite.methods) + max(len(d.name) for d in suite.datasets)
             + max(len(str(s)) for s in suite.seeds) + 3)
    print(f"suite {suite.name}: {suite.size} trials "
          f"({len(suite.methods)} methods x {len(suite.datasets)} datasets x {len(suite.seeds)} seeds)")
    print(f"{'trial':<{width}}  {'key':<16}  {'train':<14}  {'eval':<14}  steps")
    for t in suite.iter_trials():
        print(f"{t.name:<{width}}  {t.key:<16}  {_resources(t.train_resources):<14}  "
              f"{_resources(t.eval_resources):<14}  {t.spec.train.steps}")
    return 0


HEADLINE = ("nfe", "nll", "bpd", "w2", "mmd")


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    print("  ".join(f"{c:<{widths[c]}}" for c in columns))
    for r in rows:
        print("  ".join(f"{r.get(c, ''):<{widths[c]}}" for c in columns))


def _fmt_metric(value) -> str:
    return "—" if value is None else f"{value:.4g}"


def cmd_run(args) -> int:
    from harness.core.storage import check_reachable
    from harness.run.scheduler import run_suite
    from harness.run.suite import load_suite
    from harness.run.tracking import Tracker

    suite = load_suite(args.suite)
    tracker = Tracker(args.tracking_uri or suite.tracking_uri, suite.experiment)
    tracker.check_writable()  # a damaged store: one line before anything is printed
    check_reachable(args.storage or suite.checkpoint_root)  # so is an object store that is away
    print(f"suite {suite.name}: {suite.size} trials", file=sys.stderr)
    summary = run_suite(suite, address=args.address, tracker=tracker,
                        storage=args.storage, force=args.force, wait=args.wait,
                        connect_timeout=args.connect_timeout)
    rows = []
    for s in summary.states:
        row = {"trial": s.trial.name, "status": s.status}
        row.update({k: _fmt_metric(s.metrics.get(k)) for k in HEADLINE if s.metrics})
        rows.append(row)
    _print_table(rows, ["trial", "status", *[k for k in HEADLINE if any(k in r for r in rows)]])
    for s in summary.states:
        if s.status == "failed":
            print(f"{s.trial.name}: {s.reason}")
    print(f"{summary.count('finished')} finished, {summary.count('failed')} failed, "
          f"{summary.count('skipped')} skipped (already finished) in {summary.seconds:.1f} s; "
          f"MLflow experiment {suite.experiment!r}, parent run {summary.parent_run_id}")
    return 0 if summary.ok else 1


def _close_stale(uri: str, experiment: str, suite: str) -> None:
    """Close invocations whose driver is gone (harness.run.invocation) and say so on stderr."""
    from harness.run.invocation import close_stale, closed_note

    closed = close_stale(uri, experiment, suite)
    if closed:
        print(closed_note(closed), file=sys.stderr)


def cmd_status(args) -> int:
    from harness.run.record import State, trial_runs
    from harness.run.suite import load_suite
    from harness.run.tracking import Tracker
    from harness.run.store import mask_uri

    suite = load_suite(args.suite)
    tracker = Tracker(args.tracking_uri or suite.tracking_uri, suite.experiment)
    _close_stale(tracker.uri, suite.experiment, suite.name)
    runs = trial_runs(tracker)
    rows = []
    for t in suite.trials():
        run = runs.get(t.key)
        state = run.state if run else State.MISSING
        row = {"trial": t.name, "key": t.key, "status": state.shown}
        if run is not None:
            row.update({k: _fmt_metric(run.finals[k]) for k in HEADLINE if k in run.finals})
            if state is State.FAILED:
                row["reason"] = run.reason or ""
        rows.append(row)
    columns = ["trial", "key", "status", *[k for k in HEADLINE if any(k in r for r in rows)]]
    if any("reason" in r for r in rows):
        columns.append("reason")
    _print_table(rows, columns)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(", ".join(f"{n} {k}" for k, n in counts.items())
          + f" (tracking {mask_uri(tracker.uri)})")
    return 0


def cmd_report(args) -> int:
    from harness.report import build_report

    result = build_report(args.suite, args.tracking_uri, args.out)
    print(result.status.banner(), file=sys.stderr)
    for warning in result.warnings:
        print(f"fmbench: warning: {warning}", file=sys.stderr)
    print(result.index.resolve())
    return 0


def cmd_ui(args) -> int:
    """Start MLflow's UI on the store and print each suite's page of training runs: MLflow 3.17
    opens experiments in its GenAI view unless the link asks for training runs."""
    import os
    import subprocess

    from harness.run.record import SUITE_KIND, kind_filter
    from harness.run.store import (check_reachable, check_store, mask_uri, resolve_tracking_uri,
                                   split_credentials, ui_url)
    from harness.run.tracking import mlflow_client, retry

    uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(uri)
    new = check_store(uri, create=True)  # a damaged store: one line, never handed to MLflow
    if new:  # `mlflow ui` creates it, as `run` would; say so
        print(f"creating tracking store {mask_uri(uri)}", file=sys.stderr)
    server = uri.startswith(("http://", "https://"))
    base = split_credentials(uri)[0].rstrip("/") if server else f"http://{args.host}:{args.port}"
    suites = [] if new else retry(
        lambda: mlflow_client(uri).search_experiments(filter_string=kind_filter(SUITE_KIND)),
        "listing experiments", budget=10.0)
    if server:
        print(f"runs are on a tracking server: open {ui_url(base)}")
    else:
        print(f"MLflow UI for {mask_uri(uri)} at {base} (Ctrl-C stops it)")
    for exp in suites:
        print(f"  {exp.name}: {ui_url(base, exp.experiment_id)}")
    if server:
        return 0
    sys.stdout.flush()
    # The store URI goes through the environment, not argv, where `ps` would show a password.
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    proc = subprocess.run([sys.executable, "-m", "mlflow", "ui", "--host", args.host,
                           "--port", str(args.port)], env=env)
    return proc.returncode


COMMANDS = {"list": cmd_list, "trial": cmd_trial, "validate": cmd_validate, "plan": cmd_plan,
            "run": cmd_run, "status": cmd_status, "report": cmd_report, "ui": cmd_ui,
            "check": cmd_check}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"fmbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fmbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
