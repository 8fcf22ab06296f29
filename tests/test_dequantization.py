"""Bits/dim of discrete data is the importance-weighted estimate over K dequantization draws
(Lipman et al. 2022, App. E.2), checked against the exact discrete likelihood of a Gaussian model:
P(n) = prod_d (Phi(b_d) - Phi(a_d)) over the cell [a_d, b_d) of each value in [-1, 1] space."""

import math
from dataclasses import replace

import pytest
import torch

from harness.core.analytic import GaussianData
from harness.datasets import Dataset
from harness.core.evaluate import EvalConfig
from harness.core.likelihood import bits_per_dim, importance_weighted_bits_per_dim
from harness.core.methods import build_method
from harness.core.shards import chunk_seed, evaluate_parts, evaluate_shard, plan_shards

pytestmark = pytest.mark.usefixtures("one_thread")

KS = (1, 4, 16, 64, 256)


def _exact_bpd(n: torch.Tensor, mean: torch.Tensor, std: float, levels: int) -> torch.Tensor:
    """-log2 P(n) / D for the model N(mean, std^2 I) in [-1, 1] space; n: (N, D) levels.

    P(n) is the model's mass on the cell of n, i.e. the integral of the density on the 0..levels
    scale over n + [0, 1)^D: the change of variables is inside the mass already."""
    normal = torch.distributions.Normal(mean.double(), std)
    a, b = 2 * n / levels - 1, 2 * (n + 1) / levels - 1
    return -torch.log(normal.cdf(b) - normal.cdf(a)).sum(1) / (n.shape[1] * math.log(2))


def test_estimate_falls_with_k_towards_the_exact_discrete_likelihood():
    """(a) Mean bits/dim over 2000 examples for K = 1 ... 256. Each K's value is averaged over the
    256 / K disjoint blocks of the same 256 draws, so by Jensen it can only fall as K grows (for
    every example, not just in expectation); it stays above the exact value up to Monte-Carlo
    error and is within 0.002 bits/dim of it at K = 256. Measured: 2.14457, 2.09926, 2.08751,
    2.08472, 2.08403 for K = 1, 4, 16, 64, 256; exact 2.08424 (SE of the gaps ~3e-4)."""
    levels, dim, count, std = 8, 3, 2000, 0.25
    mean = torch.tensor([0.1, -0.3, 0.4], dtype=torch.float64)
    x = mean + std * torch.randn(count, dim, generator=torch.Generator().manual_seed(0),
                                 dtype=torch.float64)
    n = torch.floor((x + 1) * levels / 2).clamp(0, levels - 1)
    exact = _exact_bpd(n, mean, std, levels)
    u = torch.rand(KS[-1], count, dim, generator=torch.Generator().manual_seed(1),
                   dtype=torch.float64)
    log_probs = torch.distributions.Normal(mean, std).log_prob(2 * (n + u) / levels - 1).sum(-1)

    per_k, gaps = [], []
    for k in KS:
        blocks = log_probs.reshape(KS[-1] // k, k, count)
        est = torch.stack([importance_weighted_bits_per_dim(b, dim, levels) for b in blocks]).mean(0)
        per_k.append(est)
        gap = est - exact
        gaps.append((gap.mean().item(), gap.std().item() / math.sqrt(count)))

    for fewer, more in zip(per_k, per_k[1:]):
        assert torch.all(more <= fewer + 1e-12)  # Jensen, example by example
        assert more.mean() < fewer.mean()
    assert all(g > -3 * se for g, se in gaps)  # a bound on the exact value, up to MC error
    assert gaps[0][0] > 0.04  # K = 1 is loose...
    assert abs(gaps[-1][0]) < 0.002  # ...K = 256 is at the exact value
    # (b) K = 1 is the plain one-draw estimate, bit for bit.
    assert torch.equal(importance_weighted_bits_per_dim(log_probs[:1], dim, levels),
                       bits_per_dim(log_probs[0], dim, levels))


def test_reduction_is_minus_log_mean_density_and_stable():
    """(c) By hand: -log2 mean_k p_k / D + log2(levels / 2), also where exp(log p) underflows."""
    p = torch.tensor([[1.0, 0.5], [2.0, 0.25], [6.0, 0.75]], dtype=torch.float64)  # (K=3, 2)
    bpd = importance_weighted_bits_per_dim(p.log(), dim=1, levels=2)  # levels 2: no offset
    torch.testing.assert_close(bpd, torch.tensor([-math.log2(3.0), 1.0], dtype=torch.float64),
                               rtol=1e-15, atol=1e-15)
    # An image's log-density is ~ -1e4: exp underflows to 0, logsumexp does not.
    low = torch.tensor([[-1e4], [-1e4 + math.log(3.0)]], dtype=torch.float32)  # p and 3p
    assert torch.exp(low).sum() == 0
    got = importance_weighted_bits_per_dim(low, dim=3072, levels=256)
    assert got.dtype == torch.float64
    want = (1e4 - math.log(2.0)) / (3072 * math.log(2.0)) + 7.0
    assert got.item() == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="K, batch"):
        importance_weighted_bits_per_dim(torch.zeros(4), dim=1, levels=2)


