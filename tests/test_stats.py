"""Known answers and calibration of the classifier statistics."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import special
from sklearn.metrics import roc_auc_score

from glioma_nb import stats


def _data(n=200, signal=1.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, y * signal + rng.normal(size=n), rng


def test_delong_auc_equals_sklearn_with_ties():
    y, s, _ = _data()
    s = np.round(s, 1)  # many ties
    aucs, cov = stats.delong_covariance(y, [s])
    assert aucs[0] == pytest.approx(roc_auc_score(y, s))
    assert cov.shape == (1, 1) and cov[0, 0] > 0


def test_delong_variance_matches_bootstrap():
    y, s, _ = _data(n=300, seed=1)
    _, cov = stats.delong_covariance(y, [s])
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(1500):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() != y[i].max():
            boots.append(roc_auc_score(y[i], s[i]))
    assert np.sqrt(cov[0, 0]) == pytest.approx(np.std(boots), rel=0.15)


def test_delong_test_has_nominal_size_under_the_null():
    """Two equally informative scores: the 5 % test rejects about 5 % of the time."""
    rejections = 0
    trials = 400
    for k in range(trials):
        y, s1, rng = _data(n=120, seed=100 + k)
        s2 = y * 1.0 + rng.normal(size=len(y))
        rejections += stats.delong_test(y, s1, s2).p_value < 0.05
    assert 0.02 <= rejections / trials <= 0.09


def test_delong_test_detects_a_better_score_and_identical_scores_give_p_1():
    y, strong, rng = _data(n=150, signal=2.0, seed=3)
    weak = rng.normal(size=len(y))
    res = stats.delong_test(y, strong, weak)
    assert res.difference > 0.3 and res.p_value < 1e-4
    assert stats.delong_test(y, strong, strong).p_value == 1.0


def test_auc_ci_contains_auc_and_perfect_separation_has_zero_width():
    y, s, _ = _data(seed=4)
    auc, lo, hi = stats.auc_ci_delong(y, s)
    assert lo < auc < hi
    assert stats.auc_ci_delong(y, y.astype(float)) == (1.0, 1.0, 1.0)


def test_bootstrap_ci_brackets_the_estimate_and_narrows_with_n():
    y, s, _ = _data(n=80, seed=5)
    auc, lo, hi = stats.bootstrap_ci(roc_auc_score, y, s, n_boot=500)
    assert lo < auc < hi
    y2, s2, _ = _data(n=800, seed=5)
    _, lo2, hi2 = stats.bootstrap_ci(roc_auc_score, y2, s2, n_boot=500)
    assert (hi2 - lo2) < 0.6 * (hi - lo)
    assert stats.bootstrap_ci(roc_auc_score, y, s, n_boot=200, random_state=1) == \
        stats.bootstrap_ci(roc_auc_score, y, s, n_boot=200, random_state=1)


@pytest.mark.parametrize("transform, slope, intercept", [
    (lambda lp: lp, 1.0, 0.0),            # well calibrated
    (lambda lp: 2 * lp, 0.5, 0.0),        # overconfident: slope 1/2
    (lambda lp: lp + 1.0, 1.0, -1.0),     # systematically too high: intercept -1
])
def test_calibration_recovers_planted_miscalibration(transform, slope, intercept):
    rng = np.random.default_rng(7)
    lp = rng.normal(0, 1.5, 40000)
    y = rng.random(lp.size) < special.expit(lp)
    cal = stats.calibration(y.astype(int), special.expit(transform(lp)))
    assert cal.slope == pytest.approx(slope, abs=0.05)
    if slope == 1.0:
        assert cal.intercept == pytest.approx(intercept, abs=0.05)


def test_net_benefit_hand_computed():
    y = np.array([1, 1, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.1])
    nb = stats.net_benefit(y, p, [0.2, 0.5])
    assert nb == pytest.approx([2 / 4 - 1 / 4 * 0.25, 1 / 4 - 1 / 4 * 1.0])
    assert stats.net_benefit_treat_all(y, [0.2]) == pytest.approx([0.5 - 0.5 * 0.25])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        stats.net_benefit(y, p, [1.0])


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="both classes"):
        stats.delong_covariance(np.ones(5), [np.arange(5.0)])
    with pytest.raises(ValueError, match="0/1"):
        stats.calibration(np.array([0, 2, 1]), np.array([0.1, 0.5, 0.9]))


def test_percentile_ci_is_the_plain_2_5_and_97_5_percentiles():
    """Bit for bit: a C-index CI must not move in its last digit because 95% was turned into 2.5000000000000004."""
    v = np.random.default_rng(0).normal(size=501)
    assert stats.percentile_ci(v) == tuple(float(x) for x in np.nanpercentile(v, [2.5, 97.5]))
    assert stats.percentile_ci([]) != stats.percentile_ci([])  # (nan, nan): nothing to estimate


def test_bootstrap_mean_and_indices_are_seeded():
    v = np.arange(20, dtype=float)
    assert stats.bootstrap_mean(v, n_boot=200, random_state=3) == stats.bootstrap_mean(v, n_boot=200, random_state=3)
    mean, lo, hi, n = stats.bootstrap_mean([*v, np.nan], n_boot=500)
    assert mean == 9.5 and lo < 9.5 < hi and n == 20
    a, b = stats.bootstrap_indices(10, 3, 1), stats.bootstrap_indices(10, 3, 1)
    assert all((x == y).all() for x, y in zip(a, b)) and all(x.max() < 10 for x in a)


def test_paired_bootstrap_difference_of_aucs():
    """A score that carries the label beats pure noise, with a CI away from 0; a score against itself is 0."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    good, noise = y + rng.normal(0, 0.7, 200), rng.normal(size=200)
    r = stats.paired_bootstrap_difference(lambda i: (roc_auc_score(y[i], good[i]), roc_auc_score(y[i], noise[i])),
                                          200, strata=y, n_boot=300)
    assert r["difference"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, noise))
    assert r["difference_low"] > 0.2 and r["p_bootstrap"] == pytest.approx(1 / 300)
    same = stats.paired_bootstrap_difference(lambda i: (roc_auc_score(y[i], good[i]),) * 2, 200, strata=y, n_boot=100)
    assert same["difference"] == 0 and same["difference_low"] == 0 == same["difference_high"]
    assert same["p_bootstrap"] == 1.0


