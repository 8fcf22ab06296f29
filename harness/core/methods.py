"""Generative methods: a path, what the network predicts, and how the training loss weighs it.

Every method exposes the same three things (docs/design.md §2.2): its prior (sampler and log-density), a
training loss on a data batch, and the velocity of its probability-flow ODE computed from the network
output. Sampling, NFE and likelihood only ever use that velocity, so every method is measured the
same way. A new method is a small class or factory plus a registry entry.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from harness.datasets.base import Dataset
from harness.errors import ConfigError
from harness.core.paths import (OT_SIGMA_MIN, AffinePath, OTPath, PathSample, VEPath, VPPath,
                           expand_like)
from harness.registry import Registry

VelocityField = Callable[[Tensor, Tensor], Tensor]
"""v(t, x): t a scalar tensor, x (batch, *data_shape) -> (batch, *data_shape)."""

Coupling = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor]"]


def per_example_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error over all but the batch dimension: (batch,)."""
    return (a - b).pow(2).flatten(1).mean(dim=1)


class Method(ABC):
    """A method trains ``net(x_t, t)`` on an :class:`AffinePath` and turns its output into a velocity.

    prediction: what the network output means ("velocity", "epsilon" or "score").
    """

    prediction: str = ""

    def __init__(self, path: AffinePath, coupling: Coupling | None = None) -> None:
        self.path = path
        self.coupling = coupling

    # -- prior -----------------------------------------------------------------------------
    @property
    def t_max(self) -> float:
        """Integration runs on [0, t_max]; t_max < 1 only where the path's speed diverges."""
        return self.path.t_max

    def sample_prior(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
        """x0 ~ N(0, prior_std^2 I): (n, *shape). Drawn on the CPU so seeds give the same noise on
        every device."""
        x0 = torch.randn((n, *shape), generator=generator) * self.path.prior_std
        return x0.to(device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, prior_std^2 I) summed over data dimensions: (batch,) in nats."""
        d = x[0].numel()
        var = self.path.prior_std**2
        return -0.5 * (x.flatten(1).pow(2).sum(1) / var + d * math.log(2 * math.pi * var))

    # -- training --------------------------------------------------------------------------
    def sample_time(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Training times t ~ U[0, t_max]: (n,)."""
        return torch.rand(n, generator=generator) * self.t_max

    def loss(self, net: nn.Module, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scalar training loss on a data batch x1 (batch, *data_shape); noise from ``generator``."""
        return self.loss_on(net, self.draw(x1, generator))

    def draw(self, x1: Tensor, generator: torch.Generator | None = None) -> PathSample:
        """The randomness of one training batch: noise x0, times t and (if any) the coupling of
        x0 to x1, drawn over the whole batch x1 (batch, *data_shape).

        Kept apart from :meth:`loss_on` so data-parallel workers can all draw the same global
        batch and each compute the loss on its own rows: a minibatch OT plan is then solved over
        the global batch, exactly as one worker would.
        """
        n = x1.shape[0]
        # The path's x0 is standard normal noise; sigma_t carries the scale (VE: sigma_0 = s_max).
        x0 = torch.randn(x1.shape, generator=generator).to(x1.device)
        t = self.sample_time(n, generator).to(x1.device)
        if self.coupling is not None:
            x0, x1 = self.coupling(x0, x1)
        return self.path.sample(x0, x1, t)

    def loss_on(self, net: nn.Module, sample: PathSample) -> Tensor:
        """Mean objective of ``net`` over the rows of a path sample (scalar)."""
        return self.objective(net(sample.x_t, sample.t), sample).mean()

    @abstractmethod
    def objective(self, output: Tensor, sample: PathSample) -> Tensor:
        """Per-example loss (batch,) of the network output on a path sample."""

    # -- the probability-flow ODE ----------------------------------------------------------
    @abstractmethod
    def velocity(self, output: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Marginal velocity v_t(x) implied by the network output at (x, t)."""

    def velocity_field(self, net: nn.Module) -> VelocityField:
        """The ODE right-hand side v(t, x) built from ``net``; every sampler and NLL uses it. The
        network and :meth:`velocity` get the solver's one time as a 0-d tensor, so the network
        computes its time code once per call, not once per example."""

        def field(t: Tensor, x: Tensor) -> Tensor:
            tb = t.reshape(()).to(x.dtype)
            return self.velocity(net(x, tb), x, tb)

        return field

    def describe(self) -> dict[str, object]:
        """Constants recorded with every run."""
        info = {"prediction": self.prediction, **self.path.describe()}
        if self.coupling is not None:
            info["coupling"] = getattr(self.coupling, "__name__", str(self.coupling))
        return info


def epsilon_to_velocity(path: AffinePath, eps: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """v = d_alpha x1_hat + d_sigma eps with x1_hat = (x - sigma eps) / alpha (docs/design.md §2.4).

    Written as (d_alpha/alpha) x + (d_sigma - d_alpha sigma/alpha) eps, which stays finite where
    alpha is tiny (VP at t = 0, alpha ~ 6.6e-3).
    """
    tt = expand_like(t, x)
    a, s, da, ds = path.alpha(tt), path.sigma(tt), path.d_alpha(tt), path.d_sigma(tt)
    return (da / a) * x + (ds - da * s / a) * eps


class FlowMatching(Method):
    """Regress the network onto the conditional velocity d_alpha x1 + d_sigma x0 (Lipman et al.
    2022, eq. 14 / 23)."""

    prediction = "velocity"

    def objective(self, output, sample):
        return per_example_mse(output, sample.dx_t)

    def velocity(self, output, x, t):
        return output


class EpsilonPrediction(Method):
    """DDPM's objective (Ho et al. 2020) in continuous time: predict the noise x0 of x_t."""

    prediction = "epsilon"

    def objective(self, output, sample):
        return per_example_mse(output, sample.x0)

    def velocity(self, output, x, t):
        return epsilon_to_velocity(self.path, output, x, t)


class ScorePrediction(Method):
    """Denoising score matching with weighting lambda(t): lambda |score + x0/sigma_t|^2
    (Song & Ermon 2019; Song et al. 2021).

    output "score": the network output s is the score itself (Lipman et al. 2022, App. E.1). With
        lambda = sigma^2 the loss is |sigma s + x0|^2.
    output "scaled": the output n is a noise-scaled score, score = -n / sigma_t, as NCSN and
        score-SDE networks use so outputs stay O(1) across noise levels. The loss is then
        (lambda / sigma^2) |n - x0|^2; on the VP path with lambda = sigma^2 that is exactly DDPM's
        loss, which is why the paper's Score Matching baseline needs output "score".
    Both are written as lambda / sigma^2 |eps_hat - x0|^2 with eps_hat = -sigma score.

    weighting "sigma2": lambda = sigma^2 (the standard DSM weighting).
    weighting "likelihood": lambda = g(t)^2 (ScoreFlow, Song et al. 2021b), which makes the loss a
        bound on the NLL. Its weight g^2/sigma^2 blows up as sigma -> 0, so on the VP path times are
        importance-sampled from q(t) proportional to g^2/sigma^2 and the loss is
        Z |eps_hat - x0|^2 with Z = int g^2/sigma^2 dt / t_max: the same expectation, far lower
        variance.
    """

    prediction = "score"

    def __init__(self, path: AffinePath, weighting: str = "sigma2", output: str = "scaled") -> None:
        super().__init__(path)
        if weighting not in ("sigma2", "likelihood"):
            raise ConfigError(f"unknown score weighting {weighting!r}; valid: sigma2, likelihood")
        if weighting == "likelihood" and not isinstance(path, VPPath):
            raise ConfigError("likelihood weighting is implemented for the VP path only")
        if output not in ("score", "scaled"):
            raise ConfigError(f"unknown score output {output!r}; valid: score, scaled")
        self.weighting = weighting
        self.output = output

    def epsilon(self, output: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The noise estimate eps_hat = -sigma_t score implied by the network output."""
        if self.output == "scaled":
            return output
        return -self.path.sigma(expand_like(t, x)) * output

    def score(self, output: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """grad_x log p_t(x) implied by the network output."""
        if self.output == "score":
            return output
        return -output / self.path.sigma(expand_like(t, x))

    def _log_expm1_T(self, s: Tensor) -> Tensor:
        """log(exp(T(s)) - 1), the antiderivative of g^2/sigma^2 = beta(s) / (1 - exp(-T(s)))."""
        T = self.path.T(s)
        return T + torch.log(-torch.expm1(-T))

    def _likelihood_normaliser(self) -> float:
        p: VPPath = self.path  # type: ignore[assignment]
        ends = self._log_expm1_T(torch.tensor([p.eps, 1.0], dtype=torch.float64))
        return float(ends[1] - ends[0]) / self.t_max

    def sample_time(self, n, generator=None):
        if self.weighting == "sigma2":
            return super().sample_time(n, generator)
        # Inverse-CDF sampling of s = 1 - t in [eps, 1] with density proportional to g^2/sigma^2.
        p: VPPath = self.path  # type: ignore[assignment]
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        lo, hi = self._log_expm1_T(torch.tensor([p.eps, 1.0], dtype=torch.float64))
        F = lo + u * (hi - lo)
        T = torch.nn.functional.softplus(F)  # solves log(exp(T) - 1) = F
        s = p.T_inverse(T).clamp(p.eps, 1.0)
        return (1.0 - s).float()

    def objective(self, output, sample):
        err = per_example_mse(self.epsilon(output, sample.x_t, sample.t), sample.x0)
        if self.weighting == "sigma2":
            return err
        return self._likelihood_normaliser() * err

    def velocity(self, output, x, t):
        return epsilon_to_velocity(self.path, self.epsilon(output, x, t), x, t)

    def describe(self):
        return {**super().describe(), "weighting": self.weighting, "output": self.output}


def exact_ot_coupling(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """Re-pair a minibatch by the exact OT plan for squared Euclidean cost (Tong et al. 2023;
    Pooladian et al. 2023), solved with POT's network simplex.

    With equal batch sizes and uniform weights the optimal plan is a permutation, so x1 is
    reordered rather than resampled: the batch keeps every data point exactly once.
    """
    import ot  # POT; imported here so the rest of the package loads without it

    cost = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()).pow(2).cpu().numpy()
    n = cost.shape[0]
    weights = np.full(n, 1.0 / n)
    plan = ot.emd(weights, weights, cost)
    perm = torch.as_tensor(plan.argmax(axis=1), device=x1.device)
    return x0, x1[perm]


# -- registry ------------------------------------------------------------------------------------
METHODS: Registry[Callable[..., Method]] = Registry("method")



@METHODS.register("ddpm", display="DDPM", family="baseline")
def _ddpm(beta_min=0.1, beta_max=20.0, eps=1e-5) -> Method:
    """Noise (epsilon) prediction on the VP path (Ho et al. 2020)."""
    return EpsilonPrediction(VPPath(beta_min, beta_max, eps))


@METHODS.register("score-matching", display="Score Matching", family="baseline")
def _score_matching(beta_min=0.1, beta_max=20.0, eps=1e-5) -> Method:
    """The paper's baseline (Lipman et al. 2022, App. E.1): VP path, lambda = sigma^2, and a
    network that outputs the score itself (a scaled output would make this DDPM)."""
    return ScorePrediction(VPPath(beta_min, beta_max, eps), weighting="sigma2", output="score")


@METHODS.register("score-matching-ve", display="Score Matching (VE)", family="baseline")
def _score_matching_ve(sigma_min=0.01, sigma_max=50.0) -> Method:
    """NCSN-style (Song & Ermon 2020): VE path, prior N(0, sigma_max^2 I), lambda = sigma^2,
    scaled output. sigma_max defaults to the data's diameter (:func:`default_method_options`)."""
    return ScorePrediction(VEPath(sigma_min, sigma_max), weighting="sigma2", output="scaled")


@METHODS.register("scoreflow", display="ScoreFlow", family="baseline")
def _scoreflow(beta_min=0.1, beta_max=20.0, eps=1e-5) -> Method:
    """VP path, likelihood-weighted score matching with a scaled output as in score-SDE
    (Song et al. 2021b)."""
    return ScorePrediction(VPPath(beta_min, beta_max, eps), weighting="likelihood",
                           output="scaled")


@METHODS.register("fm-diffusion", display="FM w/ Diffusion", family="flow-matching")
def _fm_diffusion(beta_min=0.1, beta_max=20.0, eps=1e-5) -> Method:
    """Flow Matching on the VP diffusion path (Lipman et al. 2022, §4.1)."""
    return FlowMatching(VPPath(beta_min, beta_max, eps))


@METHODS.register("rectified-flow", display="Rectified Flow", family="flow-matching")
def _rectified_flow() -> Method:
    """Flow Matching on the straight path x_t = t x1 + (1 - t) x0 (Liu et al. 2022)."""
    return FlowMatching(OTPath(0.0))


@METHODS.register("ot-cfm", display="OT-CFM", family="flow-matching")
def _ot_cfm(sigma_min=OT_SIGMA_MIN) -> Method:
    """FM w/ OT with minibatch pairs re-coupled by an exact OT plan (Tong et al. 2023)."""
    return FlowMatching(OTPath(sigma_min), coupling=exact_ot_coupling)


@METHODS.register("fm-ot", display="FM w/ OT", family="flow-matching")
def _fm_ot(sigma_min=OT_SIGMA_MIN) -> Method:
    """Flow Matching on the conditional OT path (Lipman et al. 2022, §4.1)."""
    return FlowMatching(OTPath(sigma_min))


def method_options(name: str) -> dict[str, object]:
    """The options a method accepts and their defaults."""
    sig = inspect.signature(METHODS.get(name))
    return {k: p.default for k, p in sig.parameters.items()}


def build_method(name: str, **options) -> Method:
    """Construct a registered method; unknown options raise ConfigError naming the valid ones."""
    valid = method_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"method {name!r} has no option {unknown[0]!r}; "
                          f"valid: {', '.join(valid) or '(none)'}")
    return METHODS.get(name)(**options)


DIAMETER_SUBSAMPLE = 4096
"""At most this many training points (a fixed-seed random subset) enter the data diameter."""


def max_pairwise_distance(x: Tensor, chunk: int = 512) -> float:
    """Largest Euclidean distance between rows of ``x`` (N, *shape), in float64.

    Computed block by block so only two (chunk, D) float64 blocks are held at a time (~100 MB
    for 3x64x64 images) rather than the whole subset in float64 (400 MB). Takes ~5-8 s for
    4096 x 3072 (CIFAR-sized) on 2 shared CPU cores.
    """
    x = x.flatten(1)
    best = 0.0
    for i in range(0, len(x), chunk):
        a = x[i:i + chunk].double()
        for j in range(i, len(x), chunk):
            best = max(best, float(torch.cdist(a, x[j:j + chunk].double()).max()))
    return best


def default_method_options(name: str, dataset: Dataset,
                           given: Iterable[str] = ()) -> dict[str, object]:
    """Data-dependent defaults resolved once per trial and recorded with it; options named in
    ``given`` (set by the suite, which wins) are not computed.

    score-matching-ve: sigma_max = the largest pairwise Euclidean distance of the training data in
    model space (Song & Ermon 2020, "Technique 1"), for images too (discrete levels at their bin
    centres, no dequantization noise). A fixed 50 was 5.5x the diameter of digits. Computed on a
    random subset of at most DIAMETER_SUBSAMPLE points (seed 0, so it is deterministic).
    """
    if name != "score-matching-ve" or "sigma_max" in given:
        return {}
    raw = dataset.train
    if len(raw) > DIAMETER_SUBSAMPLE:
        pick = torch.randperm(len(raw), generator=torch.Generator().manual_seed(0))
        raw = raw[pick[:DIAMETER_SUBSAMPLE]]
    data = dataset.to_model_space(raw, dequantize=False)
    return {"sigma_max": round(max_pairwise_distance(data), 3)}
