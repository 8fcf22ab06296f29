"""Evaluation against the exact Gaussian field: trajectories, numerical error, shared noise."""

import math

import pytest
import torch

from harness.core.analytic import GaussianData
from harness.datasets import Dataset
from harness.errors import ConfigError
from harness.core.evaluate import (EvalConfig, evaluate_numerical_error, evaluate_sampling,
                              evaluate_trajectories)
from harness.core.methods import build_method

DATA = GaussianData(mean=torch.tensor([1.0, -0.5]), std=0.5)
DATASET = Dataset("gauss", train=DATA.mean + DATA.std * torch.randn(4000, 2),
                  test=DATA.mean + DATA.std * torch.randn(2000, 2))


def test_trajectory_states_follow_the_exact_flow(method):
    """With the exact field the state at time t is alpha_t m + sqrt(v_t/v_0) (x0 - alpha_0 m)."""
    cfg = EvalConfig(tol=1e-6, trajectory_samples=8)
    paths = evaluate_trajectories(method, DATA.oracle(method), DATASET, cfg, "cpu")
    assert paths.states.shape == (5, 8, 2)
    assert paths.times[0] == 0 and paths.times[-1] == pytest.approx(method.t_max)
    path = method.path
    t0 = torch.tensor(0.0)
    x0 = paths.states[0]
    for t, state in zip(paths.times, paths.states):
        r = torch.sqrt(DATA.variance(path, t) / DATA.variance(path, t0))
        expected = path.alpha(t) * DATA.mean + r * (x0 - path.alpha(t0) * DATA.mean)
        torch.testing.assert_close(state, expected, atol=2e-4, rtol=1e-4)


def test_every_method_starts_from_the_same_noise():
    cfg = EvalConfig(tol=1e-3, trajectory_samples=4, seed=3)
    starts = {}
    for name in ("fm-ot", "ddpm", "score-matching-ve"):
        m = build_method(name, **({"sigma_max": 5.0} if name == "score-matching-ve" else {}))
        paths = evaluate_trajectories(m, DATA.oracle(m), DATASET, cfg, "cpu")
        starts[name] = paths.states[0] / m.path.prior_std
    torch.testing.assert_close(starts["fm-ot"], starts["ddpm"])
    torch.testing.assert_close(starts["fm-ot"], starts["score-matching-ve"])
    other = evaluate_trajectories(build_method("fm-ot"), DATA.oracle(build_method("fm-ot")),
                                  DATASET, EvalConfig(tol=1e-3, trajectory_samples=4,
                                                      trajectory_seed=1), "cpu")
    assert not torch.equal(other.states[0], starts["fm-ot"])


def test_numerical_error_falls_with_nfe_and_solver_order():
    method = build_method("fm-ot")
    cfg = EvalConfig(error_samples=64, nfe_budgets=(4, 8, 16, 32))
    points = evaluate_numerical_error(method, DATA.oracle(method), DATASET, cfg, "cpu")
    by = {(p.solver, p.nfe): p.error for p in points}
    assert ("rk4", 4) in by and all(p.nfe in (4, 8, 16, 32) for p in points)
    for solver in ("euler", "midpoint", "rk4"):
        errors = [by[(solver, n)] for n in (4, 8, 16, 32) if (solver, n) in by]
        assert all(a > b for a, b in zip(errors, errors[1:])), (solver, errors)
    assert by[("euler", 16)] > by[("midpoint", 16)] > by[("rk4", 16)]
    # Euler is first order: doubling the NFE halves the error's square root (MSE falls ~4x).
    assert math.log2(by[("euler", 16)] / by[("euler", 32)]) == pytest.approx(2.0, abs=0.3)


def test_exact_field_samples_score_at_the_noise_floor():
    method = build_method("fm-ot")
    metrics, samples = evaluate_sampling(method, DATA.oracle(method), DATASET,
                                         EvalConfig(samples=1000, tol=1e-5), "cpu")
    from harness.core.metrics import wasserstein2

    floor = wasserstein2(DATASET.train[:1000], DATASET.test[:1000])  # two true samples
    assert metrics["w2"] < floor + 0.03 and metrics["nfe"] > 0
    assert abs(metrics["mmd"]) < 1e-2


