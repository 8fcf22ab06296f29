"""fmbench plugin: the 2-D "pinwheel" dataset, registered as ``pinwheel``.

Five curved arms, as in Johnson et al. (2016), "Composing graphical models with neural networks
for structured representations and fast inference" (their synthetic data, §6): a point starts at
(1 + radial noise, tangential noise), is assigned to one of K arms at angle 2 pi k / K, and is
rotated by that angle plus RATE * exp(its radial coordinate), which bends the arm. The result is
scaled by SCALE so that nearly all mass lies in [-4, 4]^2 like fmbench's own toys.

The loader follows docs/design.md §6.2: ``load(*, seed, root, download) -> Dataset``, vector data
as float32 in model space, the training set drawn from the seed and the test set from a fixed one
(fmbench's own toy sampling, :func:`harness.datasets.toy2d.sample_toy`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.datasets import DATASETS, Dataset
from harness.datasets.toy2d import N_TEST, N_TRAIN, TEST_SEED, sample_toy

ARMS = 5
RADIAL_STD, TANGENTIAL_STD = 0.3, 0.1
RATE = 0.25
SCALE = 2.0
"""Arm count, noise and bend of Johnson et al. (2016); SCALE is ours (radius ~1.5 -> ~3)."""


def pinwheel(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 2) pinwheel points from ``rng``."""
    arm = rng.integers(0, ARMS, size=n)
    radial = 1.0 + RADIAL_STD * rng.standard_normal(n)
    tangential = TANGENTIAL_STD * rng.standard_normal(n)
    angle = 2.0 * np.pi * arm / ARMS + RATE * np.exp(radial)
    cos, sin = np.cos(angle), np.sin(angle)
    points = np.stack([cos * radial - sin * tangential, sin * radial + cos * tangential], axis=1)
    return SCALE * points


@DATASETS.register("pinwheel", kind="vector",
                   summary="Five bent arms (Johnson et al. 2016), scaled x2; a plugin example.")
def load(*, seed: int = 0, root: Path | None = None, download: bool = True) -> Dataset:
    """Train (N_TRAIN, 2) from ``seed``, test (N_TEST, 2) from a fixed seed; float32."""
    del root, download  # generated, nothing to read
    train = sample_toy("pinwheel", pinwheel, N_TRAIN, seed)
    test = sample_toy("pinwheel", pinwheel, N_TEST, TEST_SEED, test=True)
    return Dataset("pinwheel", train, test, levels=None)
