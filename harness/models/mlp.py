"""A time-conditioned MLP for low-dimensional (vector) data such as the 2-D toy datasets."""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import ConfigError
from harness.models.embedding import (DEFAULT_TIME_SCALE, TimeEmbedding, batch_times,
                                      check_time_scale)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
}
"""Activation names accepted by :class:`MLP`. Smooth ones (silu, gelu, tanh, softplus, elu) keep
the velocity field differentiable, which exact-divergence NLL and adaptive solvers prefer."""


class MLP(nn.Module):
    """v_theta(x, t) for vector data: ``depth`` hidden layers, each told the time.

    data_shape: (D,) — one example is a D-vector.
    hidden: width of every hidden layer (units).
    depth: number of hidden layers (>= 1); each adds its own projection of the time code to its
        pre-activation, so time can reshape the field at every depth, not only at the input.
    time_dim: width of the sinusoidal code and of the shared time MLP.
    activation: a key of :data:`ACTIVATIONS`.
    time_scale: multiplier of t before the sinusoidal code (1: t's own scale; 1000: DDPM's
        convention, which makes fields wiggle in t; see :mod:`harness.models.embedding`).

    forward(x: (B, D), t: (B,) or scalar in [0, 1]) -> (B, D), in the units of x per unit time
    (velocity), noise or score, depending on the method's parameterization.
    """

    def __init__(self, data_shape: tuple[int, ...], hidden: int = 256, depth: int = 3,
                 time_dim: int = 64, activation: str = "silu",
                 time_scale: float = DEFAULT_TIME_SCALE) -> None:
        super().__init__()
        data_shape = tuple(data_shape)
        if len(data_shape) != 1:
            raise ConfigError(f"model 'mlp' needs vector data of shape (D,), got {data_shape}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r} for model 'mlp'; "
                              f"valid: {', '.join(ACTIVATIONS)}")
        for name, value in (("hidden", hidden), ("depth", depth), ("time_dim", time_dim)):
            if int(value) != value or value < 1:
                raise ConfigError(f"mlp option {name} must be a positive integer, got {value!r}")
        time_scale = check_time_scale(time_scale, "mlp")
        dim = data_shape[0]
        self.data_shape = data_shape
        self.time_embed = TimeEmbedding(time_dim, time_dim, time_scale)
        widths = [dim] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.time_proj = nn.ModuleList(nn.Linear(time_dim, hidden) for _ in range(depth))
        self.act = ACTIVATIONS[activation]()
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """x: (B, D), t: (B,) or scalar -> (B, D)."""
        # SiLU first: the embedding ends in a Linear, and two Linears in a row would collapse.
        emb = nn.functional.silu(self.time_embed(batch_times(t, x.shape[0], x)))
        h = x
        for layer, proj in zip(self.layers, self.time_proj):
            h = self.act(layer(h) + proj(emb))
        return self.out(h)
