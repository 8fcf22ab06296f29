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


def _save(fig, path: str | Path, **margins: float) -> Path:
    """Write and close ``fig``. With ``margins`` (fractions of the figure; the 2-D figures, whose
    layout is fixed) it is drawn once; without, the layout is measured (image grids of any shape
    and title length), which draws it twice: the 2-D figures took about a third of a 2-D trial's
    evaluation task that way (profiled December 2026)."""
    plt = _pyplot()
    if margins:
        fig.subplots_adjust(**margins)
        fig.savefig(path, dpi=100)
    else:
        fig.tight_layout()
        fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


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
    return _save(fig, path, left=0.08, right=0.98, bottom=0.12, top=0.86, wspace=0.15)


def image_grid(images: Tensor, path: str | Path, title: str = "", max_images: int = 64,
               cols: int | None = None) -> Path:
    """A grid of images given in model space [-1, 1], shape (N, C, H, W); square by default."""
    plt = _pyplot()
    x = images[:max_images].detach().cpu().float().clamp(-1, 1).add(1).div(2)
    n, c, h, w = x.shape
    cols = cols or math.ceil(math.sqrt(n))
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
    return _save(fig, path)


def trajectory_figure(times: Tensor, states: Tensor, path: str | Path, title: str = "",
                      reference: Tensor | None = None) -> Path:
    """Sample paths from the same noise (the paper's Figure 6).

    states: (T, n, *shape) at ``times`` (T,). Images: one row per sample, one column per time.
    2-D data: each path as a line from its noise (dot) to its sample (cross) over held-out data.
    """
    plt = _pyplot()
    if states.ndim == 5:  # (T, n, C, H, W) -> a grid, rows = samples, columns = times
        t_count, n = states.shape[:2]
        tiles = states.transpose(0, 1).reshape(t_count * n, *states.shape[2:])
        return image_grid(tiles, path, title + "  (columns: t = " +
                          ", ".join(f"{float(t):.2f}" for t in times) + ")",
                          max_images=len(tiles), cols=t_count)
    fig, ax = plt.subplots(figsize=(5, 5))
    if reference is not None:
        ref = reference.detach().cpu().float().numpy()
        ax.scatter(ref[:, 0], ref[:, 1], s=1, alpha=0.3, color="tab:gray", label="held-out data")
    p = states.detach().cpu().float().numpy()
    for i in range(p.shape[1]):
        ax.plot(p[:, i, 0], p[:, i, 1], color="tab:blue", alpha=0.6, linewidth=1)
    ax.scatter(p[0, :, 0], p[0, :, 1], s=10, color="black", label="noise (t = 0)", zorder=3)
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=20, marker="x", color="tab:red", label="sample", zorder=3)
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title, fontsize="medium")
    return _save(fig, path, left=0.14, right=0.97, bottom=0.1, top=0.93)
