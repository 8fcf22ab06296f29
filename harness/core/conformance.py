"""A conformance battery for a method: its path, conversions and loss against Gaussian closed forms.

``fmbench check METHOD`` runs it before any GPU time is spent. Every check feeds the method the
exact network of Gaussian data N(m, s^2 I) (:mod:`harness.core.analytic`), so whatever goes wrong is
the method's own arithmetic, not training. Each check returns one number and the tolerance it must
stay under; all run in float64 on the CPU in a few seconds. The tests of the built-in methods import
the same checks, so a plugin is held to exactly the bar the built-ins pass.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import jvp as _torch_jvp

from harness.core.analytic import GaussianData
from harness.core.likelihood import log_likelihood
from harness.core.methods import Method
from harness.core.paths import AffinePath
from harness.core.sampling import sample

DATA = GaussianData(mean=torch.tensor([1.0, -0.5], dtype=torch.float64), std=0.5)
"""The reference data: 2-D, off-centre and narrower than the prior, so no term vanishes."""

DERIVATIVE_TOL = 1e-6
"""Relative gap |AD - closed form| / (1 + |AD|) in float64: rounding is ~1e-12, a wrong factor is
O(1), a wrong sign or a missing chain-rule term is O(1) at some t."""

CONTINUITY_TOL = 1e-6
"""Relative residual of the continuity equation in float64, as for DERIVATIVE_TOL."""

NLL_TOL = 1e-3
"""nats per point, ODE at atol = rtol = 1e-7: the solver's error is ~1e-5, a wrong velocity scale
or prior is O(1)."""

Z_TOL = 4.0
"""Largest |z| allowed in the Monte-Carlo checks. Each is a seeded (deterministic) test of a
handful of statistics; two-sided P(|z| > 4) = 6.3e-5 under the null for one of them."""


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: the measured number against its tolerance (value <= tol passes).

    ``value`` is None for a check that does not apply to the method (``note`` says why)."""

    name: str
    value: float | None
    tol: float
    unit: str = ""
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.value is None or (math.isfinite(self.value) and self.value <= self.tol)

    def line(self) -> str:
        """``name  value <= tol unit  PASS`` (FAIL, or SKIP with the reason)."""
        if self.value is None:
            return f"{self.name:<22} {'-':>10}    {'':>8}  SKIP  {self.note}"
        verdict = "PASS" if self.passed else "FAIL"
        text = f"{self.name:<22} {self.value:>10.3g} <= {self.tol:<8.3g}{self.unit:>4}  {verdict}"
        return f"{text}  {self.note}" if self.note else text


BUILTIN_PREDICTIONS = ("velocity", "epsilon", "score")


def exact_output(method: Method, data: GaussianData, t: Tensor, x: Tensor) -> Tensor:
    """What a perfectly trained network of ``method`` outputs at (x, t) for ``data``.

    The built-in predictions come from :meth:`GaussianData.network_output`. A method with any
    other ``prediction`` defines ``output_from_epsilon(eps, x, t)``: the network output whose
    velocity is that of the noise estimate eps = E[x0 | x_t = x] (the inverse of its own
    conversion), which the battery feeds the exact eps."""
    if method.prediction in BUILTIN_PREDICTIONS:
        return data.network_output(method, t, x)
    convert = getattr(method, "output_from_epsilon", None)
    if convert is None:
        raise TypeError(f"prediction {method.prediction!r} is not one of "
                        f"{', '.join(BUILTIN_PREDICTIONS)}; define output_from_epsilon(eps, x, t)")
    return convert(data.epsilon(method.path, t, x), x, t)


class ExactNetwork(nn.Module):
    """:func:`exact_output` as a network ``net(x, t)``, t scalar or (batch,)."""

    def __init__(self, method: Method, data: GaussianData) -> None:
        super().__init__()
        self.method, self.data = method, data

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return exact_output(self.method, self.data, t.to(x.dtype), x)


