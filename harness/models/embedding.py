"""Time conditioning shared by every network: a sinusoidal code of t followed by a small MLP.

Flow-matching time is continuous, t in [0, 1] (0 = noise, 1 = data; DESIGN.md §3). The sinusoid
frequencies follow the Transformer/DDPM recipe, which was tuned for integer diffusion steps in
[0, 1000); we therefore multiply t by ``TIME_SCALE = 1000`` first. Without that factor the fastest
frequency (1 rad per unit) would change by only ~dt rad between adjacent solver times, so two times
1e-3 apart would get almost the same code; with it the fastest component has a period of
2*pi/1000 ~ 6e-3 in t and the slowest still varies smoothly over the whole interval.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TIME_SCALE = 1000.0
"""Multiplier applied to t in [0, 1] before the sinusoid (maps t onto DDPM's step range)."""

MAX_PERIOD = 10_000.0
"""Longest sinusoid period, in scaled-time units (the Transformer's positional-encoding constant)."""


def batch_times(t: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a time to one value per example, so solvers may pass a scalar t.

    t: scalar (python float or 0-d tensor), shape (1,), or (batch,). Returns (batch,) on the device
    of ``like``; the dtype is kept (the embedding casts it to its own weights' dtype).
    """
    t = torch.as_tensor(t, device=like.device)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.numel() == 1:
        return t.reshape(1).expand(batch)
    if t.numel() != batch:
        raise ValueError(f"t must be a scalar or have one value per example ({batch}), "
                         f"got shape {tuple(t.shape)}")
    return t.reshape(batch)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal code of continuous time (Vaswani et al. 2017 §3.5; Ho et al. 2020 App. B).

    t: (batch,) in [0, 1]. Returns (batch, dim): ``[cos(s w_k), sin(s w_k)]`` with s = 1000 t and
    w_k = MAX_PERIOD^(-k / half), k = 0..half-1; an odd ``dim`` gets one zero column of padding.
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=t.dtype)
    freqs = torch.exp(-math.log(MAX_PERIOD) * k / max(half, 1))
    angles = (TIME_SCALE * t)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """t -> sinusoid(freq_dim) -> Linear -> SiLU -> Linear: a learned time code of width ``out_dim``.

    The MLP lets each network re-mix the fixed frequencies into whatever features its layers need;
    every block then projects this shared code to its own width.
    """

    def __init__(self, freq_dim: int, out_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.net = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (batch,) in [0, 1] -> (batch, out_dim)."""
        # Embed in the weights' dtype: solvers may hand over float64 times to a float32 network.
        t = t.to(self.net[0].weight.dtype)
        return self.net(sinusoidal_embedding(t, self.freq_dim))
