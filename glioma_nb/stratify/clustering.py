"""Monti-style consensus clustering (PAC, resampling stability) of image features within each subgroup, and the
survival of the clusters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from glioma_nb.stratify.cox import CoxFit, cox_design, fit_cox
from glioma_nb.stratify.subgroups import Subgroup, select_subgroup
from glioma_nb.stratify.survival import (
    km_summary,
    logrank,
    logrank_trend,
    rmst,
    survival_frame,
)


# ------------------------------------------------------------------------------------ consensus clustering
def _cluster(z: np.ndarray, k: int, method: str, seed: int) -> np.ndarray:

    if method == "kmeans":
        return KMeans(n_clusters=k, n_init=5, random_state=seed).fit_predict(z)
    if method == "ward":
        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(z)
    raise ValueError(f"clustering method must be 'kmeans' or 'ward', got {method!r}")


def pac_score(consensus: np.ndarray, low: float = 0.1, high: float = 0.9) -> float:
    """Proportion of ambiguous clustering (Senbabaoglu et al. 2014): share of pairs with consensus in (low, high)."""
    iu = np.triu_indices_from(consensus, k=1)
    v = consensus[iu]
    return float(np.mean((v > low) & (v < high)))


class ConsensusClustering(BaseEstimator, ClusterMixin):
    """Consensus clustering (Monti et al. 2003) of a feature table, with assignment of new cases.

    z-score -> PCA keeping ``variance`` of the variance -> k-means or Ward on ``n_resamples`` random
    ``subsample`` fractions of the cases, for k = 2..``k_max``. For each k: the consensus matrix
    (how often two cases fall together when both are drawn), its CDF and PAC, and the stability (mean
    adjusted Rand index of each resample's clustering with the consensus clusters). Unless given, k is
    the one with the lowest PAC among those whose clusters all hold ``min_cluster_size`` cases. The
    consensus clusters come from average-linkage clustering of 1 - consensus, numbered by size (0 = largest). ``predict`` assigns new cases to the
    nearest centroid in the training PCA space, with the training imputer, scaler and PCA unchanged.
    """

    def __init__(self, k_max: int = 6, k: int | None = None, n_resamples: int = 100, subsample: float = 0.8,
                 variance: float = 0.8, method: str = "kmeans", min_cluster_size: int = 3,
                 random_state: int = 0) -> None:
        self.k_max = k_max
        self.min_cluster_size = min_cluster_size
        self.k = k
        self.n_resamples = n_resamples
        self.subsample = subsample
        self.variance = variance
        self.method = method
        self.random_state = random_state

    def _embed_fit(self, X: pd.DataFrame) -> np.ndarray:

        n_comp = self.variance if 0 < self.variance < 1 else min(int(self.variance), *X.shape)
        self.embedding_ = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                                        PCA(n_components=n_comp, svd_solver="full", random_state=self.random_state))
        return self.embedding_.fit_transform(X.to_numpy(dtype=float))

    def fit(self, X: pd.DataFrame, y: Any = None) -> "ConsensusClustering":

        X = pd.DataFrame(X)
        X = X.loc[:, X.notna().any() & (X.nunique() > 1)]
        n = len(X)
        k_top = min(self.k_max, n // 2)
        if k_top < 2 or X.shape[1] == 0:
            raise ValueError(f"consensus clustering needs at least 4 cases (2 per cluster) and one varying feature; "
                             f"got {n} cases x {X.shape[1]} features")
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.index_ = X.index
        z = self._embed_fit(X)
        self.n_components_ = z.shape[1]
        rng = np.random.default_rng(self.random_state)
        m = max(2, int(round(self.subsample * n)))
        draws = [np.sort(rng.choice(n, size=m, replace=False)) for _ in range(self.n_resamples)]
        self.ks_ = list(range(2, k_top + 1))
        self.consensus_, self.pac_, self.stability_, self.labels_by_k_ = {}, {}, {}, {}
        together = {k: np.zeros((n, n)) for k in self.ks_}
        sampled = np.zeros((n, n))
        resample_labels: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in self.ks_}
        for b, idx in enumerate(draws):
            sampled[np.ix_(idx, idx)] += 1
            for k in self.ks_:
                lab = _cluster(z[idx], k, self.method, self.random_state + b)
                together[k][np.ix_(idx, idx)] += lab[:, None] == lab[None, :]
                resample_labels[k].append((idx, lab))
        for k in self.ks_:
            cons = np.divide(together[k], sampled, out=np.zeros_like(sampled), where=sampled > 0)
            np.fill_diagonal(cons, 1.0)
            self.consensus_[k] = cons
            self.pac_[k] = pac_score(cons)
            dist = squareform(1 - cons, checks=False)
            raw = fcluster(linkage(dist, method="average"), t=k, criterion="maxclust") - 1
            order = pd.Series(raw).value_counts().index  # largest first
            labels = pd.Series(raw).map({c: i for i, c in enumerate(order)}).to_numpy()
            self.labels_by_k_[k] = labels
            self.stability_[k] = float(np.mean([adjusted_rand_score(labels[idx], lab)
                                                for idx, lab in resample_labels[k]]))
        if self.k is not None and self.k not in self.ks_:
            raise ValueError(f"k={self.k} is outside 2..{k_top} (k_max={self.k_max}, {n} cases: at most n/2)")
        # k by PAC among the k whose consensus clusters all hold min_cluster_size cases (singletons say nothing)
        usable = [kk for kk in self.ks_ if np.bincount(self.labels_by_k_[kk]).min() >= self.min_cluster_size]
        self.best_k_ = self.k or min(usable or [2], key=lambda kk: (round(self.pac_[kk], 6), kk))
        self.labels_ = self.labels_by_k_[self.best_k_]
        self.centroids_ = np.vstack([z[self.labels_ == c].mean(axis=0) for c in range(self.best_k_)])
        self.self_assignment_ = float(np.mean(self._nearest(z) == self.labels_))
        return self

    def _nearest(self, z: np.ndarray) -> np.ndarray:
        d = ((z[:, None, :] - self.centroids_[None, :, :]) ** 2).sum(axis=2)
        return d.argmin(axis=1)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Nearest training centroid, after the training imputer, scaler and PCA (columns by name)."""
        missing = [c for c in self.feature_names_in_ if c not in X.columns]
        if missing:
            raise KeyError(f"{len(missing)} clustering features are missing, e.g. {missing[:5]}; "
                           "extract them with the training run's settings")
        return self._nearest(self.embedding_.transform(X[list(self.feature_names_in_)].to_numpy(dtype=float)))

    def summary(self) -> pd.DataFrame:
        """Per k: PAC, stability (mean ARI), cluster sizes, and which k was chosen."""
        return pd.DataFrame([{"k": k, "pac": self.pac_[k], "stability_ari": self.stability_[k],
                              "sizes": "/".join(str(int(s)) for s in np.bincount(self.labels_by_k_[k])),
                              "chosen": k == self.best_k_} for k in self.ks_])

    def cdf(self, k: int, grid: int = 101) -> tuple[np.ndarray, np.ndarray]:
        """Empirical CDF of the consensus values (upper triangle) of ``k`` on a 0..1 grid."""
        v = self.consensus_[k][np.triu_indices(len(self.labels_), k=1)]
        x = np.linspace(0, 1, grid)
        return x, np.searchsorted(np.sort(v), x, side="right") / len(v)


def cluster_survival(surv: pd.DataFrame, group: str, adjust_for: Sequence[str], *, horizon: float,
                     min_events_per_variable: float = 5.0) -> dict[str, Any]:
    """Survival by cluster: KM medians with CI, log-rank (and trend when >2 groups), RMST up to
    ``horizon``, Cox HRs unadjusted and adjusted; ``notes`` collects every reason something is missing."""
    data = surv.dropna(subset=[group]).reset_index(drop=True)
    notes: list[str] = []
    no_events = [str(g) for g, d in data.groupby(group) if d["event"].sum() == 0]
    if no_events:
        notes.append(f"cluster(s) {', '.join(no_events)} have no events: median OS not reached, HR not estimable")
    out: dict[str, Any] = {"surv": data, "km": km_summary(data, group), "logrank": logrank(data, group),
                           "trend": logrank_trend(data, group), "rmst": rmst(data, group, horizon) if len(data) else None}
    if out["logrank"] is None:
        notes.append("log-rank test not possible (fewer than two groups of 2 or no events)")
    design, dn = cox_design(data, group, [])
    out["cox_unadjusted"] = fit_cox(data, design, min_events_per_variable=min_events_per_variable)
    design, dn = cox_design(data, group, adjust_for)
    out["cox_adjusted"] = fit_cox(data, design, min_events_per_variable=min_events_per_variable)
    out["cox_adjusted"].notes[:0] = dn
    out["notes"] = notes
    return out


# --------------------------------------------------------------------------------------- paper reference
#: The seed paper's survival splits (MISSION.md stage 4), for side-by-side display only: different
#: cohorts, so never a like-for-like comparison.
PAPER_SPLITS = pd.DataFrame([
    {"subgroup": "idhwt_lgg", "paper_median_os_months": "48.63 vs 38.27", "paper_logrank_p": 0.023},
    {"subgroup": "triple_negative_gbm", "paper_median_os_months": "36.8 vs 18.2", "paper_logrank_p": 0.013},
])


# ------------------------------------------------------------------------------------- orchestration
@dataclass
class SubgroupClusters:
    """Consensus clustering of one subgroup and the survival of its clusters (or why there is none)."""

    subgroup: Subgroup
    model: ConsensusClustering | None = None
    labels: pd.Series | None = None          # case_id -> cluster
    survival: dict[str, Any] | None = None   # see cluster_survival
    notes: list[str] = field(default_factory=list)


def cluster_subgroups(clinical: pd.DataFrame, features: pd.DataFrame | None, subgroups: Sequence[str], *,
                      time_unit: str = "months", k: int | None = None, k_max: int = 4, n_resamples: int = 100,
                      subsample: float = 0.8, variance: float = 0.8, method: str = "kmeans",
                      adjust_for: Sequence[str] = (), horizon: float = 24.0, min_events_per_variable: float = 5.0,
                      random_state: int = 0) -> dict[str, SubgroupClusters]:
    """Consensus-cluster ``features`` within each subgroup and test the clusters' survival.

    A subgroup is skipped with a note (never an error) when it is empty, has fewer than 2k cases
    (k = 2 at least), has no features, or has no survival data.
    """
    surv_all = survival_frame(clinical, time_unit).set_index("case_id")
    out: dict[str, SubgroupClusters] = {}
    for name in subgroups:
        sg = select_subgroup(clinical, name)
        res = SubgroupClusters(sg, notes=list(sg.problems))
        out[name] = res
        if features is None or features.shape[1] == 0:
            res.notes.append("no image features in this run to cluster")
            continue
        ids = [c for c in sg.case_ids if c in features.index]
        need = 2 * (k or 2)
        if len(ids) < need:
            res.notes.append(f"{len(ids)} cases with features: fewer than 2k = {need}; not clustered")
            continue
        model = ConsensusClustering(k_max=k_max, k=k, n_resamples=n_resamples, subsample=subsample,
                                    variance=variance, method=method, random_state=random_state)
        try:
            model.fit(features.loc[ids])
        except ValueError as exc:
            res.notes.append(str(exc))
            continue
        res.model = model
        res.labels = pd.Series(model.labels_, index=pd.Index(ids, name="case_id"), name="cluster")
        sizes = np.bincount(model.labels_)
        if sizes.min() < model.min_cluster_size:
            res.notes.append(f"no k in 2..{max(model.ks_)} gives clusters of at least {model.min_cluster_size} cases; "
                             f"k={model.best_k_} has sizes {'/'.join(map(str, sizes))}: any survival difference "
                             "rests on a handful of patients")
        surv = surv_all.join(res.labels, how="inner").reset_index()
        if surv.empty or surv["event"].sum() == 0:
            res.notes.append(f"no survival data with events among the {len(ids)} clustered cases")
            continue
        res.survival = cluster_survival(surv, "cluster", adjust_for, horizon=horizon,
                                        min_events_per_variable=min_events_per_variable)
        res.notes.extend(res.survival["notes"])
        for key in ("cox_unadjusted", "cox_adjusted"):
            res.notes.extend(f"{key.replace('_', ' ')}: {n}" for n in res.survival[key].notes)
    return out


def cluster_table(results: dict[str, SubgroupClusters]) -> pd.DataFrame:
    """One row per subgroup: n, events, k, PAC, stability, median OS per cluster, log-rank/trend P, HRs."""
    rows = []
    for name, r in results.items():
        row: dict[str, Any] = {"subgroup": name, "n_cases": r.subgroup.n, "events": r.subgroup.events}
        if r.model is not None:
            row.update(k=r.model.best_k_, pac=r.model.pac_[r.model.best_k_],
                       stability_ari=r.model.stability_[r.model.best_k_],
                       sizes="/".join(str(int(v)) for v in np.bincount(r.model.labels_)))
        if r.survival is not None:
            km = r.survival["km"]
            row["median_os_by_cluster"] = " vs ".join(
                f"{m:.1f}" if np.isfinite(m) else "NR" for m in km["median"].to_numpy(dtype=float))
            row["events_by_cluster"] = "/".join(str(int(e)) for e in km["events"])
            row["logrank_p"] = r.survival["logrank"]["p_value"] if r.survival["logrank"] else np.nan
            row["trend_p"] = r.survival["trend"]["p_value"] if r.survival["trend"] else np.nan
            for key, label in (("cox_unadjusted", "hr"), ("cox_adjusted", "hr_adjusted")):
                t = r.survival[key].table
                t = t[t["covariate"].str.startswith("cluster=")] if len(t) else t
                row[label] = ("; ".join(f"{c.split(' vs ')[0]}: {h:.2f} [{lo:.2f}-{hi:.2f}]"
                                        for c, h, lo, hi in t[["covariate", "hr", "hr_low", "hr_high"]].itertuples(index=False))
                              if len(t) else "not estimable")
        row["notes"] = "; ".join(r.notes)
        rows.append(row)
    out = pd.DataFrame(rows)
    if "k" in out:
        out["k"] = out["k"].astype("Int64")
    return out


def paper_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """This run's subgroup splits beside the seed paper's (different cohorts: context, not a benchmark)."""
    cols = ["subgroup", "n_cases", "events", "median_os_by_cluster", "logrank_p"]
    ours = table.reindex(columns=cols)
    return PAPER_SPLITS.merge(ours, on="subgroup", how="left").rename(columns={
        "median_os_by_cluster": "this_run_median_os", "logrank_p": "this_run_logrank_p"})


def cluster_details(results: dict[str, SubgroupClusters]) -> pd.DataFrame:
    """Per subgroup and cluster: n, events, median OS (95% CI) and RMST up to the horizon."""
    parts = []
    for name, r in results.items():
        if r.survival is None:
            continue
        km = r.survival["km"].rename(columns={"group": "cluster"})
        rm = r.survival["rmst"]
        if rm is not None and len(rm):
            km = km.merge(rm.rename(columns={"group": "cluster"}), on="cluster", how="left")
        parts.append(km.assign(subgroup=name))
    if not parts:
        return pd.DataFrame(columns=["subgroup", "cluster", "n", "events", "median", "median_ci_low", "median_ci_high"])
    out = pd.concat(parts, ignore_index=True)
    return out[["subgroup", *[c for c in out.columns if c != "subgroup"]]]


def cluster_cox_fits(results: dict[str, SubgroupClusters]) -> dict[str, CoxFit]:
    """The unadjusted and adjusted Cox fits of every clustered subgroup, named ``<subgroup> (<kind>)``."""
    fits = {}
    for name, r in results.items():
        if r.survival is not None:
            fits[f"{name} (unadjusted)"] = r.survival["cox_unadjusted"]
            fits[f"{name} (adjusted)"] = r.survival["cox_adjusted"]
    return fits


def cluster_notes(results: dict[str, SubgroupClusters]) -> list[str]:
    return [f"{name}: {n}" for name, r in results.items() for n in r.notes]
