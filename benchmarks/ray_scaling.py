"""Ray scheduling overhead: a suite of small trials on a simulated multi-node cluster against the same
trials run one after another in this process.

    python benchmarks/ray_scaling.py                      # 50, 200 and 800 steps, 6 trials each
    python benchmarks/ray_scaling.py --steps 200 800 --trials 8 --workers 2
    python benchmarks/ray_scaling.py --tiny               # 2 trials of 10 steps: a CI check

The cluster is ``ray.cluster_utils.Cluster``: a head node with 0 CPUs (it runs no task) and
``--workers`` nodes of 1 CPU each, all on this machine, with its own Ray temp folder and no
dashboard, so it neither joins nor disturbs another Ray cluster here; it is shut down on any exit,
SIGTERM included.

Both sides do the same work per trial, tracked in one SQLite MLflow store (separate experiments):
  serial:   Tracker.start_run, then ``scheduler.train_task`` and ``scheduler.eval_task`` with a
            RunLogger, then finish; torch is limited to 1 thread, as Ray limits each 1-CPU task.
  parallel: ``scheduler.run_suite`` on the cluster: a parent run, every trial's run, a train task
            and an eval task per trial (worker processes already started by a warm-up suite).
Parallel efficiency = serial time / (parallel time x workers); per-trial overhead =
(parallel time x workers - serial time) / trials, and the part of it that is the work itself running
slower side by side (train + eval seconds the trials logged, parallel minus serial). The trials are
one method, one dataset and many seeds, so they last about as long as each other: the figures
measure scheduling, not load imbalance. Each trial is its training plus a small fixed evaluation
(dopri5 NFE and NLL of 100 and 20 points, ~2 s of one CPU), as a real trial is.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as `python benchmarks/ray_scaling.py` from a checkout
    sys.path.insert(0, str(ROOT))

SUITE = """\
name: {name}
include: {base}
methods: [fm-ot]
datasets: [8gaussians]
seeds: {trials}
training: {{steps: {steps}, warmup_steps: {warmup}, checkpoint_every: 0, log_every: 10}}
evaluation: {{samples: 100, nll_samples: 20, error_samples: 8, nfe_budgets: [4],
              solvers: [euler], batch_size: 100}}
resources: {{train: {{cpus: 1, gpus: 0}}, eval: {{cpus: 1, gpus: 0}}}}
"""
FEW_SECONDS = 2.0
"""Trials at least this long (serial seconds each) are held to the 0.9 efficiency target."""
TARGET = 0.9


def write_suite(folder: Path, name: str, steps: int, trials: int):
    """A suite of ``trials`` seeds of fm-ot on 8gaussians trained for ``steps`` steps."""
    from harness.run.suite import load_suite

    path = folder / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, base=ROOT / "suites" / "base-2d.yaml", trials=trials,
                                 steps=steps, warmup=min(50, steps)))
    return load_suite(path)


@contextmanager
def cluster(workers: int, folder: Path) -> Iterator[str]:
    """A head with 0 CPUs and ``workers`` 1-CPU nodes, connected; yields its address. Everything
    Ray writes (sessions, sockets, the "current cluster" file) goes under ``folder``."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private test cluster: no token
    os.environ["RAY_TMPDIR"] = str(folder)
    os.environ.pop("RAY_ADDRESS", None)  # never join a cluster someone else started
    import ray
    from ray.cluster_utils import Cluster

    with socket.socket() as probe:  # Ray's default dashboard port may be another cluster's
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "num_gpus": 0, "include_dashboard": False, "dashboard_port": port})
    try:
        for _ in range(workers):
            c.add_node(num_cpus=1, num_gpus=0)
        c.wait_for_nodes()
        ray.init(address=c.address, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
        yield c.address
    finally:
        ray.shutdown()
        c.shutdown()


def serial(suite, uri: str, storage: Path) -> float:
    """Seconds to run every trial of ``suite`` in this process, logging as the Ray tasks do."""
    from harness.run.record import State, TrialWriter
    from harness.run.tasks import eval_task, train_task
    from harness.run.tracking import Tracker, git_commit

    tracker = Tracker(uri, f"{suite.name}-serial")
    started = time.perf_counter()
    tracker.connect()
    for t in suite.trials():
        writer = TrialWriter.create(tracker, suite.name, t, git_commit())
        folder = str(storage / "serial" / t.key)
        train_task(t.spec, folder, writer.logger)
        eval_task(t.spec, folder, writer.logger)
        writer.end(State.FINISHED)
    return time.perf_counter() - started


def parallel(suite, uri: str, storage: Path) -> float:
    """Seconds ``run_suite`` takes for ``suite`` on the connected cluster; every trial must finish."""
    from harness.run.scheduler import run_suite

    started = time.perf_counter()
    summary = run_suite(suite, tracking_uri=uri, storage=str(storage / "ray"), stream=io.StringIO())
    seconds = time.perf_counter() - started
    bad = [f"{s.trial.name}: {s.status} {s.reason}" for s in summary.states if s.status != "finished"]
    if bad:
        raise RuntimeError("trials did not finish under Ray: " + "; ".join(bad))
    return seconds


def work_seconds(uri: str, experiment: str) -> float:
    """Seconds the trials of ``experiment`` spent training and evaluating, as they logged them
    (``time/train_s`` + ``final/eval_time``): the work itself, without setup, logging or waiting."""
    from mlflow import MlflowClient

    from harness.run import record

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], record.kind_filter(record.TRIAL),
                              max_results=1000)
    return sum(r.data.metrics.get(record.TRAIN_S, 0.0)
               + r.data.metrics.get(record.final("eval_time"), 0.0) for r in runs)


