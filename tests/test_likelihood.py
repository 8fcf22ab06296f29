"""NLL through the ODE against the analytic log-density; Hutchinson unbiasedness; bits/dim."""

import math

import pytest
import torch

from harness.core.analytic import GaussianData
from harness.core.conformance import check_exact_nll
from harness.datasets import Dataset
from harness.core.likelihood import bits_per_dim, log_likelihood
from harness.core.methods import build_method


def test_exact_nll_equals_analytic_log_density(method):
    """The check ``fmbench check`` runs: 64 points, ODE at 1e-7, within 1e-3 nats."""
    assert check_exact_nll(method).passed
    data = GaussianData(mean=torch.tensor([1.0, -0.5], dtype=torch.float64), std=0.5)
    result = log_likelihood(method, data.oracle(method), data.mean[None], divergence="exact")
    assert result.divergence == "exact" and result.nfe > 0


@pytest.mark.parametrize("name", ["fm-ot", "ddpm"])
def test_hutchinson_agrees_with_exact_within_three_standard_errors(name):
    """On a random network (a Jacobian far from isotropic, so the estimator has variance)."""
    from harness.models import build_model

    method = build_method(name)
    dim = 12
    torch.manual_seed(3)
    net = build_model("mlp", (dim,), hidden=32, depth=2).double()
    x = torch.randn(300, dim, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    exact = log_likelihood(method, net, x, divergence="exact", atol=1e-6, rtol=1e-6)
    hutch = log_likelihood(method, net, x, divergence="hutchinson", atol=1e-6, rtol=1e-6,
                           generator=torch.Generator().manual_seed(2))
    diff = hutch.log_prob - exact.log_prob
    se = diff.std().item() / math.sqrt(len(diff))
    assert diff.std().item() > 1e-3  # the estimator is stochastic...
    assert abs(diff.mean().item()) < 3 * se  # ...and unbiased
    assert hutch.divergence == "hutchinson"


def test_memory_does_not_grow_with_solver_steps():
    """No graph survives a step: the number of live tensors after a tight solve equals a loose one."""
    import gc

    method = build_method("fm-ot")
    data = GaussianData(mean=torch.zeros(2, dtype=torch.float64), std=0.5)
    x = torch.randn(32, 2, dtype=torch.float64)

    def live_after(tol):
        res = log_likelihood(method, data.oracle(method), x, atol=tol, rtol=tol)
        gc.collect()
        n = sum(1 for o in gc.get_objects() if torch.is_tensor(o))
        return n, res.nfe

    live_loose, nfe_loose = live_after(1e-3)
    live_tight, nfe_tight = live_after(1e-8)
    assert nfe_tight > 3 * nfe_loose
    assert live_tight <= live_loose + 2


def test_bits_per_dim_equals_entropy_of_known_discrete_distribution():
    """A model whose density is P(n) * levels/2 on bin n gives bits/dim = -log2 P(n) exactly."""
    levels = 17
    probs = torch.softmax(torch.randn(levels, generator=torch.Generator().manual_seed(0),
                                      dtype=torch.float64), 0)
    n = torch.multinomial(probs, 20000, replacement=True, generator=torch.Generator().manual_seed(1))
    ds = Dataset("known", train=n.to(torch.uint8)[:, None], test=n.to(torch.uint8)[:, None],
                 levels=levels)
    x = ds.to_model_space(ds.test, torch.Generator().manual_seed(2)).double()
    assert torch.equal(ds.quantize(x), ds.test)  # dequantization stays inside each bin
    log_px = torch.log(probs[ds.quantize(x)[:, 0].long()] * levels / 2)
    bpd = bits_per_dim(log_px, dim=1, levels=levels)
    torch.testing.assert_close(bpd, -torch.log2(probs[n]))
    entropy = -(probs * torch.log2(probs)).sum().item()
    assert bpd.mean().item() == pytest.approx(entropy, abs=4 * bpd.std().item() / math.sqrt(len(n)))


def test_bits_per_dim_offset_is_seven_for_8bit_images():
    assert bits_per_dim(torch.tensor([0.0]), dim=3072, levels=256).item() == pytest.approx(7.0)
