"""Evaluation of a trained network: NFE, NLL (nats or bits/dim), sample quality, numerical error.

Everything goes through the method's probability-flow velocity (docs/design.md), so every method
is measured by the same solvers (:mod:`harness.core.sampling`). Each part of the evaluation is a sequence
of chunks of ``batch_size`` examples whose noise, probes and dequantization come from a seed derived
from ``EvalConfig.seed`` and the chunk index (:mod:`harness.core.shards`): the same seed gives every
method the same prior noise, and the work can be split into shards (separate tasks) that combine
into the same metrics.

The settings and result types (:mod:`harness.core.evaluation_types`), :func:`sample` and
:func:`evaluate_trajectories` (:mod:`harness.core.sampling`) are importable from here too, with the
evaluations that use them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.datasets import Dataset
from harness.core.evaluation_types import (ErrorPoint, EvalConfig, EvalResult, QualityPoint,
                                           Trajectories)
from harness.core.fid import FIDUnavailable
from harness.core.methods import Method
from harness.core.sampling import evaluate_trajectories, sample
from harness.core.shards import evaluate_parts, mean_nfe

__all__ = ["EvalConfig", "EvalResult", "ErrorPoint", "QualityPoint", "Trajectories", "sample",
           "evaluate", "evaluate_sampling", "evaluate_likelihood", "evaluate_numerical_error",
           "evaluate_quality_curve", "evaluate_during_training", "evaluate_trajectories"]


def _parts(method, net, dataset, cfg, device, *parts: str):
    return evaluate_parts(method, net, dataset, cfg, device, parts)


def evaluate_sampling(method, net, dataset, cfg, device) -> tuple[dict[str, float], Tensor]:
    """dopri5 samples at ``cfg.tol``: NFE per batch solve (and its SE), W2/MMD for vector data;
    returns (metrics, samples) with every sample of vector data, the first 64 of images."""
    result, _ = _parts(method, net, dataset, cfg, device, "sampling")
    return result.metrics, result.samples


def evaluate_likelihood(method, net, dataset, cfg, device) -> dict[str, float]:
    """NLL of held-out data: nats per example (continuous) or importance-weighted bits/dim over K
    draws, with its standard error over examples, and the NFE of the likelihood solves."""
    return _parts(method, net, dataset, cfg, device, "likelihood")[0].metrics


def evaluate_numerical_error(method, net, dataset, cfg, device) -> list[ErrorPoint]:
    """Per-dimension MSE of fixed-step solutions against a float64 dopri5 solution at
    ``reference_tol`` from the same noise (the paper's Figure 7, left)."""
    return _parts(method, net, dataset, cfg, device, "error")[0].error_curve


def evaluate_quality_curve(method, net, dataset, cfg, device) -> list[QualityPoint]:
    """Sample quality against NFE from one shared noise (the paper's Figure 7, right): W2 and MMD
    of ``quality_nfe_samples`` samples (2-D data) or FID of ``fid_nfe_samples`` (images), per
    fixed-step solver and budget and for dopri5 at each of ``cfg.dopri5_tols``."""
    part = "fid_curve" if dataset.is_image else "quality_curve"
    return _parts(method, net, dataset, cfg, device, part)[0].quality_curve


def evaluate_during_training(method, net, dataset, cfg, device) -> dict[str, float]:
    """The cheap part of evaluation, for curves against training step (the paper's Figure 5):
    dopri5 NFE, W2/MMD for vector data, FID for images when ``fid_samples`` is set (its samples
    give the NFE). Raises harness.core.fid.FIDUnavailable when the feature extractor is missing."""
    if not (dataset.is_image and cfg.fid_samples):
        return evaluate_sampling(method, net, dataset, cfg, device)[0]
    result, shards = _parts(method, net, dataset, cfg, device, "fid")
    if result.warnings:
        raise FIDUnavailable(result.warnings[0])
    return {**result.metrics, "nfe": mean_nfe(shards)[0]}


def evaluate(method: Method, net: nn.Module, dataset: Dataset, cfg: EvalConfig,
             device: torch.device | str = "cpu") -> EvalResult:
    """All evaluations of one trained network (pass the EMA weights), in this process: every shard
    of :func:`harness.core.shards.plan_shards`, combined. A missing FID feature extractor costs only the
    FID metrics (a warning), never the others."""
    return _parts(method, net, dataset, cfg, device)[0]
