"""Solvers: NFE counted at the network, fixed-step orders of accuracy, Gaussian sampling."""

import math

import pytest
import torch
from torch import nn

from harness.core.analytic import GaussianData
from harness.errors import ConfigError
from harness.core.solvers import SOLVERS, NFECounter, solve, steps_for_budget


class Linear(nn.Module):
    """dx/dt = lam x with its own call log, independent of the counter under test."""

    def __init__(self, lam=-1.3):
        super().__init__()
        self.lam, self.calls = lam, 0

    def forward(self, x, t):
        self.calls += 1
        return self.lam * x


def _field(net):
    return lambda t, x: net(x, t)


@pytest.mark.parametrize("solver,budget", [("euler", 8), ("midpoint", 8), ("rk4", 8), ("rk4", 12)])
def test_fixed_step_nfe_equals_budget(solver, budget):
    net = Linear()
    counter = NFECounter(net)
    solve(_field(counter), torch.ones(4, 2, dtype=torch.float64), 0.0, 1.0, solver, nfe=budget)
    assert counter.count == net.calls == budget


def test_dopri5_counter_equals_network_calls():
    net = Linear()
    counter = NFECounter(net)
    sol = solve(_field(counter), torch.ones(3, dtype=torch.float64), 0.0, 1.0, atol=1e-8, rtol=1e-8)
    assert counter.count == net.calls > 6
    assert sol.x[0].item() == pytest.approx(math.exp(-1.3), rel=1e-7)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_order_of_accuracy(solver, order):
    """Error on dx/dt = lam x falls as steps^-order: the log-log slope between two budgets."""
    stages = SOLVERS.get(solver).stages
    errors = []
    for steps in (8, 16):
        x = solve(_field(Linear()), torch.ones(1, dtype=torch.float64), 0.0, 1.0, solver,
                  nfe=steps * stages).x
        errors.append(abs(x.item() - math.exp(-1.3)))
    assert math.log2(errors[0] / errors[1]) == pytest.approx(order, abs=0.25)


def test_trajectory_times_and_backward_solve():
    sol = solve(_field(Linear(1.0)), torch.ones(2, dtype=torch.float64), 0.0, 1.0,
                times=[0.25, 0.5], atol=1e-9, rtol=1e-9)
    assert sol.trajectory.shape == (2, 2)
    torch.testing.assert_close(sol.trajectory[:, 0],
                               torch.tensor([math.exp(0.25), math.exp(0.5)], dtype=torch.float64))
    back = solve(_field(Linear(1.0)), sol.x, 1.0, 0.0, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(back.x, torch.ones(2, dtype=torch.float64))


def test_bad_solver_settings_are_refused():
    with pytest.raises(ConfigError, match="below one rk4 step"):
        steps_for_budget("rk4", 3)
    with pytest.raises(ConfigError, match="adaptive"):
        steps_for_budget("dopri5", 10)
    with pytest.raises(ConfigError, match="tolerances must be > 0"):
        solve(_field(Linear()), torch.ones(1), 0.0, 1.0, atol=0.0)


def test_dopri5_samples_have_gaussian_mean_and_covariance(method):
    """Prior noise pushed through the exact field matches the closed-form pushforward."""
    data = GaussianData(mean=torch.tensor([1.0, -0.5], dtype=torch.float64), std=0.5)
    n = 4000
    x0 = method.sample_prior(n, (2,), torch.Generator().manual_seed(11)).double()
    x1 = solve(method.velocity_field(data.oracle(method)), x0, 0.0, method.t_max,
               atol=1e-6, rtol=1e-6).x
    mean, std = data.pushforward(method)
    se_mean = std / math.sqrt(n)
    assert (x1.mean(0) - mean).abs().max().item() < 4 * se_mean
    cov = torch.cov(x1.T)
    se_var = std**2 * math.sqrt(2.0 / (n - 1))
    torch.testing.assert_close(cov, std**2 * torch.eye(2, dtype=torch.float64),
                               atol=4 * se_var, rtol=0.0)
    # The pushforward is close to the data itself; the residual is the prior mismatch of VP/VE
    # (largest for the test's VE prior with s_max = 5: the mean shrinks by r = std/s_max ~ 0.1).
    assert (mean - data.mean).abs().max().item() <= 0.11 * data.mean.abs().max().item()
    assert abs(std - data.std) < 0.01
