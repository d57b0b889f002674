"""Feature stability: ICC(3,1) under small perturbations, and a filter fitted once, applied unchanged.

:func:`icc31` is the two-way mixed, consistency, single-measurement intraclass correlation of Shrout
& Fleiss (1979), case 3: (MS_cases - MS_error) / (MS_cases + (k - 1) MS_error), with the k
"raters" being the original extraction and its perturbed re-extractions (mask eroded/dilated by one
voxel, small rotation, noise). It is computed for every feature at once.

:class:`StabilityFilter` (a scikit-learn transformer) is fitted on the training cohort only:
1. drops features missing in more than ``max_missing_fraction`` of the cases;
2. drops near-constant features (one value in at least ``max_mode_fraction`` of the cases);
3. with replicates, drops features whose ICC(3,1) is below ``icc_threshold`` (default 0.75);
4. drops highly correlated features: going down the ICC ranking (most stable first), a feature is
   kept unless its |Pearson r| with an already kept feature exceeds ``max_correlation`` (0.95).
``transform`` then selects the same columns from any cohort (an error names missing columns);
``report_`` says, per feature, its ICC and why it was dropped.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


def icc31(values: np.ndarray) -> np.ndarray:
    """ICC(3,1) per feature of ``values`` shaped (k conditions, n cases, p features).

    A feature with no variance at all gives NaN; a feature with NaN in any condition is computed
    over the cases complete in every condition (NaN when fewer than 2 remain)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    k, n, p = x.shape
    out = np.full(p, np.nan)
    complete = ~np.isnan(x).any(axis=(0, 1))
    if complete.any():
        out[complete] = _icc31_complete(x[:, :, complete])
    for j in np.flatnonzero(~complete):
        rows = ~np.isnan(x[:, :, j]).any(axis=0)
        if rows.sum() >= 2:
            out[j] = _icc31_complete(x[:, rows, j][:, :, None])[0]
    return out


def _icc31_complete(x: np.ndarray) -> np.ndarray:
    k, n, _ = x.shape
    grand = x.mean(axis=(0, 1))
    case_means = x.mean(axis=0)            # (n, p)
    cond_means = x.mean(axis=1)            # (k, p)
    ss_total = ((x - grand) ** 2).sum(axis=(0, 1))
    ss_cases = k * ((case_means - grand) ** 2).sum(axis=0)
    ss_cond = n * ((cond_means - grand) ** 2).sum(axis=0)
    ms_cases = ss_cases / (n - 1)
    ms_error = (ss_total - ss_cases - ss_cond) / ((n - 1) * (k - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ms_cases - ms_error) / (ms_cases + (k - 1) * ms_error)


def replicate_array(original: pd.DataFrame, replicates: Mapping[str, pd.DataFrame]) -> np.ndarray:
    """(k, n, p) from the original table and its perturbed re-extractions (rows and columns aligned
    to ``original``; a case or feature missing from a replicate is NaN)."""
    mats = [original.to_numpy(dtype=np.float64)]
    for table in replicates.values():
        mats.append(table.reindex(index=original.index, columns=original.columns).to_numpy(dtype=np.float64))
    return np.stack(mats)


MIN_CASES = 3   # the filter's ICC and correlations need at least this many cases


class StabilityFilter(TransformerMixin, BaseEstimator):
    """Keep features that are present, variable, stable under perturbation and not redundant."""

    def __init__(self, icc_threshold: float = 0.75, max_correlation: float = 0.95, max_mode_fraction: float = 0.95,
                 max_missing_fraction: float = 0.2) -> None:
        self.icc_threshold = icc_threshold
        self.max_correlation = max_correlation
        self.max_mode_fraction = max_mode_fraction
        self.max_missing_fraction = max_missing_fraction

    def fit(self, X: pd.DataFrame, y: object = None,
            replicates: Mapping[str, pd.DataFrame] | None = None) -> "StabilityFilter":
        X = pd.DataFrame(X).astype(np.float64)
        if X.shape[0] < MIN_CASES:
            raise ValueError(f"the stability filter needs at least {MIN_CASES} cases to fit, got {X.shape[0]}")
        report = pd.DataFrame(index=pd.Index(X.columns, name="feature"))
        report["missing_fraction"] = X.isna().mean()
        mode = X.apply(lambda c: c.round(12).value_counts(normalize=True, dropna=True).max() if c.notna().any()
                       else 1.0)
        report["mode_fraction"] = mode
        report["icc"] = icc31(replicate_array(X, replicates)) if replicates else np.nan
        reason = pd.Series("", index=report.index, dtype=object)
        reason[report["missing_fraction"] > self.max_missing_fraction] = "missing"
        reason[(reason == "") & (report["mode_fraction"] >= self.max_mode_fraction)] = "near-constant"
        if replicates:
            unstable = ~(report["icc"] >= self.icc_threshold)     # NaN ICC counts as unstable
            reason[(reason == "") & unstable] = "icc"
        candidates = report.index[reason == ""]
        order = (report.loc[candidates].assign(_name=candidates)
                 .sort_values(["icc", "_name"], ascending=[False, True], na_position="last").index
                 if replicates else candidates)
        keep: list[str] = []
        if len(order):
            corr = X[list(order)].corr().abs().to_numpy()
            kept_idx: list[int] = []
            for i, name in enumerate(order):
                if kept_idx and np.nanmax(corr[i, kept_idx]) > self.max_correlation:
                    reason[name] = "correlated"
                else:
                    kept_idx.append(i)
                    keep.append(name)
        report["removed"] = reason
        self.report_ = report
        self.features_in_ = list(X.columns)
        self.selected_ = [c for c in X.columns if c in set(keep)]   # original column order
        self.n_features_in_ = X.shape[1]
        self.used_replicates_ = sorted(replicates) if replicates else []
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        if not hasattr(self, "selected_"):
            raise ValueError("StabilityFilter is not fitted")
        X = pd.DataFrame(X)
        missing = [c for c in self.selected_ if c not in X.columns]
        if missing:
            raise ValueError(f"the table lacks {len(missing)} feature(s) the stability filter selected "
                             f"(e.g. {missing[:3]}); extract it with the same settings as the cohort it was fitted on")
        return X[self.selected_]

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        return np.asarray(self.selected_, dtype=object)

    def counts(self) -> pd.Series:
        """How many features were removed for each reason, and how many were kept."""
        c = self.report_["removed"].replace("", "kept").value_counts()
        return c.reindex(["missing", "near-constant", "icc", "correlated", "kept"], fill_value=0)
