"""The dataset value every loader returns, and the dequantization that bits/dim relies on.

Continuous data (2-D toys) are stored as float32 in model space. Discrete data (images) are stored
as their integer intensity levels ``n in {0, ..., levels - 1}`` (uint8) and mapped to model space
with uniform dequantization ``x = 2 (n + u) / levels - 1, u ~ U[0, 1)^D`` (docs/design.md §3.2), so the
density a model learns is the one whose likelihood is reported in bits/dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import Registry

DATASETS: Registry = Registry("dataset")
"""Every dataset's loader by name; the loader modules register into it, and importing
:mod:`harness.datasets` imports them all, so ``DATASETS.names()`` is complete there."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of one dataset, ready for training and evaluation.

    train, test: (N, *shape) float32 in model space when ``levels`` is None, else uint8 levels.
    levels: number of intensity levels of discrete data (256 for 8-bit images, 17 for digits);
        None for continuous data.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    levels: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (2,) or (3, 32, 32)."""
        return tuple(self.train.shape[1:])

    @property
    def dim(self) -> int:
        """Number of dimensions D of one example (used by bits/dim)."""
        d = 1
        for s in self.shape:
            d *= s
        return d

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def is_discrete(self) -> bool:
        return self.levels is not None

    def to_model_space(self, raw: torch.Tensor, generator: torch.Generator | None = None,
                       dequantize: bool = True) -> torch.Tensor:
        """Map stored examples to float model space.

        For discrete data: uniform dequantization with noise from ``generator`` when ``dequantize``,
        else bin centres ``2 (n + 1/2) / levels - 1``. Continuous data are returned as float32.
        The noise is drawn on the CPU so results do not depend on the device.
        """
        if self.levels is None:
            return raw.float()
        n = raw.float()
        if dequantize:
            u = torch.rand(n.shape, generator=generator, dtype=torch.float32)
        else:
            u = torch.full_like(n, 0.5)
        return 2.0 * (n + u) / self.levels - 1.0

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_model_space` for discrete data: model space -> uint8 levels."""
        if self.levels is None:
            raise ValueError(f"dataset {self.name!r} is continuous; nothing to quantize")
        n = torch.floor((x.float() + 1.0) * self.levels / 2.0)
        return n.clamp(0, self.levels - 1).to(torch.uint8)
