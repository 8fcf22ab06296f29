"""What an evaluation is asked (:class:`EvalConfig`) and what it returns (:class:`EvalResult` and
its curves): plain frozen dataclasses that pickle, shared by the single-task evaluation
(:mod:`harness.core.evaluate`), its shards (:mod:`harness.core.shards`) and the scheduler's tasks, so none
of them has to import another to speak of the same settings and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from harness.errors import ConfigError
from harness.core.fid import FEATURE_METRICS, FIDConfig
from harness.core.solvers import SOLVERS


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings; every field is recorded with the run.

    tol: atol = rtol of dopri5 for sampling NFE and NLL (the paper's 1e-5).
    samples: dopri5 samples drawn for NFE and sample quality.
    nll_samples: held-out examples whose likelihood is computed (all if larger than the test set).
    dequant_draws: K uniform dequantization draws per image; bits/dim is the importance-weighted
        estimate -log2 (1/K) sum_k p(n + u_k) / D (the paper's App. E.2), tighter as K grows.
    divergence: "auto" (exact up to 16 dims), "exact" or "hutchinson".
    solvers, nfe_budgets: the fixed-step grid of the numerical-error curve (budget = steps x stages;
        budgets below one step of a solver are skipped).
    error_samples: noise draws for the numerical-error curve.
    reference_tol: dopri5 tolerance of the float64 reference solution for numerical error.
    batch_size: examples per solve and per seeded chunk; adaptive NFE is the mean over batch
        solves weighted by their examples (dopri5 picks one step sequence per batch).
    shard_size: examples per shard when the evaluation is split into separate tasks, a multiple of
        ``batch_size`` so shards are made of the same batches (0: one shard per part). It never
        changes a number, only how the work is divided.
    fid_samples: generated samples for FID of image data (0: no FID; the paper uses 50,000).
    fid_ref_samples: reference samples (0: the whole split); fid_split: "train" (the paper's) or
        "test"; fid_mode: clean-fid mode ("clean", "legacy_tensorflow", "legacy_pytorch");
        fid_features: "inception", or "classifier" for digits/mnist (logged as fid_classifier).
    fid_nfe_samples: samples per point of the FID-vs-NFE curve of image data, one point per
        fixed-step solver and NFE budget plus dopri5 at each of ``dopri5_tols`` (0: no curve).
    quality_nfe_samples: the same curve for vector (2-D) data: samples per point whose W2 and MMD
        against as many held-out points are measured (0: no curve). Every point of either curve
        starts from the noise of the dopri5 samples (common random numbers).
    curve_tols: dopri5 tolerances (atol = rtol) of those quality-vs-NFE curves, so dopri5 is a
        curve over tolerances like the paper's Figure 7 (right); empty: ``tol`` alone.
    trajectory_samples, trajectory_times: sample paths saved for figures (the paper's Figure 6):
        states at these fractions of [0, t_max], from noise seeded by ``trajectory_seed``, which
        stays fixed across trials so every method of a suite starts from the same noise.
    seed: seeds prior noise, Hutchinson probes and dequantization (per chunk, harness.core.shards).
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
    shard_size: int = 0

    CHECKED_WITH: ClassVar[dict[str, tuple[str, ...]]] = {"shard_size": ("batch_size",)}
    """Fields whose validity depends on others (a suite error names the first field)."""
    fid_samples: int = 0
    fid_ref_samples: int = 0
    fid_split: str = "train"
    fid_mode: str = "clean"
    fid_features: str = "inception"
    fid_nfe_samples: int = 0
    quality_nfe_samples: int = 0
    curve_tols: tuple[float, ...] = ()
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
        if self.shard_size < 0 or self.shard_size % self.batch_size:
            raise ConfigError(f"evaluation shard_size must be 0 (one shard) or a positive multiple "
                              f"of batch_size={self.batch_size}, got {self.shard_size}")
        for s in self.solvers:
            if SOLVERS.get(s).adaptive:
                raise ConfigError(f"solver {s!r} is adaptive; list fixed-step solvers only")
        if any(not 0.0 < f < 1.0 for f in self.trajectory_times) or \
                list(self.trajectory_times) != sorted(self.trajectory_times):
            raise ConfigError(f"trajectory_times must be increasing fractions in (0, 1), "
                              f"got {list(self.trajectory_times)}")
        for name in ("fid_samples", "fid_nfe_samples", "quality_nfe_samples"):
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
        if any(not t > 0 for t in self.curve_tols) or \
                len(set(self.curve_tols)) != len(self.curve_tols):
            raise ConfigError(f"curve_tols must be distinct tolerances > 0, "
                              f"got {list(self.curve_tols)}")

    @property
    def dopri5_tols(self) -> tuple[float, ...]:
        """The dopri5 tolerances of the quality-vs-NFE curves: ``curve_tols``, else ``tol``."""
        return self.curve_tols or (self.tol,)

    @property
    def fid_metric(self) -> str:
        """Name of the FID metric this evaluation logs: "fid", or "fid_classifier" when the
        features are the digit classifier's (see harness.core.fid.FEATURE_METRICS)."""
        return FEATURE_METRICS[self.fid_features]

    def fid_config(self, num_gen: int) -> FIDConfig:
        """The clean-fid settings of one FID evaluation with ``num_gen`` generated samples."""
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
class QualityPoint:
    """One point of sample quality against NFE (the paper's Figure 7, right), for images and 2-D
    data alike: samples of ``solver`` from the curve's shared noise.

    tol: dopri5's atol = rtol; None for a fixed-step solver.
    nfe: counted network evaluations per sample: the budget of a fixed-step solver, the mean over
        batch solves weighted by their examples for dopri5.
    values: metric name -> value: ``w2`` and ``mmd`` (2-D data), ``fid`` or ``fid_classifier``.
    """

    solver: str
    tol: float | None
    nfe: float
    values: dict[str, float]


@dataclass(frozen=True)
class Trajectories:
    """Sample paths: ``states`` (len(times), n, *shape) at ``times`` (first 0, last t_max)."""

    times: Tensor
    states: Tensor


@dataclass(frozen=True)
class EvalResult:
    """metrics: name -> value (names registered in harness.core.metrics); samples: dopri5 samples;
    quality_curve: sample quality against NFE (FID for images, W2 and MMD for 2-D data)."""

    metrics: dict[str, float]
    error_curve: list[ErrorPoint] = field(default_factory=list)
    samples: Tensor | None = None
    trajectories: Trajectories | None = None
    quality_curve: list[QualityPoint] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
