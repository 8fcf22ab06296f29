"""Claims as statistical statements: the statistics against answers worked out by hand, and the
three claims on synthetic paired runs whose effect is known (clear, absent, reversed, one seed).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.report.claims import NOT_ENOUGH, check_claims, claims_table
from harness.report.curves import Curves, during_key, error_key
from harness.report.grid import Plan
from harness.report.stats import (LEVEL, METHOD, RESAMPLES, Interval, bootstrap_mean, sign_test,
                                  verdict)
from harness.report.tables import DatasetMetrics
from harness.run.record import State, final_column, param_column

# -- the statistics, by hand ----------------------------------------------------------------------


def test_bootstrap_of_two_values_is_their_range():
    # resampled means of {0.5, 0.6}: 0.5 (1/4), 0.55 (1/2), 0.6 (1/4); the 2.5% and 97.5%
    # order statistics of 10,000 of them are 0.5 and 0.6
    assert bootstrap_mean([0.5, 0.6]) == Interval(pytest.approx(0.55), 0.5, 0.6, 2)


def test_bootstrap_bounds_are_binomial_quantiles():
    # values 0,0,0,0,1: a resampled mean is k/5, k ~ Bin(5, 1/5). P(k = 0) = 0.328 > 2.5%, so the
    # low bound is 0; P(k <= 2) = 0.942 < 97.5% <= P(k <= 3) = 0.993, so the high bound is 3/5
    p = [math.comb(5, k) * 0.2 ** k * 0.8 ** (5 - k) for k in range(6)]
    assert p[0] > 0.025 and sum(p[:3]) < 0.975 <= sum(p[:4])
    mean, low, high, n = bootstrap_mean([0, 0, 0, 0, 1])
    assert (mean, low, high, n) == (pytest.approx(0.2), 0.0, pytest.approx(0.6), 5)
    assert low <= 0.5 <= high and not low <= 0.7 <= high


def test_bootstrap_bounds_are_the_order_statistics_efron_tibshirani_name():
    # B = 40 resamples at 95%: the bounds are the B*0.025 = 1st and B*0.975 = 39th ordered means
    # of the same draws (an interpolating quantile would give neither)
    x = np.random.default_rng(5).normal(size=7)
    means = np.sort(x[np.random.default_rng(0).integers(0, 7, (40, 7))].mean(axis=1))
    assert bootstrap_mean(x, resamples=40)[1:3] == (means[0], means[38])


def test_bootstrap_is_reproducible_and_the_seed_is_what_fixes_it():
    x = np.random.default_rng(3).normal(size=12)
    assert bootstrap_mean(x) == bootstrap_mean(list(x))
    other = bootstrap_mean(x, seed=1)
    assert other.mean == bootstrap_mean(x).mean and other[1:3] != bootstrap_mean(x)[1:3]
    assert bootstrap_mean(x, level=0.5)[1] > bootstrap_mean(x)[1]  # a narrower level


def test_one_value_gives_no_interval_and_bad_input_says_what_is_wrong():
    assert bootstrap_mean([0.7]) == Interval(0.7, None, None, 1)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean([1.0, 2.0], level=95)


def test_sign_test_by_hand():
    # 7 values, one tied with the null (dropped): 5 of 6 below, P(X >= 5 | Bin(6, 1/2)) = 7/64
    values = [0.2, 0.5, 0.9, 0.7, 1.0, 1.3, 0.4]
    assert sign_test(values, 1.0) == (math.comb(6, 5) + math.comb(6, 6)) / 2 ** 6
    # the other side: 1 of 6 above, P(X >= 1) = 63/64
    assert sign_test(values, 1.0, lower=False) == 63 / 64
    assert sign_test([0.1, 0.2, 0.3], 1.0) == 0.5 ** 3  # the smallest attainable with 3
    assert sign_test([1.0, 1.0], 1.0) == 1.0 and sign_test([], 0.0) == 1.0


@pytest.mark.parametrize("interval, lower, expected", [
    (Interval(0.5, 0.4, 0.6, 5), True, "holds"),
    (Interval(0.5, 0.4, 0.6, 5), False, "does not hold"),
    (Interval(1.2, 1.1, 1.3, 5), True, "does not hold"),
    (Interval(1.0, 0.9, 1.1, 5), True, "inconclusive (n = 5)"),
    (Interval(0.9, 0.8, 1.0, 5), True, "inconclusive (n = 5)"),  # touching is not excluding
    (Interval(0.5, None, None, 1), True, "inconclusive (n = 1)"),
])
def test_verdict_reads_the_interval_against_no_effect(interval, lower, expected):
    assert verdict(interval, 1.0, lower) == expected


def test_the_method_sentence_names_level_resamples_and_tests():
    assert f"{LEVEL:.0%}" == "95%" and f"{RESAMPLES:,}" in METHOD
    assert "percentile bootstrap" in METHOD and "sign test" in METHOD


# -- the claims on synthetic paired runs ---------------------------------------------------------

OT, VP = "fm-ot", "fm-diffusion"
BUDGETS = (4, 8, 16)
STEPS = tuple(range(100, 1100, 100))


def _quality_curve(reached: int) -> dict[int, float]:
    """W2 at each step: 0.3 until ``reached``, 0.1 (the final value) from then on."""
    return {step: 0.1 if step >= reached else 0.3 for step in STEPS}


def synthetic(cells: dict[str, dict[int, tuple[float, float, float, int, int]]]):
    """(plan, frame, curves) for datasets of 2-D data, each seed given as (NFE of OT, NFE of VP,
    error ratio OT/VP at every budget, step OT reaches its final W2, step VP reaches it)."""
    rows, points = [], []
    for dataset, seeds in cells.items():
        for seed, (nfe_ot, nfe_vp, ratio, step_ot, step_vp) in seeds.items():
            for label, nfe, scale, reached in ((OT, nfe_ot, ratio, step_ot),
                                               (VP, nfe_vp, 1.0, step_vp)):
                run = f"{label}-{dataset}-{seed}"
                rows.append({"label": label, "method": label, "dataset": dataset, "seed": seed,
                             "state": State.FINISHED.value, "run_id": run,
                             final_column("nfe"): nfe, final_column("w2"): 0.1,
                             param_column("eval.tol"): "1e-05"})
                points += [(run, error_key(), n, scale * 1e-2 / n) for n in BUDGETS]
                points += [(run, during_key(DatasetMetrics("nll", "w2")), step, w2)
                           for step, w2 in _quality_curve(reached).items()]
    frame = pd.DataFrame(rows)
    plan = Plan("syn", "syn", (VP, OT), {OT: OT, VP: VP}, tuple(cells),
                tuple(sorted({s for seeds in cells.values() for s in seeds})))
    histories = pd.DataFrame(points, columns=["run_id", "key", "step", "value"])
    return plan, frame, Curves.join(histories, frame)


def clear(rng, n=6):
    """OT ahead on every seed: about half the NFE and error, good quality 400 steps earlier."""
    return {s: (60 + rng.integers(-5, 6), 120 + rng.integers(-5, 6), rng.uniform(0.3, 0.6),
                300 + 100 * rng.integers(0, 2), 700 + 100 * rng.integers(0, 2)) for s in range(n)}


def absent(rng, n=6):
    """No effect: each seed's deviation is mirrored on another seed (a ratio r by 1/r, a step
    shift k by -k), so the average effect is exactly none."""
    out = {}
    for s in range(0, n, 2):
        d, r, k = rng.uniform(0.05, 0.3), rng.uniform(1.1, 2.0), 100 * rng.integers(1, 4)
        out[s] = (100 * math.exp(d), 100, r, 500 + k, 500)
        out[s + 1] = (100 * math.exp(-d), 100, 1 / r, 500 - k, 500)
    return out


def reversed_(rng, n=6):
    """OT behind on every seed: the clear case with the two methods swapped."""
    return {s: (b, a, 1 / r, kb, ka) for s, (a, b, r, ka, kb) in clear(rng, n).items()}


@pytest.mark.parametrize("make, expected", [(clear, "holds"), (reversed_, "does not hold"),
                                            (absent, "inconclusive (n = 6)")])
def test_every_claim_gives_the_known_verdict_on_every_draw(make, expected):
    for draw in range(10):
        plan, frame, curves = synthetic({"moons": make(np.random.default_rng(draw))})
        for claim in check_claims(plan, frame, curves):
            (effect,) = claim.effects
            assert effect.verdict == expected, (draw, claim.statement, effect.text)
            assert claim.verdict == (expected if "inconclusive" not in expected
                                     else "inconclusive (n = 1 dataset)")
            assert effect.seeds == tuple(range(6)) and claim.sign_p in (0.5, 1.0)


def test_clear_effect_numbers_and_text():
    seeds = {0: (60, 120, 0.5, 300, 700), 1: (66, 110, 0.25, 300, 600)}
    plan, frame, curves = synthetic({"moons": seeds})
    nfe, error, early = check_claims(plan, frame, curves)
    assert nfe.effects[0].values == (0.5, 0.6)  # 60/120, 66/110
    # geometric mean sqrt(0.5 * 0.6); the interval is that of the two values, as above
    assert nfe.details == ("moons: NFE(OT)/NFE(VP) by seed 0: 0.5, 1: 0.6; geometric mean 0.548, "
                           "95% interval [0.5, 0.6] (n = 2): holds",)
    assert nfe.effects[0].interval == (pytest.approx(math.sqrt(0.3)), pytest.approx(0.5),
                                       pytest.approx(0.6), 2)
    assert error.effects[0].values == pytest.approx((0.5, 0.25))  # the same ratio at every NFE
    assert "error(OT)/error(VP) at NFE 4, 8, 16 by seed" in error.details[0]
    assert early.effects[0].values == (-400.0, -300.0)
    assert "0: -400 (300 vs 700, W2 ≤ 0.1)" in early.details[0]
    # one dataset on the claim's side: p = 1/2, the smallest attainable with one
    assert nfe.evidence == ("OT ahead on 1/1 dataset (one-sided sign test p = 0.5; the smallest "
                            "attainable with 1 dataset is 0.5); per-dataset verdicts: holds 1")


def test_one_paired_seed_is_inconclusive_and_unpaired_seeds_do_not_count():
    plan, frame, curves = synthetic({"moons": {0: (60, 120, 0.5, 300, 700)}})
    frame = pd.concat([frame, frame.iloc[[0]].assign(seed=1, run_id="ot-only")])
    for claim in check_claims(plan, frame, curves):
        assert claim.effects[0].seeds == (0,)
        assert claim.effects[0].verdict == "inconclusive (n = 1)"
        assert claim.verdict == "inconclusive (n = 1 dataset)"
        assert "no interval (n = 1)" in claim.details[0]


def test_across_datasets_mixed_holds_and_inconclusive():
    rng = np.random.default_rng(0)
    plan, frame, curves = synthetic({"moons": clear(rng), "digits": reversed_(rng)})
    assert {c.verdict for c in check_claims(plan, frame, curves)} == {"mixed"}
    plan, frame, curves = synthetic({"moons": clear(rng), "digits": clear(rng)})
    for claim in check_claims(plan, frame, curves):
        assert claim.verdict == "holds" and claim.sign_p == 0.25
        assert "OT ahead on 2/2 datasets" in claim.evidence and "is 0.25" in claim.evidence
    plan, frame, curves = synthetic({"moons": clear(rng), "digits": absent(rng)})
    assert {c.verdict for c in check_claims(plan, frame, curves)} == \
        {"inconclusive (n = 2 datasets)"}


def test_a_dataset_without_the_pair_is_named_and_none_means_not_enough_data():
    plan, frame, curves = synthetic({"moons": clear(np.random.default_rng(0))})
    plan = Plan("syn", "syn", plan.labels, plan.methods, ("moons", "digits"), plan.seeds)
    for claim in check_claims(plan, frame, curves):
        assert claim.evidence.endswith("; not enough data on digits")
    vp_only = frame[frame["label"] == VP]
    solo = Plan("syn", "syn", (VP,), {VP: VP}, ("moons",), plan.seeds)
    for claim in check_claims(solo, vp_only, curves):
        assert claim.verdict == NOT_ENOUGH and claim.sign_p is None
        assert claim.evidence == "no dataset has paired seeds of both methods (moons)"


def test_claims_table_carries_intervals_p_and_the_method():
    plan, frame, curves = synthetic({"moons": clear(np.random.default_rng(0))})
    claims = check_claims(plan, frame, curves)
    table = claims_table(claims)
    assert table.caption == METHOD and [c.key for c in table.columns] == \
        ["verdict", "evidence", "sign_p"]
    for claim in claims:
        assert table.cell(claim.statement, "sign_p").value_text == "0.5"
        assert "95% interval [" in table.cell(claim.statement, "evidence").value_text


def test_a_seed_without_a_usable_ratio_is_left_out_not_fatal():
    # seed 1: OT logged NFE 0 and an error of 0 at every budget: a ratio 0 has no logarithm
    plan, frame, curves = synthetic({"moons": {0: (60, 120, 0.5, 300, 700),
                                               1: (0, 120, 0.0, 300, 700)}})
    nfe, error, _ = check_claims(plan, frame, curves)
    assert nfe.effects[0].seeds == (0,) and error.effects[0].seeds == (0,)
