"""Affine conditional probability paths ``x_t = alpha_t x1 + sigma_t x0`` (docs/design.md §2.1).

Time runs from noise (t = 0, x0 ~ prior) to data (t = 1, x1 ~ data), as in Lipman et al. (2022).
Each path gives alpha_t, sigma_t and their time derivatives in closed form; the conditional velocity
``dx_t/dt = d_alpha_t x1 + d_sigma_t x0`` is the Flow Matching regression target.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from harness.errors import ConfigError


@dataclass(frozen=True)
class PathSample:
    """A draw from a conditional path; every tensor is (batch, *data_shape) except ``t`` (batch,)."""

    x0: Tensor
    x1: Tensor
    t: Tensor
    x_t: Tensor
    dx_t: Tensor

    def rows(self, index: slice) -> PathSample:
        """The same draw restricted to the rows ``index`` (views, no copy): e.g. one data-parallel
        worker's contiguous block of a global batch."""
        return PathSample(*(getattr(self, f.name)[index] for f in fields(self)))


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast a per-example time ``t`` (batch,) or scalar against ``x`` (batch, *data_shape)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(-1, *([1] * (x.ndim - 1)))


class AffinePath(ABC):
    """x_t = alpha_t x1 + sigma_t x0 on t in [0, t_max].

    ``t_max`` < 1 where the path's speed diverges at t = 1 (VP); ``prior_std`` is the standard
    deviation of the isotropic Gaussian the path starts from.
    """

    t_max: float = 1.0
    prior_std: float = 1.0

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_sigma(self, t: Tensor) -> Tensor: ...

    def diffusion_sq(self, t: Tensor) -> Tensor:
        """g(t)^2 of the forward SDE with these marginals, in diffusion time s = 1 - t.

        From x_s = alpha x1 + sigma eps: f = d log alpha / ds and g^2 = d sigma^2/ds - 2 f sigma^2,
        which with d/ds = -d/dt is 2 sigma (sigma d_alpha / alpha - d_sigma). VP gives beta(s).
        """
        a, s = self.alpha(t), self.sigma(t)
        return 2.0 * s * (s * self.d_alpha(t) / a - self.d_sigma(t))

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """Points on the conditional path and their conditional velocities at times ``t`` (batch,)."""
        tt = expand_like(t, x1)
        x_t = self.alpha(tt) * x1 + self.sigma(tt) * x0
        dx_t = self.d_alpha(tt) * x1 + self.d_sigma(tt) * x0
        return PathSample(x0=x0, x1=x1, t=t, x_t=x_t, dx_t=dx_t)

    def describe(self) -> dict[str, float | str]:
        """The constants that define this path, recorded with every run."""
        return {"path": type(self).__name__, "t_max": self.t_max, "prior_std": self.prior_std}


OT_SIGMA_MIN = 1e-4
"""Default sigma_min of the conditional OT path (Lipman et al. 2022), the noise left at t = 1: of
:class:`OTPath` and of the methods that expose it as an option (fm-ot, ot-cfm)."""


class OTPath(AffinePath):
    """Optimal-transport (conditional OT) path: alpha_t = t, sigma_t = 1 - (1 - sigma_min) t.

    Lipman et al. (2022), eq. 20; sigma_min = 0 gives rectified flow (Liu et al., 2022).
    """

    def __init__(self, sigma_min: float = OT_SIGMA_MIN) -> None:
        if not 0.0 <= sigma_min < 1.0:
            raise ConfigError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = float(sigma_min)

    def alpha(self, t):
        return t

    def sigma(self, t):
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t):
        return torch.ones_like(torch.as_tensor(t))

    def d_sigma(self, t):
        return torch.full_like(torch.as_tensor(t), -(1.0 - self.sigma_min))

    def describe(self):
        return {**super().describe(), "sigma_min": self.sigma_min}


class VPPath(AffinePath):
    """Variance-preserving diffusion path with a linear beta schedule.

    alpha_t = a(1 - t), sigma_t = sqrt(1 - alpha_t^2), a(s) = exp(-T(s)/2),
    T(s) = beta_min s + (beta_max - beta_min) s^2 / 2 (Lipman et al. 2022, eq. 18-19; Song et al.
    2021). d sigma_t/dt diverges as t -> 1, so the path is cut at t_max = 1 - eps (eps = 1e-5).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-5) -> None:
        if not 0.0 < beta_min < beta_max:
            raise ConfigError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        if not 0.0 < eps < 1.0:
            raise ConfigError(f"VP cut-off eps must be in (0, 1), got {eps}")
        self.beta_min, self.beta_max, self.eps = float(beta_min), float(beta_max), float(eps)
        self.t_max = 1.0 - self.eps

    def T(self, s):
        """Integrated noise rate T(s) = int_0^s beta(r) dr, in diffusion time s = 1 - t."""
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2

    def beta(self, s):
        """Noise rate beta(s) = T'(s), in diffusion time s = 1 - t."""
        return self.beta_min + (self.beta_max - self.beta_min) * s

    def T_inverse(self, T):
        """The diffusion time s with T(s) = T (positive root of the quadratic)."""
        db = self.beta_max - self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * db * T)) / db

    def alpha(self, t):
        return torch.exp(-0.5 * self.T(1.0 - t))

    def sigma(self, t):
        # sqrt(1 - exp(-T)) via expm1 keeps precision where T is tiny (t near 1).
        return torch.sqrt(-torch.expm1(-self.T(1.0 - t)))

    def d_alpha(self, t):
        s = 1.0 - t
        return 0.5 * self.beta(s) * self.alpha(t)

    def d_sigma(self, t):
        # From alpha^2 + sigma^2 = 1: sigma d_sigma = -alpha d_alpha.
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def describe(self):
        return {**super().describe(), "beta_min": self.beta_min, "beta_max": self.beta_max,
                "eps": self.eps}


class VEPath(AffinePath):
    """Variance-exploding path: alpha_t = 1, sigma_t = s(1 - t), s(u) = s_min (s_max/s_min)^u.

    The prior is N(0, s_max^2 I) (Song & Ermon 2019; Song et al. 2021). s_max should be about the
    largest pairwise distance in the data (Song & Ermon 2020, Technique 1).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        if not 0.0 < sigma_min < sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.prior_std = self.sigma_max

    def alpha(self, t):
        return torch.ones_like(torch.as_tensor(t))

    def sigma(self, t):
        return self.sigma_min * torch.exp(self.log_ratio * (1.0 - t))

    def d_alpha(self, t):
        return torch.zeros_like(torch.as_tensor(t))

    def d_sigma(self, t):
        return -self.log_ratio * self.sigma(t)

    def describe(self):
        return {**super().describe(), "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}
