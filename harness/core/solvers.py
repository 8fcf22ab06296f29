"""ODE solvers for sampling and likelihood, with NFE counted at the network (docs/design.md §3.1).

All solves go through torchdiffeq. Fixed-step solvers take an NFE budget (steps x stages) and an
exact uniform time grid; ``dopri5`` takes tolerances. NFE is never read off a solver: wrap the
network in :class:`NFECounter` and read its count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

from harness.errors import ConfigError
from harness.registry import Registry


@dataclass(frozen=True)
class SolverSpec:
    """A torchdiffeq method: ``stages`` network evaluations per step (None for adaptive)."""

    name: str
    torchdiffeq_method: str
    stages: int | None

    @property
    def adaptive(self) -> bool:
        return self.stages is None


SOLVERS: Registry[SolverSpec] = Registry("solver")
SOLVERS.register("dopri5", SolverSpec("dopri5", "dopri5", None),
                 summary="Dormand-Prince 5(4), adaptive steps at atol/rtol")
SOLVERS.register("euler", SolverSpec("euler", "euler", 1), summary="Euler, 1 evaluation per step")
SOLVERS.register("midpoint", SolverSpec("midpoint", "midpoint", 2),
                 summary="explicit midpoint, 2 evaluations per step")
SOLVERS.register("rk4", SolverSpec("rk4", "rk4", 4),
                 summary="Runge-Kutta 4 (3/8 rule), 4 evaluations per step")


class NFECounter(nn.Module):
    """Wraps a network and counts its forward calls: the number of function evaluations (NFE)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.count = 0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.count += 1
        return self.net(x, t)


@dataclass(frozen=True)
class Solution:
    """Result of one ODE solve.

    x: state at the final time, (batch, *shape).
    trajectory: states at ``times`` (len(times), batch, *shape) when times were asked for, else None.
    """

    x: Tensor
    times: Tensor | None = None
    trajectory: Tensor | None = None


def steps_for_budget(solver: str, nfe: int) -> int:
    """Number of fixed steps a budget of ``nfe`` evaluations buys; the budget must cover one step."""
    spec = SOLVERS.get(solver)
    if spec.adaptive:
        raise ConfigError(f"solver {solver!r} is adaptive; it takes tolerances, not an NFE budget")
    if nfe < spec.stages:
        raise ConfigError(f"NFE budget {nfe} is below one {solver} step ({spec.stages} evaluations)")
    return nfe // spec.stages


def solve(field: Callable, y0, t0: float, t1: float, solver: str = "dopri5", *,
          atol: float = 1e-5, rtol: float = 1e-5, nfe: int | None = None,
          times: Sequence[float] | None = None) -> Solution:
    """Integrate dy/dt = field(t, y) from t0 to t1 (either direction).

    y0: a tensor, or a tuple of tensors (e.g. (x, log-density change)); the returned ``x`` has the
    same structure. times: optional intermediate output times between t0 and t1, in order.
    """
    spec = SOLVERS.get(solver)
    if atol <= 0 or rtol <= 0:
        raise ConfigError(f"solver tolerances must be > 0, got atol={atol}, rtol={rtol}")
    first = y0[0] if isinstance(y0, tuple) else y0
    dtype, device = first.dtype, first.device
    t_out = [t0, *(times or []), t1]
    t_grid = torch.tensor(t_out, dtype=dtype, device=device)
    options: dict = {}
    if spec.adaptive:
        kwargs = dict(atol=atol, rtol=rtol)
        # Adaptive steps may overshoot the end and interpolate back; past t_max the VP path is
        # undefined (NaN), so force a step to land exactly on the final time.
        options["step_t"] = torch.tensor([t1], dtype=dtype, device=device)
    else:
        if nfe is None:
            raise ConfigError(f"solver {solver!r} needs an NFE budget")
        steps = steps_for_budget(solver, nfe)
        grid = torch.linspace(t0, t1, steps + 1, dtype=dtype, device=device)
        options["grid_constructor"] = lambda func, y, t: grid
        kwargs = {}
    ys = odeint(field, y0, t_grid, method=spec.torchdiffeq_method, options=options or None, **kwargs)
    if isinstance(y0, tuple):
        return Solution(x=tuple(y[-1] for y in ys))
    traj = ys[1:-1] if times else None
    return Solution(x=ys[-1], times=t_grid[1:-1] if times else None, trajectory=traj)
