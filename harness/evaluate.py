"""Evaluation of a trained network: NFE, NLL (nats or bits/dim), sample quality, numerical error.

Everything goes through the method's probability-flow velocity (DESIGN.md §3), so every method is
measured by the same solvers. Noise, probes and dequantization come from generators seeded by
``EvalConfig.seed``: the same seed gives every method the same prior noise.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from harness.datasets import Dataset
from harness.errors import ConfigError
from harness.likelihood import bits_per_dim, log_likelihood
from harness.methods import Method
from harness.metrics import mmd2, wasserstein2
from harness.solvers import SOLVERS, NFECounter, solve


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings; every field is recorded with the run.

    tol: atol = rtol of dopri5 for sampling NFE and NLL (the paper's 1e-5).
    samples: dopri5 samples drawn for NFE and sample quality.
    nll_samples: held-out examples whose likelihood is computed (all if larger than the test set).
    dequant_draws: K uniform dequantization draws per image; bits/dim is averaged over them.
    divergence: "auto" (exact up to 16 dims), "exact" or "hutchinson".
    solvers, nfe_budgets: the fixed-step grid of the numerical-error curve (budget = steps x stages;
        budgets below one step of a solver are skipped).
    error_samples: noise draws for the numerical-error curve.
    reference_tol: dopri5 tolerance of the float64 reference solution for numerical error.
    batch_size: examples per solve; adaptive NFE is the mean over these batch solves.
    fid_samples: generated samples for FID of image data (0: no FID; the paper uses 50,000).
    fid_ref_samples: reference samples (0: the whole split); fid_split: "train" (the paper's) or
        "test"; fid_mode: clean-fid mode ("clean", "legacy_tensorflow", "legacy_pytorch");
        fid_features: "inception", or "classifier" for digits/mnist (logged as fid_classifier).
    fid_nfe_samples: samples per point of the FID-vs-NFE curve, one point per fixed-step solver
        and NFE budget plus dopri5 at ``tol`` (0: no curve).
    trajectory_samples, trajectory_times: sample paths saved for figures (the paper's Figure 6):
        states at these fractions of [0, t_max], from noise seeded by ``trajectory_seed``, which
        stays fixed across trials so every method of a suite starts from the same noise.
    seed: seeds prior noise, Hutchinson probes and dequantization.
    """

    tol: float = 1e-5
    samples: int = 2000
    nll_samples: int = 1000
    dequant_draws: int = 1
    divergence: str = "auto"
    solvers: tuple[str, ...] = ("euler", "midpoint", "rk4")
    nfe_budgets: tuple[int, ...] = (4, 8, 16, 32)
    error_samples: int = 256
    reference_tol: float = 1e-7
    batch_size: int = 1000
    fid_samples: int = 0
    fid_ref_samples: int = 0
    fid_split: str = "train"
    fid_mode: str = "clean"
    fid_features: str = "inception"
    fid_nfe_samples: int = 0
    trajectory_samples: int = 16
    trajectory_times: tuple[float, ...] = (0.25, 0.5, 0.75)
    trajectory_seed: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.tol > 0 and self.reference_tol > 0):
            raise ConfigError(f"tolerances must be > 0, got tol={self.tol}, "
                              f"reference_tol={self.reference_tol}")
        for name in ("samples", "nll_samples", "dequant_draws", "error_samples", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"evaluation {name} must be > 0, got {getattr(self, name)}")
        for s in self.solvers:
            if SOLVERS.get(s).adaptive:
                raise ConfigError(f"solver {s!r} is adaptive; list fixed-step solvers only")
        if any(not 0.0 < f < 1.0 for f in self.trajectory_times) or \
                list(self.trajectory_times) != sorted(self.trajectory_times):
            raise ConfigError(f"trajectory_times must be increasing fractions in (0, 1), "
                              f"got {list(self.trajectory_times)}")
        for name in ("fid_samples", "fid_nfe_samples"):
            if getattr(self, name) < 0 or getattr(self, name) == 1:
                raise ConfigError(f"evaluation {name} must be 0 (off) or >= 2, "
                                  f"got {getattr(self, name)}")
        self.fid_config(max(self.fid_samples, 2))  # validates mode, features, split, ref samples
        if self.trajectory_samples < 0:
            raise ConfigError(f"trajectory_samples must be >= 0, got {self.trajectory_samples}")
        if self.divergence not in ("auto", "exact", "hutchinson"):
            raise ConfigError(f"unknown divergence {self.divergence!r}; valid: auto, exact, "
                              "hutchinson")
        if any(b <= 0 for b in self.nfe_budgets):
            raise ConfigError(f"NFE budgets must be > 0, got {list(self.nfe_budgets)}")


    def fid_config(self, num_gen: int):
        """The clean-fid settings of one FID evaluation with ``num_gen`` generated samples."""
        from harness.fid import FIDConfig

        return FIDConfig(mode=self.fid_mode, features=self.fid_features, num_gen=num_gen,
                         num_ref=self.fid_ref_samples, batch_size=min(self.batch_size, 500),
                         split=self.fid_split)


