"""Nested cross-validation of one node on one feature set, the permutation test, per-node statistics, the
final refit, and the grid of every node x feature set that notebook 03 reports (:func:`evaluate`)."""
from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import pandas as pd
import sklearn
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from glioma_nb import compute, records, stats
from glioma_nb.classify.nodes import NODES
from glioma_nb.classify.pipelines import FastStratifiedGroupKFold, build_pipeline, node_problem, tuned_search


@dataclass
class NestedCVResult:
    """Out-of-fold probabilities of a nested, grouped, stratified, repeated cross-validation."""

    oof: pd.DataFrame                      # index: sample id; columns: y, prob (mean over repeats), prob_r<i>
    best_params: list[dict[str, Any]] = field(default_factory=list)

    @property
    def auc(self) -> float:

        return float(roc_auc_score(self.oof["y"], self.oof["prob"]))

    @property
    def auc_per_repeat(self) -> list[float]:

        return [float(roc_auc_score(self.oof["y"], self.oof[c])) for c in self.oof if c.startswith("prob_r")]

    def __repr__(self) -> str:
        return (f"NestedCVResult(n={len(self.oof)}, auc={self.auc:.3f}, "
                f"auc_per_repeat={[round(a, 3) for a in self.auc_per_repeat]})")


def nested_cv(X: pd.DataFrame, y: pd.Series, groups: pd.Series | None = None, *, classifier: str = "logreg_l2",
              selection: str = "univariate", k: int = 10, outer_splits: int = 5, inner_splits: int = 3,
              repeats: int = 3, random_state: int = 0) -> NestedCVResult:
    """Nested cross-validation of one binary node, split by patient (``groups``) and stratified by class.

    The outer loop estimates performance; inside each outer training set a grid search (inner
    grouped CV, scored by AUC) tunes the pipeline, so imputation, scaling, feature selection and
    tuning never see the outer test fold. Repeated ``repeats`` times with different splits.
    """
    y = pd.Series(y).astype(int)
    if set(y.unique()) != {0, 1}:
        raise ValueError("nested_cv needs both classes 0 and 1")
    groups = pd.Series(groups if groups is not None else X.index, index=X.index)
    n_groups_min = min(groups[y == c].nunique() for c in (0, 1))
    if n_groups_min < outer_splits:
        raise ValueError(f"the smaller class has {n_groups_min} patients, fewer than {outer_splits} outer folds")

    probs = pd.DataFrame(index=X.index)
    best_params: list[dict[str, Any]] = []
    Xa, ya, ga = X.to_numpy(dtype=float), y.to_numpy(), groups.to_numpy()  # arrays: less sklearn overhead
    with sklearn.config_context(skip_parameter_validation=True):
        for r in range(repeats):
            seed = random_state + r
            outer = FastStratifiedGroupKFold(n_splits=outer_splits, shuffle=True, random_state=seed)
            col = np.full(len(X), np.nan)
            for train, test in outer.split(Xa, ya, ga):
                search = tuned_search(X, classifier=classifier, selection=selection, k=k,
                                      inner_splits=inner_splits, random_state=seed)
                search.fit(Xa[train], ya[train], groups=ga[train])
                col[test] = search.predict_proba(Xa[test])[:, 1]
                best_params.append(search.best_params_)
            probs[f"prob_r{r}"] = col
    oof = pd.concat([y.rename("y"), probs.mean(axis=1).rename("prob"), probs], axis=1)
    return NestedCVResult(oof, best_params)


