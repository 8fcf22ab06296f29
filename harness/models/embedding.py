"""Time conditioning shared by every network: a sinusoidal code of t followed by a small MLP.

Flow-matching time is continuous, t in [0, 1] (0 = noise, 1 = data; docs/design.md §2.1), and the code
works on t's own scale by default (``time_scale = 1``), as the anchors do: flow_matching's 2-D
example (examples/2d_multimodal_flow_matching.py) feeds t through ``nn.Linear(1, .)``, torchcfm's
MLP (torchcfm/models/models.py) concatenates t to x, and torchcfm's U-Net calls
``timestep_embedding(t, dim, max_period=10000)`` (torchcfm/models/unet/nn.py) on t in [0, 1].

Frequencies at scale 1: w_k = MAX_PERIOD^(-k/half) rad per unit t, from 1 down to 1e-4. The
fastest one has period 2*pi > 1, so every sin(w_k t) is monotone on [0, 1]: the code is an
injective, smooth map of t (times 1e-3 apart differ by ~1e-3 in the fastest components, four
orders above float32's resolution), and any faster variation in t must be learned by the MLP
behind it rather than built in. A faster built-in frequency is what hurt: the DDPM/score-SDE
convention multiplies t by 1000 (a period of ~6e-3 in t), and learned fields then wiggle in t and
adaptive solvers take tiny steps (dopri5 NFE 311 vs 50 for fm-ot on 8gaussians at 1500 steps, 293 vs 56 at 2000; docs/design.md §2.4).
``time_scale = 1000`` reproduces that convention exactly, for comparison.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.errors import ConfigError

DEFAULT_TIME_SCALE = 1.0
"""Multiplier of t before the sinusoid: 1 = t's own scale (the anchors'); 1000 = DDPM's steps."""

MAX_PERIOD = 10_000.0
"""Longest sinusoid period in scaled-time units (the Transformer's constant; torchcfm's
``max_period``). At scale 1 the periods run from 2*pi to 2*pi*1e4 in t: none wraps on [0, 1]."""


def check_time_scale(value: object, model: str) -> float:
    """``value`` as a float if it is a positive finite number; else a one-line ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{model} option time_scale must be a positive finite number, "
                          f"got {value!r}")
    return float(value)


def batch_times(t: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A time per example, or one shared time, so solvers may pass a scalar t.

    t: scalar (python float or 0-d tensor), shape (1,), or (batch,). Returns (batch,), or (1,) for
    a single time: the network then computes its time code once and broadcasts it over the batch,
    where a copy per example would spend about half of a 2-D MLP's multiply-adds on identical rows
    (the solvers call every network with a scalar t). On the device of ``like``; the dtype is
    kept (the embedding casts it to its own weights' dtype).
    """
    t = torch.as_tensor(t, device=like.device)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.numel() == 1:
        return t.reshape(1)
    if t.numel() != batch:
        raise ValueError(f"t must be a scalar or have one value per example ({batch}), "
                         f"got shape {tuple(t.shape)}")
    return t.reshape(batch)


def sinusoidal_embedding(t: torch.Tensor, dim: int,
                         scale: float = DEFAULT_TIME_SCALE) -> torch.Tensor:
    """Sinusoidal code of continuous time (Vaswani et al. 2017 §3.5; Ho et al. 2020 App. B).

    t: (batch,) in [0, 1]. Returns (batch, dim): ``[cos(s w_k), sin(s w_k)]`` with s = scale * t
    and w_k = MAX_PERIOD^(-k / half), k = 0..half-1; an odd ``dim`` gets one zero column of padding.
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=t.dtype)
    freqs = torch.exp(-math.log(MAX_PERIOD) * k / max(half, 1))
    angles = (scale * t)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """t -> sinusoid(freq_dim) -> Linear -> SiLU -> Linear: a learned time code of width ``out_dim``.

    The MLP lets each network re-mix the fixed frequencies into whatever features its layers need;
    every block then projects this shared code to its own width. ``scale`` multiplies t first.
    """

    def __init__(self, freq_dim: int, out_dim: int, scale: float = DEFAULT_TIME_SCALE) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.scale = float(scale)
        self.net = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (batch,) in [0, 1] -> (batch, out_dim)."""
        # Embed in the weights' dtype: solvers may hand over float64 times to a float32 network.
        t = t.to(self.net[0].weight.dtype)
        return self.net(sinusoidal_embedding(t, self.freq_dim, self.scale))

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"
