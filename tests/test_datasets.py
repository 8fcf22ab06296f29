"""Dataset registry and loaders. No test touches the network: file-backed loaders get tiny files
written in the official formats into tmp_path, and download=False."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
import torch

from harness.datasets import DATASETS, Dataset, data_root, load_dataset
from harness.datasets import toy2d
from harness.errors import ConfigError, DataError, UnknownNameError

TOYS = [n for n in DATASETS.names() if DATASETS.entry(n).meta["kind"] == "vector"]


def test_registry_lists_every_dataset_with_kind_and_summary():
    expected = {"8gaussians", "moons", "circles", "checkerboard", "2spirals",
                "digits", "mnist", "cifar10", "imagenet32", "imagenet64"}
    assert expected <= set(DATASETS.names())
    for e in DATASETS.entries():
        assert e.meta["kind"] in {"vector", "image"}
        assert e.summary and "\n" not in e.summary


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        load_dataset("no-such-data", download=False)
    msg = str(info.value)
    assert "no-such-data" in msg and "8gaussians" in msg and "cifar10" in msg


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed_is_config_error(seed):
    with pytest.raises(ConfigError):
        load_dataset("moons", seed=seed)


def test_data_root_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("FMBENCH_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("FMBENCH_DATA")
    assert data_root() == data_root("~/.cache/fmbench/data")
    assert "~" not in str(data_root())


# --- 2-D toys -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toys():
    """name -> (seed 0, seed 0 again, seed 1)."""
    return {n: (load_dataset(n, seed=0), load_dataset(n, seed=0), load_dataset(n, seed=1)) for n in TOYS}


def test_all_five_toys_registered():
    assert set(TOYS) == {"8gaussians", "moons", "circles", "checkerboard", "2spirals"}


@pytest.mark.parametrize("name", TOYS)
def test_toy_shape_dtype_determinism(toys, name):
    a, b, c = toys[name]
    assert isinstance(a, Dataset) and a.name == name and a.levels is None
    assert a.train.shape == (toy2d.N_TRAIN, 2) and a.test.shape == (toy2d.N_TEST, 2)
    assert a.train.dtype == torch.float32 and a.test.dtype == torch.float32
    assert a.shape == (2,) and not a.is_image and not a.is_discrete
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)  # same seed, same data
    assert not torch.equal(a.train, c.train)  # another trial seed, another draw
    assert torch.equal(a.test, c.test)  # held-out set fixed across trials
    assert not torch.equal(a.train[: toy2d.N_TEST], a.test)
    for x in (a.train, a.test):
        assert torch.isfinite(x).all()
        assert x.abs().max() < 5.0
        assert 0.5 < x.std(0).min() < 3.5  # unit-ish scale


def test_toys_do_not_share_draws(toys):
    firsts = [toys[n][0].train[:100] for n in TOYS]
    for i in range(len(firsts)):
        for j in range(i + 1, len(firsts)):
            assert not torch.allclose(firsts[i], firsts[j])


def _both(toys, name):
    a = toys[name][0]
    return torch.cat([a.train, a.test]).double().numpy()


def test_8gaussians_has_8_equal_clusters_of_the_stated_width(toys):
    x = _both(toys, "8gaussians")
    centres = toy2d.eight_gaussians_centres()
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 2 * np.sqrt(2))
    k = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(k, minlength=8) / len(x)
    np.testing.assert_allclose(counts, 1 / 8, atol=0.01)
    resid = x - centres[k]
    np.testing.assert_allclose(resid.std(0), 0.5 / np.sqrt(2), rtol=0.05)
    np.testing.assert_allclose(resid.mean(0), 0.0, atol=0.01)


def test_moons_lie_on_two_half_circles(toys):
    p = _both(toys, "moons") / 2.0 + np.array([0.5, 0.25])  # back to unscaled coordinates
    d_upper = np.abs(np.linalg.norm(p, axis=1) - 1.0)
    d_lower = np.abs(np.linalg.norm(p - np.array([1.0, 0.5]), axis=1) - 1.0)
    assert (np.minimum(d_upper, d_lower) < 0.4).mean() > 0.999
    np.testing.assert_allclose(_both(toys, "moons").mean(0), 0.0, atol=0.05)


def test_circles_have_two_equal_rings(toys):
    r = np.linalg.norm(_both(toys, "circles"), axis=1)
    outer = np.abs(r - 3.0) < 0.5
    inner = np.abs(r - 1.5) < 0.5
    assert (outer | inner).all()
    assert abs(outer.mean() - 0.5) < 0.01
    np.testing.assert_allclose(r[outer].std(), 0.1, rtol=0.05)


def test_checkerboard_uses_only_black_cells_uniformly(toys):
    x = _both(toys, "checkerboard")
    assert (x >= -4).all() and (x < 4).all()
    cell = np.floor((x + 4.0) / 2.0).astype(int)
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    counts = np.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16) / len(x)
    black = [i * 4 + j for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    np.testing.assert_allclose(counts[black], 1 / 8, atol=0.01)


def test_2spirals_follow_their_arms(toys):
    x = _both(toys, "2spirals")
    r = np.linalg.norm(x, axis=1)
    assert r.max() < 3.5 + 0.6
    far = r > 1.0  # near the centre, noise swamps the angle
    # Noiseless arm k: angle = 2 pi 1.5 r / 3.5 + k pi, so the angle mod pi is set by r.
    delta = np.arctan2(x[far, 1], x[far, 0]) - 3 * np.pi * r[far] / 3.5
    assert (np.abs(np.sin(delta)) < 0.6).mean() > 0.98
    # Both arms equally populated: the sign of cos(delta) tells them apart.
    assert abs((np.cos(delta) > 0).mean() - 0.5) < 0.02


# --- digits -------------------------------------------------------------------------------------

def test_digits():
    d = load_dataset("digits", seed=3, download=False)
    assert d.levels == 17 and d.is_image and d.is_discrete
    assert d.train.shape == (1497, 1, 8, 8) and d.test.shape == (300, 1, 8, 8)
    assert d.train.dtype == torch.uint8 and int(d.train.max()) == 16 and int(d.test.max()) == 16
    other = load_dataset("digits", seed=4)
    assert torch.equal(d.train, other.train) and torch.equal(d.test, other.test)  # seed-free split
    # The split is a partition of all 1797 images (same multiset of rows).
    from sklearn.datasets import load_digits
    every = torch.from_numpy(load_digits().images.astype(np.uint8)).reshape(1797, -1)
    both = torch.cat([d.train, d.test]).reshape(1797, -1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, every.tolist()))
    x = d.to_model_space(d.train, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() < 1


# --- MNIST --------------------------------------------------------------------------------------

def _write_idx_images(path, images: np.ndarray):
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def _write_idx_labels(path, labels: np.ndarray):
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def _mnist_root(tmp_path, n_train=5, n_test=3):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    _write_idx_images(raw / "train-images-idx3-ubyte", train)
    _write_idx_labels(raw / "train-labels-idx1-ubyte", np.arange(n_train) % 10)
    _write_idx_images(raw / "t10k-images-idx3-ubyte", test)
    _write_idx_labels(raw / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10)
    return train, test


def test_mnist_reads_idx_files_exactly(tmp_path):
    train, test = _mnist_root(tmp_path)
    d = load_dataset("mnist", root=tmp_path, download=False)
    assert d.levels == 256 and d.train.dtype == torch.uint8
    assert d.train.shape == (5, 1, 28, 28) and d.test.shape == (3, 1, 28, 28)
    assert torch.equal(d.train[:, 0], torch.from_numpy(train))
    assert torch.equal(d.test[:, 0], torch.from_numpy(test))


def test_mnist_missing_files_name_the_path(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=tmp_path / "nowhere", download=False)
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in msg and "t10k-images-idx3-ubyte" in msg


def test_mnist_bad_magic_is_data_error(tmp_path):
    _mnist_root(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\0" * 64)
    with pytest.raises(DataError, match="mnist"):
        load_dataset("mnist", root=tmp_path, download=False)


# --- CIFAR-10 -----------------------------------------------------------------------------------

def _cifar_batch(n, seed):
    data = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    return data, {b"batch_label": b"batch %d" % seed, b"labels": [i % 10 for i in range(n)],
                  b"data": data, b"filenames": [b"img_%d.png" % i for i in range(n)]}


def _cifar_root(tmp_path, protocol=2):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    arrays = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        arrays[name], batch = _cifar_batch(2 + i % 2, seed=i)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return folder, arrays


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_round_trips_pixels_in_chw_order(tmp_path, protocol):
    _, arrays = _cifar_root(tmp_path, protocol)
    d = load_dataset("cifar10", root=tmp_path, download=False)
    flat_train = np.concatenate([arrays[f"data_batch_{k}"] for k in range(1, 6)])
    assert d.levels == 256 and d.train.dtype == torch.uint8
    n_test = len(arrays["test_batch"])
    assert d.train.shape == (len(flat_train), 3, 32, 32) and d.test.shape == (n_test, 3, 32, 32)
    assert torch.equal(d.train.reshape(len(flat_train), -1), torch.from_numpy(flat_train))
    # Row layout: 1024 red (row-major 32x32), then 1024 green, then 1024 blue.
    row = flat_train[0]
    assert d.train[0, 0, 0, 1] == row[1] and d.train[0, 0, 1, 0] == row[32]
    assert d.train[0, 1, 0, 0] == row[1024] and d.train[0, 2, 31, 31] == row[3071]
    assert torch.equal(d.test.reshape(n_test, -1), torch.from_numpy(arrays["test_batch"]))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalEvil:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_cifar10_refuses_malicious_pickle_without_running_it(tmp_path, payload):
    folder, _ = _cifar_root(tmp_path)
    marker = tmp_path / "pwned"
    evil = _Evil(marker) if payload == "system" else _EvalEvil()
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": evil, b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle") as info:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert "data_batch_3" in str(info.value)
    assert not marker.exists()


def test_cifar10_wrong_format_is_data_error(tmp_path):
    folder, _ = _cifar_root(tmp_path)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8),
                                                        b"labels": [0, 1]}))
    with pytest.raises(DataError, match="3072"):
        load_dataset("cifar10", root=tmp_path, download=False)
    (folder / "data_batch_2").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_cifar10_missing_folder_is_data_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)
    assert "data_batch_1" in str(info.value) and "test_batch" in str(info.value)


# --- Downsampled ImageNet -----------------------------------------------------------------------

def _write_npz(path, n, res, seed, train=True, compressed=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 256, (n, 3 * res * res), dtype=np.uint8)
    extra = {"mean": data.mean(0)} if train else {}
    save = np.savez_compressed if compressed else np.savez
    save(path, data=data, labels=np.arange(1, n + 1), **extra)
    return data


@pytest.mark.parametrize("layout", ["flat", "subfolders"])
@pytest.mark.parametrize("res", [32, 64])
def test_imagenet_reads_batches_in_order_and_chw(tmp_path, res, layout):
    train_dir = tmp_path if layout == "flat" else tmp_path / f"Imagenet{res}_train_npz"
    val_dir = tmp_path if layout == "flat" else tmp_path / f"Imagenet{res}_val_npz"
    # Batch 10 before 2 would be the order of a lexicographic sort: check numeric order.
    batches = {k: _write_npz(train_dir / f"train_data_batch_{k}.npz", 1 + k % 3, res, seed=k,
                             compressed=k == 2) for k in range(1, 11)}
    val = _write_npz(val_dir / "val_data.npz", 2, res, seed=99, train=False)
    if layout == "subfolders":  # the other resolution in the same root is ignored
        other = 64 if res == 32 else 32
        _write_npz(tmp_path / f"Imagenet{other}_train_npz" / "train_data_batch_1.npz", 2, other, 5)
        _write_npz(tmp_path / f"Imagenet{other}_val_npz" / "val_data.npz", 2, other, 6, train=False)
    d = load_dataset(f"imagenet{res}", root=tmp_path, download=False)
    flat = np.concatenate([batches[k] for k in range(1, 11)])
    assert d.levels == 256 and d.train.dtype == torch.uint8
    assert d.train.shape == (len(flat), 3, res, res) and d.test.shape == (2, 3, res, res)
    assert torch.equal(d.train.reshape(len(flat), -1), torch.from_numpy(flat))
    assert torch.equal(d.test.reshape(2, -1), torch.from_numpy(val))
    plane = res * res  # channel-major rows: all R, then all G, then all B
    assert d.test[1, 1, 0, 0] == val[1, plane] and d.test[1, 2, res - 1, res - 1] == val[1, -1]
    assert d.test[1, 0, 1, 0] == val[1, res]


def test_imagenet_wrong_resolution_is_data_error(tmp_path):
    _write_npz(tmp_path / "train_data_batch_1.npz", 2, 64, seed=0)
    _write_npz(tmp_path / "val_data.npz", 2, 64, seed=1, train=False)
    with pytest.raises(DataError, match="resolution"):
        load_dataset("imagenet32", root=tmp_path, download=False)


def test_imagenet_missing_files_say_where(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("imagenet32", root=tmp_path, download=True)  # never downloads
    msg = str(info.value)
    assert str(tmp_path) in msg and "train_data_batch_" in msg and "val_data.npz" in msg
    _write_npz(tmp_path / "train_data_batch_1.npz", 2, 32, seed=0)
    with pytest.raises(DataError, match="no val_data.npz"):
        load_dataset("imagenet32", root=tmp_path, download=False)


def test_imagenet_gap_or_duplicate_batches_are_data_errors(tmp_path):
    _write_npz(tmp_path / "val_data.npz", 2, 32, seed=1, train=False)
    _write_npz(tmp_path / "train_data_batch_1.npz", 2, 32, seed=0)
    _write_npz(tmp_path / "train_data_batch_3.npz", 2, 32, seed=3)
    with pytest.raises(DataError, match=r"\[2\] missing"):
        load_dataset("imagenet32", root=tmp_path, download=False)
    _write_npz(tmp_path / "sub" / "train_data_batch_1.npz", 2, 32, seed=0)
    with pytest.raises(DataError, match="found twice"):
        load_dataset("imagenet32", root=tmp_path, download=False)
