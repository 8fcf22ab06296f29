"""How report generation scales with the number of runs in one experiment.

    python benchmarks/report_scale.py                 # 1,000, 3,000 and 10,000 runs
    python benchmarks/report_scale.py --runs 2000     # other sizes
    python benchmarks/report_scale.py --tiny          # 100 runs: a quick end-to-end check for CI

For each size it synthesizes a suite of that many trials (every method on the three 2-D datasets,
with the smoke suite's settings and as many seeds as it takes) in a fresh SQLite MLflow store, then
times ``build_report`` on it (wall and CPU seconds: CPU time shows what other load on the machine
added to the wall time) after one untimed report on a small store, so imports and first-use costs
fall in no row. Prints one table and a one-line summary (linear growth? 10,000 runs under 30 s?).

The store and experiment are created through MLflow (so the schema is MLflow's own) and the runs are
then written with bulk SQL inserts into MLflow's tables: MlflowClient writes about 10 runs a second
on a 2-core machine, which would make the 10,000-run store take longer than the thing measured.
Each run looks like a real smoke trial: its resolved config as ~70 params, the trial tags, final
metrics, a 30-point loss curve, during-training and numerical-error histories; 2% of the runs
failed and 1% are still running.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as `python benchmarks/report_scale.py` from a checkout
    sys.path.insert(0, str(ROOT))

from harness.report import build_report  # noqa: E402
from harness.report.collect import Store  # noqa: E402
from harness.run.suite import load_suite  # noqa: E402
from harness.run import record  # noqa: E402
from harness.run.record import State, flatten  # noqa: E402

METHODS = ["ddpm", "score-matching", "score-matching-ve", "scoreflow", "fm-diffusion", "fm-ot",
           "rectified-flow", "ot-cfm"]
DATASETS = ["8gaussians", "moons", "circles"]
PER_SEED = len(METHODS) * len(DATASETS)
SUITE = """\
name: scale
include: {smoke}
methods: {methods}
datasets: {datasets}
seeds: {seeds}
"""
QUALITY = {"8gaussians": 0.3, "moons": 0.15, "circles": 0.2}


def _configs(suite) -> dict[tuple[str, str], dict[str, str]]:
    """Flattened resolved configs per (method, dataset), as trials log them (seed 0)."""
    from harness.run.trial import prepare

    out = {}
    for t in suite.trials():
        if t.seed == 0 and (t.method.name, t.dataset.name) not in out:
            out[t.method.name, t.dataset.name] = flatten(prepare(t.spec).config)
    return out


def synthesize(folder: Path, n: int) -> tuple[str, object]:
    """A suite of ``n`` trials and a store holding one run for each; returns (uri, suite)."""
    from mlflow import MlflowClient

    path = folder / "scale.yaml"
    smoke = ROOT / "suites" / "smoke.yaml"
    path.write_text(SUITE.format(smoke=smoke, methods=METHODS, datasets=DATASETS,
                                 seeds=math.ceil(n / PER_SEED)))
    suite = load_suite(path)
    trials = suite.trials()[:n]
    configs = _configs(suite)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = int(client.create_experiment("scale", artifact_location=str(folder / "artifacts")))
    parent = client.create_run(str(exp), tags=record.invocation_tags("scale", "0" * 40))
    client.set_terminated(parent.info.run_id)
    rng = random.Random(0)
    now = int(time.time() * 1000)
    runs, tags, params, metrics, latest = [], [], [], [], []
    for i, t in enumerate(trials):
        rid = uuid.uuid4().hex
        roll = rng.random()
        state = State.FAILED if roll < 0.02 else State.RUNNING if roll < 0.03 else State.FINISHED
        status = state.status
        runs.append((rid, t.name, "UNKNOWN", "", "", "bench", status, now + i, now + i + 1, "",
                     "active", f"{folder}/artifacts/{rid}/artifacts", exp))
        tag = {**record.trial_tags("scale", t, "0" * 40), record.HARNESS_VERSION: "0.1.0",
               **record.placement_tags("node", "cpu", ""), "mlflow.runName": t.name}
        if state is State.FAILED:
            tag[record.REASON] = "DivergenceError: loss is nan"
        tags += [(k, str(v), rid) for k, v in tag.items()]
        config = {**configs[t.method.name, t.dataset.name], "seed": str(t.seed),
                  "train.seed": str(t.seed), "eval.seed": str(t.seed)}
        params += [(k, v, rid) for k, v in config.items()]
        ot = t.method.name in ("fm-ot", "rectified-flow", "ot-cfm")
        points = [(record.LOSS, 1.0 / (1 + s / 50) + rng.random() * 0.05, s)
                  for s in range(0, 300, 10)]
        points += [(record.during("w2"), QUALITY[t.dataset.name] * (1 + 600 / s) * rng.uniform(0.9, 1.1),
                    s) for s in (100, 200, 300)]
        points += [(record.error(solver), (2e-3 if ot else 1e-2) / b * rng.uniform(0.8, 1.2), b)
                   for solver in ("euler", "midpoint", "rk4") for b in (4, 8, 16)]
        if state is State.FINISHED:
            nfe = (60 if ot else 110) * rng.uniform(0.9, 1.1)
            points += [(record.final(k), v, 300) for k, v in {
                "nfe": nfe, "nll": 2.6 + rng.random() * 0.2, "nll_se": 0.02, "nll_nfe": 2 * nfe,
                "w2": QUALITY[t.dataset.name] * rng.uniform(0.9, 1.3), "mmd": 1e-3,
                "eval_time": 10 * rng.uniform(0.8, 1.2)}.items()]
            points.append((record.TRAIN_S, 60 * rng.uniform(0.8, 1.2), 300))
        last = {}
        for key, value, step in points:
            metrics.append((key, value, now, rid, step, 0))
            last[key] = (value, step)
        latest += [(key, v, now, s, 0, rid) for key, (v, s) in last.items()]
    con = sqlite3.connect(folder / "mlflow.db")
    con.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name,"
                    " user_id, status, start_time, end_time, source_version, lifecycle_stage,"
                    " artifact_uri, experiment_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
    con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
    con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
    con.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan)"
                    " VALUES (?,?,?,?,?,?)", metrics)
    con.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)"
                    " VALUES (?,?,?,?,?,?)", latest)
    con.commit()
    con.close()
    return uri, suite


def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"fmbench-scale-{n}-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        uri, suite = synthesize(folder, n)
        synth = time.perf_counter() - started
        started = time.perf_counter()
        Store(uri, "scale").runs("scale")
        search = time.perf_counter() - started
        started, cpu = time.perf_counter(), time.process_time()
        result = build_report(suite, uri, folder / "report")
        total, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert result.index.is_file() and result.logged_to, "the report was not built and logged"
        return {"runs": n, "synth_s": synth, "search_s": search, "report_s": total, "cpu_s": cpu,
                "finished": result.status.counts["finished"],
                "load": os.getloadavg()[0] / (os.cpu_count() or 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, nargs="+", default=[1000, 3000, 10000])
    p.add_argument("--tiny", action="store_true", help="100 runs only (a CI smoke check)")
    args = p.parse_args()
    sizes = [100] if args.tiny else sorted(args.runs)
    if not args.tiny:
        measure(PER_SEED)  # warm-up: imports and first-use costs would otherwise land in row 1
    print(f"{'runs':>7} {'finished':>8} {'synthesize s':>12} {'search s':>8} {'report s':>9} "
          f"{'report cpu s':>12} {'report s / 1k runs':>18} {'load/core':>9}", flush=True)
    rows = []
    for n in sizes:
        r = measure(n)
        rows.append(r)
        print(f"{r['runs']:>7} {r['finished']:>8} {r['synth_s']:>12.1f} {r['search_s']:>8.1f} "
              f"{r['report_s']:>9.1f} {r['cpu_s']:>12.1f} {1000 * r['report_s'] / r['runs']:>18.2f} "
              f"{r['load']:>9.2f}", flush=True)
    print(summary(rows))


def summary(rows: list[dict[str, float]]) -> str:
    """A line through the smallest and largest size; middle sizes test that the growth is linear."""
    if len(rows) < 2:
        return f"summary: {rows[0]['runs']} runs in {rows[0]['report_s']:.1f} s"
    a, b = rows[0], rows[-1]
    slope = (b["report_s"] - a["report_s"]) / (b["runs"] - a["runs"])
    fixed = a["report_s"] - slope * a["runs"]
    off = [abs(r["report_s"] - (fixed + slope * r["runs"])) / r["report_s"] for r in rows[1:-1]]
    shape = (f"linear within {100 * max(off):.0f}% at {', '.join(str(r['runs']) for r in rows[1:-1])}"
             f" runs" if off else "two sizes only, linearity untested")
    return (f"summary: report time ~ {fixed:.1f} s + {1000 * slope:.2f} s per 1,000 runs ({shape});"
            f" {b['runs']} runs in {b['report_s']:.1f} s ({'under' if b['report_s'] < 30 else 'over'}"
            f" 30 s; {b['cpu_s']:.1f} s CPU), {b['search_s']:.1f} s of it reading the runs"
            f" (Store.runs)")


if __name__ == "__main__":
    main()
