"""FID through clean-fid's pipeline, on digits with classifier features (CPU, never the network)."""

import multiprocessing
import shutil
import socket
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cleanfid
import cleanfid.fid
from harness.core import fid
from harness.datasets import load_dataset
from harness.datasets.base import Dataset
from harness.errors import ConfigError, HarnessError
from harness.core.feature_classifier import load_classifier
from harness.core.fid import FIDConfig, FIDUnavailable
from harness.core.metrics import METRICS

# 200 references in batches of 100: small enough for 2 cores through the 299x299 resize.
CFG = FIDConfig(features="classifier", num_gen=200, num_ref=200, batch_size=100)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No network, and a cache under tmp_path unless a test picks another."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("FMBENCH_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A cache folder holding the digits classifier, trained once for this module."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMBENCH_CACHE", str(root))
        state = load_classifier(digits)
    return root, state


@pytest.fixture
def cache(tmp_path, monkeypatch, trained):
    """A fresh FMBENCH_CACHE with the trained classifier but no reference statistics."""
    root = tmp_path / "cache"
    shutil.copytree(trained[0] / "classifiers", root / "classifiers")
    monkeypatch.setenv("FMBENCH_CACHE", str(root))
    return root


def _replay(x: torch.Tensor):
    """A sampler that hands out the rows of x in order, n at a time."""
    pos = 0

    def sample(n):
        nonlocal pos
        pos += n
        return x[pos - n:pos]

    return sample


def _counting(monkeypatch, log=None, delay=0.0):
    """Count calls of clean-fid's feature loop (every extractor pass goes through it)."""
    calls = []
    real = cleanfid.fid.get_model_features

    def wrapped(*args, **kwargs):
        calls.append(1)
        if log is not None:
            with open(log, "a") as f:
                f.write("call\n")
        time.sleep(delay)
        return real(*args, **kwargs)

    monkeypatch.setattr(cleanfid.fid, "get_model_features", wrapped)
    return calls


