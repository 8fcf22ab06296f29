"""fmbench's NLL against a straightforward torchdiffeq augmented-state implementation.

    python benchmarks/likelihood.py            # 8gaussians (MLP, exact divergence), digits (U-Net,
                                               # Hutchinson); 5 interleaved repetitions
    python benchmarks/likelihood.py --tiny     # a few seconds: a smoke check for CI

Baseline (written here): ``odeint`` on the state (x, delta) with d delta/dt = div v, the divergence
by autograd inside the ODE function with ``create_graph=True`` and the results returned as they
are, the pattern of torchdiffeq's continuous-normalizing-flow example, which trains through the
solve. Used for evaluation as it stands, it keeps every step's graph alive until the end of the
solve. fmbench: ``harness.core.likelihood.log_likelihood``, which builds a graph for one divergence at
a time and returns detached tensors. Both use the same velocity field, tolerances, and (for
Hutchinson) the same Rademacher probe, so their log-likelihoods must agree up to the solver's
tolerance: the script prints the largest difference.

Speed: samples per CPU second, repetitions interleaved, the ratio is the median of back-to-back
ratios (target fmbench/baseline >= 1.0).
Memory: peak bytes allocated by torch on the CPU during one solve, from the allocation and free
events of ``torch.profiler`` (profile_memory=True) summed in time order; Python objects are not
counted (tracemalloc cannot see torch's allocator). Shown at two tolerances: fmbench's peak must
not grow with the number of solver steps (NFE), which grows as the tolerance tightens.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torchdiffeq import odeint

from harness.datasets import Dataset, load_dataset
from harness.core.likelihood import log_likelihood
from harness.core.methods import Method, build_method
from harness.models import build_model
from harness.core.solvers import NFECounter
from harness.core.train import TrainConfig, train
from harness.run.trial import MODEL_PRESETS
from train_overhead import paired_ratio, side_by_side

TOLERANCES = (1e-3, 1e-5)
"""atol = rtol for the memory comparison; speed and agreement are measured at the tighter one."""


def rademacher(shape: torch.Size, seed: int) -> Tensor:
    """The probe fmbench draws for Hutchinson from a generator seeded with ``seed``."""
    return (torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1)


def baseline_log_likelihood(method: Method, net: nn.Module, x1: Tensor, probe: Tensor | None,
                            tol: float) -> Tensor:
    """log p(x1): (batch,) in nats, by plain odeint on (x, delta) from t_max down to 0."""
    field = method.velocity_field(net)

    def augmented(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x = state[0]
        with torch.enable_grad():
            x.requires_grad_(True)
            v = field(t, x)
            if probe is None:
                div = sum(torch.autograd.grad(v[:, i].sum(), x, create_graph=True)[0][:, i]
                          for i in range(x.shape[1]))
            else:
                (g,) = torch.autograd.grad(v, x, grad_outputs=probe, create_graph=True)
                div = (g * probe).flatten(1).sum(1)
        return v, div

    times = torch.tensor([method.t_max, 0.0])
    x0, delta = odeint(augmented, (x1, torch.zeros(x1.shape[0])), times, method="dopri5",
                       atol=tol, rtol=tol)
    return (method.prior_log_prob(x0[-1]) + delta[-1]).detach()


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of torch's live CPU allocations while ``fn`` runs (allocations minus frees, in order)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@dataclass
class Case:
    """One benchmark setting: data points x1 (batch, *shape) in model space and the network."""

    name: str
    method: Method
    net: nn.Module
    x1: Tensor
    divergence: str


def make_cases(tiny: bool) -> list[Case]:
    torch.manual_seed(0)
    method = build_method("fm-ot")
    gaussians = load_dataset("8gaussians", seed=0)
    mlp = build_model("mlp", gaussians.shape, **MODEL_PRESETS["mlp"])
    if not tiny:  # a trained field is what NLL is run on, and it takes more solver steps
        mlp = train(method, gaussians, mlp, TrainConfig(steps=300, checkpoint_every=0)).ema
    digits: Dataset = load_dataset("digits", seed=0, download=False)
    unet = build_model("unet", digits.shape, **MODEL_PRESETS["unet"]).eval()
    n_vec, n_img = (64, 4) if tiny else (500, 32)
    gen = torch.Generator().manual_seed(0)
    return [Case("8gaussians / MLP", method, mlp.requires_grad_(False), gaussians.test[:n_vec],
                 "exact"),
            Case("digits / U-Net", method, unet.requires_grad_(False),
                 digits.to_model_space(digits.test[:n_img], gen), "hutchinson")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of each implementation")
    p.add_argument("--tiny", action="store_true",
                   help="64 points / 4 images, untrained MLP, 1 repetition, tolerances 1e-2, 1e-3")
    args = p.parse_args()
    tolerances = (1e-2, 1e-3) if args.tiny else TOLERANCES
    reps = 1 if args.tiny else args.reps
    torch.set_num_threads(1)  # one core each run: the machine is shared, and BLAS threads add noise

    rows, ratios, agree, growth = [], [], [], []
    for case in make_cases(args.tiny):
        probe = rademacher(case.x1.shape, 0).to(case.x1) if case.divergence == "hutchinson" else None
        counter = NFECounter(case.net)
        last: dict[str, Tensor] = {}

        def ours(tol: float) -> int:
            """fmbench's solve; returns its NFE."""
            result = log_likelihood(case.method, case.net, case.x1, divergence=case.divergence,
                                    atol=tol, rtol=tol, generator=torch.Generator().manual_seed(0))
            last["fmbench"] = result.log_prob
            return result.nfe

        def theirs(tol: float) -> int:
            """The baseline's solve; returns its NFE."""
            counter.count = 0
            last["baseline"] = baseline_log_likelihood(case.method, counter, case.x1, probe, tol)
            return counter.count

        tol = tolerances[-1]
        rates = side_by_side({"fmbench": lambda: ours(tol), "baseline": lambda: theirs(tol)},
                             reps, len(case.x1), warmup=not args.tiny)
        med = {k: statistics.median(v) for k, v in rates.items()}
        ratios.append(paired_ratio(rates, "fmbench", "baseline"))
        agree.append(float((last["fmbench"] - last["baseline"]).abs().max()))
        peaks = []
        for t in tolerances:
            nfe = {}
            mem = {name: peak_bytes(lambda: nfe.__setitem__(name, fn(t)))
                   for name, fn in (("fmbench", ours), ("baseline", theirs))}
            peaks.append(mem["fmbench"])
            rows.append((case.name, case.divergence, t, nfe, med, mem))
        growth.append(peaks[-1] / peaks[0])

    print(f"fm-ot; speed at tolerance {tolerances[-1]:g}, {reps} interleaved repetitions, 1 thread, "
          "CPU time; peak = torch's CPU allocations (torch.profiler memory events)")
    print("| data / model | divergence | atol=rtol | NFE fmbench / baseline | samples per CPU s "
          "fmbench / baseline | peak MiB fmbench / baseline |")
    print("|---|---|---|---|---|---|")
    for name, div, t, nfe, med, mem in rows:
        print(f"| {name} | {div} | {t:g} | {nfe['fmbench']} / {nfe['baseline']} "
              f"| {med['fmbench']:,.1f} / {med['baseline']:,.1f} "
              f"| {mem['fmbench'] / 2**20:.2f} / {mem['baseline'] / 2**20:.2f} |")
    print(f"max |log p fmbench - log p baseline| at {tolerances[-1]:g} (nats): "
          + ", ".join(f"{c.split(' /')[0]} {d:.2e}" for c, d in zip((r[0] for r in rows[::len(tolerances)]), agree)))
    verdict = "meets" if min(ratios) >= 1.0 and max(growth) <= 1.1 else "MISSES"
    print("SUMMARY likelihood: fmbench/baseline samples/s = "
          + ", ".join(f"{r:.2f}" for r in ratios)
          + f"; fmbench peak memory at {tolerances[-1]:g} / at {tolerances[0]:g} = "
          + ", ".join(f"{g:.2f}" for g in growth)
          + f"; max |dlogp| = {max(agree):.1e} ({verdict} targets: ratio >= 1.0, peak growth <= 1.1)")


if __name__ == "__main__":
    main()
