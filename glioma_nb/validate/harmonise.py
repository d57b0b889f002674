"""Site shift and harmonisation: standardised mean difference and Kolmogorov-Smirnov per feature, and ComBat
with the training cohort as the reference batch (fitted on training features only, no labels)."""
from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import stats as sstats

from glioma_nb.runs import Reference


# ------------------------------------------------------------------------------------ shift and harmonisation
def shift_table(train: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Per feature: means, standardised mean difference (other - train, pooled SD), Kolmogorov-Smirnov
    statistic and P (two-sample), and the Benjamini-Hochberg q over the features of the table."""
    cols = [c for c in train.columns if c in other.columns]
    rows = []
    for c in cols:
        a = pd.to_numeric(train[c], errors="coerce").dropna().to_numpy(float)
        b = pd.to_numeric(other[c], errors="coerce").dropna().to_numpy(float)
        if len(a) < 2 or len(b) < 2:
            continue
        sd = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        ks = sstats.ks_2samp(a, b)
        rows.append({"feature": c, "mean_train": a.mean(), "mean_other": b.mean(),
                     "smd": (b.mean() - a.mean()) / sd if sd > 0 else 0.0, "ks": float(ks.statistic),
                     "ks_p": float(ks.pvalue)})
    out = pd.DataFrame(rows, columns=["feature", "mean_train", "mean_other", "smd", "ks", "ks_p"])
    out["ks_q"] = sstats.false_discovery_control(out["ks_p"]) if len(out) else []
    return out


def shift_summary(tables: Mapping[tuple[str, str], pd.DataFrame], smd_threshold: float = 0.5,
                  alpha: float = 0.05) -> pd.DataFrame:
    """One row per (source, harmonisation): features, median |SMD|, share with |SMD| > threshold, share
    with a KS difference at FDR ``alpha``."""
    rows = []
    for (source, harm), t in tables.items():
        rows.append({"source": source, "harmonisation": harm, "features": len(t),
                     "median_abs_smd": float(t["smd"].abs().median()) if len(t) else np.nan,
                     f"share_abs_smd_gt_{smd_threshold:g}": float((t["smd"].abs() > smd_threshold).mean()) if len(t) else np.nan,
                     f"share_ks_q_lt_{alpha:g}": float((t["ks_q"] < alpha).mean()) if len(t) else np.nan})
    return pd.DataFrame(rows)


class ReferenceComBat:
    """ComBat (Johnson et al. 2007, parametric empirical Bayes) towards a reference (training) cohort.

    ``fit`` reads the training features only: per feature its mean and SD. ``transform`` moves each
    batch (site) of new cases onto the training distribution: the batch's location and scale per
    feature, shrunk towards the batch's mean over features (empirical Bayes), are removed and the
    training mean and SD put back. Training cases pass through unchanged (the reference batch of
    Zhang et al. 2018). Labels never enter: no outcome is used, and nothing estimated on new cases
    changes the fitted training statistics. No biological covariates are preserved (that would need
    the validation labels); constant training features are left as they are.
    """

    def __init__(self, min_batch: int = 3, max_iter: int = 1000, tol: float = 1e-4) -> None:
        self.min_batch = min_batch
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: pd.DataFrame) -> "ReferenceComBat":
        X = X.apply(pd.to_numeric, errors="coerce")
        self.features_ = list(X.columns)
        self.mean_ = X.mean()
        self.sd_ = X.std(ddof=0)
        self.usable_ = list(self.sd_.index[(self.sd_ > 0) & X.notna().sum().ge(self.min_batch)])
        self.n_train_ = int(len(X))
        return self

    def _batch(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Empirical Bayes location and scale of one batch of standardised data (cases x features)."""
        n = np.sum(np.isfinite(Z), axis=0).astype(float)
        g_hat = np.nanmean(Z, axis=0)
        d_hat = np.nanvar(Z, axis=0, ddof=1)
        d_hat[~np.isfinite(d_hat) | (d_hat <= 0)] = np.nanmedian(d_hat[d_hat > 0]) if (d_hat > 0).any() else 1.0
        g_bar, t2 = float(np.mean(g_hat)), float(np.var(g_hat, ddof=1)) if len(g_hat) > 1 else 0.0
        m, s2 = float(np.mean(d_hat)), float(np.var(d_hat, ddof=1)) if len(d_hat) > 1 else 0.0
        if t2 <= 0 or s2 <= 0:  # one feature, or no spread to shrink with: plain location/scale
            return g_hat, d_hat
        a, b = (2 * s2 + m ** 2) / s2, (m * s2 + m ** 3) / s2
        g_new, d_new = g_hat.copy(), d_hat.copy()
        for _ in range(self.max_iter):
            g_star = (n * t2 * g_hat + d_new * g_bar) / (n * t2 + d_new)
            ss = np.nansum((Z - g_star) ** 2, axis=0)
            d_star = (b + 0.5 * ss) / (n / 2 + a - 1)
            change = max(np.max(np.abs(g_star - g_new) / (np.abs(g_new) + 1e-12)),
                         np.max(np.abs(d_star - d_new) / d_new))
            g_new, d_new = g_star, d_star
            if change < self.tol:
                break
        return g_new, d_new

    def transform(self, X: pd.DataFrame, batch: pd.Series | None = None) -> pd.DataFrame:
        """Harmonise new cases; ``batch`` (case -> site) gives the batches, one batch when ``None``."""
        X = X.apply(pd.to_numeric, errors="coerce")
        missing = [c for c in self.features_ if c not in X.columns]
        if missing:
            raise KeyError(f"ComBat: {len(missing)} training features are missing, e.g. {missing[:5]}")
        out = X.copy()
        cols = self.usable_
        batch = pd.Series("new", index=X.index) if batch is None else batch.reindex(X.index).fillna("unknown")
        self.batches_ = {}
        mu, sd = self.mean_[cols].to_numpy(), self.sd_[cols].to_numpy()
        for b, idx in batch.groupby(batch).groups.items():
            if len(idx) < self.min_batch:
                raise ValueError(f"ComBat: batch {b!r} has {len(idx)} cases; at least {self.min_batch} are needed "
                                 "to estimate its location and scale")
            Z = (X.loc[idx, cols].to_numpy(float) - mu) / sd
            g, d = self._batch(Z)
            out.loc[idx, cols] = (Z - g) / np.sqrt(d) * sd + mu
            self.batches_[b] = len(idx)
        return out


IMAGE_SOURCES = ("volumetric", "signature", "radiomics")


def harmonised_sources(ref: Reference, sources: Mapping[str, pd.DataFrame], batch: pd.Series | None = None,
                       ) -> tuple[dict[str, pd.DataFrame], dict[str, ReferenceComBat], list[str]]:
    """The validation image tables harmonised to the reference run's (training) tables by ComBat."""
    train = ref.feature_tables()
    out, fitted, notes = dict(sources), {}, []
    for name, X in sources.items():
        if name not in train or name not in IMAGE_SOURCES:
            continue
        cb = ReferenceComBat().fit(train[name])
        Xc = X[[c for c in X.columns if c in cb.features_]]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                try:
                    out[name] = cb.transform(Xc, batch)
                except ValueError as exc:
                    if batch is None:
                        raise
                    notes.append(f"{name}: one batch for the whole cohort ({exc})")
                    out[name] = cb.transform(Xc, None)
                fitted[name] = cb
            except (ValueError, KeyError) as exc:
                notes.append(f"{name}: not harmonised ({exc})")
    return out, fitted, notes
