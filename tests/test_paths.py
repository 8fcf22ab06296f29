"""Every path's conditional velocity equals forward-mode autodiff of x_t with respect to t."""

import pytest
import torch
from torch.func import jvp

from harness.errors import ConfigError
from harness.core.conformance import path_derivative_gap
from harness.core.paths import OTPath, VEPath, VPPath

PATHS = [OTPath(1e-4), OTPath(0.0), VPPath(), VEPath(0.01, 50.0), VEPath(0.01, 5.0)]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
def test_target_is_time_derivative_of_path(path):
    """dx_t, d_alpha and d_sigma against forward-mode AD (the check ``fmbench check`` runs)."""
    assert path_derivative_gap(path) < 1e-9


@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
def test_diffusion_coefficient_matches_definition(path):
    # g^2 = d sigma^2/ds - 2 (d log alpha/ds) sigma^2 with s = 1 - t, by autodiff.
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64) * path.t_max
    _, dsig2 = jvp(lambda tt: path.sigma(tt) ** 2, (t,), (-torch.ones_like(t),))
    _, dlog_a = jvp(lambda tt: torch.log(path.alpha(tt) * torch.ones_like(tt)), (t,),
                    (-torch.ones_like(t),))
    expected = dsig2 - 2 * dlog_a * path.sigma(t) ** 2
    torch.testing.assert_close(path.diffusion_sq(t) * torch.ones_like(t), expected)


def test_vp_path_endpoints_and_beta():
    p = VPPath()
    t = torch.tensor([0.0, p.t_max], dtype=torch.float64)
    a, s = p.alpha(t), p.sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones(2, dtype=torch.float64))
    assert float(a[0]) == pytest.approx(torch.exp(torch.tensor(-0.5 * (0.1 + 19.9 / 2))).item())
    assert float(s[1]) < 2e-3  # near-clean data at the cut-off
    torch.testing.assert_close(p.diffusion_sq(torch.tensor(0.3, dtype=torch.float64)),
                               torch.tensor(0.1 + 19.9 * 0.7, dtype=torch.float64))
    T = torch.tensor([0.01, 1.0, 10.05], dtype=torch.float64)
    torch.testing.assert_close(p.T(p.T_inverse(T)), T)


def test_ot_path_endpoints():
    p = OTPath(0.01)
    x0, x1 = torch.randn(5, 2), torch.randn(5, 2)
    torch.testing.assert_close(p.sample(x0, x1, torch.zeros(5)).x_t, x0)
    torch.testing.assert_close(p.sample(x0, x1, torch.ones(5)).x_t, x1 + 0.01 * x0)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sigma_min_outside_unit_interval_is_refused(bad):
    with pytest.raises(ConfigError, match="sigma_min"):
        OTPath(bad)
