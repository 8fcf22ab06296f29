"""Methods against closed forms for Gaussian data: conversions, continuity, losses, couplings."""

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.optimize import linear_sum_assignment

from harness.core.analytic import GaussianData
from harness.core.conformance import check_continuity
from harness.datasets import Dataset
from harness.errors import ConfigError, UnknownNameError
from harness.core.methods import (METHODS, ScorePrediction, build_method, default_method_options,
                             exact_ot_coupling)
from harness.core.paths import VEPath

DATA = GaussianData(mean=torch.tensor([1.0, -0.5], dtype=torch.float64), std=0.5)


def _points(n=256, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) * 1.5


def test_registry_has_the_eight_methods():
    assert set(METHODS.names()) == {"fm-ot", "rectified-flow", "ot-cfm", "fm-diffusion", "ddpm",
                                    "score-matching", "score-matching-ve", "scoreflow"}
    for entry in METHODS.entries():
        assert entry.meta["family"] in ("baseline", "flow-matching") and entry.meta["display"]


def test_converted_velocity_equals_closed_form(method):
    """epsilon / score -> velocity conversions agree with the analytic marginal velocity."""
    x = _points()
    for t in (0.0, 0.3, 0.9, method.t_max):
        tb = torch.full((x.shape[0],), t, dtype=torch.float64)
        out = DATA.network_output(method, tb, x)
        torch.testing.assert_close(method.velocity(out, x, tb), DATA.velocity(method.path, tb, x),
                                   rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["scoreflow", "score-matching", "score-matching-ve"])
def test_score_parameterization_recovers_score(name):
    m = build_method(name, **({"sigma_max": 5.0} if name == "score-matching-ve" else {}))
    x = _points()
    t = torch.full((x.shape[0],), 0.4, dtype=torch.float64)
    torch.testing.assert_close(m.score(DATA.network_output(m, t, x), x, t), DATA.score(m.path, t, x))


def test_marginal_velocity_solves_continuity_equation(method):
    """d/dt log p_t + div v + v . grad log p_t = 0 for the Gaussian marginal p_t (the check that
    ``fmbench check`` runs, by autograd at 64 random (x, t))."""
    assert check_continuity(method, DATA).value < 1e-10


def test_oracle_minimises_training_loss(method):
    """The exact network beats scaled versions of itself on the training loss (same noise).

    ot-cfm is left out: re-coupling pairs changes the regression target's conditional mean, so the
    independent-coupling field is not its minimiser (the coupling has its own test).
    """
    if method.coupling is not None:
        pytest.skip("minibatch OT coupling changes the minimiser")
    oracle = DATA.oracle(method)
    g = torch.Generator().manual_seed(5)
    x1 = DATA.mean + DATA.std * torch.randn(20000, 2, generator=g, dtype=torch.float64)

    def loss(scale):
        net = lambda x, t: scale * oracle(x, t)  # noqa: E731
        return method.loss(net, x1, torch.Generator().manual_seed(7)).item()

    best = loss(1.0)
    assert best < loss(0.9) and best < loss(1.1)


def test_scoreflow_times_follow_likelihood_weight():
    """Importance-sampled times have density proportional to g^2 / sigma^2 (KS test)."""
    m = build_method("scoreflow")
    t = m.sample_time(20000, torch.Generator().manual_seed(0)).double()
    assert t.min() >= 0 and t.max() <= m.t_max
    grid = torch.cat([torch.linspace(0, 0.999, 4000), 1 - torch.logspace(-3, -5, 4000)]).double()
    grid = grid[grid <= m.t_max]
    w = m.path.diffusion_sq(grid) / m.path.sigma(grid) ** 2
    cdf = torch.cat([torch.zeros(1), torch.cumulative_trapezoid(w, grid)]).numpy()
    cdf /= cdf[-1]
    stat = stats.kstest(t.numpy(), lambda q: np.interp(q, grid.numpy(), cdf)).statistic
    assert stat < 0.015


