"""Evaluation split into shards that can run as separate tasks and combine into the same metrics.

Every part of an evaluation is a stream of fixed-size *chunks* (``EvalConfig.batch_size`` examples)
whose noise, probes and dequantization come from a seed derived from (eval seed, part, chunk index),
never from one generator shared across chunks. A shard is a run of whole chunks of one part, so the
unsharded evaluation (:func:`harness.core.evaluate.evaluate`, one shard per part) and any sharding of it
perform the same batch solves on the same inputs: dopri5 picks its steps with one error norm per
batch, so NFE counts, samples and FID features are equal bit for bit on one device, and the
metrics combine exactly.

Parts (each a registered evaluation step, :data:`PARTS`):

- ``sampling``: dopri5 samples at ``tol`` -> NFE per batch solve, W2/MMD of 2-D data, figure samples;
- ``likelihood``: NLL of held-out examples (bits/dim: the importance-weighted estimate over the K
  dequantization draws, :func:`harness.core.likelihood.importance_weighted_bits_per_dim`);
- ``error``: fixed-step solutions vs the float64 dopri5 reference, per sample and (solver, budget);
- ``fid``: features of ``fid_samples`` dopri5 samples; ``fid_curve``: features of
  ``fid_nfe_samples`` samples of one (solver, budget) or (dopri5, tolerance) point (FID against
  NFE); both use the same noise chunks, so every point of the curve starts from the same noise;
- ``quality_curve``: ``quality_nfe_samples`` samples of one such point of 2-D data, for W2 and MMD
  against NFE; it shares ``sampling``'s noise chunks in the same way;
- ``trajectories``: the suite-wide sample paths (one small solve; never split).

Pure: imports neither Ray nor MLflow. Shards and results are small frozen dataclasses that pickle.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from harness.core import fid
from harness.datasets import Dataset
from harness.errors import HarnessError
from harness.core.evaluation_types import (ErrorPoint, EvalConfig, EvalResult, QualityPoint,
                                           Trajectories)
from harness.core.fid import ReferenceStats
from harness.core.likelihood import importance_weighted_bits_per_dim, log_likelihood
from harness.core.methods import Method
from harness.core.metrics import mmd2, wasserstein2
from harness.registry import Registry
from harness.core.sampling import evaluate_trajectories, sample
from harness.core.solvers import SOLVERS

FIGURE_SAMPLES = 64
"""Image samples a sampling shard returns for the sample grid (``figures.image_grid`` shows 64);
vector data return every sample, which W2/MMD need."""

STREAMS = {"sampling": 0, "likelihood": 1, "error": 2, "fid": 3, "fid_curve": 3,
           "quality_curve": 0}
"""Random stream of each part. The quality-vs-NFE curves share the noise of the dopri5 samples
(FID's for images, sampling's for 2-D data): common random numbers, so differences between
points are the solvers', not the noise's."""
CURVE_PARTS = ("fid_curve", "quality_curve")
"""Parts made of one shard group per curve point (:func:`quality_points`)."""


@dataclass(frozen=True)
class Shard:
    """One unit of evaluation work: examples [start, stop) of ``part``.

    index: position in the plan (what a scheduler names its task by).
    seeds: one per chunk of ``batch_size`` examples, ``chunk_seed(eval seed, part, chunk)``.
    solver, nfe, tol: the sampler of a quality-curve point: a fixed-step solver at ``nfe``, or
        dopri5 at ``tol`` (None elsewhere: dopri5 at the config's ``tol``).
    reference: this shard also returns the FID reference statistics (one shard per plan).
    """

    index: int
    part: str
    start: int
    stop: int
    seeds: tuple[int, ...]
    solver: str = "dopri5"
    nfe: int | None = None
    reference: bool = False
    tol: float | None = None

    @property
    def seed(self) -> int:
        """Seed of the shard's first chunk: distinct across shards of a part, fixed by the plan."""
        return self.seeds[0]

    @property
    def group(self) -> tuple[str, str, int | None, float | None]:
        """Shards of one group combine into one metric (or one curve point)."""
        return self.part, self.solver, self.nfe, self.tol

    def solve_tol(self, cfg: EvalConfig) -> float:
        """dopri5's atol = rtol for this shard's solves (unused by fixed-step solvers)."""
        return cfg.tol if self.tol is None else self.tol


@dataclass(frozen=True)
class ErrorSamples:
    """Numerical error of one (solver, budget) point: ``errors`` (n,) MSE per dimension of each
    sample against the reference; ``nfe`` the counted evaluations of one solve."""

    solver: str
    nfe: int
    errors: np.ndarray


@dataclass(frozen=True)
class ShardResult:
    """What one shard measured, in a form that combines exactly with its siblings.

    batch_sizes, nfe: examples and counted network evaluations of every solve (likelihood: one per
        dequantization draw and batch).
    values: likelihood only, (n,) float64 NLL per example (nats, or importance-weighted bits/dim
        over the K dequantization draws).
    errors: error part only, one entry per (solver, budget) in the config's order.
    features: FID parts only, (n, F) float32 extractor features of the shard's samples in order
        (clean-fid's extractors output float32, so nothing is lost).
    reference: the FID reference statistics, on the shard planned with ``reference=True``.
    samples: sampling only, on the CPU: every sample (vector data) or the first FIGURE_SAMPLES.
    warnings: e.g. the FID extractor was unavailable (the shard then holds no features).
    """

    shard: Shard
    batch_sizes: tuple[int, ...] = ()
    nfe: tuple[int, ...] = ()
    values: np.ndarray | None = None
    errors: tuple[ErrorSamples, ...] = ()
    features: np.ndarray | None = None
    reference: ReferenceStats | None = None
    samples: Tensor | None = None
    trajectories: Trajectories | None = None
    warnings: tuple[str, ...] = ()


# --- plan ----------------------------------------------------------------------------------------

def chunk_seed(eval_seed: int, part: str, chunk: int) -> int:
    """Seed of chunk ``chunk`` of ``part``: a SeedSequence hash, so nearby (seed, chunk) pairs give
    unrelated streams and no part's chunks collide with another's."""
    state = np.random.SeedSequence([eval_seed, STREAMS[part], chunk]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # 62 bits: a valid torch seed


def curve_points(cfg: EvalConfig) -> list[tuple[str, int | None]]:
    """(solver, budget) of every fixed-step point of the error and quality-vs-NFE curves in order,
    budgets below one step skipped."""
    return [(s, b) for s in cfg.solvers for b in cfg.nfe_budgets if b >= SOLVERS.get(s).stages]


def quality_points(cfg: EvalConfig) -> list[tuple[str, int | None, float | None]]:
    """(solver, budget, tolerance) of every quality-vs-NFE point in order: the fixed-step points
    of :func:`curve_points`, then dopri5 at each of ``cfg.dopri5_tols``."""
    return [(s, b, None) for s, b in curve_points(cfg)] + \
        [("dopri5", None, t) for t in cfg.dopri5_tols]


def _sizes(cfg: EvalConfig, dataset: Dataset) -> dict[str, int]:
    images = dataset.is_image
    return {"sampling": cfg.samples, "likelihood": min(cfg.nll_samples, len(dataset.test)),
            "error": cfg.error_samples if curve_points(cfg) else 0,
            "fid": cfg.fid_samples if images else 0,
            "fid_curve": cfg.fid_nfe_samples if images else 0,
            "quality_curve": 0 if images else cfg.quality_nfe_samples,
            "trajectories": cfg.trajectory_samples}


def plan_shards(cfg: EvalConfig, dataset: Dataset,
                parts: Sequence[str] | None = None) -> list[Shard]:
    """The shards of an evaluation: every part (or those in ``parts``) cut into runs of
    ``cfg.shard_size`` examples (0: one shard per part and curve point)."""
    sizes = _sizes(cfg, dataset)
    plan: list[Shard] = []
    for part in parts or PARTS.names():
        PARTS.get(part)
        total = sizes[part]
        if total == 0:
            continue
        if part == "trajectories":  # suite-wide noise, one solve: not split, seed not derived
            plan.append(Shard(len(plan), part, 0, total, (cfg.trajectory_seed,)))
            continue
        points = quality_points(cfg) if part in CURVE_PARTS else [("dopri5", None, None)]
        step = cfg.shard_size or total
        for solver, nfe, tol in points:
            for start in range(0, total, step):
                stop = min(start + step, total)
                first = start // cfg.batch_size
                seeds = tuple(chunk_seed(cfg.seed, part, c) for c in
                              range(first, first + math.ceil((stop - start) / cfg.batch_size)))
                needs_ref = part in ("fid", "fid_curve") and not any(s.reference for s in plan)
                plan.append(Shard(len(plan), part, start, stop, seeds, solver, nfe, needs_ref,
                                  tol))
    return plan


# --- one shard -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    method: Method
    net: nn.Module
    dataset: Dataset
    cfg: EvalConfig
    shard: Shard
    device: torch.device | str

    def chunks(self) -> Iterable[tuple[int, int, torch.Generator]]:
        """(start, size, generator) of each chunk of the shard."""
        bs = self.cfg.batch_size
        for i, seed in enumerate(self.shard.seeds):
            start = self.shard.start + i * bs
            yield start, min(bs, self.shard.stop - start), torch.Generator().manual_seed(seed)

    def noise(self, n: int, gen: torch.Generator) -> Tensor:
        return self.method.sample_prior(n, self.dataset.shape, gen, self.device)


def _sampling(job: _Job) -> ShardResult:
    """Samples of the shard's solver (dopri5 for ``sampling``, a curve point's otherwise)."""
    shard = job.shard
    keep = None if not job.dataset.is_image else max(0, FIGURE_SAMPLES - shard.start)
    sizes, counts, outs = [], [], []
    for _, n, gen in job.chunks():
        sol, count = sample(job.method, job.net, job.noise(n, gen), shard.solver,
                            tol=shard.solve_tol(job.cfg), nfe=shard.nfe)
        sizes.append(n)
        counts.append(count)
        outs.append(sol.x.cpu())
    samples = torch.cat(outs)[:keep]
    return ShardResult(job.shard, tuple(sizes), tuple(counts), samples=samples)


def _likelihood(job: _Job) -> ShardResult:
    """Per example: -log p in nats (continuous data), or the importance-weighted bits/dim of the
    chunk's K dequantization draws (discrete data; one log-density solve per draw)."""
    ds, cfg = job.dataset, job.cfg
    draws = cfg.dequant_draws if ds.is_discrete else 1
    sizes, counts, per_example = [], [], []
    for start, n, gen in job.chunks():
        batch = ds.test[start:start + n]
        log_probs = []
        for _ in range(draws):  # draws of one chunk share its generator: fixed by the chunk alone
            x = ds.to_model_space(batch, gen).to(job.device)
            res = log_likelihood(job.method, job.net, x, divergence=cfg.divergence, atol=cfg.tol,
                                 rtol=cfg.tol, generator=gen)
            log_probs.append(res.log_prob.double().cpu())
            sizes.append(n)
            counts.append(res.nfe)
        lp = torch.stack(log_probs)  # (K, n)
        per_example.append(importance_weighted_bits_per_dim(lp, ds.dim, ds.levels)
                           if ds.is_discrete else -lp[0])
    return ShardResult(job.shard, tuple(sizes), tuple(counts),
                       values=torch.cat(per_example).numpy())


def _error(job: _Job) -> ShardResult:
    ref_net = copy.deepcopy(job.net).double()
    points = curve_points(job.cfg)
    errors: list[list[Tensor]] = [[] for _ in points]
    nfes = [0] * len(points)
    for _, n, gen in job.chunks():
        noise = job.noise(n, gen)
        reference, _ = sample(job.method, ref_net, noise.double(), tol=job.cfg.reference_tol)
        for i, (solver, budget) in enumerate(points):
            sol, nfes[i] = sample(job.method, job.net, noise, solver, nfe=budget)
            errors[i].append((sol.x.double() - reference.x).pow(2).flatten(1).mean(1).cpu())
    return ShardResult(job.shard, errors=tuple(
        ErrorSamples(s, nfe, torch.cat(e).numpy()) for (s, _), nfe, e in zip(points, nfes, errors)))


def _fid(job: _Job) -> ShardResult:
    ds, shard = job.dataset, job.shard
    num = job.cfg.fid_samples if shard.part == "fid" else job.cfg.fid_nfe_samples
    fid_cfg = job.cfg.fid_config(num)
    try:
        extractor = fid.build_extractor(fid_cfg, job.device, ds)
        reference = (fid.reference_stats(ds, fid_cfg, job.device, extractor=extractor)
                     if shard.reference else None)
    except fid.FIDUnavailable as exc:  # the other parts of the evaluation must still count
        return ShardResult(shard, warnings=(str(exc),))
    sizes, counts, feats = [], [], []
    for _, n, gen in job.chunks():
        sol, count = sample(job.method, job.net, job.noise(n, gen), shard.solver,
                            tol=shard.solve_tol(job.cfg), nfe=shard.nfe)
        images = fid.to_uint8(sol.x, ds.levels)
        feats.append(fid.features_of_images(images, fid_cfg, job.device, extractor=extractor))
        sizes.append(n)
        counts.append(count)
    return ShardResult(shard, tuple(sizes), tuple(counts),
                       features=np.concatenate(feats).astype(np.float32), reference=reference)


def _trajectories(job: _Job) -> ShardResult:
    return ShardResult(job.shard, trajectories=evaluate_trajectories(
        job.method, job.net, job.dataset, job.cfg, job.device))


PARTS: Registry[Callable[[_Job], ShardResult]] = Registry("evaluation part")
PARTS.register("sampling", _sampling, summary="dopri5 samples: NFE, W2/MMD, figure samples")
PARTS.register("likelihood", _likelihood, summary="NLL of held-out examples")
PARTS.register("error", _error, summary="fixed-step error against the float64 reference")
PARTS.register("fid", _fid, summary="FID features of dopri5 samples")
PARTS.register("fid_curve", _fid, summary="FID features of one point of FID against NFE")
PARTS.register("quality_curve", _sampling, summary="samples of one point of W2/MMD against NFE")
PARTS.register("trajectories", _trajectories, summary="sample paths from the suite-wide noise")


def evaluate_shard(method: Method, net: nn.Module, dataset: Dataset, cfg: EvalConfig,
                   shard: Shard, device: torch.device | str = "cpu") -> ShardResult:
    """Run one shard of :func:`plan_shards` (pass the EMA weights): its part of the work only."""
    if shard.part != "trajectories" and \
            len(shard.seeds) != math.ceil((shard.stop - shard.start) / cfg.batch_size):
        raise HarnessError(f"shard {shard.index} was planned with another batch_size")
    net = net.to(device).eval()
    return PARTS.get(shard.part)(_Job(method, net, dataset, cfg, shard, device))


# --- combine -------------------------------------------------------------------------------------

def weighted_mean_se(values: Sequence[float] | np.ndarray,
                     weights: Sequence[float] | np.ndarray | None = None) -> tuple[float, float]:
    """Weighted mean of B independent units and its standard error (ratio estimator):

    mean = sum w x / sum w,  se^2 = B / (B - 1) * sum (w / sum w)^2 (x - mean)^2,

    which is std(x, ddof=1) / sqrt(B) for equal weights. Used with per-batch NFE weighted by the
    batch's examples (a batch solve is the independent unit: its samples share one step sequence)
    and with per-example NLL. se is NaN for B < 2.
    """
    x = np.asarray(values, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    if x.ndim != 1 or x.shape != w.shape or len(x) == 0:
        raise ValueError(f"need matching non-empty 1-D values and weights, got {x.shape}, {w.shape}")
    p = w / w.sum()
    mean = float(np.sum(p * x))
    if len(x) < 2:
        return mean, math.nan
    return mean, float(math.sqrt(len(x) / (len(x) - 1) * np.sum(p * p * (x - mean) ** 2)))


def _groups(results: Iterable[ShardResult]) -> dict[tuple, list[ShardResult]]:
    """Results by group in plan order, checked to cover [0, n) once with no gap."""
    groups: dict[tuple, list[ShardResult]] = {}
    for r in sorted(results, key=lambda r: r.shard.index):
        groups.setdefault(r.shard.group, []).append(r)
    for key, rs in groups.items():
        rs.sort(key=lambda r: r.shard.start)
        ends = [0] + [r.shard.stop for r in rs[:-1]]
        if [r.shard.start for r in rs] != ends:
            raise HarnessError(f"shards of {key} do not tile their examples: "
                               f"{[(r.shard.start, r.shard.stop) for r in rs]}")
    return groups


def mean_nfe(results: Iterable[ShardResult]) -> tuple[float, float]:
    """Mean NFE over the batch solves of ``results`` weighted by their examples, and its SE."""
    rs = list(results)
    return weighted_mean_se([c for r in rs for c in r.nfe], [n for r in rs for n in r.batch_sizes])


def _sample_quality(samples: Tensor, dataset: Dataset, n: int) -> dict[str, float]:
    """W2 and MMD of 2-D samples against the first ``n`` held-out points (design §3.3)."""
    reference = dataset.test[:n]
    return {"w2": wasserstein2(samples, reference), "mmd": mmd2(samples, reference)}


def _fid_results(groups: dict[tuple, list[ShardResult]], cfg: EvalConfig,
                 metrics: dict[str, float]) -> list[QualityPoint]:
    """The FID metric (into ``metrics``) and the FID-vs-NFE points, each from the union of its
    shards' features; nothing when a shard could not extract features (it carries a warning)."""
    fid_groups = {k: rs for k, rs in groups.items() if k[0] in ("fid", "fid_curve")}
    if not fid_groups or any(r.warnings for rs in fid_groups.values() for r in rs):
        return []
    refs = [r.reference for rs in fid_groups.values() for r in rs if r.reference is not None]
    if len(refs) != 1:
        raise HarnessError(f"FID shards must carry the reference statistics once, got {len(refs)}")
    points = []
    for (part, solver, _, tol), rs in fid_groups.items():
        feats = np.concatenate([r.features for r in rs]).astype(np.float64)
        res = fid.fid_from_features(feats, refs[0], cfg.fid_config(len(feats)))
        if part == "fid":
            metrics[cfg.fid_metric] = res.fid
        else:
            points.append(QualityPoint(solver, tol, mean_nfe(rs)[0], {cfg.fid_metric: res.fid}))
    return points


def combine(results: Iterable[ShardResult], cfg: EvalConfig, dataset: Dataset) -> EvalResult:
    """The metrics, curves, samples and warnings of :func:`harness.core.evaluate.evaluate` from the
    results of every shard of a plan (any order): NFE and NLL as sample-weighted means with their
    standard errors, FID from the union of the shards' features, error from all samples' errors,
    W2 and MMD of a curve point from the union of its shards' samples."""
    groups = _groups(results)
    metrics: dict[str, float] = {}
    samples = trajectories = None
    curve: list[ErrorPoint] = []
    warnings = sorted({w for rs in groups.values() for r in rs for w in r.warnings})
    plain = ("dopri5", None, None)  # the group of a part that is not a curve

    if rs := groups.get(("sampling", *plain)):
        metrics["nfe"], metrics["nfe_se"] = mean_nfe(rs)
        samples = torch.cat([r.samples for r in rs])
        if not dataset.is_image:
            metrics.update(_sample_quality(samples, dataset, cfg.samples))
    if rs := groups.get(("likelihood", *plain)):
        name = "bpd" if dataset.is_discrete else "nll"
        metrics[name], metrics[f"{name}_se"] = weighted_mean_se(np.concatenate([r.values for r in rs]))
        metrics["nll_nfe"], metrics["nll_nfe_se"] = mean_nfe(rs)
    if rs := groups.get(("error", *plain)):
        for i, point in enumerate(rs[0].errors):
            err = np.concatenate([r.errors[i].errors for r in rs])
            curve.append(ErrorPoint(point.solver, point.nfe, float(np.mean(err))))
    if rs := groups.get(("trajectories", *plain)):
        trajectories = rs[0].trajectories
    quality = [QualityPoint(solver, tol, mean_nfe(rs)[0], _sample_quality(
                   torch.cat([r.samples for r in rs]), dataset, cfg.quality_nfe_samples))
               for (part, solver, _, tol), rs in groups.items() if part == "quality_curve"]
    quality += _fid_results(groups, cfg, metrics)
    return EvalResult(metrics=metrics, error_curve=curve, samples=samples,
                      trajectories=trajectories, quality_curve=quality, warnings=warnings)


def evaluate_parts(method: Method, net: nn.Module, dataset: Dataset, cfg: EvalConfig,
                   device: torch.device | str = "cpu",
                   parts: Sequence[str] | None = None) -> tuple[EvalResult, list[ShardResult]]:
    """Every shard of the plan (or of ``parts``) in this process, combined: the single-task path."""
    results = [evaluate_shard(method, net, dataset, cfg, s, device)
               for s in plan_shards(cfg, dataset, parts)]
    return combine(results, cfg, dataset), results
