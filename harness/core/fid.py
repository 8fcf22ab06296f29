"""FID of generated images through clean-fid's own pipeline, with cached reference statistics.

Images take the path a saved PNG would: model space [-1, 1] -> the dataset's levels
(:meth:`Dataset.quantize`) -> 8-bit pixels (:mod:`harness.core.pixels`) -> RGB -> clean-fid's resizer
for the mode -> features (Inception, or a small digit classifier for grayscale toys, see
:mod:`harness.core.feature_classifier`) -> Fréchet distance (``cleanfid.fid.frechet_distance``).
Nothing is written as image files: batches are streamed through
``cleanfid.fid.get_model_features``, the loop behind clean-fid's ``gen=`` interface
(docs/design.md). Reference statistics (mu, sigma) are computed once per dataset, split,
resolution, mode, extractor and count, and cached under ``$FMBENCH_CACHE/fid`` (default
``~/.cache/fmbench/fid``, :mod:`harness.core.cache`), not in clean-fid's site-packages folder.
"""

from __future__ import annotations

import os
import platform
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from harness.core.cache import cache_dir, compute_once, save_npz
from harness.datasets.base import Dataset
from harness.errors import ConfigError, HarnessError
from harness.core.feature_classifier import classifier_features
from harness.core.pixels import levels_to_uint8, to_uint8

MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
FEATURE_METRICS = {"inception": "fid", "classifier": "fid_classifier"}
"""Registered metric (harness.core.metrics) an FID is logged under, by feature extractor: the one place
that name is derived, so a digit-classifier FID is never compared with an Inception one."""
FEATURES = tuple(FEATURE_METRICS)
SPLITS = ("train", "test")
REF_SUBSET_SEED = 0  # fixed: a num_ref subset is the same for every trial and process


class FIDUnavailable(HarnessError):
    """Inception weights are missing and clean-fid could not fetch them (e.g. offline node)."""


@dataclass(frozen=True)
class FIDConfig:
    """What an FID number depends on; all of it is recorded with the result.

    mode: clean-fid mode ("clean": PIL bicubic resize to 299 in float; "legacy_*": older pipelines).
    features: "inception" (Inception-v3 pool3, 2048-d) or "classifier" (digits/mnist only).
    num_gen: generated samples (50_000 in the paper's protocol).
    num_ref: reference samples, 0 = the whole split (a fixed seeded subset otherwise).
    batch_size: images per generation/feature batch.
    split: reference split; "train" as in the paper.
    """

    mode: str = "clean"
    features: str = "inception"
    num_gen: int = 50_000
    num_ref: int = 0
    batch_size: int = 128
    split: str = "train"

    def __post_init__(self) -> None:
        for field, valid in (("mode", MODES), ("features", FEATURES), ("split", SPLITS)):
            if getattr(self, field) not in valid:
                raise ConfigError(f"fid {field} {getattr(self, field)!r} is invalid; "
                                  f"valid: {', '.join(valid)}")
        for field, low in (("num_gen", 2), ("num_ref", 0), ("batch_size", 1)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"fid {field} must be an integer >= {low}, got {value!r}")
        if self.num_ref == 1:
            raise ConfigError("fid num_ref must be 0 (whole split) or >= 2 (a covariance needs 2)")


@dataclass(frozen=True)
class FIDResult:
    """One FID value and what it was measured with (num_ref: reference samples actually used)."""

    fid: float
    num_gen: int
    num_ref: int
    mode: str
    features: str
    feature_dim: int

    @property
    def metric(self) -> str:
        """Name of the registered metric this value is logged under (see harness.core.metrics)."""
        return FEATURE_METRICS[self.features]


@dataclass(frozen=True)
class Extractor:
    """A clean-fid feature model: (B, 3, S, S) float in [0, 255] -> (B, F); ``name`` keys caches."""

    model: Callable[[Tensor], Tensor]
    name: str


@dataclass(frozen=True)
class ReferenceStats:
    """Gaussian fit of reference features: mu (F,), sigma (F, F), from ``num_ref`` images."""

    mu: np.ndarray
    sigma: np.ndarray
    num_ref: int
    path: Path


# --- features ------------------------------------------------------------------------------------

