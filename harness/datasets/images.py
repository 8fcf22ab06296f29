"""Image datasets, stored as uint8 intensity levels of shape (N, C, H, W).

Splits are the datasets' official ones (digits: a fixed seeded split), never the trial seed, so all
trials of a suite share their test set. File-backed loaders read from ``root`` (see
:func:`harness.datasets.data_root`) and raise :class:`~harness.errors.DataError` naming the
folder and the files expected there when something is missing or malformed.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
import re
import zipfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch

from harness.datasets.base import DATASETS, Dataset
from harness.errors import DataError


def _missing(folder: Path, names: list[str]) -> list[str]:
    return [n for n in names if not (folder / n).is_file()]


# --- digits -------------------------------------------------------------------------------------

DIGITS_N_TEST = 300
DIGITS_SPLIT_SEED = 2**31 - 1  # fixed: the split never depends on the trial seed


@DATASETS.register("digits", summary="scikit-learn 8x8 digits, 17 levels (1497 train / 300 test).",
                   kind="image")
def load_digits(*, seed: int = 0, root: Path | None = None, download: bool = True) -> Dataset:
    """scikit-learn's bundled digits (no network): (N, 1, 8, 8) uint8 in 0..16, levels = 17."""
    from sklearn.datasets import load_digits as sk_digits

    images = torch.from_numpy(sk_digits().images.astype(np.uint8)).unsqueeze(1)
    perm = torch.from_numpy(np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images)))
    test, train = images[perm[:DIGITS_N_TEST]], images[perm[DIGITS_N_TEST:]]
    return Dataset("digits", train.contiguous(), test.contiguous(), levels=17)


# --- MNIST --------------------------------------------------------------------------------------

# torchvision's MNIST accepts a root only if all four *uncompressed* IDX files are in root/MNIST/raw
# (its _check_exists tests existence only, no md5), for either split.
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@DATASETS.register("mnist", summary="MNIST 28x28 grayscale, 256 levels (60k train / 10k test).",
                   kind="image")
def load_mnist(*, seed: int = 0, root: Path, download: bool = True) -> Dataset:
    """MNIST through torchvision (root/MNIST/raw/*-idx?-ubyte): (N, 1, 28, 28) uint8, levels = 256."""
    from torchvision.datasets import MNIST

    raw = Path(root) / "MNIST" / "raw"
    expected = f"expected {', '.join(MNIST_FILES)} in {raw}"
    if _missing(raw, MNIST_FILES) and not download:
        raise DataError(f"mnist: missing {', '.join(_missing(raw, MNIST_FILES))}; {expected} "
                        "(pass download=True to fetch them)")
    try:
        splits = [MNIST(str(root), train=t, download=download).data for t in (True, False)]
    except (RuntimeError, OSError, URLError, AssertionError, TypeError, ValueError) as e:
        raise DataError(f"mnist: could not read or download the data ({e}); {expected}") from e
    for x in splits:
        if x.dtype != torch.uint8 or x.ndim != 3 or tuple(x.shape[1:]) != (28, 28):
            raise DataError(f"mnist: images of shape {tuple(x.shape)} {x.dtype}, expected "
                            f"(N, 28, 28) uint8; {expected}")
    train, test = (x.unsqueeze(1).contiguous() for x in splits)
    return Dataset("mnist", train, test, levels=256)


# --- CIFAR-10 -----------------------------------------------------------------------------------

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch"]


def _np_global(name: str, *modules: str):
    """``modules[i].name`` for the first module that has it (numpy 1.x: numpy.core, 2.x: numpy._core)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


_reconstruct = _np_global("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")
_frombuffer = _np_global("_frombuffer", "numpy._core.numeric", "numpy.core.numeric")

# The only globals a CIFAR batch needs: numpy array/dtype reconstruction (pickled by numpy 1.x as
# numpy.core.*, by 2.x as numpy._core.*), and _codecs.encode, which protocol-2 pickles written by
# Python 3 use for bytes. None of them can run arbitrary code.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    ("builtins", "bytearray"): bytearray,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_SAFE_GLOBALS`, so a pickle cannot execute code."""

    def find_class(self, module: str, name: str):
        obj = _SAFE_GLOBALS.get((module, name))
        if obj is None:
            raise DataError(f"refusing to unpickle global {module}.{name} (not a CIFAR batch?)")
        return obj


def read_cifar_batch(path: Path) -> np.ndarray:
    """One official CIFAR python batch -> (N, 3, 32, 32) uint8 (rows are 1024 R, 1024 G, 1024 B)."""
    try:
        with open(path, "rb") as f:
            # The official batches are Python 2 pickles: encoding="bytes" keeps their str as bytes.
            batch = _RestrictedUnpickler(f, encoding="bytes").load()
    except DataError as e:
        raise DataError(f"cifar10: {path}: {e}") from None
    except Exception as e:  # any malformed pickle: UnpicklingError, EOFError, ValueError, ...
        raise DataError(f"cifar10: {path} is not a readable CIFAR batch ({e!r})") from e
    data = batch.get(b"data") if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        raise DataError(f"cifar10: {path} has no b'data' array of shape (N, 3072) uint8")
    labels = batch.get(b"labels")
    if labels is None or len(labels) != len(data):
        raise DataError(f"cifar10: {path} has {len(data)} images but labels do not match")
    return data.reshape(-1, 3, 32, 32)


@DATASETS.register("cifar10", summary="CIFAR-10 32x32 RGB, 256 levels (50k train / 10k test).",
                   kind="image")
