"""Sharded evaluation: any split of the work into shards gives the single-task metrics (exactly for
NFE counts, samples and FID features), standard errors match numpy, and seeds are per chunk."""

import math
import pickle
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from harness.errors import ConfigError, HarnessError
from harness.core.evaluate import EvalConfig, sample
from harness.core.metrics import wasserstein2
from harness.core.shards import (chunk_seed, combine, evaluate_parts, evaluate_shard,
                            plan_shards, weighted_mean_se)
from harness.run.trial import TrialSpec, prepare


pytestmark = pytest.mark.usefixtures("one_thread")


# --- standard errors -----------------------------------------------------------------------------

def test_equal_weights_give_numpy_mean_and_standard_error():
    x = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    mean, se = weighted_mean_se(x)
    assert mean == pytest.approx(np.mean(x)) and se == pytest.approx(np.std(x, ddof=1) / math.sqrt(5))
    assert weighted_mean_se(x, np.full(5, 7.0)) == pytest.approx((mean, se))  # scale-free


def test_weighted_standard_error_by_hand_and_against_numpy():
    # x = (10, 20), w = (3, 1): mean 12.5; se^2 = 2/1 * (0.75^2 * 2.5^2 + 0.25^2 * 7.5^2) = 14.0625
    assert weighted_mean_se([10.0, 20.0], [3, 1]) == pytest.approx((12.5, 3.75))
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=50), rng.integers(1, 10, size=50).astype(float)
    mean = np.average(x, weights=w)
    p = w / w.sum()
    se = np.sqrt(len(x) / (len(x) - 1) * np.sum(p ** 2 * (x - mean) ** 2))
    assert weighted_mean_se(x, w) == pytest.approx((mean, se), rel=1e-12)


