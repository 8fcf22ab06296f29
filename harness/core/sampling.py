"""Sampling: solving a method's probability-flow ODE from prior noise, the one path every method's
samples, NFE and sample paths take (docs/design.md), so all are measured by the same solvers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.datasets import Dataset
from harness.core.evaluation_types import EvalConfig, Trajectories
from harness.core.methods import Method
from harness.core.solvers import NFECounter, solve


@torch.no_grad()
def sample(method: Method, net: nn.Module, noise: Tensor, solver: str = "dopri5", *,
           tol: float = 1e-5, nfe: int | None = None, times=None):
    """Solve the probability-flow ODE from prior noise (batch, *shape); returns (Solution, NFE)."""
    counter = NFECounter(net)
    sol = solve(method.velocity_field(counter), noise, 0.0, method.t_max, solver, atol=tol,
                rtol=tol, nfe=nfe, times=times)
    return sol, counter.count


def evaluate_trajectories(method: Method, net: nn.Module, dataset: Dataset, cfg: EvalConfig,
                          device) -> Trajectories | None:
    """dopri5 paths from the suite-wide trajectory noise, with the states at the chosen times."""
    if cfg.trajectory_samples == 0:
        return None
    gen = torch.Generator().manual_seed(cfg.trajectory_seed)
    noise = method.sample_prior(cfg.trajectory_samples, dataset.shape, gen, device)
    inner = [f * method.t_max for f in cfg.trajectory_times]
    sol, _ = sample(method, net, noise, tol=cfg.tol, times=inner)
    times = torch.tensor([0.0, *inner, method.t_max])
    states = torch.cat([noise[None].cpu(), sol.trajectory.cpu(), sol.x[None].cpu()])
    return Trajectories(times, states)
