"""The worked plugin examples: both methods pass fmbench check, their paths match the papers'
formulas, the dataset keeps the loader contract, and the example suite validates."""

import math
from pathlib import Path

import pytest
import torch

from harness import plugins
from harness.cli import main
from harness.core.paths import PathSample

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
COSINE = EXAMPLES / "cosine" / "fmbench_cosine.py"
EDM = EXAMPLES / "edm" / "fmbench_edm.py"
PINWHEEL = EXAMPLES / "dataset" / "fmbench_pinwheel.py"


@pytest.fixture
def load():
    """Load an example plugin by file; every example is unloaded after the test."""
    yield lambda path: __import__(plugins.load_plugin(str(path), "test").name)
    for path in (COSINE, EDM, PINWHEEL):
        plugins.unload(path.stem)


@pytest.mark.parametrize("name,path", [("fm-cosine", COSINE), ("edm", EDM)])
def test_example_method_passes_the_check(name, path, load, capsys):
    assert main(["check", name, "--plugin", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"{name}: 5/5 checks passed"
    assert all(line.split()[-1] == "PASS" or "PASS  n =" in line for line in lines[:-1])


def test_cosine_path_is_nichol_dhariwal_alpha_bar(load):
    """alpha_t^2 = f(tau)/f(0) with f(tau) = cos^2(((tau + s)/(1 + s)) pi/2), tau = 1 - t."""
    path = load(COSINE).CosinePath()
    t = torch.linspace(0, path.t_max, 11, dtype=torch.float64)
    f = lambda tau: torch.cos((tau + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    torch.testing.assert_close(path.alpha(t) ** 2, f(1 - t) / f(torch.zeros((), dtype=torch.float64)), rtol=1e-12,
                               atol=1e-15)
    torch.testing.assert_close(path.alpha(t) ** 2 + path.sigma(t) ** 2, torch.ones_like(t))
    ends = torch.tensor([0.0, path.t_max], dtype=torch.float64)
    assert float(path.alpha(ends)[0]) == pytest.approx(0.0, abs=1e-15)  # pure noise at t = 0
    assert float(path.sigma(ends)[1]) < 1e-3


def test_edm_noise_levels_are_karras_eq5(load):
    """At t = i/(N - 1) the path's sigma is eq. 5's sigma_i (N = 18, EDM's CIFAR-10 sampler)."""
    path = load(EDM).EDMPath()
    n = 18
    i = torch.arange(n, dtype=torch.float64)
    expected = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(path.sigma(i / (n - 1)), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(path.time_of(expected), i / (n - 1))
    assert path.prior_std == 80.0 and path.t_max == 1.0


def test_edm_loss_is_lambda_weighted_denoiser_error(load):
    """Eq. 8 equals eq. 2 with lambda = 1/c_out^2: |F - target|^2 = lambda |D - y|^2."""
    method = load(EDM).edm()
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g,
                                                                              dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64)
    sample = method.path.sample(x0, x1, t)
    out = torch.randn(6, 2, generator=g, dtype=torch.float64)
    sigma = method.path.sigma(t)[:, None]
    total = sigma**2 + 0.25
    denoised = 0.25 / total * sample.x_t + sigma * 0.5 / total.sqrt() * out
    lam = total / (sigma**2 * 0.25)
    expected = (lam * (denoised - x1) ** 2).mean(1)
    torch.testing.assert_close(method.objective(out, sample), expected)
    assert isinstance(sample, PathSample)


def test_edm_training_noise_is_log_normal(load):
    """ln sigma(t) of the training times has mean -1.2 and std 1.2 (Table 1), to 3 SE."""
    method = load(EDM).edm()
    t = method.sample_time(40000, torch.Generator().manual_seed(3)).double()
    log_sigma = torch.log(method.path.sigma(t))
    se = 1.2 / math.sqrt(len(t))
    assert abs(float(log_sigma.mean()) + 1.2) < 3 * se
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=3 * 1.2 / math.sqrt(2 * len(t)))


def test_pinwheel_keeps_the_loader_contract(load):
    from harness.datasets import DATASETS

    load(PINWHEEL)
    entry = DATASETS.entry("pinwheel")
    assert entry.meta["kind"] == "vector" and entry.summary and entry.source == "fmbench_pinwheel"
    a, b, c = (entry.obj(seed=s) for s in (0, 0, 1))
    assert a.train.shape == (50000, 2) and a.test.shape == (10000, 2) and a.levels is None
    assert a.train.dtype == a.test.dtype == torch.float32
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)  # seeded
    assert torch.equal(a.test, c.test)  # the test split does not depend on the seed
    assert float(a.train.abs().max()) < 5.0 and abs(float(a.train.mean())) < 0.05


def test_example_suite_validates(load, capsys):
    assert main(["validate", str(EXAMPLES / "suite.yaml")]) == 0
    assert "ok (8 trials)" in capsys.readouterr().out
