"""fmbench plugin: Flow Matching on the cosine noise schedule of Nichol & Dhariwal (2021).

Their schedule is written in diffusion time tau in [0, 1] (tau = 0 data, tau = 1 noise) as
alpha_bar(tau) = f(tau) / f(0), f(tau) = cos^2(((tau + s) / (1 + s)) pi / 2), s = 0.008
("Improved Denoising Diffusion Probabilistic Models", eq. 17). fmbench runs from noise (t = 0) to
data (t = 1), so tau = 1 - t, and the variance-preserving path is
alpha_t = sqrt(alpha_bar(1 - t)) = cos(u) / cos(u0), sigma_t = sqrt(1 - alpha_t^2), with
u = ((1 - t + s) / (1 + s)) pi / 2 and u0 = (s / (1 + s)) pi / 2.

alpha_0 = 0 exactly, so the path starts at the N(0, I) prior. sigma_t -> 0 at t = 1, where
d sigma/dt diverges like 1/sigma, so integration stops at t_max = 1 - eps (eps = 1e-5, the cut-off
fmbench's VP path uses). Nichol & Dhariwal clip beta <= 0.999 near the noise end instead; that
matters only for their discrete-time epsilon model, not for a velocity network.
"""

from __future__ import annotations

import math

import torch

from harness.core.methods import METHODS, FlowMatching, Method
from harness.core.paths import AffinePath
from harness.errors import ConfigError

COSINE_OFFSET = 0.008
"""s of Nichol & Dhariwal (2021), §3.2: keeps beta small near the data end."""


class CosinePath(AffinePath):
    """Variance-preserving path with the cosine schedule (module docstring for the formulas)."""

    def __init__(self, s: float = COSINE_OFFSET, eps: float = 1e-5) -> None:
        if not 0.0 < s < 1.0:
            raise ConfigError(f"cosine offset s must be in (0, 1), got {s}")
        if not 0.0 < eps < 1.0:
            raise ConfigError(f"cosine cut-off eps must be in (0, 1), got {eps}")
        self.s, self.eps = float(s), float(eps)
        self.t_max = 1.0 - self.eps
        self.u0 = 0.5 * math.pi * self.s / (1.0 + self.s)
        self.rate = 0.5 * math.pi / (1.0 + self.s)  # du/dtau; du/dt = -rate

    def _u(self, t):
        return self.u0 + self.rate * (1.0 - torch.as_tensor(t))

    def alpha(self, t):
        return torch.cos(self._u(t)) / math.cos(self.u0)

    def sigma(self, t):
        # 1 - cos^2 u / cos^2 u0 = sin(u - u0) sin(u + u0) / cos^2 u0: no cancellation near t = 1.
        u = self._u(t)
        return torch.sqrt(torch.sin(u - self.u0) * torch.sin(u + self.u0)) / math.cos(self.u0)

    def d_alpha(self, t):
        return self.rate * torch.sin(self._u(t)) / math.cos(self.u0)

    def d_sigma(self, t):
        # From alpha^2 + sigma^2 = 1: sigma d_sigma = -alpha d_alpha.
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def describe(self):
        return {**super().describe(), "s": self.s, "eps": self.eps}


@METHODS.register("fm-cosine", display="FM w/ cosine", family="flow-matching")
def fm_cosine(s: float = COSINE_OFFSET, eps: float = 1e-5) -> Method:
    """Flow Matching on the cosine-schedule VP path (Nichol & Dhariwal 2021)."""
    return FlowMatching(CosinePath(s, eps))