def jvp(fn, primals, tangents):
    """torch.func.jvp without the FutureWarning torch's first forward-mode call prints about its own
    internal use of torch.jit.script (not ours; it would open every `fmbench check` output)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated",
                                category=FutureWarning)
        return _torch_jvp(fn, primals, tangents)


def path_derivative_gap(path: AffinePath, n: int = 64, seed: int = 1) -> float:
    """Largest relative gap between the path's closed forms and forward-mode AD: the target dx_t
    against d x_t/dt, d_alpha against d alpha/dt, d_sigma against d sigma/dt, at n times spread
    over [0, t_max] with both ends (cut-offs) included."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n - 2, generator=g, dtype=torch.float64) * path.t_max
    t = torch.cat([t, torch.tensor([0.0, path.t_max], dtype=torch.float64)])
    x0 = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(n, 3, generator=g, dtype=torch.float64)
    ones = torch.ones_like(t)
    _, dx = jvp(lambda tt: path.sample(x0, x1, tt).x_t, (t,), (ones,))
    _, da = jvp(lambda tt: path.alpha(tt) * torch.ones_like(tt), (t,), (ones,))
    _, ds = jvp(lambda tt: path.sigma(tt) * torch.ones_like(tt), (t,), (ones,))
    pairs = [(path.sample(x0, x1, t).dx_t, dx), (path.d_alpha(t) * ones, da),
             (path.d_sigma(t) * ones, ds)]
    return max(float(((a - b).abs() / (1.0 + b.abs())).max()) for a, b in pairs)


def check_target_derivative(method: Method) -> CheckResult:
    """The training target equals d x_t/dt by forward-mode AD (:func:`path_derivative_gap`)."""
    return CheckResult("target = dx_t/dt (AD)", path_derivative_gap(method.path), DERIVATIVE_TOL)


def _marginal_log_prob(data: GaussianData, method: Method, x: Tensor, t: Tensor) -> Tensor:
    """log p_t(x) of the Gaussian marginal N(alpha m, v_t I) (batch,), t (batch,)."""
    a = method.path.alpha(t)[:, None] * torch.ones_like(x)
    var = data.variance(method.path, t)[:, None] * torch.ones_like(x)
    return (-0.5 * ((x - a * data.mean) ** 2 / var + torch.log(2 * math.pi * var))).sum(1)


def check_continuity(method: Method, data: GaussianData = DATA, seed: int = 2) -> CheckResult:
    """The velocity the method computes from the exact network output solves the continuity
    equation of the analytic marginal: d/dt log p + div v + v . grad log p = 0 at random (x, t).

    All derivatives by autograd; each row depends only on its own (x, t), so summing before
    differentiating gives per-row derivatives. Times stay inside (0, t_max) by 1%."""
    g = torch.Generator().manual_seed(seed)
    t = (0.01 + 0.98 * torch.rand(64, generator=g, dtype=torch.float64)) * method.t_max
    std = data.variance(method.path, t).sqrt()[:, None]
    a = (method.path.alpha(t) * torch.ones_like(t))[:, None]
    x = (a * data.mean + std * torch.randn(len(t), 2, generator=g, dtype=torch.float64))
    x, t = x.requires_grad_(True), t.requires_grad_(True)
    lp = _marginal_log_prob(data, method, x, t)
    dlp_dt, grad_x = torch.autograd.grad(lp.sum(), (t, x), create_graph=True)
    v = method.velocity(exact_output(method, data, t, x), x, t)
    div = sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0][:, i]
              for i in range(x.shape[1]))
    flux = (v * grad_x).sum(1)
    residual = dlp_dt + div + flux
    scale = 1.0 + dlp_dt.abs() + div.abs() + flux.abs()
    return CheckResult("continuity equation", float((residual.abs() / scale).max().detach()),
                       CONTINUITY_TOL)


def check_exact_nll(method: Method, data: GaussianData = DATA, seed: int = 4) -> CheckResult:
    """The exact-divergence NLL of the exact network equals the closed-form model density."""
    g = torch.Generator().manual_seed(seed)
    x = data.mean + data.std * torch.randn(64, 2, generator=g, dtype=torch.float64)
    result = log_likelihood(method, ExactNetwork(method, data), x, divergence="exact", atol=1e-7,
                            rtol=1e-7)
    gap = float((result.log_prob - data.model_log_prob(method, x)).abs().max())
    return CheckResult("exact NLL = density", gap, NLL_TOL, unit="nats")


