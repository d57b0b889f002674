"""Statistics shared by every stage: bootstrap CIs (one argument convention: ``n_boot``, ``level``,
``random_state``), DeLong's test, calibration, decision curves, ROC bands.

scikit-learn gives the point metrics (``roc_auc_score``, ``permutation_test_score``); what it lacks is
written here: the fast DeLong variance of correlated AUCs (Sun & Xu, IEEE SPL 2014), a stratified
percentile bootstrap, logistic calibration (slope, and intercept with the slope fixed at 1), and net
benefit for decision curves (Vickers & Elkin 2006).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, special, stats


def _check(y: np.ndarray, *scores: np.ndarray) -> None:
    y = np.asarray(y)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    if y.min() == y.max():
        raise ValueError("both classes are needed (all labels are equal)")
    for s in scores:
        if len(s) != len(y):
            raise ValueError(f"scores have length {len(s)}, labels {len(y)}")


@dataclass(frozen=True)
class DeLongResult:
    """AUCs of two scores on the same cases, and DeLong's test of their difference."""

    auc_1: float
    auc_2: float
    difference: float
    se: float
    z: float
    p_value: float

    def __repr__(self) -> str:
        return (f"DeLongResult(auc_1={self.auc_1:.3f}, auc_2={self.auc_2:.3f}, diff={self.difference:+.3f}, "
                f"z={self.z:.2f}, p={self.p_value:.3g})")


def delong_covariance(y: np.ndarray, scores: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of ``scores`` and their DeLong covariance matrix (fast algorithm of Sun & Xu 2014).

    Parameters
    ----------
    y : (n,) array of 0/1
    scores : k arrays of shape (n,); higher means more likely positive

    Returns
    -------
    aucs : (k,) array
    cov : (k, k) array
    """
    y = np.asarray(y).astype(int)
    s = np.vstack([np.asarray(v, dtype=float) for v in scores])
    _check(y, *s)
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    # midranks (ties share their mean rank), per score row
    tx = stats.rankdata(pos, axis=1)
    ty = stats.rankdata(neg, axis=1)
    tz = stats.rankdata(np.hstack([pos, neg]), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n
    return aucs, cov


def delong_test(y: np.ndarray, score_1: np.ndarray, score_2: np.ndarray) -> DeLongResult:
    """Two-sided DeLong test that two correlated AUCs (same cases) are equal."""
    aucs, cov = delong_covariance(y, [score_1, score_2])
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    if var <= 0:
        return DeLongResult(float(aucs[0]), float(aucs[1]), diff, 0.0, 0.0, 1.0)
    se = float(np.sqrt(var))
    z = diff / se
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, z, float(2 * stats.norm.sf(abs(z))))


def auc_ci_delong(y: np.ndarray, score: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """AUC with its DeLong (asymptotic normal) confidence interval, clipped to [0, 1]."""
    aucs, cov = delong_covariance(y, [score])
    half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(cov[0, 0])
    auc = float(aucs[0])
    return auc, float(max(0.0, auc - half)), float(min(1.0, auc + half))


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, score: np.ndarray,
                 n_boot: int = 2000, level: float = 0.95, random_state: int | None = 0,
                 stratified: bool = True) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap CI of ``metric(y, score)``.

    Resampling is stratified by class (each resample keeps the class counts), so every resample
    has both classes and AUC is always defined.
    """
    y = np.asarray(y).astype(int)
    score = np.asarray(score)
    _check(y, score)
    rng = np.random.default_rng(random_state)
    idx_by_class = [np.flatnonzero(y == c) for c in (0, 1)] if stratified else [np.arange(len(y))]
    stats_ = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(ix, size=len(ix), replace=True) for ix in idx_by_class])
        stats_[b] = metric(y[idx], score[idx])
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(stats_, [alpha, 1 - alpha])
    return float(metric(y, score)), float(lo), float(hi)


