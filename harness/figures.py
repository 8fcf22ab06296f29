"""Sample figures written as PNG files: scatter plots for 2-D data, image grids for images.

Pure matplotlib (Agg backend, no display); tracking and reports decide where the files go.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scatter_figure(samples: Tensor, reference: Tensor, path: str | Path, title: str = "") -> Path:
    """Generated 2-D samples beside held-out data on shared axes."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, pts, name, colour in ((axes[0], reference, "held-out data", "tab:gray"),
                                  (axes[1], samples, "samples", "tab:blue")):
        p = pts.detach().cpu().float().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5, color=colour)
        ax.set_title(name)
        ax.set_xlabel("x₁")
        ax.set_aspect("equal")
    axes[0].set_ylabel("x₂")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def image_grid(images: Tensor, path: str | Path, title: str = "", max_images: int = 64) -> Path:
    """A square grid of images given in model space [-1, 1], shape (N, C, H, W)."""
    plt = _pyplot()
    x = images[:max_images].detach().cpu().float().clamp(-1, 1).add(1).div(2)
    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = x[i]
    fig, ax = plt.subplots(figsize=(6, 6 * rows / cols))
    img = canvas.permute(1, 2, 0).numpy()
    ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.axis("off")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