def test_roc_points_and_auc_are_sklearns_to_the_bit_with_ties():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(3)
    checked = 0
    for i in range(400):
        n = int(rng.integers(3, 70))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        s = np.round(rng.random(n), int(rng.integers(1, 4))) if i % 2 else rng.normal(size=n)   # ties, and none
        fpr, tpr, _ = roc_curve(y, s)
        f2, t2 = stats.roc_points(y, s)
        assert np.array_equal(fpr, f2) and np.array_equal(tpr, t2)
        assert stats.auc(y, s) == roc_auc_score(y, s)
        checked += 1
    assert checked > 300
    with pytest.raises(ValueError, match="Only one class"):
        stats.auc(np.ones(5), np.arange(5.0))


def test_calibration_slope_wald_ci_covers_the_planted_slope_as_often_as_it_says():
    """200 small cohorts (n 150) with a planted slope of 0.5: the Wald 95% CI covers it in about 95% of them, and
    its width matches the spread of the slopes themselves."""
    rng = np.random.default_rng(11)
    hits, slopes, widths = 0, [], []
    for _ in range(200):
        lp = rng.normal(0, 1.5, 150)
        y = (rng.random(lp.size) < special.expit(lp)).astype(int)
        cal = stats.calibration(y, special.expit(2 * lp))
        hits += cal.slope_lo <= 0.5 <= cal.slope_hi
        slopes.append(cal.slope)
        widths.append(cal.slope_hi - cal.slope_lo)
    assert 0.90 <= hits / 200 <= 0.99
    assert np.median(widths) / (2 * 1.96) == pytest.approx(np.std(slopes), rel=0.25)


def test_wilson_interval_known_values():
    lo, hi = stats.wilson_ci(8, 10)                 # Wilson (1927): 0.8 of 10 -> [0.490, 0.943]
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert stats.wilson_ci(0, 0) != stats.wilson_ci(0, 0)   # NaN: no trials, no interval