def measure(steps: int, trials: int, workers: int, folder: Path) -> dict[str, float]:
    """One table row: the suite run serially, then on the cluster."""
    suite = write_suite(folder, f"ray-scaling-{steps}", steps, trials)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    serial_s = serial(suite, uri, folder / "checkpoints")
    parallel_s = parallel(suite, uri, folder / "checkpoints")
    # Work done by the two concurrent workers takes longer than alone when they share caches,
    # memory bandwidth or cores with other load: that part of the overhead is not Ray's.
    inflation = work_seconds(uri, suite.experiment) - work_seconds(uri, f"{suite.name}-serial")
    return {"steps": steps, "trials": trials, "serial_s": serial_s, "parallel_s": parallel_s,
            "trial_s": serial_s / trials, "efficiency": serial_s / (parallel_s * workers),
            "overhead_ms": 1000 * (parallel_s * workers - serial_s) / trials,
            "inflation_ms": 1000 * inflation / trials}


def summary(rows: list[dict[str, float]], workers: int) -> str:
    """Efficiency of the longest trials, whether trials of a few seconds reach the target, and the
    per-trial overhead (median over sizes: it should not depend on trial length)."""
    long = [r for r in rows if r["trial_s"] >= FEW_SECONDS]
    overheads = sorted(r["overhead_ms"] for r in rows)
    last = rows[-1]
    verdict = (f"{'met' if all(r['efficiency'] >= TARGET for r in long) else 'MISSED'} for trials of "
               f">= {FEW_SECONDS:g} s" if long else f"untested (no trial lasted {FEW_SECONDS:g} s)")
    return (f"summary: parallel efficiency on {workers} workers {last['efficiency']:.2f} at "
            f"{last['trial_s']:.1f} s trials ({rows[0]['efficiency']:.2f} at "
            f"{rows[0]['trial_s']:.1f} s); target >= {TARGET} {verdict}; per-trial overhead "
            f"{overheads[len(overheads) // 2]:.0f} ms (median over {len(rows)} sizes)")


def _load() -> str:
    """1-minute load average per core: the other work on this machine during a measurement."""
    return f"{os.getloadavg()[0] / (os.cpu_count() or 1):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[50, 200, 800],
                   help="training steps per trial, one table row each")
    p.add_argument("--trials", type=int, default=6, help="trials per size (seeds)")
    p.add_argument("--workers", type=int, default=2, help="worker nodes of 1 CPU each")
    p.add_argument("--tiny", action="store_true",
                   help="2 trials of 10 steps on fresh workers (no warm-up): a CI smoke check")
    args = p.parse_args()
    sizes, trials = ([10], args.workers) if args.tiny else (sorted(args.steps), args.trials)

    def terminate(signum, frame):  # SIGTERM (a CI timeout) unwinds, so the cluster is shut down
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    import torch

    torch.set_num_threads(1)  # the serial side gets one CPU, like each 1-CPU Ray task
    with tempfile.TemporaryDirectory(prefix="fmbench-ray-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        with cluster(args.workers, folder / "ray") as address:
            line = (f"cluster {address} (files under {folder / 'ray'}): head (0 CPUs) + "
                    f"{args.workers} x 1-CPU nodes up in {time.perf_counter() - started:.1f} s")
            if not args.tiny:
                warm = write_suite(folder, "warm-up", 10, args.workers)
                warm_s = parallel(warm, f"sqlite:///{folder / 'mlflow.db'}", folder / "checkpoints")
                line += f"; warm-up suite ({args.workers} trials of 10 steps) {warm_s:.1f} s"
            print(line, flush=True)
            print(f"{'steps':>6} {'trials':>6} {'s/trial':>8} {'serial s':>9} {'parallel s':>10} "
                  f"{'efficiency':>10} {'overhead ms/trial':>17} {'of it slower work':>17} "
                  f"{'load/core':>9}", flush=True)
            rows = []
            for steps in sizes:
                r = measure(steps, trials, args.workers, folder)
                rows.append(r)
                print(f"{r['steps']:>6} {r['trials']:>6} {r['trial_s']:>8.2f} {r['serial_s']:>9.1f} "
                      f"{r['parallel_s']:>10.1f} {r['efficiency']:>10.2f} {r['overhead_ms']:>17.0f} "
                      f"{r['inflation_ms']:>17.0f} {_load():>9}", flush=True)
    print(summary(rows, args.workers))


if __name__ == "__main__":
    main()