@dataclass(frozen=True)
class ErrorPoint:
    """One point of the numerical-error curve: MSE per dimension vs the dopri5 reference."""

    solver: str
    nfe: int
    error: float


@dataclass(frozen=True)
class FIDPoint:
    """One point of the FID-vs-NFE curve (the paper's Figure 7, right); ``nfe`` is the mean NFE
    per batch for dopri5."""

    solver: str
    nfe: float
    fid: float


@dataclass(frozen=True)
class Trajectories:
    """Sample paths: ``states`` (len(times), n, *shape) at ``times`` (first 0, last t_max)."""

    times: Tensor
    states: Tensor


@dataclass(frozen=True)
class EvalResult:
    """metrics: name -> value (names registered in harness.metrics); samples: dopri5 samples."""

    metrics: dict[str, float]
    error_curve: list[ErrorPoint] = field(default_factory=list)
    samples: Tensor | None = None
    trajectories: Trajectories | None = None
    fid_curve: list[FIDPoint] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(size, n - start)


@torch.no_grad()
def sample(method: Method, net: nn.Module, noise: Tensor, solver: str = "dopri5", *,
           tol: float = 1e-5, nfe: int | None = None, times=None):
    """Solve the probability-flow ODE from prior noise (batch, *shape); returns (Solution, NFE)."""
    counter = NFECounter(net)
    sol = solve(method.velocity_field(counter), noise, 0.0, method.t_max, solver, atol=tol,
                rtol=tol, nfe=nfe, times=times)
    return sol, counter.count


def _noise(method: Method, n: int, shape, seed: int, device) -> Tensor:
    return method.sample_prior(n, shape, torch.Generator().manual_seed(seed), device)


def evaluate_sampling(method, net, dataset, cfg, device) -> tuple[dict[str, float], Tensor]:
    """dopri5 samples at ``cfg.tol``: mean NFE per batch solve, and W2/MMD for vector data."""
    noise = _noise(method, cfg.samples, dataset.shape, cfg.seed, device)
    outs, counts = [], []
    for start, n in _chunks(cfg.samples, cfg.batch_size):
        sol, count = sample(method, net, noise[start:start + n], tol=cfg.tol)
        outs.append(sol.x.cpu())
        counts.append(count)
    samples = torch.cat(outs)
    metrics = {"nfe": sum(counts) / len(counts)}
    if not dataset.is_image:
        reference = dataset.test[: cfg.samples]
        metrics["w2"] = wasserstein2(samples, reference)
        metrics["mmd"] = mmd2(samples, reference)
    return metrics, samples


def evaluate_fid(method, net, dataset, cfg, device, num_gen: int, solver: str = "dopri5",
                 nfe: int | None = None) -> tuple[str, float, float]:
    """FID of ``num_gen`` samples drawn with ``solver``: (metric name, value, mean NFE per batch).

    Noise comes from a generator seeded by the trial seed, so reruns see the same samples.
    Raises harness.fid.FIDUnavailable when the feature extractor's weights are missing.
    """
    from harness.fid import fid_from_sampler

    gen = torch.Generator().manual_seed(cfg.seed + 3)
    counts: list[int] = []

    def sample_fn(n: int) -> Tensor:
        noise = method.sample_prior(n, dataset.shape, gen, device)
        sol, count = sample(method, net, noise, solver, tol=cfg.tol, nfe=nfe)
        counts.append(count)
        return sol.x

    result = fid_from_sampler(sample_fn, dataset, cfg.fid_config(num_gen), device)
    return result.metric, result.fid, sum(counts) / max(len(counts), 1)


def evaluate_fid_curve(method, net, dataset, cfg, device) -> list[FIDPoint]:
    """FID against NFE: every fixed-step solver at every budget, and dopri5 at ``tol``."""
    points = []
    for solver in cfg.solvers:
        for budget in cfg.nfe_budgets:
            if budget >= SOLVERS.get(solver).stages:
                _, fid, count = evaluate_fid(method, net, dataset, cfg, device,
                                             cfg.fid_nfe_samples, solver, budget)
                points.append(FIDPoint(solver, count, fid))
    _, fid, count = evaluate_fid(method, net, dataset, cfg, device, cfg.fid_nfe_samples)
    points.append(FIDPoint("dopri5", count, fid))
    return points