def test_standard_error_of_one_unit_is_nan_and_bad_input_is_refused():
    mean, se = weighted_mean_se([3.0], [5])
    assert mean == 3.0 and math.isnan(se)
    with pytest.raises(ValueError):
        weighted_mean_se([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        weighted_mean_se([])


# --- plans and seeds -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moons():
    prep = prepare(TrialSpec(method="fm-ot", dataset="moons"))
    return prep.method, prep.new_network(), prep.dataset  # a random MLP: a non-trivial field


CFG = EvalConfig(tol=1e-4, samples=50, nll_samples=30, error_samples=20, batch_size=10,
                 nfe_budgets=(4, 8), reference_tol=1e-5, trajectory_samples=3, seed=5)


def test_shards_tile_each_part_in_whole_chunks(moons):
    _, _, ds = moons
    plan = plan_shards(replace(CFG, shard_size=20), ds)
    assert [s.index for s in plan] == list(range(len(plan)))
    by = {}
    for s in plan:
        by.setdefault(s.part, []).append((s.start, s.stop))
    assert by == {"sampling": [(0, 20), (20, 40), (40, 50)], "likelihood": [(0, 20), (20, 30)],
                  "error": [(0, 20)], "trajectories": [(0, 3)]}
    whole = {s.part: s for s in plan_shards(CFG, ds)}
    assert set(whole) == set(by) and whole["sampling"].stop == 50
    for part in ("sampling", "likelihood", "error"):  # the same chunk seeds, split differently
        split = [seed for s in plan if s.part == part for seed in s.seeds]
        assert split == list(whole[part].seeds)
        assert split == [chunk_seed(5, part, c) for c in range(len(split))]


def test_seeds_are_deterministic_and_distinct(moons):
    _, _, ds = moons
    cfg = replace(CFG, shard_size=10)
    plan = plan_shards(cfg, ds)
    assert plan == plan_shards(cfg, ds)
    seeds = [s.seed for s in plan if s.part != "trajectories"]
    assert len(set(seeds)) == len(seeds)  # across shards and across parts
    other = plan_shards(replace(cfg, seed=6), ds)
    assert not {s.seed for s in other} & set(seeds)
    assert all(0 <= s < 2 ** 63 for s in seeds)  # valid torch seeds


@pytest.mark.parametrize("kwargs", [dict(batch_size=10, shard_size=15),
                                    dict(batch_size=10, shard_size=-10)])
def test_bad_shard_size_is_one_line(kwargs):
    with pytest.raises(ConfigError) as info:
        EvalConfig(**kwargs)
    assert "shard_size" in str(info.value) and "\n" not in str(info.value)


# --- 2-D data: sharded == single task ------------------------------------------------------------

def _by_part(results):
    out = {}
    for r in sorted(results, key=lambda r: (r.shard.part, r.shard.start)):
        out.setdefault(r.shard.part, []).append(r)
    return out


def test_sharded_2d_evaluation_equals_single_task(moons):
    method, net, ds = moons
    single, single_results = evaluate_parts(method, net, ds, CFG)
    cfg = replace(CFG, shard_size=20)
    shards = [evaluate_shard(method, net, ds, cfg, s) for s in plan_shards(cfg, ds)]
    assert len(shards) == 7
    random.Random(0).shuffle(shards)  # a scheduler hands results back in any order
    sharded = combine(shards, cfg, ds)

    one, many = _by_part(single_results), _by_part(shards)
    for part in ("sampling", "likelihood"):  # NFE of every batch solve, exactly
        assert [c for r in many[part] for c in r.nfe] == list(one[part][0].nfe)
        assert [n for r in many[part] for n in r.batch_sizes] == list(one[part][0].batch_sizes)
    assert torch.equal(sharded.samples, single.samples) and len(sharded.samples) == 50
    assert set(single.metrics) == {"nfe", "nfe_se", "w2", "mmd", "nll", "nll_se", "nll_nfe",
                                   "nll_nfe_se"}
    for name in ("nfe", "nfe_se", "nll_nfe", "w2", "mmd"):
        assert sharded.metrics[name] == single.metrics[name], name
    for name in ("nll", "nll_se"):
        assert sharded.metrics[name] == pytest.approx(single.metrics[name], rel=1e-6, abs=0)
    assert sharded.error_curve == single.error_curve and len(single.error_curve) == 6
    assert torch.equal(sharded.trajectories.states, single.trajectories.states)
    # The NLL is the mean of per-example values, its SE their numpy standard error.
    values = np.concatenate([r.values for r in many["likelihood"]])
    assert single.metrics["nll"] == pytest.approx(values.mean(), rel=1e-12)
    assert single.metrics["nll_se"] == pytest.approx(values.std(ddof=1) / math.sqrt(30), rel=1e-9)


CURVE = replace(CFG, quality_nfe_samples=30, curve_tols=(1e-2, 1e-4), solvers=("euler", "rk4"))


def test_sharded_quality_curve_equals_single_task(moons):
    """W2/MMD against NFE: one shard group per point, the sampling stream's noise for every point,
    and any sharding gives the single task's points exactly."""
    method, net, ds = moons
    single, one = evaluate_parts(method, net, ds, CURVE, parts=["sampling", "quality_curve"])
    cfg = replace(CURVE, shard_size=20)
    plan = plan_shards(cfg, ds, ["quality_curve"])
    points = [("euler", 4, None), ("euler", 8, None), ("rk4", 4, None), ("rk4", 8, None),
              ("dopri5", None, 1e-2), ("dopri5", None, 1e-4)]
    assert [(s.solver, s.nfe, s.tol, s.start, s.stop) for s in plan] == \
        [(*p, a, b) for p in points for a, b in ((0, 20), (20, 30))]
    many = [evaluate_shard(method, net, ds, cfg, s) for s in plan]
    random.Random(1).shuffle(many)
    sharded = combine(many, cfg, ds)
    assert sharded.quality_curve == single.quality_curve
    assert [(p.solver, p.tol) for p in single.quality_curve] == [(s, t) for s, _, t in points]
    assert all(set(p.values) == {"w2", "mmd"} for p in single.quality_curve)
    assert [p.nfe for p in single.quality_curve[:4]] == [4, 8, 4, 8]
    # common random numbers: each point solves the sampling part's first 30 noise draws, so
    # dopri5 at the sampling tolerance (1e-4) repeats its batch solves exactly
    dopri = {r.shard.tol: r for r in one if r.shard.part == "quality_curve" and r.shard.tol}
    sampling = next(r for r in one if r.shard.part == "sampling")
    assert torch.equal(dopri[1e-4].samples, sampling.samples[:30])
    assert dopri[1e-4].nfe == sampling.nfe[:3]
    loose = sample(method, net, method.sample_prior(
        10, ds.shape, torch.Generator().manual_seed(chunk_seed(5, "sampling", 0))), tol=1e-2)
    assert torch.equal(dopri[1e-2].samples[:10], loose[0].x)
    # W2 and MMD of a point are those of its samples against the first 30 held-out points
    w2 = wasserstein2(dopri[1e-2].samples, ds.test[:30])
    assert single.quality_curve[4].values["w2"] == w2


def test_curve_settings_are_checked_in_one_line():
    for kwargs in (dict(quality_nfe_samples=1), dict(quality_nfe_samples=-3),
                   dict(curve_tols=(1e-3, 0.0)), dict(curve_tols=(1e-3, 1e-3))):
        with pytest.raises(ConfigError) as info:
            EvalConfig(**kwargs)
        assert next(iter(kwargs)) in str(info.value) and "\n" not in str(info.value)
    assert EvalConfig(tol=1e-4).dopri5_tols == (1e-4,)
    assert EvalConfig(curve_tols=(1e-2, 1e-3)).dopri5_tols == (1e-2, 1e-3)


def test_a_chunk_is_a_batch_solve_from_its_own_seed(moons):
    """The definition sharding rests on: chunk k's NFE is that of one dopri5 solve of its noise."""
    method, net, ds = moons
    shard = plan_shards(replace(CFG, shard_size=20), ds, ["sampling"])[1]  # examples [20, 40)
    result = evaluate_shard(method, net, ds, CFG, shard)
    noise = method.sample_prior(10, ds.shape, torch.Generator().manual_seed(chunk_seed(5, "sampling", 3)))
    sol, count = sample(method, net, noise, tol=CFG.tol)
    assert result.nfe[1] == count and torch.equal(result.samples[10:], sol.x)


def test_results_pickle_and_incomplete_results_are_refused(moons):
    method, net, ds = moons
    cfg = replace(CFG, shard_size=10)
    plan = plan_shards(cfg, ds, ["sampling"])
    results = [evaluate_shard(method, net, ds, cfg, s) for s in plan]
    back = pickle.loads(pickle.dumps((plan, results)))
    assert back[0] == plan and combine(back[1], cfg, ds).metrics == combine(results, cfg, ds).metrics
    with pytest.raises(HarnessError, match="do not tile"):
        combine(results[:2] + results[3:], cfg, ds)
    with pytest.raises(HarnessError, match="do not tile"):
        combine(results + results[:1], cfg, ds)


# --- images: FID from the union of features ------------------------------------------------------

@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """One FMBENCH_CACHE for this module: the digit classifier is trained once."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMBENCH_CACHE", str(root))
        yield root


def test_sharded_fid_equals_single_task(digits_cache):
    prep = prepare(TrialSpec(method="fm-ot", dataset="digits",
                             model_options={"channels": 8, "groups": 4}))
    net = prep.new_network()
    for p in net.parameters():  # a non-zero field (the U-Net starts as the zero function)
        p.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    cfg = EvalConfig(tol=1e-3, batch_size=8, fid_samples=24, fid_nfe_samples=16,
                     fid_features="classifier", fid_ref_samples=200, solvers=("euler",),
                     nfe_budgets=(4,))
    parts = ["fid", "fid_curve"]
    single, one = evaluate_parts(prep.method, net, prep.dataset, cfg, parts=parts)
    sharded_cfg = replace(cfg, shard_size=8)
    plan = plan_shards(sharded_cfg, prep.dataset, parts)
    assert [(s.part, s.solver, s.start) for s in plan] == [
        ("fid", "dopri5", 0), ("fid", "dopri5", 8), ("fid", "dopri5", 16),
        ("fid_curve", "euler", 0), ("fid_curve", "euler", 8),
        ("fid_curve", "dopri5", 0), ("fid_curve", "dopri5", 8)]
    assert [s.reference for s in plan] == [True] + [False] * 6  # statistics travel once
    many = [evaluate_shard(prep.method, net, prep.dataset, sharded_cfg, s) for s in plan]
    sharded = combine(many, sharded_cfg, prep.dataset)

    assert np.array_equal(np.concatenate([r.features for r in many[:3]]), one[0].features)
    assert one[0].features.shape[0] == 24 and one[0].features.dtype == np.float32
    assert [c for r in many[:3] for c in r.nfe] == list(one[0].nfe)
    assert sharded.metrics["fid_classifier"] == pytest.approx(single.metrics["fid_classifier"],
                                                              rel=1e-6)
    assert [(p.solver, p.tol, p.nfe) for p in sharded.quality_curve] == \
        [(p.solver, p.tol, p.nfe) for p in single.quality_curve]
    assert [(p.solver, p.tol) for p in single.quality_curve] == [("euler", None), ("dopri5", 1e-3)]
    for a, b in zip(sharded.quality_curve, single.quality_curve):
        assert a.values["fid_classifier"] == pytest.approx(b.values["fid_classifier"], rel=1e-6)
    # The curve's dopri5 point sees the same noise as the FID samples: its features are theirs.
    assert np.array_equal(one[-1].features, one[0].features[:16])
    assert one[-1].nfe == one[0].nfe[:2]
