"""A small CNN digit classifier whose penultimate layer replaces Inception for FID on digits/MNIST.

Inception features of 8x8 or 28x28 grayscale digits upscaled to 299x299 say little about digit
shape; a classifier trained on the dataset itself does (the "FID with a domain classifier" used for
MNIST-scale models). It is trained once per dataset, deterministically (fixed seed, fixed steps,
on the CPU whatever the evaluation device), and cached under ``$FMBENCH_CACHE/classifiers``
with its held-out accuracy.

It plugs into clean-fid as a custom feature extractor, so it sees what clean-fid feeds Inception:
(B, 3, 299, 299) float in [0, 255] after the mode's resize. It averages the channels back to gray
and area-resizes to the dataset's resolution. The trip up to 299 and back blurs a little: that is
the price of using clean-fid's pipeline unchanged, paid equally by reference and generated images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.core.cache import cache_dir, compute_once
from harness.core.checkpoint import load_checkpoint, save_checkpoint
from harness.datasets.base import Dataset
from harness.errors import CheckpointError, ConfigError, DataError
from harness.core.pixels import levels_to_uint8

VERSION = 1  # bump when the network or recipe changes: cached weights are retrained
SEED = 0


@dataclass(frozen=True)
class Recipe:
    """Training schedule: ``steps`` Adam steps of ``batch`` images at learning rate ``lr``."""

    steps: int
    batch: int = 128
    lr: float = 2e-3
    noise: float = 0.05  # input noise std (model-space units): robustness to generated samples


RECIPES = {"digits": Recipe(steps=500), "mnist": Recipe(steps=1500)}


class DigitNet(nn.Module):
    """conv(1->32) -> conv(32->64, stride 2) -> 4x4 pool -> 128-d features -> 10 logits.

    Input (B, 1, H, W) in [-1, 1]; ``features`` is the penultimate layer (B, 128), pre-ReLU.
    """

    def __init__(self, width: int = 32, feature_dim: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim))
        # features are taken before this ReLU: no dead units, so their covariance has full rank
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, classes))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class ClassifierFeatures(nn.Module):
    """clean-fid feature model: (B, 3, S, S) float in [0, 255] -> (B, 128) classifier features.

    ``name`` keys the FID reference statistics computed with it (it names the exact weights).
    """

    def __init__(self, net: DigitNet, size: tuple[int, int], name: str) -> None:
        super().__init__()
        self.net = net.eval()
        self.size = size
        self.name = name

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        gray = x.float().mean(dim=1, keepdim=True)
        if tuple(gray.shape[-2:]) != self.size:
            gray = F.adaptive_avg_pool2d(gray, self.size)  # area resize back to native resolution
        return self.net.features(gray / 127.5 - 1.0)


# --- labels --------------------------------------------------------------------------------------

def _digits_labels() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train/test images (levels) and labels, split exactly as datasets.images.load_digits does."""
    from sklearn.datasets import load_digits

    from harness.datasets.images import DIGITS_N_TEST, DIGITS_SPLIT_SEED

    raw = load_digits()
    images = torch.from_numpy(raw.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(raw.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images)))
    test, train = perm[:DIGITS_N_TEST], perm[DIGITS_N_TEST:]
    return images[train], labels[train], images[test], labels[test]


def _mnist_labels() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST images and labels from the data root the mnist loader uses (no download here)."""
    from torchvision.datasets import MNIST

    from harness.datasets import data_root

    root = data_root()
    try:
        splits = [MNIST(str(root), train=t, download=False) for t in (True, False)]
    except (RuntimeError, OSError) as e:
        raise DataError(f"mnist labels: cannot read MNIST under {root} ({e})") from e
    (tr, te) = splits
    return tr.data.unsqueeze(1), tr.targets.long(), te.data.unsqueeze(1), te.targets.long()


LABELLED = {"digits": _digits_labels, "mnist": _mnist_labels}


def _check_supported(dataset: Dataset) -> None:
    if dataset.name not in LABELLED:
        raise ConfigError(f"fid features='classifier' supports {', '.join(LABELLED)}, "
                          f"not {dataset.name!r}")


def _labelled(dataset: Dataset) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_supported(dataset)
    x_tr, y_tr, x_te, y_te = LABELLED[dataset.name]()
    if not (torch.equal(x_tr, dataset.train) and torch.equal(x_te, dataset.test)):
        raise DataError(f"{dataset.name}: labelled images do not match the loaded dataset's split")
    return x_tr, y_tr, x_te, y_te


# --- training ------------------------------------------------------------------------------------

def _model_input(levels_images: Tensor, levels: int) -> Tensor:
    """Dataset levels -> the 8-bit values FID sees -> [-1, 1], as ClassifierFeatures scales them."""
    return levels_to_uint8(levels_images, levels).float() / 127.5 - 1.0


def train_classifier(dataset: Dataset) -> dict:
    """Train on the train split (CPU, fixed seed) -> checkpoint state with held-out accuracy."""
    x_tr, y_tr, x_te, y_te = _labelled(dataset)
    recipe = RECIPES[dataset.name]
    x_tr, x_te = _model_input(x_tr, dataset.levels), _model_input(x_te, dataset.levels)
    gen = torch.Generator().manual_seed(SEED)
    with torch.random.fork_rng(devices=[]):  # initialise from SEED without touching global state
        torch.manual_seed(SEED)
        net = DigitNet()
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    net.train()
    for _ in range(recipe.steps):
        idx = torch.randint(len(x_tr), (recipe.batch,), generator=gen)
        x = x_tr[idx] + recipe.noise * torch.randn(x_tr[idx].shape, generator=gen)
        loss = F.cross_entropy(net(x), y_tr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(x_te).argmax(1) == y_te).float().mean())
    return {"version": VERSION, "dataset": dataset.name, "state_dict": net.state_dict(),
            "accuracy": accuracy, "test_n": len(y_te), "steps": recipe.steps, "seed": SEED}


def load_classifier(dataset: Dataset) -> dict:
    """The cached classifier state for ``dataset``, training it once if needed (lock-protected)."""
    _check_supported(dataset)  # before touching the cache folder
    path = cache_dir() / "classifiers" / f"{dataset.name}.pt"

    def read(p):
        try:
            state = load_checkpoint(p)
        except CheckpointError:
            return None  # unreadable: retrain under the lock
        return state if state.get("version") == VERSION else None  # stale recipe: retrain

    return compute_once(path, lambda p: save_checkpoint(p, train_classifier(dataset)), read)


def _digest(state_dict: dict[str, Tensor]) -> str:
    """Short hash of the weights: reference stats are keyed by the exact extractor."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        h.update(key.encode())
        h.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def classifier_features(dataset: Dataset, device: torch.device | str) -> ClassifierFeatures:
    """clean-fid custom feature model for ``dataset`` (digits or mnist) on ``device``."""
    state = load_classifier(dataset)
    net = DigitNet()
    net.load_state_dict(state["state_dict"])
    name = f"classifier-{_digest(state['state_dict'])}"
    return ClassifierFeatures(net, tuple(dataset.shape[1:]), name).to(device)
