"""Model-space images to the 8-bit pixels a saved PNG would hold: what FID and its feature
extractors see, so no number depends on whether samples were written to disk first."""

from __future__ import annotations

import torch
from torch import Tensor

from harness.datasets.base import Dataset


def levels_to_uint8(n: Tensor, levels: int) -> Tensor:
    """Levels 0..levels-1 -> the 8-bit values a PNG stores: round(n * 255 / (levels - 1))."""
    if levels == 256:
        return n.to(torch.uint8)
    n = n.to(torch.int64)
    return ((n * 255 + (levels - 1) // 2) // (levels - 1)).to(torch.uint8)  # round half up


def to_uint8(x: Tensor, levels: int) -> Tensor:
    """Model-space samples (N, C, H, W) in [-1, 1] -> 8-bit pixels, exactly as saving them would."""
    quantizer = Dataset("quantizer", torch.empty(0), torch.empty(0), levels=levels)
    return levels_to_uint8(quantizer.quantize(x.detach().cpu()), levels)
