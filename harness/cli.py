"""The ``fmbench`` command line. User mistakes become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys

from harness import __version__
from harness.errors import ConfigError, HarnessError
from harness.trial_command import (HelpWithDefaults, add_trial_parser, cmd_trial, positive,
                                   whole_number)

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
    p.add_argument("--connect-timeout", type=positive(float), metavar="S",
                   help="seconds to wait for the Ray cluster at --address "
                        "($FMBENCH_CONNECT_TIMEOUT_S or 30)")

    p = sub.add_parser("status", help="each trial's state and headline metrics from MLflow")
    p.add_argument("suite", help="path to a suite YAML file")
    p.add_argument("--tracking-uri", help="MLflow URI (as for run)")

    p = sub.add_parser("report", help="build a suite's report (HTML, Markdown, CSV, LaTeX) from "
                       "MLflow", formatter_class=HelpWithDefaults,
                       epilog="Examples:\n  fmbench report suites/smoke.yaml\n"
                              "  fmbench report suites/smoke.yaml --out /tmp/smoke-report\n")
    p.add_argument("suite", help="path to a suite YAML file (or a suite name: the grid is then "
                                 "inferred from its runs)")
    p.add_argument("--tracking-uri", help="MLflow URI (as for run)")
    p.add_argument("--out", help="report folder (default: reports/<suite name>/), replaced whole; "
                                 "must be new, empty or an earlier fmbench report")
    action = p.add_argument("--curve-seeds", type=whole_number, default=argparse.SUPPRESS,
                            metavar="N", help="seeds per method and dataset whose curves are "
                                              "read, lowest first; 0 reads every seed")
    action.default_from = _report_curve_seeds

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the tracking store")
    p.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI or "
                                          "sqlite:///mlflow.db)")
    p.add_argument("--port", type=positive(int), default=5000, help="port (5000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (127.0.0.1; anything else exposes the UI)")

    p = sub.add_parser("list", help="list methods, datasets, models, solvers and metrics, and "
                                    "where each comes from")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module or .py file first; repeatable")

    add_trial_parser(sub, EXAMPLES)
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


def _report_curve_seeds() -> int:
    from harness.report.curves import CURVE_SEEDS

    return CURVE_SEEDS


def cmd_report(args) -> int:
    from harness.report import build_report

    given = {"curve_seeds": args.curve_seeds} if "curve_seeds" in vars(args) else {}
    result = build_report(args.suite, args.tracking_uri, args.out, **given)
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
