"""Reference numbers that catch drift: per (method, dataset) NFE, NLL and W2 over seeds.

    python benchmarks/reference.py make            # run suites/reference-2d.yaml, write the reference
    python benchmarks/reference.py check           # full drift check: every cell, every seed
    python benchmarks/reference.py check --quick   # CI form: every method on 8gaussians, first seed

Like MLPerf's reference convergence points: the committed file holds, for every cell, the value of
each seed, the mean, a 95% confidence interval of the mean and a 95% prediction interval for one
new seed (Student t over seeds; both assume seed-to-seed values are roughly normal). ``check``
reruns the same trials through the same runner as ``fmbench trial`` (no Ray, no MLflow) and fails
when

- full form: a cell's new mean over the reference seeds leaves the reference mean's 95% interval;
- quick form (or any subset of seeds): a single seed's value leaves the 95% prediction interval.

An NFE interval is never narrower than one dopri5 step (``RESOLUTION``).

A change that moves numbers on purpose (a new science version) regenerates the file in the same
commit, with the command above; the check refuses a reference whose trial settings differ from the
suite's, because its numbers would then answer another question.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = "suites/reference-2d.yaml"
REFERENCE = "benchmarks/reference/reference-2d.json"
METRICS = ("nfe", "nll", "w2")  # dopri5 NFE at the suite's tol, NLL in nats, exact W2 (POT)
CONFIDENCE = 0.95
QUICK_DATASET = "8gaussians"
# The smallest change a metric can show. dopri5 spends 6 evaluations per step (torchdiffeq's FSAL
# tableau), so NFE moves in steps of 6; where every seed gave the same NFE the interval has zero
# width, and one step more on another machine's floating point would read as drift.
RESOLUTION = {"nfe": 6.0}


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


def t_quantile(n: int) -> float:
    """Two-sided Student-t quantile for ``CONFIDENCE`` with n - 1 degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + CONFIDENCE / 2, n - 1))


def summarize(values: list[float]) -> dict:
    """Mean, sample std, the mean's 95% interval and one new seed's 95% prediction interval."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"values": values, "mean": mean, "std": None, "ci95": None, "pi95": None}
    std = statistics.stdev(values)
    q = t_quantile(n)
    ci = q * std / math.sqrt(n)
    pi = q * std * math.sqrt(1 + 1 / n)
    return {"values": values, "mean": mean, "std": std, "ci95": [mean - ci, mean + ci],
            "pi95": [mean - pi, mean + pi]}


def settings(spec) -> dict:
    """A trial's science settings without the science version: what must match for a comparison."""
    from harness.run.suite import science_config

    config = science_config(spec)
    config.pop("science_version")
    return config


def select(suite, methods=None, datasets=None, seeds=None) -> list:
    """The suite's trials, restricted to the given methods, datasets and seeds."""
    return [t for t in suite.iter_trials()
            if (not methods or t.spec.method in methods) and (not datasets or t.spec.dataset in datasets)
            and (seeds is None or t.spec.seed in seeds)]


def _run_one(spec, out_dir: str) -> tuple[str, str, int, dict]:
    """Worker: one trial, one thread (the pool runs one trial per core)."""
    import torch

    from harness.run.trial import run_trial

    torch.set_num_threads(1)
    result = run_trial(spec, Path(out_dir) / spec.name)
    return spec.method, spec.dataset, spec.seed, {k: float(result.metrics[k]) for k in METRICS}


