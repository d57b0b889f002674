"""Survival stratification: subgroups, consensus clustering of the signature, Kaplan-Meier/log-rank/Cox
by cluster, and cross-validated penalised Cox risk models.

Libraries do the statistics: lifelines (Kaplan-Meier, log-rank, Cox with the proportional-hazards
test, RMST), scikit-survival (Coxnet, Harrell/Uno C-index, time-dependent AUC, integrated Brier
score, the log-rank statistics behind the trend test), scikit-learn (PCA, k-means, Ward, ARI).
Written here is only what none of them has: Monti-style consensus clustering with PAC and
resampling stability, the log-rank test for trend, and the bookkeeping that turns every
"cannot be estimated" into a message instead of a crash or a silent NaN.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClusterMixin

from glioma_nb.io import CLINICAL_COLUMNS, TIME_UNITS_DAYS

# ------------------------------------------------------------------------------------------ survival data


def survival_frame(clinical: pd.DataFrame, unit: str = "months") -> pd.DataFrame:
    """Cases with survival data: ``time`` in ``unit`` (from canonical ``os_days``) and ``event`` 0/1.

    The conversion from the cohort's declared unit to days happens once, when the clinical table is
    read (``cohort.clinical.time_unit``); this converts days to the reporting unit.
    """
    if unit not in TIME_UNITS_DAYS:
        raise ValueError(f"unit must be one of {sorted(TIME_UNITS_DAYS)}, got {unit!r}")
    if "os_days" not in clinical or "os_event" not in clinical:
        return pd.DataFrame(columns=[*clinical.columns, "time", "event"])
    df = clinical.copy()
    df["time"] = pd.to_numeric(df["os_days"], errors="coerce") / TIME_UNITS_DAYS[unit]
    df["event"] = pd.to_numeric(df["os_event"], errors="coerce")
    return df.dropna(subset=["time", "event"]).assign(event=lambda d: d["event"].astype(int)).reset_index(drop=True)


def km_summary(surv: pd.DataFrame, group: str | None = None, min_group: int = 2) -> pd.DataFrame:
    """Per group: n, events, median survival with 95 % CI (lifelines; NaN bound = not reached)."""
    from lifelines import KaplanMeierFitter
    from lifelines.utils import median_survival_times

    data = surv if group is None else surv.dropna(subset=[group])
    groups = [("all", data)] if group is None else [(k, g) for k, g in data.groupby(group) if len(g) >= min_group]
    rows = []
    for name, g in groups:
        kmf = KaplanMeierFitter().fit(g["time"], g["event"])
        ci = median_survival_times(kmf.confidence_interval_)
        lo, hi = (float(v) for v in np.asarray(ci).ravel()[:2])
        med = float(kmf.median_survival_time_)
        rows.append({"group": name, "n": len(g), "events": int(g["event"].sum()),
                     "median": med if np.isfinite(med) else np.nan,
                     "median_ci_low": lo if np.isfinite(lo) else np.nan,
                     "median_ci_high": hi if np.isfinite(hi) else np.nan})
    return pd.DataFrame(rows, columns=["group", "n", "events", "median", "median_ci_low", "median_ci_high"])


def logrank(surv: pd.DataFrame, group: str, min_group: int = 2) -> dict[str, float] | None:
    """Multi-group log-rank test; ``None`` when fewer than two groups have ``min_group`` cases or no events."""
    from lifelines.statistics import multivariate_logrank_test

    data = surv.dropna(subset=[group])
    sizes = data[group].value_counts()
    data = data[data[group].isin(sizes[sizes >= min_group].index)]
    if data[group].nunique() < 2 or data["event"].sum() == 0:
        return None
    res = multivariate_logrank_test(data["time"], data[group], data["event"])
    return {"test_statistic": float(res.test_statistic), "p_value": float(res.p_value),
            "degrees_of_freedom": int(res.degrees_of_freedom), "groups": int(data[group].nunique())}


def logrank_trend(surv: pd.DataFrame, group: str, scores: dict[Any, float] | None = None) -> dict[str, float] | None:
    """Log-rank test for trend over ordered groups (1 df): (w'(O-E))^2 / w'Vw.

    ``scores`` maps each group to its weight (default: the sorted group values 0, 1, 2, ...).
    O, E and V come from scikit-survival's ``compare_survival``. ``None`` with fewer than 3 groups,
    where the trend test is the ordinary log-rank test.
    """
    from sksurv.compare import compare_survival

    data = surv.dropna(subset=[group])
    levels = sorted(data[group].unique())
    if len(levels) < 3 or data["event"].sum() == 0:
        return None
    scores = scores or {g: float(i) for i, g in enumerate(levels)}
    y = _structured(data["time"], data["event"])
    _, _, table, cov = compare_survival(y, data[group].to_numpy(), return_stats=True)
    w = np.array([scores[g] for g in table.index], dtype=float)
    o_minus_e = (table["observed"] - table["expected"]).to_numpy(dtype=float)
    var = float(w @ cov @ w)
    if var <= 0:
        return None
    from scipy import stats

    chi2 = float((w @ o_minus_e) ** 2 / var)
    return {"test_statistic": chi2, "p_value": float(stats.chi2.sf(chi2, 1)), "degrees_of_freedom": 1}


def km_overview(surv: pd.DataFrame, groupings: list[str], min_group: int = 2) -> pd.DataFrame:
    """Median survival (95 % CI) per group of each grouping, with the grouping's log-rank P.

    Columns: grouping, group, n, events, median, median_ci_low, median_ci_high, logrank_p.
    The whole cohort is the first row (grouping ``all``); groupings absent from ``surv`` are skipped.
    """
    cols = ["grouping", "group", "n", "events", "median", "median_ci_low", "median_ci_high", "logrank_p"]
    if not len(surv):
        return pd.DataFrame(columns=cols)
    parts = [km_summary(surv).assign(grouping="all", logrank_p=np.nan)]
    for g in groupings:
        if g not in surv or surv[g].notna().sum() < min_group:
            continue
        table = km_summary(surv, g, min_group=min_group)
        if table.empty:
            continue
        test = logrank(surv, g, min_group=min_group)
        parts.append(table.assign(grouping=g, logrank_p=test["p_value"] if test else np.nan))
    out = pd.concat(parts, ignore_index=True)
    out["group"] = out["group"].astype(str)
    return out[cols]


def rmst(surv: pd.DataFrame, group: str, tau: float) -> pd.DataFrame:
    """Restricted mean survival time up to ``tau`` per group, with its standard error (lifelines)."""
    from lifelines import KaplanMeierFitter
    from lifelines.utils import restricted_mean_survival_time

    rows = []
    for name, g in surv.dropna(subset=[group]).groupby(group):
        kmf = KaplanMeierFitter().fit(g["time"], g["event"])
        with warnings.catch_warnings():  # lifelines integrates the step function with quad: harmless warning
            warnings.simplefilter("ignore")
            mean, var = restricted_mean_survival_time(kmf, t=tau, return_variance=True)
        rows.append({"group": name, "tau": tau, "rmst": float(mean), "rmst_se": float(np.sqrt(max(var, 0.0)))})
    return pd.DataFrame(rows)


def _structured(time: Any, event: Any) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event).astype(bool), time=np.asarray(time, dtype=float))


# ---------------------------------------------------------------------------------------------- subgroups
#: Declarative subgroup queries on the canonical clinical table (pandas ``DataFrame.query`` syntax).
SUBGROUPS: dict[str, str] = {
    "all": "",
    "lgg": "who_grade in [2, 3]",
    "gbm": "who_grade == 4",
    "idhwt_lgg": "idh_mutant == 0 and who_grade in [2, 3]",
    "idhmut": "idh_mutant == 1",
    "triple_negative_gbm": "idh_mutant == 0 and codel_1p19q == 0 and tertp_mutant == 0 and who_grade == 4",
}


@dataclass
class Subgroup:
    """Cases of a subgroup, with its survival size and any reason it cannot be analysed."""

    name: str
    query: str
    case_ids: list[str]
    n: int
    events: int
    problems: list[str] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([{"subgroup": self.name, "query": self.query or "(all cases)", "n_cases": self.n,
                              "events": self.events, "problems": "; ".join(self.problems)}])


def select_subgroup(clinical: pd.DataFrame, subgroup: str = "all") -> Subgroup:
    """Cases matching a preset name of :data:`SUBGROUPS` or a query string on canonical columns.

    A query naming a column this cohort does not have, or has no values for (TCGA has no TERTp),
    gives an empty subgroup with the reason in ``problems``, not an error.
    """
    query = SUBGROUPS.get(subgroup, subgroup)
    name = subgroup if subgroup in SUBGROUPS else "custom"
    surv = survival_frame(clinical, "days")
    problems: list[str] = []
    if not query:
        ids = clinical["case_id"].astype(str).tolist()
    else:
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query))
        used = sorted(w for w in words if w in CLINICAL_COLUMNS or w in clinical.columns)
        empty = [c for c in used if c not in clinical.columns or clinical[c].isna().all()]
        if empty:
            problems.append(f"subgroup '{subgroup}' needs {', '.join(empty)}, which this cohort does not record")
            ids = []
        else:
            try:
                ids = clinical.query(query, engine="python")["case_id"].astype(str).tolist()
            except Exception as exc:  # pandas raises many types for a bad query
                raise ValueError(f"subgroup query {query!r} failed ({exc}); use canonical clinical column "
                                 f"names, e.g. {SUBGROUPS['idhwt_lgg']!r}") from exc
            n_missing = int(clinical[used].isna().any(axis=1).sum())
            if n_missing:
                problems.append(f"{n_missing} cases lack one of {', '.join(used)} and cannot be placed in the subgroup")
    in_surv = surv[surv["case_id"].astype(str).isin(ids)]
    if ids and not len(in_surv):
        problems.append("no case of the subgroup has survival data (os_days, os_event)")
    return Subgroup(name=subgroup, query=query, case_ids=ids, n=len(ids), events=int(in_surv["event"].sum()),
                    problems=problems)


# ------------------------------------------------------------------------------------ consensus clustering
def _cluster(z: np.ndarray, k: int, method: str, seed: int) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering, KMeans

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
        from sklearn.decomposition import PCA
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        n_comp = self.variance if 0 < self.variance < 1 else min(int(self.variance), *X.shape)
        self.embedding_ = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                                        PCA(n_components=n_comp, svd_solver="full", random_state=self.random_state))
        return self.embedding_.fit_transform(X.to_numpy(dtype=float))

    def fit(self, X: pd.DataFrame, y: Any = None) -> "ConsensusClustering":
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform
        from sklearn.metrics import adjusted_rand_score

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


# --------------------------------------------------------------------------------------------- Cox models
@dataclass
class CoxFit:
    """A lifelines Cox fit as a tidy table, or the reason there is none."""

    table: pd.DataFrame          # covariate, hr, hr_low, hr_high, p, ph_p
    n: int
    events: int
    notes: list[str] = field(default_factory=list)
    concordance: float = float("nan")


def cox_design(frame: pd.DataFrame, group: str | None, covariates: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Numeric Cox design from canonical columns: group dummies (reference = lowest level), age per
    10 years, KPS per 10 points, gross total resection, MGMT methylated, sex male, grade dummies,
    IDH wild-type, 1p/19q codeleted. Covariates absent, empty or constant are left out with a note."""
    notes: list[str] = []
    out = pd.DataFrame(index=frame.index)
    if group is not None:
        levels = sorted(frame[group].dropna().unique())
        for lv in levels[1:]:
            out[f"{group}={lv} vs {levels[0]}"] = (frame[group] == lv).astype(float).where(frame[group].notna())
    for cov in covariates:
        col = frame.get(cov)
        if col is None or col.isna().all():
            notes.append(f"{cov} is not recorded in this subgroup; not adjusted for")
            continue
        if cov == "age":
            out["age_per_10y"] = pd.to_numeric(col, errors="coerce") / 10
        elif cov == "kps":
            out["kps_per_10"] = pd.to_numeric(col, errors="coerce") / 10
        elif cov == "resection":
            out["gtr"] = (col == "GTR").astype(float).where(col.notna())
        elif cov == "sex":
            out["sex_male"] = col.map({"M": 1.0, "F": 0.0})
        elif cov == "who_grade":
            g = pd.to_numeric(col, errors="coerce")
            for lv in (3, 4):
                if (g == lv).any():
                    out[f"grade{lv}"] = (g == lv).astype(float).where(g.notna())
        elif cov == "idh_mutant":
            out["idh_wildtype"] = 1 - pd.to_numeric(col, errors="coerce")
        elif cov == "codel_1p19q":
            out["codel"] = pd.to_numeric(col, errors="coerce")
        elif cov == "mgmt_methylated":
            out["mgmt_methylated"] = pd.to_numeric(col, errors="coerce")
        else:
            out[cov] = pd.to_numeric(col, errors="coerce")
    const = [c for c in out.columns if out[c].nunique(dropna=True) < 2]
    for c in const:
        if group is None or not c.startswith(f"{group}="):
            notes.append(f"{c} does not vary in this subgroup; left out")
    return out.drop(columns=[c for c in const if group is None or not c.startswith(f"{group}=")]), notes


def fit_cox(surv: pd.DataFrame, design: pd.DataFrame, *, min_events_per_variable: float = 5.0,
            penalizer: float = 0.0) -> CoxFit:
    """Cox proportional-hazards fit (lifelines) on complete cases with the PH test (Schoenfeld, rank time).

    Refuses with a note, not a crash: no covariates, fewer events than ``min_events_per_variable`` per
    covariate, a covariate level without events (infinite HR), or a fit that does not converge.
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning
    from lifelines.statistics import proportional_hazard_test

    empty = pd.DataFrame(columns=["covariate", "hr", "hr_low", "hr_high", "p", "ph_p"])
    data = pd.concat([design, surv[["time", "event"]]], axis=1).dropna()
    notes = []
    if len(data) < len(surv):
        notes.append(f"{len(surv) - len(data)} of {len(surv)} cases lack a covariate and are left out")
    n, events = len(data), int(data["event"].sum()) if len(data) else 0
    if design.shape[1] == 0:
        return CoxFit(empty, n, events, notes + ["no covariate to fit"])
    p = design.shape[1]
    if events < min_events_per_variable * p:
        return CoxFit(empty, n, events, notes + [f"too few events for a Cox fit: {events} events for {p} covariates "
                                                 f"(need {min_events_per_variable:g} per covariate)"])
    for c in design.columns:
        vals = data[c].unique()
        if len(vals) <= 2:  # binary: each level needs events, else the HR runs off to 0 or infinity
            for v in vals:
                if data.loc[data[c] == v, "event"].sum() == 0:
                    return CoxFit(empty, n, events, notes + [f"no events where {c} = {v:g}: its hazard ratio is not "
                                                             "estimable (log-rank only)"])
    cph = CoxPHFitter(penalizer=penalizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            cph.fit(data, duration_col="time", event_col="event")
        except (ConvergenceError, np.linalg.LinAlgError, ValueError) as exc:
            return CoxFit(empty, n, events, notes + [f"the Cox fit did not converge ({str(exc).splitlines()[0][:160]})"])
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            notes.append(f"convergence warning: {str(w.message).splitlines()[0][:160]}")
    s = cph.summary
    table = pd.DataFrame({"covariate": s.index, "hr": s["exp(coef)"].to_numpy(),
                          "hr_low": s["exp(coef) lower 95%"].to_numpy(), "hr_high": s["exp(coef) upper 95%"].to_numpy(),
                          "coef": s["coef"].to_numpy(), "coef_low": s["coef lower 95%"].to_numpy(),
                          "coef_high": s["coef upper 95%"].to_numpy(), "p": s["p"].to_numpy()})
    wild = table.loc[(table["coef"].abs() > 10) | ~np.isfinite(table["coef_high"] - table["coef_low"]), "covariate"]
    if len(wild):
        return CoxFit(empty, n, events, notes + [f"monotone likelihood (quasi-complete separation) for "
                                                 f"{', '.join(wild)}: hazard ratio not estimable (log-rank only)"])
    try:
        ph = proportional_hazard_test(cph, data, time_transform="rank").summary["p"]
        table["ph_p"] = table["covariate"].map(ph).to_numpy(dtype=float)
        bad = table.loc[table["ph_p"] < 0.05, "covariate"].tolist()
        if bad:
            notes.append(f"proportional hazards doubtful (Schoenfeld P < 0.05) for {', '.join(bad)}")
    except Exception as exc:  # the PH test is a check; its failure must not hide the fit
        table["ph_p"] = np.nan
        notes.append(f"proportional-hazards test failed ({exc})")
    return CoxFit(table, n, events, notes, float(cph.concordance_index_))


#: covariates of the clinical Cox model (those a cohort does not record are left out with a note)
CLINICAL_COX = ("age", "sex", "kps", "who_grade", "idh_mutant", "codel_1p19q", "mgmt_methylated", "resection")


def clinical_cox(surv: pd.DataFrame, covariates: Sequence[str] = CLINICAL_COX, *,
                 min_events_per_variable: float = 5.0) -> CoxFit:
    """Multivariable Cox model of the recorded clinical and molecular covariates (with the PH test)."""
    design, notes = cox_design(surv, None, covariates)
    fit = fit_cox(surv, design, min_events_per_variable=min_events_per_variable)
    fit.notes[:0] = notes
    return fit


def fit_sentence(fit: CoxFit) -> str:
    """Markdown: the fit's size, its apparent concordance when fitted, and its notes as bullets."""
    head = f"{fit.n} cases, {fit.events} events"
    head += (f"; apparent (in-sample) concordance {fit.concordance:.3f}" if len(fit.table)
             else "; no model fitted")
    return "\n".join([head + ".", *[f"- {n}" for n in fit.notes]])


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


def hazard_table(fits: dict[str, CoxFit]) -> pd.DataFrame:
    """Rows of several Cox fits (model name -> fit) for a forest plot, with each model's n and events."""
    parts = [f.table.assign(model=name, n=f.n, events=f.events) for name, f in fits.items() if len(f.table)]
    if not parts:
        return pd.DataFrame(columns=["model", "covariate", "hr", "hr_low", "hr_high", "p", "ph_p", "n", "events"])
    return pd.concat(parts, ignore_index=True)[["model", "covariate", "hr", "hr_low", "hr_high", "p", "ph_p", "n", "events"]]


# ---------------------------------------------------------------------------------------- risk models
def survival_sources(clinical: pd.DataFrame, image_sources: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Feature sources for risk models: ``age``; ``clinical`` (age, sex, KPS); ``molecular`` (grade,
    IDH wild-type, 1p/19q, MGMT); ``resection`` (gross total / subtotal vs biopsy, post-operative only);
    plus the image feature tables. Sources with no values in the cohort are left out."""
    c = clinical.set_index("case_id")
    num = lambda col: pd.to_numeric(c[col], errors="coerce") if col in c else pd.Series(np.nan, index=c.index)  # noqa: E731
    age = pd.DataFrame({"age": num("age")}, index=c.index)
    clin = pd.DataFrame({"age": num("age"), "sex_male": c["sex"].map({"M": 1.0, "F": 0.0}) if "sex" in c else np.nan,
                         "kps": num("kps")}, index=c.index)
    grade = num("who_grade")
    mol = pd.DataFrame({"grade3": (grade == 3).astype(float).where(grade.notna()),
                        "grade4": (grade == 4).astype(float).where(grade.notna()),
                        "idh_wildtype": 1 - num("idh_mutant"), "codel": num("codel_1p19q"),
                        "mgmt_methylated": num("mgmt_methylated")}, index=c.index)
    res = c["resection"] if "resection" in c else pd.Series(np.nan, index=c.index)
    resection = pd.DataFrame({"gtr": (res == "GTR").astype(float).where(res.notna()),
                              "str": (res == "STR").astype(float).where(res.notna())}, index=c.index)
    out = {}
    for name, df in {"age": age, "clinical": clin, "molecular": mol, "resection": resection}.items():
        df = df.loc[:, df.notna().any() & (df.nunique() > 1)]
        if df.shape[1]:
            out[name] = df
    for name, df in image_sources.items():
        out[name] = df.reindex(c.index)
    return out


#: penalty grid of the elastic-net Cox models (features are standardised first)
COXNET_ALPHAS = np.logspace(0, -2.5, 12)


def _coxnet_pipeline(l1_ratio: float, alphas: np.ndarray) -> Any:
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    return Pipeline([("impute", SimpleImputer(strategy="median")), ("variance", VarianceThreshold(0.0)),
                     ("scale", StandardScaler()),
                     ("coxnet", CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alphas=alphas, fit_baseline_model=True,
                                                       max_iter=100000))])


def _fit_path(X: np.ndarray, y: np.ndarray, l1_ratio: float, alphas: np.ndarray) -> tuple[Any, np.ndarray]:
    """Fit the whole penalty path once (warm starts); on a numerical failure drop the weakest penalties."""
    while len(alphas):
        pipe = _coxnet_pipeline(l1_ratio, alphas)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe.fit(X, y)
            return pipe, alphas
        except ArithmeticError:
            alphas = alphas[: len(alphas) // 2] if len(alphas) > 1 else alphas[:0]
    raise ValueError("Coxnet failed for every penalty (numerical error); try fewer features")


class TunedCoxnet:
    """Elastic-net Cox model (scikit-survival Coxnet after median imputation and scaling) whose penalty
    is chosen by an inner cross-validation stratified by event, scored by Harrell's C.

    Each inner fold fits the whole penalty path once, so tuning costs ``inner_splits + 1`` path fits
    instead of one fit per penalty and fold. ``predict`` gives the linear predictor (higher = worse).
    """

    def __init__(self, l1_ratio: float = 0.5, inner_splits: int = 3, alphas: np.ndarray = COXNET_ALPHAS,
                 random_state: int = 0) -> None:
        self.l1_ratio = l1_ratio
        self.inner_splits = inner_splits
        self.alphas = np.asarray(alphas, dtype=float)
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> "TunedCoxnet":
        from sklearn.model_selection import StratifiedKFold
        from sksurv.metrics import concordance_index_censored

        X = np.asarray(X, dtype=float)
        event, time = y[y.dtype.names[0]], y[y.dtype.names[1]]
        scores = np.full((self.inner_splits, len(self.alphas)), np.nan)
        cv = StratifiedKFold(self.inner_splits, shuffle=True, random_state=self.random_state)
        for i, (tr, va) in enumerate(cv.split(X, event.astype(int))):
            try:
                pipe, alphas = _fit_path(X[tr], y[tr], self.l1_ratio, self.alphas)
            except ValueError:
                continue
            for j, a in enumerate(alphas):
                try:
                    scores[i, j] = concordance_index_censored(event[va], time[va], pipe.predict(X[va], alpha=a))[0]
                except ValueError:  # no comparable pair in this validation fold
                    pass
        valid = ~np.isnan(scores).all(axis=0)
        mean = np.full(len(self.alphas), -np.inf)
        mean[valid] = np.nanmean(scores[:, valid], axis=0)
        if not valid.any():
            raise ValueError("every penalty failed in the inner folds (Coxnet did not converge); "
                             "try fewer features or a larger penalty")
        best = int(np.argmax(mean))  # alphas run from strong to weak: ties keep the sparser model
        self.best_alpha_ = float(self.alphas[best])
        self.best_score_ = float(mean[best])
        self.inner_scores_ = scores
        self.pipeline_, _ = _fit_path(X, y, self.l1_ratio, self.alphas[: best + 1])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.pipeline_.predict(np.asarray(X, dtype=float), alpha=self.best_alpha_)

    def predict_survival_function(self, X: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # S0(t) ** exp(risk) for extreme risks underflows to 0, as it should
            return self.pipeline_.predict_survival_function(np.asarray(X, dtype=float), alpha=self.best_alpha_)


@dataclass
class RiskResult:
    """Cross-validated risk model of one feature set: out-of-fold risk, survival curves and metrics."""

    name: str
    oof: pd.DataFrame                 # case_id index: time, event, risk (mean over repeats), risk_r<i>
    survival: pd.DataFrame            # out-of-fold S(t) per case (rows) on ``times`` (columns)
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def risk_problem(surv: pd.DataFrame, outer_splits: int, inner_splits: int, min_events: int = 10) -> str | None:
    """Why a cross-validated risk model cannot be fitted on ``surv`` (``None`` when it can)."""
    events = int(surv["event"].sum())
    need = max(min_events, outer_splits * inner_splits)
    if events < need:
        return (f"too few events for a cross-validated Cox model: {events} events, need at least {need} "
                f"({outer_splits} outer x {inner_splits} inner folds, stratify.min_events={min_events})")
    return None


def cv_risk_model(X: pd.DataFrame, surv: pd.DataFrame, *, name: str = "model", l1_ratio: float = 0.5,
                  outer_splits: int = 5, inner_splits: int = 3, repeats: int = 3, random_state: int = 0,
                  n_bootstrap: int = 500, horizons: Sequence[float] = (), min_events: int = 10,
                  n_jobs: int = 1) -> RiskResult:
    """Nested CV of an elastic-net Cox model (scikit-survival Coxnet; alpha tuned in the inner folds).

    ``surv`` is indexed like ``X`` with ``time`` and ``event``. Splits are stratified by event status
    (each fold keeps its share of deaths). Imputation, scaling and the penalty choice never see the
    test fold. Metrics on the out-of-fold risk (mean over repeats): Harrell and Uno C-index with
    bootstrap 95% CIs, time-dependent AUC at ``horizons`` (in the time unit of ``surv``), and the
    integrated Brier score of the out-of-fold survival curves.
    """
    from sklearn.model_selection import StratifiedKFold

    surv = surv.loc[X.index, ["time", "event"]]
    problem = risk_problem(surv, outer_splits, inner_splits, min_events)
    if problem:
        raise ValueError(problem)
    y = _structured(surv["time"], surv["event"])
    ev = surv["event"].to_numpy(dtype=int)
    Xa = X.to_numpy(dtype=float)
    times = _ibs_grid(surv)
    risks = pd.DataFrame(index=X.index)
    surv_sum = np.zeros((len(X), len(times)))
    notes: list[str] = []
    chosen = []
    from joblib import Parallel, delayed

    def one(train: np.ndarray, test: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        model = TunedCoxnet(l1_ratio, inner_splits, random_state=seed).fit(Xa[train], y[train])
        fns = model.predict_survival_function(Xa[test])
        curves = np.vstack([fn(np.clip(times, fn.domain[0], fn.domain[1])) for fn in fns])
        return model.predict(Xa[test]), curves, model.best_alpha_

    tasks = [(r, train, test) for r in range(repeats)
             for train, test in StratifiedKFold(outer_splits, shuffle=True, random_state=random_state + r).split(Xa, ev)]
    try:
        outs = Parallel(n_jobs=n_jobs)(delayed(one)(train, test, random_state + r) for r, train, test in tasks)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    cols = {r: np.full(len(X), np.nan) for r in range(repeats)}
    for (r, _, test), (risk, curves, alpha) in zip(tasks, outs):
        cols[r][test] = risk
        surv_sum[test] += curves
        chosen.append(alpha)
    for r in range(repeats):
        risks[f"risk_r{r}"] = cols[r]
    oof = pd.concat([surv, risks.mean(axis=1).rename("risk"), risks], axis=1)
    survival = pd.DataFrame(surv_sum / repeats, index=X.index, columns=times)
    metrics = survival_metrics(oof, survival, horizons=horizons, n_bootstrap=n_bootstrap,
                               random_state=random_state, notes=notes)
    metrics.update(n=int(len(X)), events=int(ev.sum()), n_features=int(X.shape[1]),
                   alpha_median=float(np.median(chosen)))
    return RiskResult(name, oof, survival, metrics, notes)


def _ibs_grid(surv: pd.DataFrame, n: int = 25) -> np.ndarray:
    t = surv["time"].to_numpy(dtype=float)
    lo, hi = np.percentile(t, [10, 80])
    return np.unique(np.linspace(lo, min(hi, np.max(t) * 0.999), n))


def survival_metrics(oof: pd.DataFrame, survival: pd.DataFrame | None = None, *, horizons: Sequence[float] = (),
                     n_bootstrap: int = 500, random_state: int = 0, notes: list[str] | None = None) -> dict[str, Any]:
    """Harrell and Uno C-index (bootstrap 95% CI), time-dependent AUC at ``horizons`` and the integrated
    Brier score, from out-of-fold ``risk`` (higher = worse prognosis) and survival curves."""
    from sksurv.metrics import (concordance_index_censored, concordance_index_ipcw, cumulative_dynamic_auc,
                                integrated_brier_score)

    notes = notes if notes is not None else []
    t = oof["time"].to_numpy(dtype=float)
    e = oof["event"].to_numpy(dtype=bool)
    risk = oof["risk"].to_numpy(dtype=float)
    y = _structured(t, e)
    tau = float(np.percentile(t[e], 90)) if e.any() else float(np.max(t))

    def harrell(idx: np.ndarray) -> float:
        return float(concordance_index_censored(e[idx], t[idx], risk[idx])[0])

    def uno(idx: np.ndarray) -> float:
        yy = y[idx]
        return float(concordance_index_ipcw(yy, yy, risk[idx], tau=tau)[0])

    out: dict[str, Any] = {}
    rng = np.random.default_rng(random_state)
    boots = [rng.integers(0, len(t), len(t)) for _ in range(n_bootstrap)]
    for label, fn in (("c_harrell", harrell), ("c_uno", uno)):
        est = fn(np.arange(len(t)))
        vals = []
        for idx in boots:
            if e[idx].sum() < 2:
                continue
            try:
                vals.append(fn(idx))
            except ValueError:  # a resample whose censoring distribution breaks IPCW
                continue
        lo, hi = np.nanpercentile(vals, [2.5, 97.5]) if vals else (np.nan, np.nan)
        out.update({label: est, f"{label}_low": float(lo), f"{label}_high": float(hi)})
    out["uno_tau"] = tau
    ok = [h for h in horizons if t[e].min(initial=np.inf) <= h < t.max() and (t > h).any()]
    for h in horizons:
        if h not in ok:
            notes.append(f"time-dependent AUC at {h:g}: outside the follow-up of this cohort (max {t.max():.1f})")
    for h in ok:
        try:
            auc, _ = cumulative_dynamic_auc(y, y, risk, [h])
            out[f"auc_t{h:g}"] = float(auc[0])
        except ValueError as exc:
            notes.append(f"time-dependent AUC at {h:g} not estimable ({exc})")
    if survival is not None and survival.shape[1] >= 2:
        grid = survival.columns.to_numpy(dtype=float)
        keep = (grid > t.min()) & (grid < t.max())
        try:
            out["ibs"] = float(integrated_brier_score(y, y, survival.to_numpy()[:, keep], grid[keep]))
            # reference: the Kaplan-Meier curve of the whole cohort for everyone (no information)
            from lifelines import KaplanMeierFitter

            km = KaplanMeierFitter().fit(t, e).survival_function_at_times(grid[keep]).to_numpy()
            out["ibs_km_reference"] = float(integrated_brier_score(y, y, np.tile(km, (len(t), 1)), grid[keep]))
        except ValueError as exc:
            notes.append(f"integrated Brier score not estimable ({exc})")
    return out


def risk_groups(risk: pd.Series, split: str = "median") -> pd.Series:
    """Risk-score groups: ``median`` (low/high) or ``tertiles`` (low/intermediate/high), as ordered ints."""
    if split == "median":
        return (risk > risk.median()).astype(int).rename("risk_group")
    if split == "tertiles":
        return pd.qcut(risk.rank(method="first"), 3, labels=False).astype(int).rename("risk_group")
    raise ValueError(f"split must be 'median' or 'tertiles', got {split!r}")


def survival_calibration(result: RiskResult, horizon: float, groups: int = 3) -> pd.DataFrame:
    """Predicted vs observed survival at ``horizon`` by groups of predicted risk: mean out-of-fold
    S(horizon) against the Kaplan-Meier estimate (95% CI) of the same cases."""
    from lifelines import KaplanMeierFitter

    grid = result.survival.columns.to_numpy(dtype=float)
    j = int(np.argmin(np.abs(grid - horizon)))
    pred = result.survival.iloc[:, j]
    g = pd.qcut(pred.rank(method="first"), groups, labels=False)
    rows = []
    for gi in range(groups):
        idx = g.index[g == gi]
        d = result.oof.loc[idx]
        kmf = KaplanMeierFitter().fit(d["time"], d["event"])
        ci = kmf.confidence_interval_survival_function_
        at = ci.index[ci.index <= grid[j]]
        obs = float(kmf.survival_function_at_times(grid[j]).iloc[0])
        lo, hi = (ci.loc[at[-1]].to_numpy(dtype=float) if len(at) else (np.nan, np.nan))
        rows.append({"group": gi, "n": len(idx), "events": int(d["event"].sum()), "horizon": float(grid[j]),
                     "predicted": float(pred.loc[idx].mean()), "observed": obs,
                     "observed_low": float(lo), "observed_high": float(hi)})
    return pd.DataFrame(rows)


def evaluate_risk_models(feature_sets: dict[str, pd.DataFrame], surv: pd.DataFrame, **kw: Any
                         ) -> tuple[dict[str, RiskResult], pd.DataFrame, list[str]]:
    """Cross-validated risk model per feature set; a table with C-indices (CIs), td-AUCs and IBS.

    ``surv`` is indexed by case id with ``time`` and ``event``; a set that cannot be fitted is noted
    and skipped. The ``variant`` column says pre-operative (no ``resection:`` column) or post-operative.
    """
    results: dict[str, RiskResult] = {}
    notes: list[str] = []
    rows = []
    for name, X in feature_sets.items():
        X = X.loc[X.index.intersection(surv.index)]
        try:
            res = cv_risk_model(X, surv.loc[X.index], name=name, **kw)
        except ValueError as exc:
            notes.append(f"risk model '{name}' skipped: {exc}")
            continue
        results[name] = res
        notes.extend(f"{name}: {n}" for n in res.notes)
        post = any(str(c).startswith("resection:") for c in X.columns)  # also true of "all" with resection
        rows.append({"feature_set": name, "variant": "post-operative" if post else "pre-operative", **res.metrics})
    return results, pd.DataFrame(rows), notes


def risk_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Readable C-index table: estimate [95% CI] per feature set."""
    if metrics.empty:
        return metrics
    fmt = lambda r, m: f"{r[m]:.3f} [{r[m + '_low']:.3f}-{r[m + '_high']:.3f}]"  # noqa: E731
    out = metrics[["feature_set", "variant", "n", "events", "n_features"]].copy()
    out["Harrell C"] = [fmt(r, "c_harrell") for _, r in metrics.iterrows()]
    out["Uno C"] = [fmt(r, "c_uno") for _, r in metrics.iterrows()]
    out["vs chance"] = np.where(metrics["c_harrell_low"] > 0.5, "above chance", "CI includes 0.5: no evidence of prognostic value")
    for c in [c for c in metrics.columns if c.startswith("auc_t")] + [c for c in ("ibs", "ibs_km_reference") if c in metrics]:
        out[c] = metrics[c].round(3)
    return out


# --------------------------------------------------------------------------------------- paper reference
#: The seed paper's survival splits (MISSION.md stage 4), for side-by-side display only: different
#: cohorts, so never a like-for-like comparison.
PAPER_SPLITS = pd.DataFrame([
    {"subgroup": "idhwt_lgg", "paper_median_os_months": "48.63 vs 38.27", "paper_logrank_p": 0.023},
    {"subgroup": "triple_negative_gbm", "paper_median_os_months": "36.8 vs 18.2", "paper_logrank_p": 0.013},
])


def simulated_truth(cohort_root: Any) -> dict[str, float] | None:
    """The synthetic cohort's simulated log hazard ratios (``cohort.json``), or ``None`` for real data."""
    import json
    from pathlib import Path

    if cohort_root is None:
        return None
    p = Path(cohort_root) / "cohort.json"
    if not p.exists():
        return None
    model = json.loads(p.read_text()).get("hazard_model") or {}
    return model.get("log_hazard_ratios")


# ------------------------------------------------------------------------------------- orchestration
@dataclass
class SubgroupClusters:
    """Consensus clustering of one subgroup and the survival of its clusters (or why there is none)."""

    subgroup: Subgroup
    model: ConsensusClustering | None = None
    labels: pd.Series | None = None          # case_id -> cluster
    survival: dict[str, Any] | None = None   # see cluster_survival
    notes: list[str] = field(default_factory=list)


def subgroup_table(clinical: pd.DataFrame, subgroups: Sequence[str]) -> pd.DataFrame:
    """Size and event count of each subgroup, with the reasons a subgroup cannot be analysed."""
    if not subgroups:
        return pd.DataFrame(columns=["subgroup", "query", "n_cases", "events", "problems"])
    return pd.concat([select_subgroup(clinical, s).summary() for s in subgroups], ignore_index=True)


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


def synthetic_truth(cohort_root: Any) -> tuple[dict[str, float] | None, pd.DataFrame | None]:
    """The synthetic cohort's simulated log hazard ratios and latent truth table (``None`` for real data)."""
    from pathlib import Path

    hr = simulated_truth(cohort_root)
    p = Path(cohort_root) / "truth.csv" if cohort_root is not None else None
    truth = pd.read_csv(p) if p is not None and p.exists() else None
    return hr, truth


def truth_recovery(clinical: pd.DataFrame, log_hr: dict[str, float], time_unit: str = "months") -> pd.DataFrame:
    """Multivariable Cox on the observed covariates of the simulation against the simulated log HRs.

    The latent risk group is not observed, so its effect is left out of the fit (the omission
    shrinks the other log HRs slightly towards 0: Cox models are non-collapsible).
    """
    surv = survival_frame(clinical, time_unit)
    design, _ = cox_design(surv, None, ["age", "kps", "resection", "who_grade", "idh_mutant", "codel_1p19q"])
    if {"mgmt_methylated", "idh_mutant"} <= set(surv.columns):
        design["mgmt_in_idhwt"] = pd.to_numeric(surv["mgmt_methylated"]) * (1 - pd.to_numeric(surv["idh_mutant"]))
    fit = fit_cox(surv, design, min_events_per_variable=2.0)
    names = ("age_per_10y", "kps_per_10", "gtr", "grade3", "grade4", "idh_wildtype", "codel", "mgmt_in_idhwt")
    if not len(fit.table):
        return pd.DataFrame({"covariate": list(names), "note": "; ".join(fit.notes)})
    t = fit.table.set_index("covariate")
    rows = []
    for cov in names:
        if cov not in t.index:
            continue
        true = log_hr.get(cov)
        r = t.loc[cov]
        rows.append({"covariate": cov, "simulated_log_hr": true, "estimated_log_hr": r["coef"],
                     "ci_low": r["coef_low"], "ci_high": r["coef_high"],
                     "ci_covers_truth": bool(true is not None and r["coef_low"] <= true <= r["coef_high"])})
    return pd.DataFrame(rows).assign(n=fit.n, events=fit.events)


def truth_summary(recovery: pd.DataFrame) -> tuple[str, int | None]:
    """A sentence on the simulated-HR check, and how many simulated log HRs the 95% CIs cover."""
    if recovery.empty:
        return "Real cohort: no simulated truth.", None
    if "ci_covers_truth" not in recovery:
        return f"The Cox model of the simulated covariates could not be fitted: {recovery['note'].iloc[0]}", None
    k = int(recovery["ci_covers_truth"].sum())
    return (f"{k} of {len(recovery)} simulated log hazard ratios lie inside the 95% CI of the Cox fit "
            f"({int(recovery['n'].iloc[0])} cases, {int(recovery['events'].iloc[0])} events)."), k


def save_clusters(path: Any, result: SubgroupClusters, **meta: Any) -> None:
    """Write a subgroup's fitted clustering (embedding + centroids) for assignment of other cohorts; atomic."""
    import joblib
    from pathlib import Path

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; models of a run are never overwritten")
    bundle = {"model": result.model, "subgroup": result.subgroup.name, "query": result.subgroup.query,
              "features": list(result.model.feature_names_in_), "k": result.model.best_k_,
              "labels": result.labels, **meta}
    tmp = path.with_name(path.name + ".part")
    joblib.dump(bundle, tmp)
    tmp.replace(path)


def fit_final_risk(X: pd.DataFrame, surv: pd.DataFrame, *, l1_ratio: float = 0.5, inner_splits: int = 3,
                   random_state: int = 0) -> TunedCoxnet:
    """Tune the Coxnet penalty (inner CV) and refit on the whole cohort, for locked use elsewhere."""
    s = surv.loc[X.index]
    return TunedCoxnet(l1_ratio, inner_splits, random_state=random_state).fit(
        X.to_numpy(dtype=float), _structured(s["time"], s["event"]))


def save_risk_model(path: Any, search: Any, X: pd.DataFrame, surv: pd.DataFrame, **meta: Any) -> dict[str, Any]:
    """Write a refitted risk model with its feature list and training-data hash (joblib); atomic, no overwrite."""
    import joblib
    from pathlib import Path

    from glioma_nb.classify import data_hash

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; models of a run are never overwritten")
    s = surv.loc[X.index]
    bundle = {"model": search, "best_params": {"alpha": search.best_alpha_, "l1_ratio": search.l1_ratio},
              "inner_cv_c_index": search.best_score_, "features": list(X.columns), "n_train": int(len(X)),
              "events": int(s["event"].sum()), "training_data_sha256": data_hash(X, s["time"] * (2 * s["event"] - 1)),
              # the cut-off of locked risk groups in other cohorts (validate.apply_risk_models)
              "training_risk_median": float(np.median(search.predict(X.to_numpy(dtype=float)))), **meta}
    tmp = path.with_name(path.name + ".part")
    joblib.dump(bundle, tmp)
    tmp.replace(path)
    return bundle


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


def cluster_truth_agreement(results: dict[str, SubgroupClusters], truth: pd.DataFrame) -> pd.DataFrame:
    """Adjusted Rand index of each subgroup's clusters with the synthetic latent variables, and the
    share of the latent risk group per cluster (does the high-hazard cluster hold the risk group?)."""
    from sklearn.metrics import adjusted_rand_score

    t = truth.assign(case_id=truth["case_id"].astype(str)).set_index("case_id")
    rows = []
    for name, r in results.items():
        if r.labels is None:
            continue
        tt = t.reindex(r.labels.index)
        row: dict[str, Any] = {"subgroup": name, "n": len(r.labels)}
        for col in ("risk_group", "subtype"):
            if col in tt:
                row[f"ari_{col}"] = adjusted_rand_score(tt[col].astype(str), r.labels)
        if "risk_group" in tt:
            share = tt["risk_group"].groupby(r.labels).mean()
            row["risk_group_share_by_cluster"] = "/".join(f"{v:.2f}" for v in share.to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def oof_table(results: dict[str, RiskResult]) -> pd.DataFrame:
    """Out-of-fold risk scores of every risk model, one row per case and model."""
    parts = [r.oof[["time", "event", "risk"]].assign(feature_set=name).rename_axis("case_id").reset_index()
             for name, r in results.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["case_id", "time", "event", "risk", "feature_set"])


def best_risk_model(results: dict[str, RiskResult], metrics: pd.DataFrame) -> RiskResult | None:
    """The risk model with the highest Harrell C (first on ties), or ``None``."""
    if metrics.empty:
        return None
    return results[metrics.sort_values("c_harrell", ascending=False, kind="stable").iloc[0]["feature_set"]]


def save_models(ctx: Any, clusters: dict[str, SubgroupClusters], feature_sets: dict[str, pd.DataFrame],
                risk_results: dict[str, RiskResult], surv: pd.DataFrame, **fit_kw: Any) -> list[dict[str, Any]]:
    """Save every fitted clustering and a refitted risk model per evaluated feature set into ``models/``."""
    rows = []
    for name, r in clusters.items():
        if r.model is None:
            continue
        fname = f"clusters__{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.joblib"
        save_clusters(ctx.path("models", fname), r, cohort=ctx.cohort.name)
        rows.append({"model": fname, "kind": "consensus clusters", "subgroup": name, "k": r.model.best_k_,
                     "features": len(r.model.feature_names_in_)})
    for name in risk_results:
        X = feature_sets[name].loc[lambda d: d.index.isin(surv.index)]
        search = fit_final_risk(X, surv, **fit_kw)
        fname = f"risk__{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.joblib"
        b = save_risk_model(ctx.path("models", fname), search, X, surv, feature_set=name, cohort=ctx.cohort.name,
                            cv_metrics=risk_results[name].metrics)
        rows.append({"model": fname, "kind": "Coxnet risk model", "subgroup": "all", "k": "",
                     "features": len(b["features"])})
    return rows


def predict_risk(bundle: dict[str, Any], X: pd.DataFrame) -> pd.Series:
    """Risk score (linear predictor; higher = worse) of a saved risk model for the cases of ``X``."""
    from glioma_nb.classify import model_features

    Xf = model_features(bundle, X, f"risk model {bundle.get('feature_set')}")
    return pd.Series(bundle["model"].predict(Xf.to_numpy(dtype=float)), index=X.index, name="risk")


def _jsonable(v: Any) -> Any:
    """A table cell as a JSON value: missing (NaN, NA, None) -> None, numpy scalars -> Python."""
    if v is None or (np.ndim(v) == 0 and pd.isna(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def cluster_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """Headline clustering numbers per subgroup for the step metrics (JSON-safe)."""
    out = {}
    for _, r in table.iterrows():
        out[r["subgroup"]] = {k: _jsonable(v) for k, v in r.items() if k in ("n_cases", "events", "k", "pac", "stability_ari",
                                                             "median_os_by_cluster", "logrank_p", "hr", "hr_adjusted")}
    return out


def risk_metrics_record(metrics: pd.DataFrame) -> dict[str, Any]:
    """C-indices (with CIs), td-AUCs and IBS per risk feature set for the step metrics (JSON-safe)."""
    out = {}
    for _, r in metrics.iterrows():
        out[r["feature_set"]] = {k: _jsonable(v) for k, v in r.items() if k != "feature_set"}
    return out