def _rgb(images: Tensor) -> Tensor:
    """(N, 1 or 3, H, W) uint8 -> (N, 3, H, W) float in [0, 255], gray repeated like PIL's RGB."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1).float()


def inception_weights(mode: str) -> tuple[str, str]:
    """(path, url) of the Inception weights clean-fid 0.1.35 uses for ``mode``.

    clean/legacy_tensorflow: a TorchScript file in a folder hard-coded in
    ``cleanfid.features.feature_extractor`` ("/tmp", "./" on Windows); legacy_pytorch: torch.hub's
    checkpoint folder (``cleanfid.inception_pytorch.FID_WEIGHTS_URL``).
    """
    if mode == "legacy_pytorch":
        from cleanfid.inception_pytorch import FID_WEIGHTS_URL

        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(FID_WEIGHTS_URL))
        return path, FID_WEIGHTS_URL
    from cleanfid.downloads_helper import inception_url

    folder = "./" if platform.system() == "Windows" else "/tmp"
    return os.path.join(folder, "inception-2015-12-05.pt"), inception_url


def build_extractor(cfg: FIDConfig, device: torch.device | str,
                    dataset: Dataset | None = None) -> Extractor:
    """clean-fid's Inception for ``cfg.mode`` on ``device``, or the dataset's classifier."""
    device = torch.device(device)
    if cfg.features == "classifier":
        if dataset is None:
            raise ConfigError("fid features='classifier' needs the dataset it was trained on")
        model = classifier_features(dataset, device)
        return Extractor(model, model.name)
    from cleanfid.features import build_feature_extractor

    try:
        model = build_feature_extractor(cfg.mode, device, use_dataparallel=False)
    except torch.OutOfMemoryError:
        raise
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a truncated file a RuntimeError
        path, url = inception_weights(cfg.mode)
        state = "unreadable" if os.path.exists(path) else "missing"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise FIDUnavailable(
            f"FID unavailable: Inception weights {state} at {path} (clean-fid looks there) and "
            f"could not be fetched ({type(e).__name__}: {reason}); download {url} on a connected "
            f"machine and place it at {path}") from None
    return Extractor(model, "inception")


def _stream_features(next_batch: Callable[[int], Tensor], total: int, cfg: FIDConfig,
                     extractor: Extractor, device: torch.device | str) -> np.ndarray:
    """Features (total, F) of uint8 batches from ``next_batch(n)``, via clean-fid's generator loop.

    ``get_model_features`` calls its generator with a fixed batch and keeps the first ``total``
    features, so the last call asks ``next_batch`` only for what is left and pads by repetition:
    no sample is drawn for nothing. Its latent ``z`` (drawn from torch's global RNG) is ignored.
    """
    from cleanfid import fid as cfid

    done = 0

    def gen(z: Tensor) -> Tensor:
        nonlocal done
        want = min(len(z), total - done)
        images = _rgb(next_batch(want))
        if len(images) != want:
            raise ValueError(f"sampler returned {len(images)} images, {want} requested")
        done += want
        if want < len(z):
            images = torch.cat([images, images[-1:].expand(len(z) - want, -1, -1, -1)])
        return images

    feats = cfid.get_model_features(gen, extractor.model, mode=cfg.mode, z_dim=1, num_gen=total,
                                    batch_size=min(cfg.batch_size, total),
                                    device=torch.device(device), verbose=False)
    return np.asarray(feats, dtype=np.float64)


def features_of_images(images: Tensor, cfg: FIDConfig, device: torch.device | str, *,
                       dataset: Dataset | None = None,
                       extractor: Extractor | None = None) -> np.ndarray:
    """Features (N, F) of 8-bit images (N, 1 or 3, H, W) uint8 through clean-fid's resize + model.

    ``dataset`` picks the classifier when ``cfg.features == "classifier"``.
    """
    extractor = extractor or build_extractor(cfg, device, dataset)
    images = images.cpu()
    start = 0

    def next_batch(n: int) -> Tensor:
        nonlocal start
        start += n
        return images[start - n:start]

    return _stream_features(next_batch, len(images), cfg, extractor, device)


def _gaussian(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F), as clean-fid computes them."""
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


# --- reference statistics ------------------------------------------------------------------------

def _check_image_dataset(dataset: Dataset) -> None:
    if not (dataset.is_image and dataset.is_discrete):
        raise ConfigError(f"FID needs an image dataset with intensity levels; {dataset.name!r} "
                          "is not one (use w2/mmd for low-dimensional data)")


def reference_levels(dataset: Dataset, cfg: FIDConfig) -> Tensor:
    """Reference images in the dataset's levels (num_ref, C, H, W): the split, or a fixed subset."""
    _check_image_dataset(dataset)
    data = dataset.train if cfg.split == "train" else dataset.test
    if cfg.num_ref == 0:
        return data
    if cfg.num_ref > len(data):
        raise ConfigError(f"fid num_ref={cfg.num_ref} exceeds the {len(data)} images of "
                          f"{dataset.name}'s {cfg.split} split")
    perm = np.random.default_rng(REF_SUBSET_SEED).permutation(len(data))[:cfg.num_ref]
    return data[torch.from_numpy(perm)]


def reference_stats(dataset: Dataset, cfg: FIDConfig, device: torch.device | str, *,
                    extractor: Extractor | None = None) -> ReferenceStats:
    """(mu, sigma) of the reference images, computed once and cached as an .npz.

    Cache key: dataset, split, resolution, mode, extractor name, num_ref. Several processes asking
    at once: the first computes under a lock file, the others wait and read its result.
    """
    _check_image_dataset(dataset)
    extractor = extractor or build_extractor(cfg, device, dataset)
    res = "x".join(map(str, dataset.shape[1:]))
    count = cfg.num_ref or "all"
    path = (cache_dir() / "fid" /
            f"{dataset.name}_{cfg.split}_{res}_{cfg.mode}_{extractor.name}_{count}.npz")

    def write(p: Path) -> None:
        ref = reference_levels(dataset, cfg)
        feats = features_of_images(levels_to_uint8(ref, dataset.levels), cfg, device,
                                   extractor=extractor)
        mu, sigma = _gaussian(feats)
        save_npz(p, mu=mu, sigma=sigma, num_ref=np.int64(len(ref)),
                  extractor=np.str_(extractor.name), mode=np.str_(cfg.mode))

    def read(p: Path) -> ReferenceStats | None:
        try:
            with np.load(p, allow_pickle=False) as z:
                return ReferenceStats(z["mu"], z["sigma"], int(z["num_ref"]), p)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None  # unreadable (e.g. copied half-way): recompute under the lock

    return compute_once(path, write, read)


def fid_from_sampler(sample_fn: Callable[[int], Tensor], dataset: Dataset, cfg: FIDConfig,
                     device: torch.device | str, levels: int | None = None) -> FIDResult:
    """FID of ``cfg.num_gen`` samples from ``sample_fn(n) -> (n, C, H, W)`` in model space.

    Samples are quantized to ``levels`` (default: the dataset's) and to 8 bits as a saved PNG
    would be, streamed in batches of ``cfg.batch_size``, and compared with the cached reference
    statistics of ``cfg.split``. Raises FIDUnavailable before any sampling if Inception is missing.
    """
    _check_image_dataset(dataset)
    levels = dataset.levels if levels is None else levels
    extractor = build_extractor(cfg, device, dataset)
    ref = reference_stats(dataset, cfg, device, extractor=extractor)

    def next_batch(n: int) -> Tensor:
        with torch.no_grad():
            x = sample_fn(n)
        if tuple(x.shape[1:]) != dataset.shape:
            raise ValueError(f"sampler returned shape {tuple(x.shape)}, "
                             f"expected (n, *{dataset.shape})")
        return to_uint8(x, levels)

    return fid_from_features(_stream_features(next_batch, cfg.num_gen, cfg, extractor, device),
                             ref, cfg)


def fid_from_features(feats: np.ndarray, ref: ReferenceStats, cfg: FIDConfig) -> FIDResult:
    """FID of generated-image features (N, F) against reference statistics: the Fréchet distance
    of their Gaussian fits. Sharded evaluation concatenates its shards' features and calls this,
    so its FID is the single-task one (a mean of per-shard FIDs would not be)."""
    if feats.ndim != 2 or len(feats) < 2 or feats.shape[1] != len(ref.mu):
        raise ValueError(f"expected features (N >= 2, {len(ref.mu)}), got {feats.shape}")
    mu, sigma = _gaussian(feats)
    from cleanfid.fid import frechet_distance

    value = float(frechet_distance(mu, sigma, ref.mu, ref.sigma))
    return FIDResult(value, len(feats), ref.num_ref, cfg.mode, cfg.features, int(mu.shape[0]))