def fixed_cv_auc(X: pd.DataFrame, y: pd.Series, groups: pd.Series | None = None, *, classifier: str = "logreg_l2",
                 selection: str = "univariate", k: int = 10, outer_splits: int = 5, random_state: int = 0,
                 **_: Any) -> float:
    """AUC of one grouped, stratified CV of the pipeline at fixed hyper-parameters (the middle of the
    classifier's grid; no inner tuning): the cheap statistic of ``permutation_test(method="fixed")``."""
    y = pd.Series(y).astype(int)
    groups = pd.Series(groups if groups is not None else X.index, index=X.index)
    pipe, grid = build_pipeline(classifier, selection, k, X.shape[1], random_state=random_state)
    pipe.set_params(**{name: values[len(values) // 2] for name, values in grid.items()})
    Xa, ya, ga = X.to_numpy(dtype=float), y.to_numpy(), groups.to_numpy()
    prob = np.full(len(X), np.nan)
    with sklearn.config_context(skip_parameter_validation=True):
        outer = FastStratifiedGroupKFold(n_splits=outer_splits, shuffle=True, random_state=random_state)
        for train, test in outer.split(Xa, ya, ga):
            prob[test] = clone(pipe).fit(Xa[train], ya[train]).predict_proba(Xa[test])[:, 1]
    return stats.auc(ya, prob)


#: ``permutation="auto"``: above this many cases x features a nested re-run per permutation is too dear
AUTO_NESTED_MAX_CELLS = 100_000

#: permutation-test methods: name -> what is recomputed per permutation
PERMUTATION_METHODS: dict[str, str] = {
    "nested": "the whole nested CV (one repeat) per permutation; tests the reported AUC itself",
    "fixed": "one CV at fixed hyper-parameters per permutation, on the observed labels too; exact, ~4x cheaper",
    "auto": f"nested when cases x features <= {AUTO_NESTED_MAX_CELLS:,}, else fixed",
}


def permutation_method(method: str, X: pd.DataFrame) -> str:
    """The permutation statistic used for ``X``: ``method``, or for ``auto`` nested on small tables and fixed
    on large ones (cases x features above :data:`AUTO_NESTED_MAX_CELLS`)."""
    if method not in PERMUTATION_METHODS:
        raise ValueError(f"unknown permutation method {method!r}; use one of {sorted(PERMUTATION_METHODS)}")
    if method == "auto":
        return "nested" if X.shape[0] * X.shape[1] <= AUTO_NESTED_MAX_CELLS else "fixed"
    return method


#: the permutation test stops once this many permuted AUCs reach the observed one (sequential, Besag-Clifford)
STOP_AFTER = 10


def permutation_test(X: pd.DataFrame, y: pd.Series, groups: pd.Series | None, observed_auc: float, *,
                     n_permutations: int = 100, stop_after: int = STOP_AFTER, n_jobs: int = 1, random_state: int = 0,
                     method: str = "nested", **cv_kw: Any) -> dict[str, Any]:
    """Permutation test of the cross-validated AUC against chance.

    Labels are permuted between patients (all scans of a patient keep one label) and the statistic is
    re-computed on each permutation. ``method="nested"`` re-runs the *whole* nested procedure (one repeat)
    and compares with ``observed_auc``; ``method="fixed"`` computes a cheaper statistic, one CV of the
    pipeline at fixed hyper-parameters (:func:`fixed_cv_auc`), on the observed labels and on every
    permutation alike, so the test is still exact (Monte-Carlo p-value under exchangeable labels) at about
    a quarter of the cost; ``observed_auc`` is then replaced by that statistic's own value. ``"auto"``: nested
    up to :data:`AUTO_NESTED_MAX_CELLS` cases x features, fixed above.

    Sequential Monte-Carlo stopping (Besag & Clifford 1991): permutations are taken in a fixed order; once
    ``stop_after`` permuted values reach the observed one (at the k-th permutation), p = stop_after / k and
    the rest are skipped; otherwise p = (1 + g) / (1 + n). The stopping point does not depend on ``n_jobs``,
    so serial and parallel runs give the same p.
    """
    method = permutation_method(method, X)
    y = pd.Series(y).astype(int)
    groups = pd.Series(groups if groups is not None else X.index, index=X.index)
    patient_label = y.groupby(groups).first()
    rng = np.random.default_rng(random_state)
    cv_kw = {**cv_kw, "repeats": 1}
    if method == "fixed":
        observed_auc = fixed_cv_auc(X, y, groups, random_state=random_state, **cv_kw)

    def one(seed: int) -> float:
        perm = pd.Series(np.random.default_rng(seed).permutation(patient_label.to_numpy()),
                         index=patient_label.index)
        y_p = groups.map(perm).astype(int)
        if method == "fixed":
            return fixed_cv_auc(X, y_p, groups, random_state=int(seed % 2**31), **cv_kw)
        return nested_cv(X, y_p, groups, random_state=int(seed % 2**31), **cv_kw).auc

    seeds = rng.integers(0, 2**62, size=n_permutations)
    null: list[float] = []
    batch = max(1, 2 * (n_jobs if n_jobs > 0 else compute.cpu_count()))
    with Parallel(n_jobs=n_jobs) as par:
        for start in range(0, n_permutations, batch):
            null.extend(par(delayed(one)(int(s)) for s in seeds[start:start + batch]))
            if sum(a >= observed_auc for a in null) >= stop_after:
                break
    hits = np.cumsum(np.asarray(null) >= observed_auc)
    stopped = bool(hits.size and hits[-1] >= stop_after)
    if stopped:  # cut at the permutation that reached stop_after: the same point whatever the batch size
        null = null[:int(np.argmax(hits >= stop_after)) + 1]
    null_arr = np.asarray(null)
    ge = int((null_arr >= observed_auc).sum())
    p = ge / len(null) if stopped else (1 + ge) / (1 + len(null))
    return {"p_value": float(p), "n_permutations": len(null), "stopped_early": stopped, "method": method,
            "statistic": float(observed_auc), "null_mean_auc": float(null_arr.mean()),
            "null_auc_95": float(np.quantile(null_arr, 0.95))}


# ----------------------------------------------------------------------------------------- statistics
def threshold_metrics(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, balanced accuracy, sensitivity, specificity at ``threshold``, and the confusion counts."""
    y = np.asarray(y).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    sens = tp / (tp + fn) if tp + fn else np.nan
    spec = tn / (tn + fp) if tn + fp else np.nan
    return {"accuracy": (tp + tn) / len(y), "balanced_accuracy": (sens + spec) / 2, "sensitivity": sens,
            "specificity": spec, "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def _metric_fns() -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:

    return {"auc": stats.auc,
            **{m: (lambda y, p, m=m: threshold_metrics(y, p)[m])
               for m in ("accuracy", "balanced_accuracy", "sensitivity", "specificity")}}


def node_statistics(y: np.ndarray, prob: np.ndarray, n_boot: int = 1000, random_state: int = 0) -> dict[str, Any]:
    """Point metrics with stratified bootstrap 95% CIs, DeLong CI of the AUC, calibration."""
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=float)
    out: dict[str, Any] = {"n": int(len(y)), "n_pos": int(y.sum()), "n_neg": int((1 - y).sum())}
    for name, fn in _metric_fns().items():
        est, lo, hi = stats.bootstrap_ci(fn, y, prob, n_boot=n_boot, random_state=random_state)
        out.update({name: est, f"{name}_lo": lo, f"{name}_hi": hi})
    _, out["auc_delong_lo"], out["auc_delong_hi"] = stats.auc_ci_delong(y, prob)
    if out["auc"] < 1.0:
        cal = stats.calibration(y, prob)
        out.update(calibration_slope=cal.slope, calibration_slope_lo=cal.slope_lo, calibration_slope_hi=cal.slope_hi,
                   calibration_intercept=cal.intercept)
    else:  # perfect separation: the logistic calibration fit diverges, the slope is undefined
        out.update(calibration_slope=np.nan, calibration_slope_lo=np.nan, calibration_slope_hi=np.nan,
                   calibration_intercept=np.nan)
    out.update({k: v for k, v in threshold_metrics(y, prob).items() if k in ("tp", "tn", "fp", "fn")})
    return out


def fit_final(X: pd.DataFrame, y: pd.Series, groups: pd.Series | None = None, **search_kw: Any) -> Any:
    """Tune (inner grouped CV) and refit the pipeline on the whole training cohort."""
    groups = pd.Series(groups if groups is not None else X.index, index=X.index)
    search = tuned_search(X, **search_kw)
    search.fit(X, pd.Series(y).astype(int), groups=groups)
    return search


def top_features(record: records.ModelRecord, n: int = 10) -> pd.DataFrame:
    """The selected features of a final model and their weight (standardised coefficient or importance)."""
    pipe = record.payload
    names = np.asarray(record.features)
    names = names[pipe.named_steps["constant"].get_support()]
    sel = pipe.named_steps["select"]
    if sel != "passthrough":
        names = names[sel.get_support()]
    clf = pipe.named_steps["clf"]
    if hasattr(clf, "coef_"):
        w, kind = clf.coef_.ravel(), "coefficient (per SD)"
    elif hasattr(clf, "feature_importances_"):
        w, kind = clf.feature_importances_, "importance"
    else:
        return pd.DataFrame(columns=["feature", "weight", "kind"])
    df = pd.DataFrame({"feature": names, "weight": w, "kind": kind})
    return df.reindex(df["weight"].abs().sort_values(ascending=False).index).head(n).reset_index(drop=True)


# ------------------------------------------------------------------------------------- orchestration
@dataclass
class NodeGrid:
    """Every node x feature set: statistics, out-of-fold predictions, skipped pairs and the refitted models
    (:class:`records.ModelRecord` by (node, feature set))."""

    results: pd.DataFrame                 # one row per node x feature set
    oof: pd.DataFrame                     # long: case_id, node, feature_set, y, prob
    skipped: pd.DataFrame                 # node, reason
    notes: list[str]
    models: dict[tuple[str, str], records.ModelRecord] = field(default_factory=dict)
    processes: int = 1                    # how many processes the pairs ran in (1: in this one)

    def headline(self) -> list[dict[str, Any]]:
        """Per node x feature set: n, AUC with CI, balanced accuracy, P values (for the manifest)."""
        if self.results.empty:
            return []
        cols = ["node", "feature_set", "n", "auc", "auc_lo", "auc_hi", "balanced_accuracy"]
        cols += [c for c in ("perm_p", "delong_vs_baseline_p") if c in self.results]
        return self.results[cols].round(4).to_dict("records")

    def best(self) -> pd.DataFrame:
        """Per node, the feature set with the highest cross-validated AUC."""
        if self.results.empty:
            return self.results
        idx = self.results.groupby("node", sort=False)["auc"].idxmax()
        return self.results.loc[idx].reset_index(drop=True)


def _evaluate_pair(node_name: str, fs_name: str, X: pd.DataFrame, y: pd.Series, g: pd.Series, *,
                   cv_kw: dict[str, Any], repeats: int, n_permutations: int, permutation: str, n_bootstrap: int,
                   n_jobs: int, random_state: int, refit: bool) -> dict[str, Any]:
    """One node x feature set: nested CV, statistics, permutation test and the final model (a plain dict,
    what the grid cache stores)."""
    node = NODES[node_name]
    res = nested_cv(X, y, g, repeats=repeats, random_state=random_state, **cv_kw)
    st = node_statistics(y.to_numpy(), res.oof["prob"].to_numpy(), n_boot=n_bootstrap, random_state=random_state)
    row = {"node": node_name, "kind": node.kind, "feature_set": fs_name, "n_features": X.shape[1], **st,
           "auc_repeat_sd": float(np.std(res.auc_per_repeat))}
    if n_permutations:
        pt = permutation_test(X, y, g, res.auc, n_permutations=n_permutations, n_jobs=n_jobs, method=permutation,
                              random_state=random_state, **cv_kw)
        row.update(perm_p=pt["p_value"], perm_n=pt["n_permutations"], perm_null_auc=pt["null_mean_auc"],
                   perm_method=pt["method"], perm_statistic=pt["statistic"])
    model = None
    if refit:
        search = fit_final(X, y, g, random_state=random_state, **{k: v for k, v in cv_kw.items() if k != "outer_splits"})
        model = records.make(
            "classifier", f"{node_name}__{fs_name.replace('+', '-')}", search.best_estimator_, X=X, y=y,
            node=node_name, feature_set=fs_name, positive_class=node.description,
            best_params=search.best_params_, inner_cv_auc=float(search.best_score_), n_train=int(len(X)),
            class_counts={int(k): int(v) for k, v in pd.Series(y).value_counts().items()},
            cv_metrics={k: row[k] for k in ("auc", "auc_lo", "auc_hi", "balanced_accuracy")})
    return {"row": row, "oof": res.oof, "model": model}


def _cached_pair(cache_dir: Path | None, key_data: tuple[Any, ...], node_name: str, fs_name: str,
                 **kw: Any) -> dict[str, Any]:
    """:func:`_evaluate_pair`, read from ``cache_dir`` when the same inputs and settings were evaluated
    before (a resumed step does not redo finished pairs), else computed and written there atomically."""
    if cache_dir is None:
        return _evaluate_pair(node_name, fs_name, *key_data[:3], **kw)
    key = joblib.hash((key_data, {k: v for k, v in kw.items() if k != "n_jobs"}, sklearn.__version__, CACHE_VERSION))
    path = Path(cache_dir) / f"{node_name}__{fs_name.replace('+', '-')}__{key[:16]}.joblib"
    if path.exists():
        try:
            return {**joblib.load(path), "cached": True}
        except (OSError, EOFError, ValueError, pickle.UnpicklingError):  # truncated by a killed run: recompute
            path.unlink(missing_ok=True)
    out = _evaluate_pair(node_name, fs_name, *key_data[:3], **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    joblib.dump(out, tmp)
    os.replace(tmp, path)
    return out


#: bump when :func:`_evaluate_pair` changes what it computes, so that older grid caches are not reused
CACHE_VERSION = 1


def evaluate(feature_sets: dict[str, pd.DataFrame], clinical: pd.DataFrame, *, nodes: list[str],
             baseline: str = "clinical", classifier: str = "logreg_l2", selection: str = "univariate",
             k_features: int = 10, outer_splits: int = 5, inner_splits: int = 3, repeats: int = 3,
             n_permutations: int = 100, permutation: str = "auto", n_bootstrap: int = 1000,
             min_class_size: int = 5, n_jobs: int = 1, random_state: int = 0, refit: bool = True,
             progress: bool = True, cache_dir: Path | None = None, pool_start_s: float = compute.POOL_START_S) -> NodeGrid:
    """Nested CV of every node on every feature set; statistics, permutation test, DeLong vs baseline.

    A node is evaluated on the cases that are eligible, labelled and present in the feature set.
    Nodes that cannot be trained (one class, too few cases) are skipped with the reason. With
    ``refit`` the final model of each node x set is refitted on all its cases (a :class:`records.ModelRecord`
    in ``models``; the step saves them).

    The node x feature set pairs run in ``n_jobs`` processes when there are at least as many pairs as
    processes (their permutations then run serially), else one pair at a time with parallel permutations;
    every pair has its own seeds, so the results are the same whatever ``n_jobs``. The first pair is computed
    in this process and timed: the pool starts only when the remaining pairs would take more than
    ``pool_start_s`` (what starting the processes costs) longer serially than spread over them (a grid already
    running on Dask workers always goes there). With ``cache_dir`` each finished pair is stored there and
    reused when the same inputs and settings come again.
    """
    clin = clinical.set_index("case_id")
    groups_all = clin["patient_id"].fillna(pd.Series(clin.index, index=clin.index)) if "patient_id" in clin \
        else pd.Series(clin.index, index=clin.index)
    unknown = [n for n in nodes if n not in NODES]
    if unknown:
        raise ValueError(f"unknown classification nodes {unknown}; known: {list(NODES)}")
    permutation_method(permutation, pd.DataFrame())  # an unknown method fails before any fitting
    skipped: list[dict[str, Any]] = []
    notes: list[str] = []
    cv_kw = dict(classifier=classifier, selection=selection, k=k_features, outer_splits=outer_splits,
                 inner_splits=inner_splits)
    tasks: list[tuple[str, str, tuple[Any, ...]]] = []
    for node_name in nodes:
        node = NODES[node_name]
        try:
            elig = node.eligible(clinical).fillna(False).to_numpy(dtype=bool)
            target = node.target(clinical).set_axis(clinical["case_id"])[elig].dropna().astype(int)
        except KeyError as exc:
            skipped.append({"node": node_name, "reason": f"no {exc} column in the clinical table"})
            continue
        if target.empty:
            skipped.append({"node": node_name, "reason": "no labelled cases in this cohort"})
            continue
        why = node_problem(target, groups_all.reindex(target.index), outer_splits, inner_splits, min_class_size)
        if why:  # a problem of the labels themselves: say it once for the node
            skipped.append({"node": node_name, "reason": why})
            continue
        for fs_name, X_all in feature_sets.items():
            ids = target.index.intersection(X_all.index)
            X, y, g = X_all.loc[ids], target.loc[ids], groups_all.reindex(ids)
            X = X.loc[:, X.notna().any()]
            why = node_problem(y, g, outer_splits, inner_splits, min_class_size)
            if why:
                skipped.append({"node": node_name, "feature_set": fs_name, "reason": why})
                continue
            tasks.append((node_name, fs_name, (X, y, g)))
    running = compute.pool_running()
    workers = compute.effective_jobs(n_jobs) if running else n_jobs if n_jobs > 0 else compute.cpu_count()
    outer_jobs = workers if len(tasks) >= workers > 1 else 1
    kw = dict(cv_kw=cv_kw, repeats=repeats, n_permutations=n_permutations, permutation=permutation,
              n_bootstrap=n_bootstrap, n_jobs=1 if outer_jobs > 1 else n_jobs, random_state=random_state,
              refit=refit)
    done: dict[tuple[str, str], dict[str, Any]] = {}
    bar = tqdm(total=len(tasks), desc="nodes x feature sets", disable=not progress)
    todo = list(tasks)
    if outer_jobs > 1 and not running:
        # small grids (a few cases) finish before a pool of processes has started: time pairs here until one
        # is computed (not read from the cache), and start the pool only if the rest would gain more than its start
        while todo:
            node_name, fs_name, data = todo[0]
            t0 = time.perf_counter()
            done[(node_name, fs_name)] = out = _cached_pair(cache_dir, data, node_name, fs_name, **kw)
            todo.pop(0)
            bar.update(1)
            if not out.get("cached"):
                rest = (time.perf_counter() - t0) * len(todo)
                if rest * (1 - 1 / outer_jobs) < pool_start_s:
                    outer_jobs = 1
                break
    with Parallel(n_jobs=outer_jobs, return_as="generator") as par:
        outs = par(delayed(_cached_pair)(cache_dir, data, node_name, fs_name, **kw)
                   for node_name, fs_name, data in todo)
        for (node_name, fs_name, _), out in zip(todo, outs):
            done[(node_name, fs_name)] = out
            bar.update(1)
    bar.close()
    done = {(n, f): done[(n, f)] for n, f, _ in tasks}   # the grid's order, whichever ran where
    n_cached = sum(bool(o.get("cached")) for o in done.values())
    if n_cached:
        notes.append(f"{n_cached} of {len(done)} node x feature set evaluations reused from the step's cache")
    rows, oofs = [], []
    models: dict[tuple[str, str], records.ModelRecord] = {}
    for node_name in nodes:
        node_oof = {fs: o["oof"] for (n, fs), o in done.items() if n == node_name}
        node_rows = [o["row"] for (n, _), o in done.items() if n == node_name]
        for (n, fs), o in done.items():
            if n == node_name:
                oofs.append(o["oof"][["y", "prob"]].rename_axis("case_id").reset_index()
                            .assign(node=node_name, feature_set=fs))
                if o["model"] is not None:
                    models[(n, fs)] = o["model"]
        # DeLong against the baseline, on the cases both sets have
        if baseline in node_oof:
            base = node_oof[baseline]
            for r in node_rows:
                if r["feature_set"] == baseline:
                    continue
                other = node_oof[r["feature_set"]]
                common = base.index.intersection(other.index)
                yy = base.loc[common, "y"].to_numpy()
                if len(common) < 10 or yy.min() == yy.max():
                    continue
                d = stats.delong_test(yy, other.loc[common, "prob"].to_numpy(), base.loc[common, "prob"].to_numpy())
                r.update(delong_vs_baseline_diff=d.auc_1 - d.auc_2, delong_vs_baseline_p=d.p_value,
                         delong_n=int(len(common)))
        rows.extend(node_rows)
    results = pd.DataFrame(rows)
    oof = pd.concat(oofs, ignore_index=True) if oofs else pd.DataFrame(columns=["case_id", "y", "prob", "node",
                                                                               "feature_set"])
    return NodeGrid(results, oof, pd.DataFrame(skipped, columns=["node", "feature_set", "reason"]), notes,
                    models, processes=outer_jobs)


def compare_sets(oof: pd.DataFrame, pairs: list[tuple[str, str]], *, n_bootstrap: int = 1000,
                 random_state: int = 0) -> pd.DataFrame:
    """Paired comparison of two feature sets of a node: difference in out-of-fold AUC (a - b) on the cases
    both have, with a class-stratified paired bootstrap 95% CI and P (cases resampled, both AUCs recomputed),
    beside DeLong's test. The CI is over patients for these out-of-fold predictions; it does not include the
    variation from refitting the models on other training sets."""
    rows = []
    for node in oof["node"].unique() if len(oof) else []:
        d = oof[oof["node"] == node]
        for a, b in pairs:
            pa = d[d["feature_set"] == a].set_index("case_id")
            pb = d[d["feature_set"] == b].set_index("case_id")
            common = pa.index.intersection(pb.index)
            if pa.empty or pb.empty or len(common) < 10:
                continue
            y = pa.loc[common, "y"].to_numpy(dtype=int)
            sa, sb = pa.loc[common, "prob"].to_numpy(), pb.loc[common, "prob"].to_numpy()
            if y.min() == y.max():
                continue
            r = stats.paired_bootstrap_difference(
                lambda i, y=y, sa=sa, sb=sb: (stats.auc(y[i], sa[i]), stats.auc(y[i], sb[i])), len(y),
                strata=y, n_boot=n_bootstrap, random_state=random_state)
            dl = stats.delong_test(y, sa, sb)
            rows.append({"node": node, "set_a": a, "set_b": b, "n": int(len(y)), "n_pos": int(y.sum()),
                         "auc_a": r["a"], "auc_b": r["b"], "auc_difference": r["difference"],
                         "difference_low": r["difference_low"], "difference_high": r["difference_high"],
                         "p_bootstrap": r["p_bootstrap"], "p_delong": dl.p_value})
    return pd.DataFrame(rows, columns=["node", "set_a", "set_b", "n", "n_pos", "auc_a", "auc_b", "auc_difference",
                                       "difference_low", "difference_high", "p_bootstrap", "p_delong"])


def average_accuracy(results: pd.DataFrame, feature_set: str | None = None, oof: pd.DataFrame | None = None,
                     n_boot: int = 1000, random_state: int = 0) -> pd.DataFrame:
    """The seed paper's summary: mean accuracy over histology nodes and over molecular nodes.

    Uses each node's best feature set (by AUC), or ``feature_set`` for every node when given. With ``oof`` (the
    grid's out-of-fold predictions) each average has a 95% CI: the cases are resampled together (a case counts in
    every node it belongs to), each node's accuracy at threshold 0.5 recomputed on them, and the nodes averaged.
    """
    cols = ["kind", "nodes", "average_accuracy", "average_accuracy_lo", "average_accuracy_hi",
            "average_balanced_accuracy"]
    if results.empty:
        return pd.DataFrame(columns=cols)
    r = results if feature_set is None else results[results["feature_set"] == feature_set]
    if feature_set is None:
        r = r.loc[r.groupby("node", sort=False)["auc"].idxmax()]
    out = (r.groupby("kind").agg(nodes=("node", lambda s: ", ".join(s)), average_accuracy=("accuracy", "mean"),
                                 average_balanced_accuracy=("balanced_accuracy", "mean")).reset_index())
    out["average_accuracy_lo"] = out["average_accuracy_hi"] = np.nan
    if oof is not None and len(oof):
        cases = pd.Index(oof["case_id"].unique())
        rng = np.random.default_rng(random_state)
        counts = rng.multinomial(len(cases), np.full(len(cases), 1 / len(cases)), size=n_boot)   # n_boot x cases
        for i, row in out.iterrows():
            accs = []
            for node_name, fs in r.loc[r["kind"] == row["kind"], ["node", "feature_set"]].itertuples(index=False):
                d = oof[(oof["node"] == node_name) & (oof["feature_set"] == fs)]
                correct = ((d["prob"].to_numpy() >= 0.5).astype(int) == d["y"].to_numpy().astype(int)).astype(float)
                c = counts[:, cases.get_indexer(d["case_id"])]
                with np.errstate(invalid="ignore", divide="ignore"):
                    accs.append((c * correct).sum(1) / c.sum(1))
            lo, hi = stats.percentile_ci(np.nanmean(np.vstack(accs), axis=0))
            out.loc[i, ["average_accuracy_lo", "average_accuracy_hi"]] = lo, hi
    return out[cols]


# ------------------------------------------------------------------------------- curves for the figures
def roc_bands(oof: pd.DataFrame, results: pd.DataFrame, n_boot: int = 300, random_state: int = 0) -> pd.DataFrame:
    """ROC curve with a stratified-bootstrap 95% band of every node x feature set (long frame: node,
    feature_set, fpr, tpr, tpr_lo, tpr_hi)."""
    parts = []
    for r in results[["node", "feature_set"]].itertuples(index=False):
        d = oof[(oof["node"] == r.node) & (oof["feature_set"] == r.feature_set)]
        band = stats.roc_band(d["y"].to_numpy(), d["prob"].to_numpy(), n_boot=n_boot, random_state=random_state)
        parts.append(band.assign(node=r.node, feature_set=r.feature_set))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["fpr", "tpr", "tpr_lo", "tpr_hi", "node", "feature_set"])


def calibration_curves(oof: pd.DataFrame, best: pd.DataFrame, n_bins: int = 5) -> pd.DataFrame:
    """Reliability curve (quantile bins) of each node's best feature set (long frame: node, feature_set,
    mean_predicted, fraction_positive)."""
    parts = []
    for r in best[["node", "feature_set"]].itertuples(index=False):
        d = oof[(oof["node"] == r.node) & (oof["feature_set"] == r.feature_set)]
        frac, mean_pred = calibration_curve(d["y"], d["prob"], n_bins=n_bins, strategy="quantile")
        parts.append(pd.DataFrame({"node": r.node, "feature_set": r.feature_set, "mean_predicted": mean_pred,
                                   "fraction_positive": frac}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["node", "feature_set", "mean_predicted", "fraction_positive"])


def decision_curves(oof: pd.DataFrame, best: pd.DataFrame, baseline: str = "clinical",
                    thresholds: np.ndarray = np.linspace(0.05, 0.8, 31)) -> pd.DataFrame:
    """Net benefit of each node's best feature set and of the baseline, and of treating everyone (long
    frame: node, curve, threshold, net_benefit, prevalence)."""
    parts = []
    for r in best[["node", "feature_set"]].itertuples(index=False):
        y = None
        for fs in dict.fromkeys([r.feature_set, baseline]):
            d = oof[(oof["node"] == r.node) & (oof["feature_set"] == fs)]
            if d.empty:
                continue
            y = d["y"].to_numpy()
            parts.append(pd.DataFrame({"node": r.node, "curve": fs, "threshold": thresholds,
                                       "net_benefit": stats.net_benefit(y, d["prob"].to_numpy(), thresholds),
                                       "prevalence": y.mean()}))
        if y is not None:
            parts.append(pd.DataFrame({"node": r.node, "curve": "treat all", "threshold": thresholds,
                                       "net_benefit": stats.net_benefit_treat_all(y, thresholds), "prevalence": y.mean()}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["node", "curve", "threshold", "net_benefit", "prevalence"])