def test_scoreflow_loss_is_likelihood_weighted_expectation():
    """Z E_q[|n - x0|^2] equals E_U[g^2/sigma^2 |n - x0|^2] for an error that varies with t."""
    m = build_method("scoreflow")
    h = lambda t: 1.0 + torch.sin(3 * t) ** 2  # noqa: E731 - stands in for the per-time error
    t_q = m.sample_time(400000, torch.Generator().manual_seed(1)).double()
    importance = m._likelihood_normaliser() * h(t_q).mean()
    t_u = torch.linspace(0, m.t_max, 2_000_001, dtype=torch.float64)
    w = m.path.diffusion_sq(t_u) / m.path.sigma(t_u) ** 2
    direct = torch.trapezoid(w * h(t_u), t_u) / m.t_max
    assert float(importance) == pytest.approx(float(direct), rel=0.01)


def test_exact_ot_coupling_is_optimal_permutation():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g) + 2.0
    a, b = exact_ot_coupling(x0, x1)
    assert torch.equal(a, x0)
    assert sorted(map(tuple, b.tolist())) == sorted(map(tuple, x1.tolist()))  # a permutation
    cost = torch.cdist(x0.double(), x1.double()).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    assert ((a - b).double().pow(2).sum(1).sum().item()
            == pytest.approx(cost[rows, cols].sum(), rel=1e-6))


def test_prior_log_prob_matches_scipy():
    m = build_method("score-matching-ve", sigma_max=3.0)
    x = torch.randn(10, 4, dtype=torch.float64)
    expected = stats.norm(0, 3.0).logpdf(x.numpy()).sum(1)
    np.testing.assert_allclose(m.prior_log_prob(x).numpy(), expected, rtol=1e-12)
    assert isinstance(m.path, VEPath) and m.path.prior_std == 3.0


def test_bad_names_and_options_are_clear():
    with pytest.raises(UnknownNameError, match="valid: ddpm"):
        build_method("fm-sb")
    with pytest.raises(ConfigError, match="no option 'sigma_max'.*valid: sigma_min"):
        build_method("fm-ot", sigma_max=1.0)
    with pytest.raises(ConfigError, match="sigma_min"):
        build_method("ot-cfm", sigma_min=1.0)
    with pytest.raises(ConfigError, match="VP path only"):
        ScorePrediction(VEPath(), weighting="likelihood")
    with pytest.raises(ConfigError, match="valid: score, scaled"):
        ScorePrediction(VEPath(), output="noise")


def test_ve_sigma_max_defaults_to_data_diameter():
    data = Dataset("three", torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]]), torch.zeros(1, 2))
    assert default_method_options("score-matching-ve", data) == {"sigma_max": 5.0}
    assert default_method_options("score-matching-ve", data, given={"sigma_max": 2.0}) == {}
    for name in ("fm-ot", "score-matching", "scoreflow"):
        assert default_method_options(name, data) == {}


def test_loss_is_the_mean_of_its_losses_on_equal_row_blocks(method):
    """What data-parallel training relies on: one draw over the global batch, split into equal
    row blocks, gives block losses whose mean is the whole batch's loss (and loss = loss_on(draw))."""
    net = torch.nn.Linear(3, 2).double()
    model = lambda x, t: net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))  # noqa: E731
    x1 = _points(64)
    whole = method.loss(model, x1, torch.Generator().manual_seed(5))
    sample = method.draw(x1, torch.Generator().manual_seed(5))
    assert torch.equal(method.loss_on(model, sample), whole)
    blocks = [method.loss_on(model, sample.rows(slice(i, i + 16))) for i in range(0, 64, 16)]
    torch.testing.assert_close(torch.stack(blocks).mean(), whole, rtol=1e-12, atol=0)
    block = sample.rows(slice(16, 32))
    assert block.x_t.shape == (16, 2) and torch.equal(block.t, sample.t[16:32])
