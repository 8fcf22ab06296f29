"""Sharded evaluation on a simulated two-node cluster: one eval task against the same evaluation
fanned out as shard tasks, on the same checkpoint, side by side.

    python benchmarks/sharded_eval.py            # 2000 samples, 1000 NLL points, 3 repetitions
    python benchmarks/sharded_eval.py --tiny     # a few hundred points, 1 repetition: a CI check

One fm-ot network is trained on 8gaussians in this process; then, on a ``ray.cluster_utils``
cluster of a 0-CPU head and two 1-CPU nodes (see ``ray_scaling.cluster``), ``scheduler.eval_task``
runs (a) as one 1-CPU task and (b) as 1-CPU shard tasks plus a 1-CPU eval task that combines them,
submitted as the scheduler does (``scheduler.submit_evaluation``), alternately,
after one untimed run of each (worker processes started, imports done).
Both log to their own MLflow run. Speed-up = single-task seconds / sharded seconds (2 is the
ideal on two 1-CPU nodes); the metrics of the two must agree (NFE exactly). "in the eval task" is
the eval task's own ``eval_time``: the whole evaluation for one task, only the combine for shards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.ray_scaling import cluster  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small evaluation, one repetition")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each side")
    args = p.parse_args()
    import ray
    import torch

    from harness.core.evaluate import EvalConfig
    from harness.run.scheduler import submit_evaluation
    from harness.core.shards import plan_shards
    from harness.run.tracking import Tracker
    from harness.core.train import TrainConfig
    from harness.run.trial import TrialSpec, prepare, train_trial

    torch.set_num_threads(1)
    samples, nll, reps = (400, 200, 1) if args.tiny else (2000, 1000, args.reps)
    batch = samples // 8
    cfg = EvalConfig(samples=samples, nll_samples=nll, batch_size=batch, shard_size=2 * batch,
                     error_samples=batch, nfe_budgets=(8, 16), solvers=("euler", "rk4"),
                     trajectory_samples=0)
    one_cpu = {"num_cpus": 1}
    spec = TrialSpec("fm-ot", "8gaussians", train=TrainConfig(steps=300, batch_size=256), eval=cfg)
    with tempfile.TemporaryDirectory(prefix="fmbench-shards-") as tmp:
        folder = Path(tmp)
        ckpt = str(folder / "ckpt")
        train_trial(prepare(spec), ckpt)
        tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", "sharded-eval")
        with cluster(2, folder / "ray"):
            plan = plan_shards(cfg, prepare(spec).dataset)
            sides = {  # exactly what the scheduler submits for a trial without / with shard_size
                "one task": lambda logger: submit_evaluation(spec, ckpt, logger, None, one_cpu)[0],
                "shards": lambda logger: submit_evaluation(spec, ckpt, logger, plan, one_cpu)[0],
            }
            seconds: dict[str, list[float]] = {k: [] for k in sides}
            evaluating: dict[str, list[float]] = {k: [] for k in sides}
            metrics: dict[str, dict[str, float]] = {}
            for submit in sides.values():  # worker processes started and imports done first
                ray.get(submit(tracker.start_run("warm-up", {})))
            for _ in range(reps):
                for name, submit in sides.items():
                    logger = tracker.start_run(name, {})
                    started = time.perf_counter()
                    metrics[name] = ray.get(submit(logger))
                    seconds[name].append(time.perf_counter() - started)
                    evaluating[name].append(metrics[name]["eval_time"])
    single, split = (statistics.median(seconds[k]) for k in sides)
    print(f"{'side':>9} {'median s':>9} {'in the eval task':>16} {'runs':>5}   evaluation: {samples} samples, {nll} NLL "
          f"points, batch {batch}, shard_size {2 * batch} ({len(plan)} shards)")
    for name in sides:
        print(f"{name:>9} {statistics.median(seconds[name]):>9.2f} "
              f"{statistics.median(evaluating[name]):>16.2f} {len(seconds[name]):>5}")
    same_nfe = metrics["one task"]["nfe"] == metrics["shards"]["nfe"]
    nll_diff = abs(metrics["one task"]["nll"] - metrics["shards"]["nll"])
    print(f"SUMMARY sharded_eval: on 2 x 1-CPU nodes speed-up {single / split:.2f}x "
          f"(ideal 2); NFE equal: {same_nfe}; |NLL difference| {nll_diff:.1e} nats")
    if not same_nfe:
        sys.exit(1)


if __name__ == "__main__":
    main()