def run_trials(trials: list, jobs: int) -> dict[tuple[str, str], dict[int, dict]]:
    """Run trials in ``jobs`` processes; {(method, dataset): {seed: metrics}}, with progress."""
    results: dict[tuple[str, str], dict[int, dict]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fmbench-reference-") as out, \
            ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_one, t.spec, out) for t in trials]
        for done, future in enumerate(as_completed(futures), 1):
            method, dataset, seed, metrics = future.result()
            results.setdefault((method, dataset), {})[seed] = metrics
            print(f"[{done}/{len(trials)} {time.perf_counter() - started:.0f} s] "
                  f"{method}-{dataset}-s{seed}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
    return results


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def make(args) -> int:
    import torch

    from harness import SCIENCE_VERSION, __version__
    from harness.run.suite import load_suite

    suite = load_suite(args.suite)
    trials = select(suite, args.methods, args.datasets, args.seeds)
    results = run_trials(trials, args.jobs)
    cells = []
    for (method, dataset), per_seed in sorted(results.items()):
        seeds = sorted(per_seed)
        spec = next(t.spec for t in trials if (t.spec.method, t.spec.dataset) == (method, dataset))
        cells.append({"method": method, "dataset": dataset, "seeds": seeds,
                      "settings_sha256": _sha(settings(spec)),
                      **{k: summarize([per_seed[s][k] for s in seeds]) for k in METRICS}})
    reference = {
        "about": "fmbench drift reference; see benchmarks/reference.py",
        "command": " ".join(["python benchmarks/reference.py make", f"--suite {args.suite}",
                             f"--out {args.out}"]
                            + [f"--{k} {' '.join(map(str, v))}" for k, v in
                               (("methods", args.methods), ("datasets", args.datasets),
                                ("seeds", args.seeds)) if v]),
        "suite": args.suite, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(), "harness_version": __version__,
        "science_version": SCIENCE_VERSION, "torch": torch.__version__,
        "confidence": CONFIDENCE, "interval": "Student t over seeds (ci95: the mean; pi95: one seed)",
        "metrics": {"nfe": "dopri5 network evaluations at the suite's tol",
                    "nll": "negative log-likelihood of held-out points, nats",
                    "w2": "exact 2-Wasserstein distance to held-out points (POT)"},
        "cells": cells,
    }
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {args.out}: {len(cells)} cells x {len(METRICS)} metrics")
    return 0


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compare(reference: dict, results: dict[tuple[str, str], dict[int, dict]]) -> list[dict]:
    """One row per (cell, metric): the new value (a mean when several seeds ran), the interval it
    is held to, and whether it lies inside."""
    cells = {(c["method"], c["dataset"]): c for c in reference["cells"]}
    rows = []
    for key, per_seed in sorted(results.items()):
        cell = cells[key]
        for metric in METRICS:
            ref = cell[metric]
            new = [per_seed[s][metric] for s in sorted(per_seed)]
            full = sorted(per_seed) == cell["seeds"]
            bounds = ref["ci95"] if full else ref["pi95"]
            if bounds is None:
                raise SystemExit(f"reference cell {key} has one seed: no interval to check against")
            res = RESOLUTION.get(metric, 0.0)
            bounds = [min(bounds[0], ref["mean"] - res), max(bounds[1], ref["mean"] + res)]
            interval = Interval(*bounds)
            values = [statistics.fmean(new)] if full else new
            rows.append({"method": key[0], "dataset": key[1], "metric": metric,
                         "form": "mean" if full else "seed", "new": values,
                         "reference": ref["mean"], "interval": bounds,
                         "ok": all(v in interval for v in values)})
    return rows


def check(args) -> int:
    from harness.run.suite import load_suite

    path = ROOT / args.reference if not Path(args.reference).is_absolute() else Path(args.reference)
    try:
        reference = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read reference {args.reference}: {exc}", file=sys.stderr)
        return 2
    suite = load_suite(reference["suite"])
    cells = {(c["method"], c["dataset"]): c for c in reference["cells"]}
    missing = sorted({(t.spec.method, t.spec.dataset) for t in suite.iter_trials()} - set(cells))
    if missing:
        print(f"note: no reference yet for {', '.join('/'.join(c) for c in missing)}")
    if args.quick:
        args.datasets = args.datasets or [QUICK_DATASET]
        args.seeds = args.seeds or [min(suite.seeds)]
    args.methods = args.methods or sorted({m for m, _ in cells})
    args.datasets = args.datasets or sorted({d for _, d in cells})
    trials = select(suite, args.methods, args.datasets, args.seeds)
    for t in trials:
        cell = cells.get((t.spec.method, t.spec.dataset))
        if cell is None or t.spec.seed not in cell["seeds"]:
            print(f"error: {t.name} is not in {args.reference}; regenerate it with: "
                  f"{reference['command']}", file=sys.stderr)
            return 2
        if cell["settings_sha256"] != _sha(settings(t.spec)):
            print(f"error: {t.name}'s settings differ from those the reference was made with "
                  f"({reference['suite']} or its defaults changed); regenerate it with: "
                  f"{reference['command']}", file=sys.stderr)
            return 2
    from harness import SCIENCE_VERSION

    if reference["science_version"] != SCIENCE_VERSION:
        print(f"note: reference made with science version {reference['science_version']}, "
              f"code is at {SCIENCE_VERSION}")
    rows = compare(reference, run_trials(trials, args.jobs))
    print(f"\n{'cell':<32} {'metric':<6} {'form':<5} {'new':>22}  reference 95% interval")
    for r in rows:
        new = ", ".join(f"{v:.4g}" for v in r["new"])
        lo, hi = r["interval"]
        print(f"{r['method'] + '/' + r['dataset']:<32} {r['metric']:<6} {r['form']:<5} {new:>22}  "
              f"{r['reference']:.4g} [{lo:.4g}, {hi:.4g}]  {'ok' if r['ok'] else 'DRIFT'}")
    drift = [r for r in rows if not r["ok"]]
    print(f"SUMMARY reference: {len(rows) - len(drift)}/{len(rows)} within their 95% intervals"
          + (f"; drift in {', '.join(r['method'] + '/' + r['dataset'] + ' ' + r['metric'] for r in drift)}"
             if drift else ""))
    return 1 if drift else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="run the reference suite and write the reference file")
    m.add_argument("--suite", default=SUITE)
    m.add_argument("--out", default=REFERENCE)
    c = sub.add_parser("check", help="rerun trials and compare with the reference")
    c.add_argument("--reference", default=REFERENCE)
    c.add_argument("--quick", action="store_true",
                   help=f"every method on {QUICK_DATASET}, the first seed (about a minute)")
    for q in (m, c):
        q.add_argument("--methods", nargs="+", help="only these methods (default: all)")
        q.add_argument("--datasets", nargs="+", help="only these datasets (default: all)")
        q.add_argument("--seeds", nargs="+", type=int, help="only these seeds (default: all)")
        q.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                       help="trials run at once, one thread each (default: all cores)")
    args = p.parse_args(argv)
    return make(args) if args.command == "make" else check(args)


if __name__ == "__main__":
    sys.exit(main())
