"""Penalised Cox risk models (scikit-survival Coxnet): penalty tuned in inner folds, evaluated on out-of-fold
risk from an outer cross-validation stratified by event, refitted on the whole cohort for locked use."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.feature_selection import VarianceThreshold
from sklearn.impute import SimpleImputer
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from glioma_nb import compute, records
from glioma_nb.stratify.survival import _ibs_grid, _structured, logrank, risk_groups, survival_metrics


# ---------------------------------------------------------------------------------------- risk models
#: the risk-model sources built from the clinical table (the others are image feature tables)
CLINICAL_SOURCES = ("age", "clinical", "molecular", "resection")


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
    for name, df in zip(CLINICAL_SOURCES, (age, clin, mol, resection)):
        df = df.loc[:, df.notna().any() & (df.nunique() > 1)]
        if df.shape[1]:
            out[name] = df
    for name, df in image_sources.items():
        out[name] = df.reindex(c.index)
    return out


#: penalty grid of the elastic-net Cox models (features are standardised first)
COXNET_ALPHAS = np.logspace(0, -2.5, 12)


def _coxnet_pipeline(l1_ratio: float, alphas: np.ndarray) -> Any:
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


class TunedCoxnet(BaseEstimator):
    """Elastic-net Cox model (scikit-survival Coxnet after median imputation and scaling) whose penalty
    is chosen by an inner cross-validation stratified by event, scored by Harrell's C.

    Each inner fold fits the whole penalty path once, so tuning costs ``inner_splits + 1`` path fits
    instead of one fit per penalty and fold. ``predict`` gives the linear predictor (higher = worse),
    ``score`` Harrell's C as scikit-survival's estimators do; a scikit-learn estimator (``get_params``,
    ``clone``), with ``y`` the structured (event, time) array of ``sksurv.util.Surv``.
    """

    def __init__(self, l1_ratio: float = 0.5, inner_splits: int = 3, alphas: np.ndarray = COXNET_ALPHAS,
                 random_state: int = 0) -> None:
        self.l1_ratio = l1_ratio
        self.inner_splits = inner_splits
        self.alphas = alphas
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> "TunedCoxnet":
        from sksurv.metrics import concordance_index_censored

        X = np.asarray(X, dtype=float)
        alphas_all = np.asarray(self.alphas, dtype=float)
        event, time = y[y.dtype.names[0]], y[y.dtype.names[1]]
        scores = np.full((self.inner_splits, len(alphas_all)), np.nan)
        cv = StratifiedKFold(self.inner_splits, shuffle=True, random_state=self.random_state)
        for i, (tr, va) in enumerate(cv.split(X, event.astype(int))):
            try:
                pipe, alphas = _fit_path(X[tr], y[tr], self.l1_ratio, alphas_all)
            except ValueError:
                continue
            for j, a in enumerate(alphas):
                try:
                    scores[i, j] = concordance_index_censored(event[va], time[va], pipe.predict(X[va], alpha=a))[0]
                except ValueError:  # no comparable pair in this validation fold
                    pass
        valid = ~np.isnan(scores).all(axis=0)
        mean = np.full(len(alphas_all), -np.inf)
        mean[valid] = np.nanmean(scores[:, valid], axis=0)
        if not valid.any():
            raise ValueError("every penalty failed in the inner folds (Coxnet did not converge); "
                             "try fewer features or a larger penalty")
        best = int(np.argmax(mean))  # alphas run from strong to weak: ties keep the sparser model
        self.best_alpha_ = float(alphas_all[best])
        self.best_score_ = float(mean[best])
        self.inner_scores_ = scores
        self.pipeline_, _ = _fit_path(X, y, self.l1_ratio, alphas_all[: best + 1])
        return self

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """Harrell's C of :meth:`predict` on (event, time) ``y``."""
        from sksurv.metrics import concordance_index_censored

        return float(concordance_index_censored(y[y.dtype.names[0]], y[y.dtype.names[1]], self.predict(X))[0])

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

    def one(train: np.ndarray, test: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float] | ValueError:
        try:
            model = TunedCoxnet(l1_ratio, inner_splits, random_state=seed).fit(Xa[train], y[train])
        except ValueError as exc:   # returned, not raised: an exception in a joblib worker kills the process pool,
            return exc              # and the next model would wait seconds for new processes
        fns = model.predict_survival_function(Xa[test])
        curves = np.vstack([fn(np.clip(times, fn.domain[0], fn.domain[1])) for fn in fns])
        return model.predict(Xa[test]), curves, model.best_alpha_

    tasks = [(r, train, test) for r in range(repeats)
             for train, test in StratifiedKFold(outer_splits, shuffle=True, random_state=random_state + r).split(Xa, ev)]
    # folds of a small cohort finish before a pool of processes has started: the pool only when worth it
    outs = compute.parallel_if_worth(one, [(train, test, random_state + r) for r, train, test in tasks], n_jobs)
    failed = [o for o in outs if isinstance(o, ValueError)]
    if failed:
        raise ValueError(f"{name}: {failed[0]}") from failed[0]
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


def fit_final_risk(X: pd.DataFrame, surv: pd.DataFrame, *, l1_ratio: float = 0.5, inner_splits: int = 3,
                   random_state: int = 0) -> TunedCoxnet:
    """Tune the Coxnet penalty (inner CV) and refit on the whole cohort, for locked use elsewhere."""
    s = surv.loc[X.index]
    return TunedCoxnet(l1_ratio, inner_splits, random_state=random_state).fit(
        X.to_numpy(dtype=float), _structured(s["time"], s["event"]))


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


def risk_group_frame(result: RiskResult, split: str = "median") -> tuple[pd.DataFrame, float | None]:
    """The out-of-fold cases of a risk model with their named risk group (median: low/high; tertiles:
    low/intermediate/high), and the log-rank P between the groups (None when not testable)."""
    groups = risk_groups(result.oof["risk"], split)
    names = {0: "low", 1: "high"} if split == "median" else {0: "low", 1: "intermediate", 2: "high"}
    data = result.oof.assign(risk_group=groups.map(names))
    lr = logrank(data, "risk_group")
    return data, (lr["p_value"] if lr else None)


def final_risk_record(X: pd.DataFrame, surv: pd.DataFrame, *, name: str, l1_ratio: float = 0.5,
                      inner_splits: int = 3, random_state: int = 0, **meta: Any) -> records.ModelRecord:
    """A Coxnet tuned by inner CV and refitted on the whole cohort, as a locked ``risk`` record with its
    feature list, training-data hash and the training median risk (the cut-off of risk groups elsewhere)."""
    search = fit_final_risk(X, surv, l1_ratio=l1_ratio, inner_splits=inner_splits, random_state=random_state)
    s = surv.loc[X.index]
    return records.make("risk", name, search, X=X, y=s["time"] * (2 * s["event"] - 1),
                        best_params={"alpha": search.best_alpha_, "l1_ratio": search.l1_ratio},
                        inner_cv_c_index=search.best_score_, n_train=int(len(X)), events=int(s["event"].sum()),
                        training_risk_median=float(np.median(search.predict(X.to_numpy(dtype=float)))), **meta)