def load_cifar10(*, seed: int = 0, root: Path, download: bool = True) -> Dataset:
    """CIFAR-10 from root/cifar-10-batches-py: (N, 3, 32, 32) uint8, levels = 256.

    Own reader rather than torchvision's CIFAR10: that one md5-checks every batch (so no test
    fixtures) and unpickles with the unrestricted pickle module.
    """
    root = Path(root)
    folder = root / CIFAR10_DIR
    names = CIFAR10_TRAIN + CIFAR10_TEST
    if _missing(folder, names) and download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(CIFAR10_URL, download_root=str(root), md5=CIFAR10_MD5)
        except (RuntimeError, OSError, URLError) as e:
            raise DataError(f"cifar10: download of {CIFAR10_URL} into {root} failed ({e})") from e
    missing = _missing(folder, names)
    if missing:
        raise DataError(f"cifar10: missing {', '.join(missing)} in {folder}; expected "
                        f"{', '.join(names)} (the python version, {CIFAR10_URL})")
    train = np.concatenate([read_cifar_batch(folder / n) for n in CIFAR10_TRAIN])
    test = np.concatenate([read_cifar_batch(folder / n) for n in CIFAR10_TEST])
    return Dataset("cifar10", torch.from_numpy(train), torch.from_numpy(test), levels=256)


# --- Downsampled ImageNet (Chrabaszcz et al. 2017) ----------------------------------------------

_BATCH = re.compile(r"train_data_batch_(\d+)\.npz")
_RES_TAG = re.compile(r"imagenet(\d+)", re.IGNORECASE)


def _imagenet_files(root: Path, res: int) -> tuple[list[Path], Path]:
    """Train batches (sorted by index) and val_data.npz in root or one folder level below it.

    Paths naming another resolution (e.g. Imagenet64_train_npz when res = 32) are skipped, so
    both resolutions can share one data root.
    """
    folders = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    candidates = [f for d in folders for f in sorted(d.glob("*.npz"))]
    candidates = [f for f in candidates
                  if all(int(t) == res for t in _RES_TAG.findall(str(f.relative_to(root))))]
    where = (f"place train_data_batch_*.npz and val_data.npz (from the official Imagenet{res} "
             f"npz downloads) in {root} or one folder below it, e.g. {root}/Imagenet{res}_train_npz/")
    batches: dict[int, Path] = {}
    for f in candidates:
        m = _BATCH.fullmatch(f.name)
        if m:
            if int(m.group(1)) in batches:
                raise DataError(f"imagenet{res}: {f.name} found twice ({batches[int(m.group(1))]}, {f})")
            batches[int(m.group(1))] = f
    vals = [f for f in candidates if f.name == "val_data.npz"]
    if not batches or len(vals) != 1:
        what = ("no train_data_batch_*.npz" if not batches else
                "no val_data.npz" if not vals else f"several val_data.npz ({', '.join(map(str, vals))})")
        raise DataError(f"imagenet{res}: {what} under {root}; {where}")
    gaps = sorted(set(range(1, max(batches) + 1)) - set(batches))
    if gaps:
        raise DataError(f"imagenet{res}: train_data_batch_{gaps} missing under {root}; {where}")
    return [batches[i] for i in sorted(batches)], vals[0]


def _npz_data_shape(path: Path) -> tuple[int, ...]:
    """Shape of the 'data' array in an npz, read from its header without loading the array."""
    fmt = np.lib.format
    try:
        with zipfile.ZipFile(path) as zf, zf.open("data.npy") as f:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read is None:
                with np.load(path, allow_pickle=False) as z:
                    return z["data"].shape
            return read(f)[0]
    except KeyError:
        raise DataError(f"{path} has no 'data' array") from None
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable npz file ({e})") from e


def read_imagenet_npz(paths: list[Path], res: int) -> torch.Tensor:
    """Concatenate npz 'data' arrays (N, 3 R R), channel-major, into (sum N, 3, R, R) uint8.

    The output is allocated once from the headers and filled file by file, so peak memory is the
    dataset plus one batch (ImageNet64 train alone is ~15.7 GB).
    """
    shapes = [_npz_data_shape(p) for p in paths]
    for p, s in zip(paths, shapes):
        if len(s) != 2 or s[1] != 3 * res * res:
            raise DataError(f"imagenet{res}: {p} holds data of shape {s}, expected (N, {3 * res * res})"
                            f" for {res}x{res} RGB; wrong resolution?")
    out = torch.empty((sum(s[0] for s in shapes), 3, res, res), dtype=torch.uint8)
    start = 0
    for p, s in zip(paths, shapes):
        with np.load(p, allow_pickle=False) as z:
            data = z["data"]
        if data.dtype != np.uint8 or data.shape != tuple(s):
            raise DataError(f"imagenet{res}: {p} data is {data.dtype} {data.shape}, expected uint8 {s}")
        out[start:start + s[0]] = torch.from_numpy(data.reshape(-1, 3, res, res))
        start += s[0]
    return out


def _register_imagenet(res: int) -> None:
    name = f"imagenet{res}"

    def load(*, seed: int = 0, root: Path, download: bool = True) -> Dataset:
        del download  # the files need a login at image-net.org: never fetched
        train_files, val_file = _imagenet_files(Path(root), res)
        return Dataset(name, read_imagenet_npz(train_files, res), read_imagenet_npz([val_file], res),
                       levels=256)

    load.__doc__ = (f"Downsampled ImageNet {res}x{res} from local npz batches: (N, 3, {res}, {res}) "
                    "uint8, levels = 256; test = the official validation set.")
    DATASETS.register(name, load, kind="image",
                      summary=f"Downsampled ImageNet {res}x{res}, 256 levels (local npz files only).")


_register_imagenet(32)
_register_imagenet(64)
