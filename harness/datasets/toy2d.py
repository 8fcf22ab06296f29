"""Two-dimensional toy distributions (continuous, stored float32 in model space).

Each is scaled so that almost all mass lies in [-4, 4]^2, comparable to the N(0, I) prior, so the
same solver tolerances and VE s_max (~ max pairwise distance, about 8) fit all of them.

Seeding: the training set (``N_TRAIN`` points) is drawn from the trial seed; the test set
(``N_TEST`` points) from a fixed seed, so every trial of a dataset is evaluated on identical
held-out data. Streams are keyed by (role tag, CRC-32 of the name, seed), so datasets never share
draws, and train and test streams never coincide whatever the trial seed is.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.datasets.base import DATASETS, Dataset

N_TRAIN = 50_000
N_TEST = 10_000
TEST_SEED = 2**31 - 1
_TRAIN_TAG, _TEST_TAG = 1, 2

Sampler = Callable[[np.random.Generator, int], np.ndarray]

# 8gaussians: centres on a circle of radius 2 sqrt(2) (~2.83), per-axis std 0.5 / sqrt(2) (~0.35):
# modes ~2.2 apart (>6 std), all mass within ~[-4.2, 4.2].
GAUSS8_RADIUS = 2.0 * np.sqrt(2.0)
GAUSS8_STD = 0.5 / np.sqrt(2.0)
# moons: two unit half-circles (the second shifted by (1, -0.5)), noise std 0.1, then centred and
# doubled: noiseless x in [-3, 3], y in [-1.5, 1.5] (noise tails reach ~3.7).
MOONS_NOISE = 0.1
MOONS_SCALE = 2.0
# circles: radii 3 and 1.5 (ratio 0.5), radial noise std 0.1.
CIRCLES_RADII = (3.0, 1.5)
CIRCLES_NOISE = 0.1
# checkerboard: 4 x 4 board of unit-2 cells covering [-4, 4)^2; uniform on the 8 cells with even
# (row + column), zero density on the others.
CHECKER_CELLS = 4
CHECKER_HALF = 4.0
# 2spirals: two interleaved arms of 1.5 turns, radius growing linearly to SPIRAL_RADIUS, noise 0.1.
SPIRAL_TURNS = 1.5
SPIRAL_RADIUS = 3.5
SPIRAL_NOISE = 0.1


def eight_gaussians_centres() -> np.ndarray:
    """(8, 2) mode centres of ``8gaussians``, at angles 2 pi k / 8."""
    angles = 2.0 * np.pi * np.arange(8) / 8
    return GAUSS8_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    k = rng.integers(0, 8, size=n)
    return eight_gaussians_centres()[k] + GAUSS8_STD * rng.standard_normal((n, 2))


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    upper = rng.random(n) < 0.5
    t = np.pi * rng.random(n)
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x, y], axis=1) + MOONS_NOISE * rng.standard_normal((n, 2))
    # The noiseless shape spans x in [-1, 2], y in [-0.5, 1]; centre it before scaling.
    return MOONS_SCALE * (pts - np.array([0.5, 0.25]))


def _circles(rng: np.random.Generator, n: int) -> np.ndarray:
    radii = np.asarray(CIRCLES_RADII)[rng.integers(0, 2, size=n)]
    theta = 2.0 * np.pi * rng.random(n)
    r = radii + CIRCLES_NOISE * rng.standard_normal(n)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    width = 2.0 * CHECKER_HALF / CHECKER_CELLS
    row = rng.integers(0, CHECKER_CELLS, size=n)
    # Half the columns of each row are "black": (row + col) even.
    col = 2 * rng.integers(0, CHECKER_CELLS // 2, size=n) + row % 2
    cell = np.stack([col, row], axis=1).astype(np.float64)
    return -CHECKER_HALF + width * (cell + rng.random((n, 2)))


def _two_spirals(rng: np.random.Generator, n: int) -> np.ndarray:
    # sqrt makes the density along the arc roughly uniform in area rather than piled at the centre.
    s = np.sqrt(rng.random(n))
    theta = 2.0 * np.pi * SPIRAL_TURNS * s + np.pi * rng.integers(0, 2, size=n)
    r = SPIRAL_RADIUS * s
    pts = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return pts + SPIRAL_NOISE * rng.standard_normal((n, 2))


def sample_toy(name: str, sampler: Sampler, n: int, seed: int, *, test: bool = False) -> torch.Tensor:
    """(n, 2) float32 draw of toy ``name``; deterministic in (name, seed, test)."""
    tag = _TEST_TAG if test else _TRAIN_TAG
    rng = np.random.default_rng(np.random.SeedSequence([tag, zlib.crc32(name.encode()), seed]))
    return torch.from_numpy(np.ascontiguousarray(sampler(rng, n), dtype=np.float32))


def _register(name: str, sampler: Sampler, summary: str) -> None:
    def load(*, seed: int = 0, root: Path | None = None, download: bool = True) -> Dataset:
        del root, download  # generated, nothing to read
        train = sample_toy(name, sampler, N_TRAIN, seed)
        test = sample_toy(name, sampler, N_TEST, TEST_SEED, test=True)
        return Dataset(name, train, test, levels=None)

    load.__doc__ = f"{summary} Train ({N_TRAIN}, 2) from ``seed``, test ({N_TEST}, 2) fixed."
    DATASETS.register(name, load, summary=summary, kind="vector", sampler=sampler)


_register("8gaussians", _eight_gaussians,
          "8 Gaussians (std 0.35) on a circle of radius 2.83.")
_register("moons", _moons, "Two interleaved half-moons (noise 0.1), scaled x2 and centred.")
_register("circles", _circles, "Two concentric rings, radii 3 and 1.5 (noise 0.1).")
_register("checkerboard", _checkerboard, "Uniform on the 8 black cells of a 4x4 board on [-4, 4)^2.")
_register("2spirals", _two_spirals, "Two interleaved 1.5-turn spirals, radius up to 3.5 (noise 0.1).")
