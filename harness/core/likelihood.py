"""Log-likelihood through the probability-flow ODE (instantaneous change of variables).

log p_1(x1) = log p_0(x0) - int_0^1 div v_t(x_t) dt (Chen et al. 2018): the state (x, delta) is
integrated from data (t = t_max) back to the prior (t = 0) with d delta/dt = div v, so that
log p_1(x1) = log p_0(x0) + delta(0). Each evaluation builds a graph for the divergence only and
returns detached tensors, so memory does not grow with the number of solver steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.errors import ConfigError
from harness.core.methods import Method
from harness.core.solvers import NFECounter, solve

EXACT_DIVERGENCE_MAX_DIM = 16
""""auto" uses the exact divergence (D backward passes) up to this many dimensions, else Hutchinson."""


@dataclass(frozen=True)
class Likelihood:
    """log_prob: (batch,) log-density in nats of the model at the data points (model space).
    nfe: network evaluations of the augmented (divergence) solve, reported apart from sampling NFE.
    divergence: "exact" or "hutchinson"."""

    log_prob: Tensor
    nfe: int
    divergence: str


def _exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    flat_v = v.flatten(1)
    div = torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
    for i in range(flat_v.shape[1]):
        (g,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)
        div = div + g.flatten(1)[:, i]
    return div


def _hutchinson_divergence(v: Tensor, x: Tensor, probe: Tensor) -> Tensor:
    # E[z^T (dv/dx) z] = tr(dv/dx) for Rademacher z (Hutchinson 1989; Grathwohl et al. 2019).
    (g,) = torch.autograd.grad(v, x, grad_outputs=probe)
    return (g * probe).flatten(1).sum(1)


def resolve_divergence(divergence: str, dim: int) -> str:
    if divergence == "auto":
        return "exact" if dim <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"
    if divergence not in ("exact", "hutchinson"):
        raise ConfigError(f"unknown divergence {divergence!r}; valid: auto, exact, hutchinson")
    return divergence


def log_likelihood(method: Method, net: nn.Module, x1: Tensor, *, divergence: str = "auto",
                   atol: float = 1e-5, rtol: float = 1e-5,
                   generator: torch.Generator | None = None) -> Likelihood:
    """Model log-density of data points x1 (batch, *shape) in model space, in nats.

    divergence: "exact", "hutchinson" (one fixed Rademacher probe per sample for the whole solve,
    drawn from ``generator``), or "auto" (exact up to 16 dimensions).
    """
    kind = resolve_divergence(divergence, x1[0].numel())
    counter = NFECounter(net)
    field = method.velocity_field(counter)
    probe = None
    if kind == "hutchinson":
        probe = (torch.randint(0, 2, x1.shape, generator=generator) * 2 - 1).to(x1)

    def augmented(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x = state[0]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = field(t, x)
            div = _exact_divergence(v, x) if probe is None else _hutchinson_divergence(v, x, probe)
        return v.detach(), div.detach()

    start = (x1, torch.zeros(x1.shape[0], dtype=x1.dtype, device=x1.device))
    with torch.no_grad():
        x0, delta = solve(augmented, start, method.t_max, 0.0, "dopri5", atol=atol, rtol=rtol).x
    return Likelihood(method.prior_log_prob(x0) + delta, counter.count, kind)


def bits_per_dim(log_prob: Tensor, dim: int, levels: int) -> Tensor:
    """Bits/dim of discrete data from the log-density of its dequantized version in [-1, 1].

    With x = 2 (n + u) / levels - 1, p_y(n + u) = p_x(x) (2/levels)^D, so
    -log2 P(n) <= -log2 p_x(x) + D log2(levels / 2): the offset is 7 bits for 256 levels.
    This is one draw's bound; :func:`importance_weighted_bits_per_dim` combines K draws.
    """
    return -log_prob / (dim * math.log(2.0)) + math.log2(levels / 2.0)


def importance_weighted_bits_per_dim(log_probs: Tensor, dim: int, levels: int) -> Tensor:
    """Bits/dim of discrete data from K dequantization draws per example, importance-weighted.

    log_probs: (K, batch) model log-densities in nats in [-1, 1] space at x_k = 2 (n + u_k) /
    levels - 1, u_k ~ U[0, 1)^D (uniform dequantization, Theis et al. 2016). Returns (batch,)
    float64 bits/dim of the estimate log P(n) ~ log (1/K) sum_k p(n + u_k) that the paper reports
    (Lipman et al. 2022, App. E.2):

        bits_per_dim(logsumexp_k log_probs[k] - log K)

    (the Jacobian (2/levels)^D is the same for every draw, so bits_per_dim adds it afterwards).
    Since P(n) = E_u p(n + u), this is the importance-weighted bound of Burda et al. 2016: above
    -log2 P(n) / D in expectation, non-increasing in K, exact as K -> inf; K = 1 is
    :func:`bits_per_dim`. Averaging bits/dim over the draws instead stays at the K = 1 bound.
    logsumexp in float64, because the densities themselves underflow (log p ~ -1e4 per image).
    """
    if log_probs.ndim != 2 or log_probs.shape[0] == 0:
        raise ValueError(f"need (K, batch) log-densities with K >= 1, got {tuple(log_probs.shape)}")
    lp = log_probs.double()
    return bits_per_dim(torch.logsumexp(lp, 0) - math.log(lp.shape[0]), dim, levels)
