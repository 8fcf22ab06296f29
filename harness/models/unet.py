"""A small configurable U-Net for images, in the layout of Ho et al. (2020) App. B.

Levels of residual blocks (GroupNorm -> SiLU -> conv, time injected as a per-channel scale/shift)
with optional self-attention, a stride-2 conv between levels, a middle block, and a mirrored
decoder that concatenates the encoder's activations (skip connections).

Odd sizes: a level downsamples only while both spatial sizes are even, so 28 -> 14 -> 7 and then
stays 7 (no padding or cropping, every pixel of the input keeps a cell). A skipped transition also
drops its mirror image (its upsample and the decoder block that would consume its skip).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import ConfigError
from harness.models.embedding import (DEFAULT_TIME_SCALE, TimeEmbedding, batch_times,
                                      check_time_scale)


def group_count(channels: int, groups: int) -> int:
    """Largest divisor of ``channels`` not above ``groups``, so any width gets a valid GroupNorm."""
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels, groups), channels)


class ResBlock(nn.Module):
    """x + F(x, emb): two 3x3 convs; the time code scales and shifts the second normalisation.

    x: (B, in_ch, H, W), emb: (B, emb_dim) (already through SiLU) -> (B, out_ch, H, W).
    Scale/shift (FiLM) rather than a plain add lets time modulate feature gains, not only offsets.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        # (1 + scale): a zero time code leaves the normalised features untouched.
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """x + MultiHeadAttention over the H*W positions; x: (B, C, H, W) -> same shape."""

    def __init__(self, channels: int, num_heads: int, groups: int,
                 num_head_channels: int | None = None) -> None:
        super().__init__()
        if num_head_channels is not None:
            if channels % num_head_channels:
                raise ConfigError(f"unet option num_head_channels={num_head_channels} must divide "
                                  f"every attended width, but not {channels}")
            num_heads = channels // num_head_channels
        elif channels % num_heads:
            raise ConfigError(f"unet option num_heads={num_heads} must divide every attended "
                              f"width, but not {channels}")
        self.num_heads = num_heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # reshape, not view: a channels_last input gives a non-contiguous (B, C, H, W) tensor.
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, H*W, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Block(nn.Module):
    """A ResBlock optionally followed by SelfAttention: one step of a U-Net level."""

    def __init__(self, res: ResBlock, attn: SelfAttention | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2), learned rather than pooled."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (avoids the checkerboard of transposed convs)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """v_theta(x, t) for images of shape (C, H, W).

    channels: width of the first level; level i has ``channels * channel_mult[i]`` channels.
    num_res_blocks: residual blocks per encoder level (the decoder has one more per level, to
        consume the skip taken before the level).
    attention_resolutions: feature-map sizes (smaller side, pixels) that get self-attention after
        each block; the middle block also gets attention unless this is empty, so ``()`` gives a
        purely convolutional network.
    dropout: dropout probability inside residual blocks (0.1 in DDPM's CIFAR-10 model).
    num_heads: attention heads; must divide the width of every attended level.
    num_head_channels: channels per attention head (ADM's option, Dhariwal & Nichol 2021); when
        set, each attention layer has ``width // num_head_channels`` heads and ``num_heads`` is
        unused. Lipman et al. (2022), Table 3: 64 for every image dataset.
    groups: GroupNorm groups, lowered to the largest divisor of each width.
    time_scale: multiplier of t before the sinusoidal code (1: t's own scale; 1000: DDPM's
        convention, which makes fields wiggle in t; see :mod:`harness.models.embedding`).

    The final conv starts at zero, so the untrained network is the zero field; this keeps early
    velocities/noise predictions small and the first losses near the target's variance.

    forward(x: (B, C, H, W), t: (B,) or scalar in [0, 1]) -> (B, C, H, W).
    """

    def __init__(self, data_shape: tuple[int, ...], channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (16,), dropout: float = 0.0,
                 num_heads: int = 4, num_head_channels: int | None = None, groups: int = 32,
                 time_scale: float = DEFAULT_TIME_SCALE) -> None:
        super().__init__()
        data_shape = tuple(data_shape)
        channel_mult = tuple(channel_mult)
        attn_res = {int(r) for r in attention_resolutions}
        if len(data_shape) != 3:
            raise ConfigError(f"model 'unet' needs image data of shape (C, H, W), got {data_shape}")
        if not channel_mult or any(int(m) != m or m < 1 for m in channel_mult):
            raise ConfigError(f"unet option channel_mult must be positive integers, got {channel_mult}")
        for name, value in (("channels", channels), ("num_res_blocks", num_res_blocks),
                            ("num_heads", num_heads), ("groups", groups)):
            if int(value) != value or value < 1:
                raise ConfigError(f"unet option {name} must be a positive integer, got {value!r}")
        if num_head_channels is not None and (int(num_head_channels) != num_head_channels
                                              or num_head_channels < 1):
            raise ConfigError("unet option num_head_channels must be a positive integer or null, "
                              f"got {num_head_channels!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"unet option dropout must be in [0, 1), got {dropout!r}")
        time_scale = check_time_scale(time_scale, "unet")
        c_in, height, width = data_shape
        self.data_shape = data_shape
        emb_dim = 4 * channels

        def block(i: int, o: int, size: tuple[int, int]) -> Block:
            attn = SelfAttention(o, num_heads, groups, num_head_channels) if min(size) in attn_res else None
            return Block(ResBlock(i, o, emb_dim, dropout, groups), attn)

        self.time_embed = TimeEmbedding(channels, emb_dim, time_scale)
        self.conv_in = nn.Conv2d(c_in, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_widths = [channels]
        sizes, downsampled = [], []
        ch, size = channels, (height, width)
        for level, mult in enumerate(channel_mult):
            sizes.append(size)
            for _ in range(num_res_blocks):
                self.down.append(block(ch, channels * mult, size))
                ch = channels * mult
                skip_widths.append(ch)
            can_halve = size[0] % 2 == 0 and size[1] % 2 == 0
            downsampled.append(level < len(channel_mult) - 1 and can_halve)
            if downsampled[-1]:
                self.down.append(Downsample(ch))
                size = (size[0] // 2, size[1] // 2)
                skip_widths.append(ch)

        # Res -> attention -> Res at the coarsest size, as in DDPM; the attention gives every
        # pixel a global view even when no listed resolution occurs in this network.
        self.mid = nn.ModuleList([
            Block(ResBlock(ch, ch, emb_dim, dropout, groups),
                  SelfAttention(ch, num_heads, groups, num_head_channels) if attn_res else None),
            Block(ResBlock(ch, ch, emb_dim, dropout, groups), None),
        ])

        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            took_skip_before = level == 0 or downsampled[level - 1]
            for _ in range(num_res_blocks + int(took_skip_before)):
                out = channels * channel_mult[level]
                self.up.append(block(ch + skip_widths.pop(), out, sizes[level]))
                ch = out
            if level > 0 and downsampled[level - 1]:
                self.up.append(Upsample(ch))
        assert not skip_widths, "every encoder activation must be consumed by the decoder"

        self.norm_out = _norm(ch, groups)
        self.conv_out = nn.Conv2d(ch, c_in, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """x: (B, C, H, W), any memory format; t: (B,) or scalar -> (B, C, H, W)."""
        emb = F.silu(self.time_embed(batch_times(t, x.shape[0], x)))
        h = self.conv_in(x)
        skips = [h]
        for module in self.down:
            h = module(h, emb) if isinstance(module, Block) else module(h)
            skips.append(h)
        for module in self.mid:
            h = module(h, emb)
        for module in self.up:
            if isinstance(module, Upsample):
                h = module(h)
            else:
                h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
