"""Metrics with the metadata reports need, and the sample-quality distances for low-dim data.

Every metric a trial logs is registered here with its display name, unit and direction, the way
evaluation harnesses register ``higher_is_better`` with each metric, so reports never guess. A
metric ``<name>_se`` holds the standard error of ``<name>``
(:func:`harness.core.shards.weighted_mean_se`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from harness.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    """What a report needs to show a metric: label, unit and which direction is better."""

    name: str
    display: str
    unit: str
    lower_is_better: bool = True


METRICS: Registry[MetricSpec] = Registry("metric")


def _metric(name: str, display: str, unit: str, summary: str, lower_is_better: bool = True) -> None:
    METRICS.register(name, MetricSpec(name, display, unit, lower_is_better), summary=summary)


_metric("nll", "NLL", "nats", "negative log-likelihood of held-out continuous data, per example")
_metric("bpd", "NLL", "bits/dim", "negative log-likelihood of held-out discrete data "
        "(importance-weighted over the dequantization draws)")
_metric("nfe", "NFE", "evaluations", "network evaluations to sample with dopri5 at the tolerance")
_metric("nll_nfe", "NFE (NLL)", "evaluations", "network evaluations of the likelihood solve")
# Standard errors (<name>_se, same unit as <name>): NLL over held-out examples; NFE over batch
# solves, the independent unit (all samples of a batch share dopri5's step sequence).
_metric("nll_se", "NLL s.e.", "nats", "standard error of nll over held-out examples")
_metric("bpd_se", "NLL s.e.", "bits/dim", "standard error of bpd over held-out images "
        "(each one importance-weighted estimate over its dequantization draws)")
_metric("nfe_se", "NFE s.e.", "evaluations", "standard error of nfe over batch solves")
_metric("nll_nfe_se", "NFE (NLL) s.e.", "evaluations",
        "standard error of nll_nfe over likelihood solves")
_metric("w2", "W2", "data units", "exact 2-Wasserstein distance of samples to held-out data (POT)")
_metric("mmd", "MMD²", "", "squared MMD, RBF kernel at the median held-out distance (unbiased)")
_metric("numerical_error", "Numerical error", "MSE per dim",
        "fixed-step solution vs dopri5 at 1e-7 from the same noise")
_metric("train_loss", "Loss", "", "training loss (EMA-free, per step)")
_metric("train_time", "Train time", "s", "wall-clock training time")
_metric("eval_time", "Eval time", "s", "wall-clock evaluation time")
_metric("fid", "FID", "", "Fréchet Inception Distance of generated images to the training split "
        "(clean-fid)")
_metric("fid_classifier", "FID (classifier)", "",
        "Fréchet distance in the penultimate features of a digit classifier (digits, MNIST)")


def wasserstein2(samples: Tensor, reference: Tensor, max_iter: int = 10_000_000) -> float:
    """Exact W2 between two empirical measures with uniform weights (network simplex, POT)."""
    import ot

    a = samples.flatten(1).double().cpu()
    b = reference.flatten(1).double().cpu()
    cost = torch.cdist(a, b).pow(2).numpy()
    wa = np.full(len(a), 1.0 / len(a))
    wb = np.full(len(b), 1.0 / len(b))
    return float(np.sqrt(max(ot.emd2(wa, wb, cost, numItermax=max_iter), 0.0)))


def median_bandwidth(reference: Tensor) -> float:
    """Median pairwise distance of the reference set: a data-scaled kernel width that stays fixed
    across methods because it depends on held-out data only."""
    ref = reference.flatten(1).double().cpu()
    d = torch.cdist(ref, ref)
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median())


def mmd2(samples: Tensor, reference: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with k(x, y) = exp(-|x - y|^2 / (2 h^2)) (Gretton et al. 2012)."""
    x = samples.flatten(1).double().cpu()
    y = reference.flatten(1).double().cpu()
    h = median_bandwidth(y) if bandwidth is None else bandwidth

    def mean_kernel(a: Tensor, b: Tensor, same: bool) -> float:
        k = torch.exp(-torch.cdist(a, b).pow(2) / (2 * h * h))
        if same:
            n = len(a)
            return float((k.sum() - k.diagonal().sum()) / (n * (n - 1)))
        return float(k.mean())

    return mean_kernel(x, x, True) + mean_kernel(y, y, True) - 2 * mean_kernel(x, y, False)