def test_self_fid_is_zero_and_grows_with_noise(cache, digits):
    ref = fid.reference_levels(digits, CFG)
    g = torch.Generator().manual_seed(1)
    x = digits.to_model_space(ref, generator=g)  # dequantized: quantizes back to ref exactly
    eps = torch.randn(x.shape, generator=g)
    scale = float(np.trace(fid.reference_stats(digits, CFG, "cpu").sigma))

    same = fid.fid_from_sampler(_replay(x), digits, CFG, "cpu")
    assert abs(same.fid) < 1e-6 * scale
    assert (same.num_gen, same.num_ref, same.feature_dim) == (200, 200, 128)
    assert same.metric == "fid_classifier" and same.mode == "clean"

    noisy = [fid.fid_from_sampler(_replay(x + s * eps), digits, CFG, "cpu").fid
             for s in (0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip([same.fid] + noisy, noisy)), noisy


def test_reference_stats_are_computed_once_in_fmbench_cache(cache, digits, monkeypatch):
    calls = _counting(monkeypatch)
    first = fid.reference_stats(digits, CFG, "cpu")
    assert len(calls) == 1
    assert first.path.parent == cache / "fid" and first.path.is_file()
    assert first.path.name.startswith("digits_train_8x8_clean_classifier-")
    second = fid.reference_stats(digits, CFG, "cpu")
    assert len(calls) == 1  # read from the cache, no features extracted
    np.testing.assert_array_equal(first.sigma, second.sigma)
    fid.fid_from_sampler(_replay(digits.to_model_space(digits.train[:200])), digits, CFG, "cpu")
    assert len(calls) == 2  # only the generated samples
    first.path.write_bytes(b"not an npz")  # an unreadable cache file is recomputed, not fatal
    third = fid.reference_stats(digits, CFG, "cpu")
    assert len(calls) == 3
    np.testing.assert_array_equal(first.sigma, third.sigma)
    stats_folder = Path(cleanfid.__file__).parent / "stats"
    assert not list(stats_folder.glob("digits*"))


def _request_stats(cache_root, log, barrier, queue):
    """Child process: wait for the sibling, then ask for the same statistics."""
    import os

    os.environ["FMBENCH_CACHE"] = cache_root
    with pytest.MonkeyPatch.context() as mp:
        _counting(mp, log=log, delay=0.5)  # slow enough that the two requests overlap
        dataset = load_dataset("digits")
        barrier.wait(timeout=120)
        stats = fid.reference_stats(dataset, CFG, "cpu")
    queue.put((stats.mu, stats.sigma, str(stats.path)))


def test_concurrent_requests_compute_once(cache, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, queue, log = ctx.Barrier(2), ctx.Queue(), tmp_path / "calls.log"
    procs = [ctx.Process(target=_request_stats, args=(str(cache), str(log), barrier, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert log.read_text().count("call") == 1
    (mu1, s1, path1), (mu2, s2, path2) = results
    assert path1 == path2
    np.testing.assert_array_equal(mu1, mu2)
    np.testing.assert_array_equal(s1, s2)


@pytest.mark.parametrize("levels,channels", [(17, 1), (256, 1), (256, 3)])
def test_samples_are_quantized_as_a_saved_png(tmp_path, levels, channels):
    x = 1.3 * torch.randn(4, channels, 6, 5)  # includes values outside [-1, 1]
    pixels = fid.to_uint8(x, levels)
    n = Dataset("d", x, x, levels=levels).quantize(x)
    assert torch.equal(pixels.long(), (n.double() * 255 / (levels - 1)).round().long())
    for i, img in enumerate(pixels):
        png = tmp_path / f"{i}.png"
        Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy()).save(png)
        assert torch.equal(torch.from_numpy(np.array(Image.open(png))).reshape(6, 5, -1),
                           img.permute(1, 2, 0))
        # clean-fid reads image files as RGB: the streamed batch must hold the same values
        rgb = np.array(Image.open(png).convert("RGB"), dtype=np.float32)
        np.testing.assert_array_equal(fid._rgb(pixels[i:i + 1])[0].permute(1, 2, 0).numpy(), rgb)


def test_digit_levels_map_to_rounded_8bit_values():
    centres = 2 * (torch.arange(17.0) + 0.5) / 17 - 1
    assert fid.to_uint8(centres.view(1, 1, 1, 17), 17).flatten().tolist() == [
        0, 16, 32, 48, 64, 80, 96, 112, 128, 143, 159, 175, 191, 207, 223, 239, 255]


def test_streamed_features_equal_clean_fid_folder_features(cache, digits, tmp_path):
    pixels = fid.levels_to_uint8(digits.test[:20], digits.levels)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(pixels):
        Image.fromarray(img[0].numpy()).save(folder / f"{i:03d}.png")
    cfg = FIDConfig(features="classifier", batch_size=20)
    extractor = fid.build_extractor(cfg, "cpu", digits)
    ours = fid.features_of_images(pixels, cfg, "cpu", extractor=extractor)
    theirs = cleanfid.fid.get_folder_features(str(folder), extractor.model, num_workers=0,
                                              batch_size=20, device=torch.device("cpu"),
                                              mode="clean", verbose=False)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_classifier_is_deterministic_and_accurate(trained, digits, tmp_path, monkeypatch):
    _, state = trained
    assert state["accuracy"] > 0.9 and state["test_n"] == 300
    monkeypatch.setenv("FMBENCH_CACHE", str(tmp_path / "fresh"))
    again = load_classifier(digits)  # trained from scratch
    assert (tmp_path / "fresh" / "classifiers" / "digits.pt").is_file()
    assert again["accuracy"] == state["accuracy"]
    for key, value in state["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    # still accurate after clean-fid's resize to 299 and back
    cfg = FIDConfig(features="classifier", batch_size=150)
    extractor = fid.build_extractor(cfg, "cpu", digits)
    feats = fid.features_of_images(fid.levels_to_uint8(digits.test, 17), cfg, "cpu",
                                   extractor=extractor)
    from harness.core.feature_classifier import _labelled

    logits = extractor.model.net.head(torch.from_numpy(feats).float())
    assert (logits.argmax(1) == _labelled(digits)[3]).float().mean() > 0.9


@pytest.mark.parametrize("mode", ["clean", "legacy_pytorch"])
def test_missing_inception_weights_raise_one_line(digits, monkeypatch, mode):
    path, url = fid.inception_weights(mode)
    if Path(path).exists():
        pytest.skip(f"Inception weights present at {path}")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(cleanfid.downloads_helper.urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    sampled = []
    with pytest.raises(FIDUnavailable) as err:
        fid.fid_from_sampler(lambda n: sampled.append(n), digits, FIDConfig(mode=mode), "cpu")
    message = str(err.value)
    assert isinstance(err.value, HarnessError) and "\n" not in message
    assert path in message and url in message and "missing" in message
    assert not sampled and not Path(path).exists()


@pytest.mark.parametrize("bad", [
    {"mode": "fast"}, {"features": "clip"}, {"split": "val"}, {"num_gen": 1}, {"num_gen": True},
    {"num_gen": 2.5}, {"num_ref": -1}, {"num_ref": 1}, {"batch_size": 0}])
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        FIDConfig(**bad)


def test_invalid_requests(digits):
    colour = Dataset("cifar-like", torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
                     torch.zeros(2, 3, 8, 8, dtype=torch.uint8), levels=256)
    with pytest.raises(ConfigError, match="digits, mnist"):
        fid.build_extractor(CFG, "cpu", colour)
    toy = Dataset("moons", torch.zeros(4, 2), torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="image dataset"):
        fid.reference_levels(toy, CFG)
    with pytest.raises(ConfigError, match="exceeds"):
        fid.reference_levels(digits, FIDConfig(num_ref=5000))


def test_metrics_are_registered():
    for name in ("fid", "fid_classifier"):
        spec = METRICS.get(name)
        assert spec.lower_is_better and spec.display.startswith("FID")
