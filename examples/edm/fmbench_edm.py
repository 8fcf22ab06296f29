"""fmbench plugin: EDM's noise levels and preconditioned denoiser (Karras et al. 2022).

"Elucidating the Design Space of Diffusion-Based Generative Models" (Karras, Aittala, Aila and
Laine, NeurIPS 2022), equation and table numbers from the arXiv version (2206.00364).

Path. EDM perturbs data by x = y + sigma n (eq. 1 with s(t) = 1): a variance-exploding path, here
alpha_t = 1 and sigma_t = sigma(t). Its sampler visits the noise levels of eq. 5,
sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, with
sigma_min = 0.002, sigma_max = 80, rho = 7 (Table 1). Our mapping replaces i / (N - 1) by the
continuous t in [0, 1]:
    sigma(t) = (sigma_max^(1/rho) + t (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
so t = 0 is noise (sigma_max) and t = 1 is data (sigma_min > 0, hence t_max = 1 and no cut-off),
and d sigma/dt = rho (sigma_min^(1/rho) - sigma_max^(1/rho)) sigma(t)^((rho - 1)/rho). The prior is
N(0, sigma_max^2 I), as in EDM's Algorithm 1.

Parameterisation. The network F gives the denoiser D = c_skip x + c_out F (eq. 7) with
c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), sd = sigma_data = 0.5
(Table 1). D estimates E[y | x], so the noise estimate is (x - D) / sigma and the probability-flow
velocity is d sigma/dt (x - D) / sigma (eq. 3 and 4 in fmbench's time). The loss is eq. 8: lambda =
1 / c_out^2 makes it the unit-weighted |F - (y - c_skip x) / c_out|^2. Training noise levels are
log-normal, ln sigma ~ N(P_mean, P_std^2) with P_mean = -1.2, P_std = 1.2 (Table 1), mapped to t
by the inverse of sigma(t) and clipped to [0, 1].

Left out: EDM's input scaling c_in = 1 / sqrt(sigma^2 + sd^2) and noise conditioning
c_noise = ln(sigma) / 4, because an fmbench network takes (x_t, t) unchanged; the Heun sampler and
stochastic churn, because fmbench measures every method with the same ODE solvers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from harness.core.methods import METHODS, Method, epsilon_to_velocity, per_example_mse
from harness.core.paths import AffinePath, expand_like
from harness.errors import ConfigError

EDM_SIGMA_MIN, EDM_SIGMA_MAX, EDM_RHO = 0.002, 80.0, 7.0
"""Karras et al. (2022), Table 1, "sampling" column for EDM."""
EDM_SIGMA_DATA, EDM_P_MEAN, EDM_P_STD = 0.5, -1.2, 1.2
"""Karras et al. (2022), Table 1, "network and preconditioning" and "training" columns."""


class EDMPath(AffinePath):
    """x_t = x1 + sigma(t) x0 with EDM's rho-spaced noise levels (module docstring)."""

    def __init__(self, sigma_min: float = EDM_SIGMA_MIN, sigma_max: float = EDM_SIGMA_MAX,
                 rho: float = EDM_RHO) -> None:
        if not 0.0 < sigma_min < sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if rho <= 0:
            raise ConfigError(f"rho must be positive, got {rho}")
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.root_max = self.sigma_max ** (1.0 / self.rho)
        self.root_gap = self.sigma_min ** (1.0 / self.rho) - self.root_max  # < 0
        self.prior_std = self.sigma_max

    def alpha(self, t):
        return torch.ones_like(torch.as_tensor(t))

    def d_alpha(self, t):
        return torch.zeros_like(torch.as_tensor(t))

    def sigma(self, t):
        return (self.root_max + torch.as_tensor(t) * self.root_gap) ** self.rho

    def d_sigma(self, t):
        return self.rho * self.root_gap * self.sigma(t) ** ((self.rho - 1.0) / self.rho)

    def time_of(self, sigma: Tensor) -> Tensor:
        """The t with sigma(t) = sigma (the inverse map), for sigma in [sigma_min, sigma_max]."""
        return (sigma ** (1.0 / self.rho) - self.root_max) / self.root_gap

    def describe(self):
        return {**super().describe(), "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "rho": self.rho}


class EDMDenoiser(Method):
    """EDM's preconditioned denoiser on an :class:`EDMPath`: the network outputs F."""

    prediction = "edm-denoiser"

    def __init__(self, path: EDMPath, sigma_data: float = EDM_SIGMA_DATA,
                 p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD) -> None:
        super().__init__(path)
        if sigma_data <= 0 or p_std <= 0:
            raise ConfigError(f"sigma_data and p_std must be positive, got {sigma_data}, {p_std}")
        self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)

    def _skip_out(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """sigma, c_skip and c_out at t, broadcast against x."""
        sigma = self.path.sigma(expand_like(t, x))
        total = sigma**2 + self.sigma_data**2
        return sigma, self.sigma_data**2 / total, sigma * self.sigma_data / torch.sqrt(total)

    def sample_time(self, n, generator=None):
        """Log-normal noise levels (Table 1, training), as times."""
        sigma = torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator))
        return self.path.time_of(sigma).clamp(0.0, self.t_max)

    def objective(self, output, sample):
        _, c_skip, c_out = self._skip_out(sample.x_t, sample.t)
        return per_example_mse(output, (sample.x1 - c_skip * sample.x_t) / c_out)

    def velocity(self, output, x, t):
        sigma, c_skip, c_out = self._skip_out(x, t)
        denoised = c_skip * x + c_out * output
        return epsilon_to_velocity(self.path, (x - denoised) / sigma, x, t)

    def output_from_epsilon(self, eps: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The F whose denoiser is x - sigma eps (alpha = 1), for ``fmbench check``."""
        sigma, c_skip, c_out = self._skip_out(x, t)
        return (x - sigma * eps - c_skip * x) / c_out

    def describe(self):
        return {**super().describe(), "sigma_data": self.sigma_data, "p_mean": self.p_mean,
                "p_std": self.p_std}


@METHODS.register("edm", display="EDM", family="baseline")
def edm(sigma_min: float = EDM_SIGMA_MIN, sigma_max: float = EDM_SIGMA_MAX, rho: float = EDM_RHO,
        sigma_data: float = EDM_SIGMA_DATA) -> Method:
    """EDM's noise levels, preconditioning and loss (Karras et al. 2022) on fmbench's ODE."""
    return EDMDenoiser(EDMPath(sigma_min, sigma_max, rho), sigma_data)
