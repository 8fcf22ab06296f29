"""Closed-form marginal fields of every affine path for Gaussian data N(m, s^2 I).

With x1 ~ N(m, s^2 I) and x0 ~ N(0, I), x_t ~ N(alpha m, v_t I) with v_t = alpha^2 s^2 + sigma^2,
and the marginal velocity is E[dx_t | x_t = x] = d_alpha m + c_t (x - alpha m) with
c_t = (alpha d_alpha s^2 + sigma d_sigma) / v_t = (d/dt log v_t) / 2. Its flow is linear, so the
prior pushed to any time is Gaussian in closed form. Tests use these as an exact "network" to check
samplers, likelihoods, targets and parameterization conversions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.core.methods import Method
from harness.core.paths import AffinePath, expand_like


@dataclass(frozen=True)
class GaussianData:
    """Data N(mean, std^2 I); ``mean`` has the data shape."""

    mean: Tensor
    std: float

    def variance(self, path: AffinePath, t: Tensor) -> Tensor:
        """Per-dimension variance of x_t when x0 ~ N(0, I): v_t."""
        return path.alpha(t) ** 2 * self.std**2 + path.sigma(t) ** 2

    def epsilon(self, path: AffinePath, t: Tensor, x: Tensor) -> Tensor:
        """E[x0 | x_t = x] = sigma (x - alpha m) / v_t."""
        tt = expand_like(t, x)
        return path.sigma(tt) * (x - path.alpha(tt) * self.mean) / self.variance(path, tt)

    def score(self, path: AffinePath, t: Tensor, x: Tensor) -> Tensor:
        """grad log p_t(x) = -(x - alpha m) / v_t."""
        tt = expand_like(t, x)
        return -(x - path.alpha(tt) * self.mean) / self.variance(path, tt)

    def velocity(self, path: AffinePath, t: Tensor, x: Tensor) -> Tensor:
        """The marginal velocity d_alpha m + c_t (x - alpha m)."""
        tt = expand_like(t, x)
        a, s, da, ds = path.alpha(tt), path.sigma(tt), path.d_alpha(tt), path.d_sigma(tt)
        c = (a * da * self.std**2 + s * ds) / self.variance(path, tt)
        return da * self.mean + c * (x - a * self.mean)

    def network_output(self, method: Method, t: Tensor, x: Tensor) -> Tensor:
        """What a perfectly trained network of ``method`` outputs at (x, t)."""
        if method.prediction == "velocity":
            return self.velocity(method.path, t, x)
        if method.prediction == "score" and getattr(method, "output", None) == "score":
            return self.score(method.path, t, x)
        if method.prediction not in ("epsilon", "score"):  # a plugin's own parameterisation
            raise ValueError(f"no closed form for prediction {method.prediction!r}")
        # epsilon networks output E[x0|x]; scaled score networks output n with score = -n / sigma.
        return self.epsilon(method.path, t, x)

    def oracle(self, method: Method) -> nn.Module:
        """The exact network of ``method`` for this data, as an nn.Module taking (x, t)."""
        return _Oracle(self, method)

    def pushforward(self, method: Method) -> tuple[Tensor, float]:
        """Mean and std of the method's prior pushed by the exact flow from t = 0 to t_max.

        y = x - alpha m obeys dy/dt = c_t y, so y_t = y_0 sqrt(v_t / v_0); the prior N(0, p^2 I)
        maps to N(alpha_1 m - r alpha_0 m, (r p)^2 I) with r = sqrt(v_1 / v_0).
        """
        p = method.path
        t0, t1 = torch.tensor(0.0, dtype=torch.float64), torch.tensor(method.t_max, dtype=torch.float64)
        r = float(torch.sqrt(self.variance(p, t1) / self.variance(p, t0)))
        a0, a1 = float(p.alpha(t0)), float(p.alpha(t1))
        return (a1 - r * a0) * self.mean, r * p.prior_std

    def model_log_prob(self, method: Method, x: Tensor) -> Tensor:
        """log-density (nats, summed over dimensions) of the exact model at t_max: (batch,)."""
        mean, std = self.pushforward(method)
        d = x[0].numel()
        z = (x - mean.to(x)).flatten(1)
        return -0.5 * (z.pow(2).sum(1) / std**2 + d * math.log(2 * math.pi * std**2))


class _Oracle(nn.Module):
    def __init__(self, data: GaussianData, method: Method) -> None:
        super().__init__()
        self.data, self.method = data, method

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.data.network_output(self.method, t.to(x.dtype), x)
