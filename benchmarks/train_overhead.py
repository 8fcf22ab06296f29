"""What fmbench's training loop costs over a bare PyTorch loop doing the same work.

    python benchmarks/train_overhead.py            # MLP on 8gaussians, 50 steps x 41 repetitions
    python benchmarks/train_overhead.py --tiny     # a few seconds: a smoke check for CI

Both loops train the same MLP (fmbench's ``mlp`` preset) with the same AdamW, linear warmup, batch,
FM-OT loss, gradient clipping and EMA, drawing batches, noise and times from one seeded generator
in the same order, and the same AdamW implementation (``foreach``, fmbench's choice on CPU), so they end
with the same weights (the script prints the difference). The bare loop only lacks fmbench's
bookkeeping: the LR scheduler object, the method/path abstraction, NaN checks, loss logging,
checkpointing hooks. Repetitions alternate A, B, A, B, ..., each timed in process CPU time (see
:func:`side_by_side`); the ratio is the median of back-to-back ratios. Target: fmbench/bare >= 0.98.

The side-by-side timer and the bare loop (with a pluggable conditional-path sampler) are reused by
``vs_torchcfm.py``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch
from torch import Tensor, nn

from harness.datasets import load_dataset
from harness.core.methods import build_method
from harness.models import build_model
from harness.core.train import TrainConfig, train
from harness.run.trial import MODEL_PRESETS

PairSampler = Callable[[Tensor, Tensor, torch.Generator], "tuple[Tensor, Tensor, Tensor]"]
"""(x0, x1, generator) -> (t (B,), x_t (B, D), target velocity u_t (B, D))."""


def paired_ratio(rates: dict[str, list[float]], a: str, b: str) -> float:
    """Median over repetitions of rate(a) / rate(b): each ratio compares two runs made back to
    back, so a slow spell of the machine cancels out instead of landing on one side."""
    return statistics.median(x / y for x, y in zip(rates[a], rates[b]))


def side_by_side(runs: dict[str, Callable[[], object]], reps: int, items: int,
                 warmup: bool = True) -> dict[str, list[float]]:
    """Time each callable ``reps`` times, interleaved (A, B, A, B, ...); items per CPU second.

    The clock is this process's CPU time: everything here runs on one CPU thread, and on a shared
    machine wall time also counts the time other processes hold the core (wall-clock medians of
    the same loop varied by 2x between repetitions here; CPU time by a few percent).
    ``warmup``: one untimed call of each first, so one-off costs (allocator growth, lazy init)
    hit neither side. The order within a repetition alternates, so neither side always runs
    right after the other.
    """
    names = list(runs)
    for name in names if warmup else ():
        runs[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            start = time.process_time()
            runs[name]()
            out[name].append(items / (time.process_time() - start))
    return out


def fm_ot_pairs(sigma_min: float) -> PairSampler:
    """FM w/ OT's conditional path, written out: x_t = t x1 + (1 - (1 - s) t) x0, u = x1 - (1 - s) x0,
    with x0 then t drawn from the generator (the order fmbench's ``Method.loss`` uses)."""

    def sample(x0: Tensor, x1: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        t = torch.rand(x1.shape[0], generator=gen)
        tt = t[:, None]
        return t, tt * x1 + (1 - (1 - sigma_min) * tt) * x0, x1 - (1 - sigma_min) * x0

    return sample


def bare_loop(net: nn.Module, data: Tensor, cfg: TrainConfig, pairs: PairSampler,
              **adamw: object) -> nn.Module:
    """``cfg.steps`` plain AdamW steps on vector data (N, D); returns the EMA network.

    Same work per step as :func:`harness.core.train.train`: batch, noise and times from one generator
    seeded by ``cfg.seed``, warmup LR, clipping, EMA with fmbench's ramp. ``adamw``: extra
    AdamW arguments (the implementation: ``foreach``, ``fused``)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    ema = copy.deepcopy(net).requires_grad_(False)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **adamw)
    warmup = max(cfg.warmup_steps, 1)
    for step in range(cfg.steps):
        opt.param_groups[0]["lr"] = cfg.lr * min(1.0, (step + 1) / warmup)
        x1 = data[torch.randint(len(data), (cfg.batch_size,), generator=gen)]
        x0 = torch.randn(x1.shape, generator=gen)
        t, xt, ut = pairs(x0, x1, gen)
        loss = (net(xt, t) - ut).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (2 + step) / (11 + step))
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
    return ema


def max_param_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="8gaussians")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps per repetition")
    p.add_argument("--reps", type=int, default=41, help="timed repetitions of each loop")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tiny", action="store_true", help="10 steps x 5 repetitions (CI smoke check)")
    args = p.parse_args()
    if args.tiny:
        args.steps, args.reps = 10, 5
    torch.set_num_threads(1)  # one core each run: the machine is shared, and BLAS threads add noise

    data = load_dataset(args.dataset, seed=0)
    method = build_method("fm-ot")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, warmup_steps=100,
                      checkpoint_every=0, seed=0)
    torch.manual_seed(0)
    init = build_model("mlp", data.shape, **MODEL_PRESETS["mlp"])
    results: dict[str, nn.Module] = {}

    def fmbench() -> None:
        results["fmbench"] = train(method, data, copy.deepcopy(init), cfg).ema

    def bare() -> None:
        results["bare"] = bare_loop(copy.deepcopy(init), data.train, cfg,
                                    fm_ot_pairs(method.path.sigma_min), foreach=True)

    rates = side_by_side({"fmbench": fmbench, "bare": bare}, args.reps, args.steps * args.batch_size)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = paired_ratio(rates, "fmbench", "bare")
    diff = max_param_diff(results["fmbench"], results["bare"])

    print(f"MLP {MODEL_PRESETS['mlp']} on {args.dataset}, fm-ot, batch {args.batch_size}, "
          f"{args.steps} steps x {args.reps} interleaved repetitions, 1 thread, CPU time")
    print("| loop | median examples per CPU s | min | max |")
    print("|---|---|---|---|")
    for name, v in rates.items():
        print(f"| {name} | {med[name]:,.0f} | {min(v):,.0f} | {max(v):,.0f} |")
    print(f"max |EMA weight difference| fmbench vs bare: {diff:.2e} (same draws, same updates)")
    verdict = "meets" if ratio >= 0.98 else "MISSES"
    print(f"SUMMARY train_overhead: fmbench/bare throughput = {ratio:.3f} ({verdict} target >= 0.98)")


if __name__ == "__main__":
    main()