def moment_z_scores(x: Tensor, mean: Tensor, std: float) -> Tensor:
    """|z| of each sample mean and covariance entry of x (n, d) against N(mean, std^2 I).

    Standard errors of a Gaussian sample's moments: std/sqrt(n) for a mean, and for the covariance
    entry (i, j) sqrt((S_ii S_jj + S_ij^2) / n), i.e. sqrt(2) std^2/sqrt(n) on the diagonal and
    std^2/sqrt(n) off it (Anderson 2003, An Introduction to Multivariate Statistical Analysis,
    §3.4, moments of the Wishart distribution)."""
    n, d = x.shape
    z_mean = (x.mean(0) - mean) / (std / math.sqrt(n))
    cov = torch.cov(x.T, correction=1).reshape(d, d)
    eye = torch.eye(d, dtype=x.dtype)
    se = std**2 * torch.sqrt((1.0 + eye) / n)
    z_cov = (cov - std**2 * eye) / se
    iu = torch.triu_indices(d, d)
    return torch.cat([z_mean.abs(), z_cov[iu[0], iu[1]].abs()])


def check_pushforward(method: Method, data: GaussianData = DATA, n: int = 2000,
                      seed: int = 6) -> CheckResult:
    """dopri5 samples of the exact network have the mean and covariance of the closed-form
    pushforward of the prior; the tolerance is Z_TOL standard errors for n samples."""
    noise = method.sample_prior(n, (2,), torch.Generator().manual_seed(seed)).double()
    sol, _ = sample(method, ExactNetwork(method, data), noise, "dopri5", tol=1e-6)
    mean, std = data.pushforward(method)
    z = float(moment_z_scores(sol.x, mean, std).max())
    return CheckResult("dopri5 pushforward", z, Z_TOL, unit="|z|", note=f"n = {n}")


def _perturbations(x: Tensor, t: Tensor) -> list[Tensor]:
    """Directions in output space: a constant, the state, the state scaled by time, its square."""
    tt = t.reshape(-1, *([1] * (x.ndim - 1)))
    return [torch.ones_like(x), x, tt * x, x**2]


def check_minimiser(method: Method, data: GaussianData = DATA, n: int = 20000,
                    seed: int = 5) -> CheckResult:
    """The exact network is a stationary point of the expected training loss: along each
    perturbation h, the Monte-Carlo mean of d/de objective(oracle + e h) at e = 0 is within Z_TOL
    standard errors of 0. The objective and its time sampling are the method's own.

    Not applicable to a method with a coupling (e.g. minibatch OT): re-pairing x0 and x1 changes
    the regression target's conditional mean, so the independent-coupling field is not its
    minimiser."""
    name = "loss minimiser"
    if method.coupling is not None:
        return CheckResult(name, None, Z_TOL, note="not applicable: a coupling re-pairs x0, x1")
    g = torch.Generator().manual_seed(seed)
    x1 = data.mean + data.std * torch.randn(n, 2, generator=g, dtype=torch.float64)
    drawn = method.draw(x1, g)
    out = exact_output(method, data, drawn.t.to(x1.dtype), drawn.x_t)
    zs = []
    for h in _perturbations(drawn.x_t, drawn.t.to(x1.dtype)):
        e = torch.zeros((), dtype=torch.float64)
        _, slope = jvp(lambda ee: method.objective(out + ee * h, drawn), (e,), (torch.ones_like(e),))
        mean, se = abs(float(slope.mean())), float(slope.std()) / math.sqrt(n)
        zs.append(mean / se if se > 0 else (0.0 if mean == 0 else math.inf))
    return CheckResult(name, max(zs), Z_TOL, unit="|z|", note=f"n = {n}, {len(zs)} directions")


CHECKS: tuple[Callable[[Method], CheckResult], ...] = (
    check_target_derivative, check_continuity, check_exact_nll, check_pushforward,
    check_minimiser)
"""The battery, in the order ``fmbench check`` prints it."""


def run_checks(method: Method) -> list[CheckResult]:
    """Every check of the battery on ``method``. An exception inside a check (a shape error, a
    missing attribute) becomes that check's failure, with the exception's one-line message."""
    results = []
    for check in CHECKS:
        try:
            results.append(check(method))
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is a failed check, not a crash
            name = check.__name__.removeprefix("check_").replace("_", " ")
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            results.append(CheckResult(name, math.nan, 0.0,
                                       note=f"raised {type(exc).__name__}: {msg}"))
    return results