# --- through the evaluation: EvalConfig(dequant_draws=K) --------------------------------------

LEVELS = 8


@pytest.fixture(scope="module")
def gaussian_images():
    """A tiny discrete image set (1 x 2 x 2, 8 levels) and the fm-ot oracle of N(mean, 0.25^2 I),
    whose likelihood solve gives the closed-form Gaussian density."""
    mean = torch.tensor([0.1, -0.3, 0.4, 0.0]).reshape(1, 2, 2)
    data = GaussianData(mean=mean, std=0.25)
    x = mean + 0.25 * torch.randn(48, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    n = torch.floor((x + 1) * LEVELS / 2).clamp(0, LEVELS - 1).to(torch.uint8)
    method = build_method("fm-ot")
    return method, data, Dataset("gauss", train=n, test=n, levels=LEVELS)


CFG = EvalConfig(tol=1e-6, nll_samples=48, batch_size=16, dequant_draws=4, seed=7)


def test_evaluation_reports_the_importance_weighted_estimate(gaussian_images):
    """bpd from the evaluation equals the IW estimate of the closed-form density at the chunk's own
    dequantized points (up to the ODE's tolerance), and is below the draw-averaged bits/dim."""
    method, data, ds = gaussian_images
    result, shards = evaluate_parts(method, data.oracle(method), ds, CFG, parts=["likelihood"])
    values = torch.from_numpy(shards[0].values)
    assert len(shards[0].nfe) == 3 * 4  # one solve per chunk and draw

    iw, averaged = [], []
    for c in range(3):  # replay each chunk's generator: K draws in a row
        gen = torch.Generator().manual_seed(chunk_seed(CFG.seed, "likelihood", c))
        batch = ds.test[16 * c:16 * (c + 1)]
        lp = torch.stack([data.model_log_prob(method, ds.to_model_space(batch, gen).double())
                          for _ in range(CFG.dequant_draws)])
        iw.append(importance_weighted_bits_per_dim(lp, ds.dim, LEVELS))
        averaged.append(bits_per_dim(lp, ds.dim, LEVELS).mean(0))
    iw, averaged = torch.cat(iw), torch.cat(averaged)
    torch.testing.assert_close(values, iw, rtol=0, atol=2e-4)
    assert result.metrics["bpd"] == pytest.approx(iw.mean().item(), abs=1e-4)
    assert result.metrics["bpd_se"] == pytest.approx(
        iw.std().item() / math.sqrt(len(iw)), rel=1e-2)  # over examples
    assert (averaged - iw).mean() > 0.02  # the old number would be clearly off
    # The K -> inf value: the model's exact discrete likelihood, below every finite-K estimate.
    model_mean, model_std = data.pushforward(method)
    exact = _exact_bpd(ds.test.flatten(1).double(), model_mean.flatten(), model_std, LEVELS)
    assert exact.mean() < result.metrics["bpd"] < averaged.mean()


def test_sharded_discrete_likelihood_equals_single_task(gaussian_images):
    """The K draws of a chunk come from the chunk's generator: any sharding gives the same values."""
    method, data, ds = gaussian_images
    net = data.oracle(method)
    _, (whole,) = evaluate_parts(method, net, ds, CFG, parts=["likelihood"])
    cfg = replace(CFG, shard_size=16)
    many = [evaluate_shard(method, net, ds, cfg, s) for s in plan_shards(cfg, ds, ["likelihood"])]
    assert len(many) == 3
    assert torch.equal(torch.cat([torch.from_numpy(r.values) for r in many]),
                       torch.from_numpy(whole.values))
    assert [c for r in many for c in r.nfe] == list(whole.nfe)
