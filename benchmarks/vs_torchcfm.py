"""fmbench's training loop against a torchcfm training loop, for FM w/ OT and minibatch OT-CFM.

    python benchmarks/vs_torchcfm.py            # MLP on 8gaussians, 50 steps x 25 repetitions
    python benchmarks/vs_torchcfm.py --tiny     # a few seconds: a smoke check for CI

Needs torchcfm (``pip install --no-deps -r benchmarks/requirements.txt``); it is not a dependency of the package.

fmbench side: ``harness.core.train.train`` with method ``fm-ot`` or ``ot-cfm``. torchcfm side: the loop
of ``train_overhead.bare_loop`` (same MLP, AdamW, warmup, batch, gradient clipping and EMA, so
both sides do the same work per step) with the conditional path drawn by torchcfm's
``ConditionalFlowMatcher(sigma=0)`` or ``ExactOptimalTransportConditionalFlowMatcher(sigma=0)``
through ``sample_location_and_conditional_flow``. sigma = 0 is torchcfm's default and the
straight path; fmbench's sigma_min = 1e-4 costs the same arithmetic. The torchcfm side builds
AdamW with torch's defaults, as torchcfm's examples do (a per-tensor loop on CPU); fmbench picks
the bitwise-equal ``foreach`` implementation, which is part of what is compared. Repetitions are
interleaved and timed in process CPU time; the ratio is the median of back-to-back ratios. Target: fmbench/torchcfm >= 1.0 for both methods.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch

from harness.datasets import load_dataset
from harness.core.methods import build_method
from harness.models import build_model
from harness.core.train import TrainConfig, train
from harness.run.trial import MODEL_PRESETS
from train_overhead import PairSampler, bare_loop, paired_ratio, side_by_side


def torchcfm_pairs(matcher) -> PairSampler:
    """torchcfm's sampler as a PairSampler (it draws t and the OT resampling from the global RNG)."""

    def sample(x0, x1, gen):
        return matcher.sample_location_and_conditional_flow(x0, x1)

    return sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="8gaussians")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps per repetition")
    p.add_argument("--reps", type=int, default=25, help="timed repetitions of each loop")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tiny", action="store_true", help="10 steps x 3 repetitions (CI smoke check)")
    args = p.parse_args()
    try:
        import torchcfm
    except ImportError:
        sys.exit('vs_torchcfm: torchcfm is not installed; install it with pip install --no-deps -r benchmarks/requirements.txt')
    if args.tiny:
        args.steps, args.reps = 10, 3
    torch.set_num_threads(1)  # one core each run: the machine is shared, and BLAS threads add noise

    data = load_dataset(args.dataset, seed=0)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, checkpoint_every=0, seed=0)
    torch.manual_seed(0)
    init = build_model("mlp", data.shape, **MODEL_PRESETS["mlp"])
    pairs = {"fm-ot": torchcfm.ConditionalFlowMatcher(sigma=0.0),
             "ot-cfm": torchcfm.ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)}
    runs = {}
    for name, matcher in pairs.items():
        method = build_method(name)
        runs[f"fmbench {name}"] = lambda m=method: train(m, data, copy.deepcopy(init), cfg)
        runs[f"torchcfm {type(matcher).__name__}"] = (
            lambda s=torchcfm_pairs(matcher): bare_loop(copy.deepcopy(init), data.train, cfg, s))
    rates = side_by_side(runs, args.reps, args.steps * args.batch_size)
    med = {k: statistics.median(v) for k, v in rates.items()}
    names = list(runs)
    ratios = {m: paired_ratio(rates, names[2 * i], names[2 * i + 1]) for i, m in enumerate(pairs)}

    print(f"torchcfm {torchcfm.__version__}, torch {torch.__version__}; MLP {MODEL_PRESETS['mlp']} "
          f"on {args.dataset}, batch {args.batch_size}, {args.steps} steps x {args.reps} "
          "interleaved repetitions, 1 thread, CPU time")
    print("| loop | median examples per CPU s | min | max |")
    print("|---|---|---|---|")
    for name, v in rates.items():
        print(f"| {name} | {med[name]:,.0f} | {min(v):,.0f} | {max(v):,.0f} |")
    verdict = "meets" if min(ratios.values()) >= 1.0 else "MISSES"
    print("SUMMARY vs_torchcfm: fmbench/torchcfm throughput = "
          + ", ".join(f"{m} {r:.3f}" for m, r in ratios.items()) + f" ({verdict} target >= 1.0)")


if __name__ == "__main__":
    main()