def evaluate_during_training(method, net, dataset, cfg, device) -> dict[str, float]:
    """The cheap part of evaluation, for curves against training step (the paper's Figure 5):
    dopri5 NFE, W2/MMD for vector data, FID for images when ``fid_samples`` is set."""
    if dataset.is_image and cfg.fid_samples:
        name, fid, nfe = evaluate_fid(method, net, dataset, cfg, device, cfg.fid_samples)
        return {name: fid, "nfe": nfe}
    metrics, _ = evaluate_sampling(method, net, dataset, cfg, device)
    return metrics


def evaluate_likelihood(method, net, dataset, cfg, device) -> dict[str, float]:
    """NLL of held-out data: nats per example (continuous) or bits/dim averaged over K draws."""
    test = dataset.test[: cfg.nll_samples]
    draws = cfg.dequant_draws if dataset.is_discrete else 1
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    values, nfes = [], []
    for _ in range(draws):
        for start, n in _chunks(len(test), cfg.batch_size):
            x = dataset.to_model_space(test[start:start + n], gen).to(device)
            res = log_likelihood(method, net, x, divergence=cfg.divergence, atol=cfg.tol,
                                 rtol=cfg.tol, generator=gen)
            lp = res.log_prob.double().cpu()
            values.append(bits_per_dim(lp, dataset.dim, dataset.levels) if dataset.is_discrete
                          else -lp)
            nfes.append(res.nfe)
    allv = torch.cat(values)
    name = "bpd" if dataset.is_discrete else "nll"
    return {name: float(allv.mean()), f"{name}_se": float(allv.std() / math.sqrt(len(allv))),
            "nll_nfe": sum(nfes) / len(nfes)}


def evaluate_numerical_error(method, net, dataset, cfg, device) -> list[ErrorPoint]:
    """Per-dimension MSE of fixed-step solutions against a float64 dopri5 solution at
    ``reference_tol`` from the same noise (the paper's Figure 7, left)."""
    noise = _noise(method, cfg.error_samples, dataset.shape, cfg.seed + 2, device)
    ref_net = copy.deepcopy(net).double()
    reference, _ = sample(method, ref_net, noise.double(), tol=cfg.reference_tol)
    points = []
    for solver in cfg.solvers:
        stages = SOLVERS.get(solver).stages
        for budget in cfg.nfe_budgets:
            if budget < stages:
                continue
            sol, count = sample(method, net, noise, solver, nfe=budget)
            err = (sol.x.double() - reference.x).pow(2).mean().item()
            points.append(ErrorPoint(solver, count, err))
    return points


def evaluate_trajectories(method, net, dataset, cfg, device) -> Trajectories | None:
    """dopri5 paths from the suite-wide trajectory noise, with the states at the chosen times."""
    if cfg.trajectory_samples == 0:
        return None
    noise = _noise(method, cfg.trajectory_samples, dataset.shape, cfg.trajectory_seed, device)
    inner = [f * method.t_max for f in cfg.trajectory_times]
    sol, _ = sample(method, net, noise, tol=cfg.tol, times=inner)
    times = torch.tensor([0.0, *inner, method.t_max])
    states = torch.cat([noise[None].cpu(), sol.trajectory.cpu(), sol.x[None].cpu()])
    return Trajectories(times, states)


def evaluate(method: Method, net: nn.Module, dataset: Dataset, cfg: EvalConfig,
             device: torch.device | str = "cpu") -> EvalResult:
    """All evaluations of one trained network (pass the EMA weights)."""
    net = net.to(device).eval()
    metrics, samples = evaluate_sampling(method, net, dataset, cfg, device)
    metrics.update(evaluate_likelihood(method, net, dataset, cfg, device))
    curve = evaluate_numerical_error(method, net, dataset, cfg, device)
    paths = evaluate_trajectories(method, net, dataset, cfg, device)
    fid_curve, warnings = [], []
    if dataset.is_image and (cfg.fid_samples or cfg.fid_nfe_samples):
        from harness.fid import FIDUnavailable

        try:  # a missing feature extractor must not cost the trial its other metrics
            if cfg.fid_samples:
                name, fid, _ = evaluate_fid(method, net, dataset, cfg, device, cfg.fid_samples)
                metrics[name] = fid
            if cfg.fid_nfe_samples:
                fid_curve = evaluate_fid_curve(method, net, dataset, cfg, device)
        except FIDUnavailable as exc:
            warnings.append(str(exc))
    return EvalResult(metrics=metrics, error_curve=curve, samples=samples, trajectories=paths,
                      fid_curve=fid_curve, warnings=warnings)
