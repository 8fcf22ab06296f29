"""The Score Matching baselines: the paper's VP method with a direct score output
(Lipman et al. 2022, App. E.1), and the NCSN-style VE method whose sigma_max is the data's diameter."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from harness.core.analytic import GaussianData
from harness.datasets import Dataset, load_dataset
from harness.errors import ConfigError
from harness.core.methods import (ScorePrediction, build_method, default_method_options,
                             max_pairwise_distance)
from harness.core.paths import VEPath, VPPath, expand_like
from harness.run.trial import TrialSpec, resolve

DATA = GaussianData(mean=torch.tensor([1.0, -0.5], dtype=torch.float64), std=0.5)


def _points(n=256, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) * 1.5


def _linear_net(seed=0):
    """A fixed random network (x, t) -> output of x's shape."""
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2).double()
    return lambda x, t: net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


def test_score_matching_is_the_papers_vp_baseline():
    m = build_method("score-matching")
    assert isinstance(m.path, VPPath) and m.weighting == "sigma2" and m.output == "score"
    assert (m.path.beta_min, m.path.beta_max, m.path.eps) == (0.1, 20.0, 1e-5)
    assert m.describe()["output"] == "score"
    assert build_method("score-matching-ve").describe()["output"] == "scaled"
    scoreflow = build_method("scoreflow")
    assert scoreflow.describe()["output"] == "scaled" and scoreflow.weighting == "likelihood"
    ve = build_method("score-matching-ve")
    assert isinstance(ve.path, VEPath) and ve.path.sigma_min == 0.01 and ve.weighting == "sigma2"


def test_true_conditional_score_has_zero_loss():
    """lambda |s - grad log p_t(x|x1)|^2 with s = -x0/sigma_t is zero."""
    m = build_method("score-matching")
    g = torch.Generator().manual_seed(1)
    x1 = DATA.mean + DATA.std * torch.randn(512, 2, generator=g, dtype=torch.float64)
    x0 = torch.randn(512, 2, generator=g, dtype=torch.float64)
    t = torch.rand(512, generator=g, dtype=torch.float64) * m.t_max
    sample = m.path.sample(x0, x1, t)
    sigma = m.path.sigma(expand_like(sample.t, sample.x0))
    loss = m.objective(-sample.x0 / sigma, sample)
    assert loss.abs().max().item() < 1e-26
    # A wrong score costs sigma^2 |error|^2 per dimension, on average.
    wrong = m.objective(-sample.x0 / sigma + 1.0, sample)
    torch.testing.assert_close(wrong, sigma.flatten() ** 2)


def test_velocity_from_exact_marginal_score_is_the_closed_form_velocity():
    m = build_method("score-matching")
    x = _points()
    for t in (0.0, 0.3, 0.9, 0.999, m.t_max):
        tb = torch.full((x.shape[0],), t, dtype=torch.float64)
        v = m.velocity(DATA.score(m.path, tb, x), x, tb)
        torch.testing.assert_close(v, DATA.velocity(m.path, tb, x), rtol=1e-8, atol=1e-8)


def test_score_matching_is_not_ddpm():
    """With a scaled output, sigma^2-weighted VP score matching is DDPM's loss exactly; the
    paper's baseline (direct score output) is a different objective."""
    net = _linear_net()
    x1 = _points(128)
    ddpm, sm = build_method("ddpm"), build_method("score-matching")
    scaled = ScorePrediction(VPPath(), weighting="sigma2", output="scaled")
    sample = ddpm.draw(x1, torch.Generator().manual_seed(5))
    assert torch.equal(sm.draw(x1, torch.Generator().manual_seed(5)).x_t, sample.x_t)
    assert torch.equal(scaled.loss_on(net, sample), ddpm.loss_on(net, sample))
    assert abs(sm.loss_on(net, sample).item() - ddpm.loss_on(net, sample).item()) > 0.1


def test_score_matching_has_no_sigma_max():
    with pytest.raises(ConfigError, match="no option 'sigma_max'.*valid: beta_min, beta_max, eps"):
        build_method("score-matching", sigma_max=1.0)


def _exact_diameter(points: np.ndarray) -> float:
    return round(float(pdist(points.reshape(len(points), -1).astype(np.float64)).max()), 3)


def test_ve_sigma_max_is_the_diameter_of_image_data_in_model_space():
    """Images too: levels at their bin centres in [-1, 1], no dequantization noise."""
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 4, (50, 1, 2, 2), generator=g, dtype=torch.uint8)
    tiny = Dataset("tiny", levels, levels[:5], levels=4)
    centres = (2.0 * (levels.double() + 0.5) / 4 - 1.0).numpy()
    assert default_method_options("score-matching-ve", tiny) == {
        "sigma_max": _exact_diameter(centres)}

    digits = load_dataset("digits")
    centres = digits.to_model_space(digits.train, dequantize=False).numpy()
    expected = _exact_diameter(centres)
    assert default_method_options("score-matching-ve", digits) == {"sigma_max": expected}
    assert 5.0 < expected < 12.0  # far below the old fixed 50


def test_ve_sigma_max_subsamples_large_data_deterministically():
    x = torch.randn(5000, 2, generator=torch.Generator().manual_seed(2))
    big = Dataset("big", x, x[:10])
    first = default_method_options("score-matching-ve", big)["sigma_max"]
    assert first == default_method_options("score-matching-ve", big)["sigma_max"]
    assert first <= _exact_diameter(x.numpy()) and first > 0.9 * _exact_diameter(x.numpy())


def test_max_pairwise_distance_is_exact_across_chunks():
    x = torch.randn(70, 3, 2, 2, generator=torch.Generator().manual_seed(4))
    assert max_pairwise_distance(x, chunk=16) == pytest.approx(float(pdist(
        x.flatten(1).double().numpy()).max()), rel=1e-12)


def test_suite_set_sigma_max_wins_and_the_default_is_recorded():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    ds = Dataset("three", x, x)
    _, config = resolve(TrialSpec("score-matching-ve", "three"), ds)
    assert config["method_options"] == {"sigma_max": 5.0}
    assert config["method_constants"]["sigma_max"] == 5.0
    assert config["method_constants"]["output"] == "scaled"
    _, config = resolve(TrialSpec("score-matching-ve", "three", method_options={"sigma_max": 7.0}), ds)
    assert config["method_options"] == {"sigma_max": 7.0}
    assert config["method_constants"]["sigma_max"] == 7.0
    _, config = resolve(TrialSpec("score-matching", "three"), ds)
    assert config["method_options"] == {} and config["method_constants"]["output"] == "score"