@pytest.mark.parametrize("field,value", [("trajectory_times", (0.5, 0.25)),
                                         ("trajectory_times", (0.0, 0.5)),
                                         ("divergence", "approx"), ("solvers", ("dopri5",)),
                                         ("nfe_budgets", (0, 4)), ("tol", 0.0)])
def test_bad_evaluation_settings(field, value):
    with pytest.raises(ConfigError):
        EvalConfig(**{field: value})


def _tiny_digits_trial():
    from harness.run.trial import TrialSpec, prepare

    prep = prepare(TrialSpec(method="fm-ot", dataset="digits",
                             model_options={"channels": 8, "groups": 4}))
    net = prep.new_network()
    for p in net.parameters():  # a non-zero field (the U-Net starts as the zero function)
        p.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    return prep, net


def test_fid_and_fid_vs_nfe_for_images(tmp_path, monkeypatch):
    from harness.core.evaluate import evaluate

    monkeypatch.setenv("FMBENCH_CACHE", str(tmp_path))
    prep, net = _tiny_digits_trial()
    cfg = EvalConfig(tol=1e-3, samples=16, nll_samples=8, error_samples=4, nfe_budgets=(4, 8),
                     fid_samples=64, fid_nfe_samples=32, fid_features="classifier",
                     trajectory_samples=2)
    result = evaluate(prep.method, net, prep.dataset, cfg, "cpu")
    assert result.metrics["fid_classifier"] > 0 and "fid" not in result.metrics
    solvers = [(p.solver, p.tol, p.nfe) for p in result.quality_curve]
    assert solvers == [("euler", None, 4), ("euler", None, 8), ("midpoint", None, 4),
                       ("midpoint", None, 8), ("rk4", None, 4), ("rk4", None, 8),
                       ("dopri5", 1e-3, solvers[-1][2])]  # the dopri5 point at tol
    assert all(set(p.values) == {"fid_classifier"} and p.values["fid_classifier"] > 0
               for p in result.quality_curve) and not result.warnings
    again = evaluate(prep.method, net, prep.dataset, cfg, "cpu")  # seeded: same numbers
    assert again.metrics["fid_classifier"] == result.metrics["fid_classifier"]


def test_missing_inception_keeps_other_metrics(tmp_path, monkeypatch):
    import harness.core.fid
    from harness.core.evaluate import evaluate

    def unavailable(cfg, device, dataset=None):
        raise harness.core.fid.FIDUnavailable("FID unavailable: Inception weights missing at /tmp/x")

    monkeypatch.setattr(harness.core.fid, "build_extractor", unavailable)
    prep, net = _tiny_digits_trial()
    cfg = EvalConfig(tol=1e-3, samples=8, nll_samples=4, error_samples=2, nfe_budgets=(4,),
                     fid_samples=16, trajectory_samples=0)
    result = evaluate(prep.method, net, prep.dataset, cfg, "cpu")
    assert "fid" not in result.metrics and {"nfe", "bpd"} <= set(result.metrics)
    assert result.warnings == ["FID unavailable: Inception weights missing at /tmp/x"]


def test_fid_during_training_reports_the_nfe_of_its_samples(tmp_path, monkeypatch):
    import harness.core.fid
    from harness.core.evaluate import evaluate_during_training
    from harness.core.shards import evaluate_parts, mean_nfe

    monkeypatch.setenv("FMBENCH_CACHE", str(tmp_path))
    prep, net = _tiny_digits_trial()
    cfg = EvalConfig(tol=1e-3, batch_size=8, fid_samples=16, fid_ref_samples=100,
                     fid_features="classifier")
    metrics = evaluate_during_training(prep.method, net, prep.dataset, cfg, "cpu")
    full, shards = evaluate_parts(prep.method, net, prep.dataset, cfg, "cpu", ["fid"])
    assert metrics == {"fid_classifier": full.metrics["fid_classifier"],
                       "nfe": mean_nfe(shards)[0]}
    assert metrics["nfe"] == sum(shards[0].nfe) / 2  # two equal batches

    def unavailable(cfg, device, dataset=None):
        raise harness.core.fid.FIDUnavailable("FID unavailable: weights missing")

    monkeypatch.setattr(harness.core.fid, "build_extractor", unavailable)
    with pytest.raises(harness.core.fid.FIDUnavailable):  # as before: the train task records it
        evaluate_during_training(prep.method, net, prep.dataset, cfg, "cpu")
