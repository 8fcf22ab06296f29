"""Dataset registry: every dataset is a loader function registered by name.

A loader is called as ``loader(seed=..., root=..., download=...)`` and returns a
:class:`~harness.datasets.base.Dataset`. Registry metadata: ``kind`` is ``"vector"`` (2-D toys,
float32 model space) or ``"image"`` (uint8 levels, shape (C, H, W)). Importing this package
registers every dataset, so ``DATASETS.names()`` is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.datasets import images, toy2d  # noqa: F401  (they register into DATASETS)
from harness.datasets.base import DATASETS, Dataset
from harness.errors import ConfigError

DEFAULT_ROOT = "~/.cache/fmbench/data"
"""Data root when none is given and ``FMBENCH_DATA`` is unset (shared by all image datasets)."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder image loaders read from: ``root``, else ``$FMBENCH_DATA``, else ``DEFAULT_ROOT``."""
    if root is None:
        root = os.environ.get("FMBENCH_DATA", DEFAULT_ROOT)
    return Path(os.fspath(root)).expanduser()


def load_dataset(name: str, *, seed: int = 0, root: str | os.PathLike | None = None,
                 download: bool = True) -> Dataset:
    """Load dataset ``name``.

    seed: trial seed; only the training draw of generated (2-D) datasets depends on it, while test
        sets and image splits are fixed so every trial is evaluated on the same held-out data.
    root: data folder for file-backed datasets (see :func:`data_root`); ignored by generated ones.
    download: allow fetching public files that are missing (MNIST, CIFAR-10); with False a missing
        file raises :class:`~harness.errors.DataError` naming what is expected where.
    Raises UnknownNameError (listing valid names) for an unknown ``name``.
    """
    loader = DATASETS.get(name)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"dataset seed must be a non-negative integer, got {seed!r}")
    return loader(seed=seed, root=data_root(root), download=download)


__all__ = ["DATASETS", "DEFAULT_ROOT", "Dataset", "data_root", "load_dataset"]