@dataclass(frozen=True)
class Calibration:
    """Logistic calibration of predicted probabilities: ideal slope 1, intercept 0."""

    slope: float
    intercept: float  # calibration-in-the-large: intercept with the slope fixed at 1
    observed_rate: float
    mean_predicted: float
    slope_lo: float = float("nan")   # Wald 95% CI of the slope (observed information of the logistic fit)
    slope_hi: float = float("nan")

    def __repr__(self) -> str:
        return (f"Calibration(slope={self.slope:.2f}, intercept={self.intercept:+.2f}, "
                f"observed={self.observed_rate:.2f}, predicted={self.mean_predicted:.2f})")


def calibration(y: np.ndarray, prob: np.ndarray, eps: float = 1e-6) -> Calibration:
    """Calibration slope (logistic regression of y on logit p, with its Wald 95% CI) and intercept (offset logit
    p, slope 1)."""
    y = np.asarray(y).astype(float)
    p = np.clip(np.asarray(prob, dtype=float), eps, 1 - eps)
    _check(y.astype(int), p)
    lp = special.logit(p)

    def nll(params: np.ndarray, slope_fixed: bool) -> float:
        a, b = (params[0], 1.0) if slope_fixed else (params[0], params[1])
        eta = a + b * lp
        return float(np.sum(np.logaddexp(0, eta) - y * eta))

    fit2 = optimize.minimize(nll, x0=np.array([0.0, 1.0]), args=(False,), method="BFGS")
    fit1 = optimize.minimize(nll, x0=np.array([0.0]), args=(True,), method="BFGS")
    # Wald CI of the slope: the inverse of the observed (= expected, canonical link) information X'WX at the fit
    mu = special.expit(fit2.x[0] + fit2.x[1] * lp)
    w = mu * (1 - mu)
    info = np.array([[w.sum(), (w * lp).sum()], [(w * lp).sum(), (w * lp * lp).sum()]])
    try:
        se = float(np.sqrt(np.linalg.inv(info)[1, 1]))
    except np.linalg.LinAlgError:
        se = float("nan")
    z = float(special.ndtri(0.975))
    slope = float(fit2.x[1])
    return Calibration(slope, float(fit1.x[0]), float(y.mean()), float(p.mean()), slope - z * se, slope + z * se)


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (SciPy's ``binomtest``); (NaN, NaN) without trials."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def net_benefit(y: np.ndarray, prob: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Net benefit of treating cases with ``prob >= t``: TP/n - FP/n * t / (1 - t), per threshold."""
    y = np.asarray(y).astype(int)
    p = np.asarray(prob, dtype=float)
    n = len(y)
    out = []
    for t in thresholds:
        if not 0 < t < 1:
            raise ValueError(f"thresholds must lie in (0, 1), got {t}")
        treat = p >= t
        tp = np.sum(treat & (y == 1))
        fp = np.sum(treat & (y == 0))
        out.append(tp / n - fp / n * t / (1 - t))
    return np.asarray(out)


def net_benefit_treat_all(y: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Net benefit of treating everyone (the decision curve's reference line)."""
    prev = float(np.mean(np.asarray(y).astype(int)))
    t = np.asarray(thresholds, dtype=float)
    return prev - (1 - prev) * t / (1 - t)


# ------------------------------------------------------------------------------------------- bootstrap
# One convention for every resampling CI of the package: ``n_boot`` resamples, ``level`` coverage,
# ``random_state`` the seed of a numpy Generator.
def bootstrap_mean(values: Iterable[float], n_boot: int = 2000, level: float = 0.95,
                   random_state: int | None = 0) -> tuple[float, float, float, int]:
    """Mean with a percentile bootstrap CI over cases (NaN dropped): (mean, lo, hi, n)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    rng = np.random.default_rng(random_state)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(v.mean()), float(lo), float(hi), int(v.size)


def bootstrap_indices(n: int, n_boot: int = 500, random_state: int | None = 0) -> list[np.ndarray]:
    """``n_boot`` resamples (with replacement) of the indices ``0..n-1``: share them between statistics
    of the same cases so that their CIs come from the same resamples."""
    rng = np.random.default_rng(random_state)
    return [rng.integers(0, n, n) for _ in range(n_boot)]


def paired_bootstrap_difference(metric: Callable[[np.ndarray], tuple[float, float]], n: int, *,
                                strata: np.ndarray | None = None, n_boot: int = 1000, level: float = 0.95,
                                random_state: int | None = 0) -> dict[str, float]:
    """Difference a - b of two statistics of the same cases, with a paired percentile bootstrap CI.

    ``metric(idx)`` returns (statistic a, statistic b) on the cases ``idx``; each resample draws cases
    (within ``strata`` when given, e.g. the class for an AUC) and both statistics are recomputed on it, so
    the CI keeps the pairing. A resample where a statistic is undefined (ValueError, NaN) is dropped.
    Two-sided bootstrap P of "no difference": twice the smaller share of resampled differences on either
    side of 0 (at least 1 / resamples used).
    """
    rng = np.random.default_rng(random_state)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)] if strata is not None else [np.arange(n)]
    a, b = metric(np.arange(n))
    diffs = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        try:
            ra, rb = metric(idx)
        except ValueError:
            continue
        if np.isfinite(ra) and np.isfinite(rb):
            diffs.append(ra - rb)
    d = np.asarray(diffs)
    lo, hi = percentile_ci(list(d), level)
    p = min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())) if d.size else float("nan")
    return {"a": float(a), "b": float(b), "difference": float(a - b), "difference_low": lo,
            "difference_high": hi, "p_bootstrap": float(max(p, 1 / d.size)) if d.size else float("nan"),
            "n_boot": int(d.size)}


def percentile_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN ignored); (NaN, NaN) when there are none."""
    if len(values) == 0:
        return float("nan"), float("nan")
    a = round(50 * (1 - level), 10)  # 2.5 exactly for 95%: the percentile must not move by float rounding
    lo, hi = np.nanpercentile(values, [a, 100 - a])
    return float(lo), float(hi)


def roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of a binary ROC curve, the points ``sklearn.metrics.roc_curve`` returns (its defaults:
    ``drop_intermediate``, the curve from (0, 0)), without its input validation, which costs a millisecond a call
    and dominates a bootstrap of thousands of curves (the test compares the two)."""
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="stable")
    s, t = score[order], y[order]
    idx = np.r_[np.flatnonzero(np.diff(s)), t.size - 1]
    tps = np.cumsum(t)[idx]
    fps = 1 + idx.astype(np.float64) - tps
    if fps.shape[0] > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps = fps[keep], tps[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of 0/1 labels ``y``: ``sklearn.metrics.roc_auc_score``'s number, to the bit (the
    trapezoids of :func:`roc_points`), at a fraction of its cost in bootstraps and permutation tests."""
    y = np.asarray(y)
    if y.size == 0 or np.all(y == y.flat[0]):
        raise ValueError("Only one class is present in y_true. ROC AUC score is not defined in that case.")
    fpr, tpr = roc_points(y, score)
    return float(np.trapezoid(tpr, fpr))


def roc_band(y: np.ndarray, prob: np.ndarray, n_boot: int = 500, grid: int = 101,
             random_state: int | None = 0) -> pd.DataFrame:
    """ROC curve on a fixed FPR grid with a stratified-bootstrap 95% band of the TPR."""
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=float)
    fpr_grid = np.linspace(0, 1, grid)

    def tpr_at(yy: np.ndarray, pp: np.ndarray) -> np.ndarray:
        fpr, tpr = roc_points(yy, pp)
        return np.interp(fpr_grid, fpr, tpr)

    rng = np.random.default_rng(random_state)
    idx = [np.flatnonzero(y == c) for c in (0, 1)]
    boots = np.array([tpr_at(y[b], prob[b]) for b in
                      (np.concatenate([rng.choice(i, len(i)) for i in idx]) for _ in range(n_boot))])
    return pd.DataFrame({"fpr": fpr_grid, "tpr": tpr_at(y, prob), "tpr_lo": np.quantile(boots, 0.025, axis=0),
                         "tpr_hi": np.quantile(boots, 0.975, axis=0)})
