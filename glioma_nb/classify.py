"""Classification: the tree of binary nodes and the nested cross-validation engine for one node.

``NODES``: each node is a target column of the canonical clinical table, the positive class, and a
filter giving the patients for whom the question is asked. ``nested_cv``: impute -> scale -> select
-> classifier (registry ``CLASSIFIERS``), tuned in an inner loop, evaluated in an outer loop split by
patient and stratified by class, repeated over seeds. Statistics live in ``glioma_nb.stats``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Node:
    """A binary classification task on the clinical table."""

    name: str
    description: str
    target: Callable[[pd.DataFrame], pd.Series]
    eligible: Callable[[pd.DataFrame], pd.Series]
    kind: str  # histology | molecular


def _binary(col: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda df: pd.to_numeric(df[col], errors="coerce")


def _all(df: pd.DataFrame) -> pd.Series:
    return pd.Series(True, index=df.index)


NODES: dict[str, Node] = {
    "gbm_vs_lgg": Node("gbm_vs_lgg", "grade 4 (GBM) vs lower-grade glioma (grade 2-3)",
                       lambda df: (pd.to_numeric(df["who_grade"], errors="coerce") == 4).astype("Int64")
                       .where(df["who_grade"].notna()), _all, "histology"),
    "grade_2_vs_3": Node("grade_2_vs_3", "grade 3 vs grade 2 (lower-grade glioma only)",
                         lambda df: (pd.to_numeric(df["who_grade"], errors="coerce") == 3).astype("Int64")
                         .where(df["who_grade"].isin([2, 3])),
                         lambda df: df["who_grade"].isin([2, 3]), "histology"),
    "idh": Node("idh", "IDH mutant vs wild-type", _binary("idh_mutant"), _all, "molecular"),
    "codel_1p19q": Node("codel_1p19q", "1p/19q codeleted vs retained (IDH-mutant only)", _binary("codel_1p19q"),
                        lambda df: pd.to_numeric(df["idh_mutant"], errors="coerce") == 1, "molecular"),
    "tertp": Node("tertp", "TERT promoter mutant vs wild-type", _binary("tertp_mutant"), _all, "molecular"),
    "mgmt": Node("mgmt", "MGMT promoter methylated vs unmethylated", _binary("mgmt_methylated"), _all, "molecular"),
}


def node_label_table(clinical: pd.DataFrame, min_class_size: int = 5) -> pd.DataFrame:
    """Per node: eligible cases, labelled cases, class counts, and whether it can be trained.

    A node is trainable when both classes have at least ``min_class_size`` labelled cases.
    """
    rows = []
    clinical = clinical.reindex(columns=list(dict.fromkeys(["case_id", *clinical.columns, "who_grade", "idh_mutant",
                                                              "codel_1p19q", "tertp_mutant", "mgmt_methylated"])))
    for node in NODES.values():
        elig = node.eligible(clinical).fillna(False).astype(bool)
        y = node.target(clinical)[elig].dropna()
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        rows.append({"node": node.name, "kind": node.kind, "question": node.description,
                     "eligible": int(elig.sum()), "labelled": int(len(y)), "positive": n_pos, "negative": n_neg,
                     "trainable": min(n_pos, n_neg) >= min_class_size})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ the engine
def _logreg(penalty: str, random_state: int | None) -> Any:
    from sklearn.linear_model import LogisticRegression

    # scikit-learn >= 1.8: the penalty is chosen by l1_ratio (1 = lasso, 0 = ridge)
    return LogisticRegression(l1_ratio=1.0 if penalty == "l1" else 0.0, solver="liblinear",
                              class_weight="balanced", max_iter=5000, random_state=random_state)


def _svm(kernel: str, random_state: int | None) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    # scikit-learn >= 1.9 deprecates SVC(probability=True) for this (Platt scaling on internal CV)
    return CalibratedClassifierCV(SVC(kernel=kernel, class_weight="balanced", random_state=random_state),
                                  method="sigmoid", cv=3, ensemble=False)


def _forest(random_state: int | None) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=200, class_weight="balanced_subsample", min_samples_leaf=2,
                                  random_state=random_state, n_jobs=1)


#: classifier name -> (factory(random_state), hyper-parameter grid of the `clf` step). Grids run from the
#: weakest to the strongest regularisation: GridSearchCV keeps the first of tied candidates, and a tie
#: (e.g. a perfect inner AUC) should not pick probabilities squashed towards 0.5.
CLASSIFIERS: dict[str, tuple[Callable[[int | None], Any], dict[str, list[Any]]]] = {
    "logreg_l1": (lambda rs: _logreg("l1", rs), {"clf__C": [5.0, 1.0, 0.2, 0.05]}),
    "logreg_l2": (lambda rs: _logreg("l2", rs), {"clf__C": [10.0, 1.0, 0.1, 0.01]}),
    "svm_linear": (lambda rs: _svm("linear", rs), {"clf__estimator__C": [1.0, 0.1, 0.01]}),
    "svm_rbf": (lambda rs: _svm("rbf", rs), {"clf__estimator__C": [10.0, 1.0, 0.1]}),
    "random_forest": (_forest, {"clf__max_features": ["sqrt", 0.3]}),
}


def _selector(kind: str, k: int, random_state: int | None) -> Any:
    from sklearn.feature_selection import SelectFromModel, SelectKBest, f_classif

    if kind == "univariate":
        return SelectKBest(f_classif, k=k)
    if kind == "l1":
        return SelectFromModel(_logreg("l1", random_state).set_params(C=0.5), max_features=k, threshold=-np.inf)
    if kind == "none":
        return "passthrough"
    raise ValueError(f"unknown feature selection {kind!r}; use univariate, l1 or none")


def build_pipeline(classifier: str = "logreg_l2", selection: str = "univariate", k: int = 10,
                   n_features: int | None = None, random_state: int | None = 0) -> tuple[Any, dict[str, list[Any]]]:
    """impute (median) -> drop constant -> scale -> select at most ``k`` features -> classifier; and its grid.

    Every step is fitted on training folds only when the pipeline is cross-validated.
    """
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; known: {sorted(CLASSIFIERS)}")
    factory, grid = CLASSIFIERS[classifier]
    k_eff = min(k, n_features) if n_features else k
    pipe = Pipeline([("impute", SimpleImputer(strategy="median")), ("constant", VarianceThreshold(0.0)),
                     ("scale", StandardScaler()),
                     ("select", _selector(selection, k_eff, random_state)), ("clf", factory(random_state))])
    return pipe, dict(grid)


@dataclass
class NestedCVResult:
    """Out-of-fold probabilities of a nested, grouped, stratified, repeated cross-validation."""

    oof: pd.DataFrame                      # index: sample id; columns: y, prob (mean over repeats), prob_r<i>
    best_params: list[dict[str, Any]] = field(default_factory=list)

    @property
    def auc(self) -> float:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(self.oof["y"], self.oof["prob"]))

    @property
    def auc_per_repeat(self) -> list[float]:
        from sklearn.metrics import roc_auc_score

        return [float(roc_auc_score(self.oof["y"], self.oof[c])) for c in self.oof if c.startswith("prob_r")]

    def __repr__(self) -> str:
        return (f"NestedCVResult(n={len(self.oof)}, auc={self.auc:.3f}, "
                f"auc_per_repeat={[round(a, 3) for a in self.auc_per_repeat]})")


def tuned_search(X: pd.DataFrame, *, classifier: str = "logreg_l2", selection: str = "univariate", k: int = 10,
                 inner_splits: int = 3, random_state: int = 0) -> Any:
    """The inner loop: a grid search over the pipeline, grouped and stratified, scored by AUC."""
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold

    pipe, grid = build_pipeline(classifier, selection, k, X.shape[1], random_state=random_state)
    inner = StratifiedGroupKFold(n_splits=inner_splits, shuffle=True, random_state=random_state)
    return GridSearchCV(pipe, grid, cv=inner, scoring="roc_auc", n_jobs=1, error_score="raise")


def node_problem(y: pd.Series, groups: pd.Series, outer_splits: int, inner_splits: int,
                 min_class_size: int = 5) -> str | None:
    """Why a node cannot be cross-validated (one class, too few cases for the folds), or None."""
    y = pd.Series(y)
    counts = {c: int(groups[y == c].nunique()) for c in (0, 1)}
    if min(counts.values()) == 0:
        present = [c for c, n in counts.items() if n]
        return f"only one class is present (all labelled cases are {present[0] if present else 'missing'})"
    small = min(counts.values())
    if small < min_class_size:
        return f"the smaller class has {small} patients, fewer than classify.min_class_size={min_class_size}"
    # every outer test fold needs a patient of each class, every inner split too
    if small < outer_splits or small * (outer_splits - 1) // outer_splits < inner_splits:
        return (f"the smaller class has {small} patients, too few for {outer_splits} outer x {inner_splits} inner "
                f"folds; lower classify.outer_splits / classify.inner_splits")
    return None


def nested_cv(X: pd.DataFrame, y: pd.Series, groups: pd.Series | None = None, *, classifier: str = "logreg_l2",
              selection: str = "univariate", k: int = 10, outer_splits: int = 5, inner_splits: int = 3,
              repeats: int = 3, random_state: int = 0) -> NestedCVResult:
    """Nested cross-validation of one binary node, split by patient (``groups``) and stratified by class.

    The outer loop estimates performance; inside each outer training set a grid search (inner
    grouped CV, scored by AUC) tunes the pipeline, so imputation, scaling, feature selection and
    tuning never see the outer test fold. Repeated ``repeats`` times with different splits.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = pd.Series(y).astype(int)
    if set(y.unique()) != {0, 1}:
        raise ValueError("nested_cv needs both classes 0 and 1")
    groups = pd.Series(groups if groups is not None else X.index, index=X.index)
    n_groups_min = min(groups[y == c].nunique() for c in (0, 1))
    if n_groups_min < outer_splits:
        raise ValueError(f"the smaller class has {n_groups_min} patients, fewer than {outer_splits} outer folds")
    import sklearn

    probs = pd.DataFrame(index=X.index)
    best_params: list[dict[str, Any]] = []
    Xa, ya, ga = X.to_numpy(dtype=float), y.to_numpy(), groups.to_numpy()  # arrays: less sklearn overhead
    with sklearn.config_context(skip_parameter_validation=True):
        for r in range(repeats):
            seed = random_state + r
            outer = StratifiedGroupKFold(n_splits=outer_splits, shuffle=True, random_state=seed)
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


def permutation_test(X: pd.DataFrame, y: pd.Series, groups: pd.Series | None, observed_auc: float, *,
                     n_permutations: int = 100, stop_after: int = 10, n_jobs: int = 1, random_state: int = 0,
                     **cv_kw: Any) -> dict[str, Any]:
    """Permutation test of the nested-CV AUC against chance.

    Labels are permuted between patients (all scans of a patient keep one label) and the *whole*
    nested procedure is re-run (one repeat) on each permutation. Sequential Monte-Carlo stopping
    (Besag & Clifford 1991): once ``stop_after`` permuted AUCs reach the observed one, p = h/k is
    already large and the remaining permutations are skipped; otherwise p = (1 + g) / (1 + n).
    """
    from joblib import Parallel, delayed

    y = pd.Series(y).astype(int)
    groups = pd.Series(groups if groups is not None else X.index, index=X.index)
    patient_label = y.groupby(groups).first()
    rng = np.random.default_rng(random_state)
    cv_kw = {**cv_kw, "repeats": 1}

    def one(seed: int) -> float:
        perm = pd.Series(np.random.default_rng(seed).permutation(patient_label.to_numpy()),
                         index=patient_label.index)
        y_p = groups.map(perm).astype(int)
        return nested_cv(X, y_p, groups, random_state=int(seed % 2**31), **cv_kw).auc

    seeds = rng.integers(0, 2**62, size=n_permutations)
    null: list[float] = []
    batch = max(1, 2 * (n_jobs if n_jobs > 0 else os.cpu_count() or 1))
    with Parallel(n_jobs=n_jobs) as par:
        for start in range(0, n_permutations, batch):
            null.extend(par(delayed(one)(int(s)) for s in seeds[start:start + batch]))
            if sum(a >= observed_auc for a in null) >= stop_after:
                break
    null_arr = np.asarray(null)
    ge = int((null_arr >= observed_auc).sum())
    stopped = len(null) < n_permutations
    p = ge / len(null) if stopped else (1 + ge) / (1 + len(null))
    return {"p_value": float(p), "n_permutations": len(null), "stopped_early": stopped,
            "null_mean_auc": float(null_arr.mean()), "null_auc_95": float(np.quantile(null_arr, 0.95))}


# ----------------------------------------------------------------------------------- feature sets
def clinical_features(clinical: pd.DataFrame, volumes: pd.DataFrame | None = None) -> pd.DataFrame:
    """The clinical baseline: age, sex (1 = male) and, when a volumetric table exists, tumour volume."""
    c = clinical.set_index("case_id")
    out = pd.DataFrame(index=c.index)
    if "age" in c:
        out["age"] = pd.to_numeric(c["age"], errors="coerce")
    if "sex" in c:
        out["sex_male"] = c["sex"].map({"M": 1.0, "F": 0.0})
    if volumes is not None:
        vol = [col for col in volumes.columns if col.startswith("WT__volume")]
        if vol:
            out["WT_volume_ml"] = volumes[vol[0]].reindex(out.index)
    return out.loc[:, out.notna().any()]


def assemble_feature_sets(sources: dict[str, pd.DataFrame], requested: list[str],
                          aliases: dict[str, str] | None = None) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Feature sets from named sources. ``"a+b"`` joins sources a and b; ``"all"`` joins every source.

    Columns are prefixed ``<source>:`` so that sets mixing sources keep unique, traceable names.
    A set with a missing source is skipped, and a set identical to an earlier one is dropped; both
    come back as notes, and ``aliases`` (when given) receives dropped name -> the name kept.
    """
    notes: list[str] = []
    sets: dict[str, pd.DataFrame] = {}
    seen: dict[tuple[str, ...], str] = {}
    for name in requested:
        parts = sorted(sources) if name == "all" else name.split("+")
        if not parts:
            notes.append(f"feature set '{name}' skipped: no features in this run")
            continue
        missing = [p for p in parts if p not in sources]
        if missing:
            notes.append(f"feature set '{name}' skipped: no {', '.join(missing)} features in this run")
            continue
        key = tuple(sorted(parts))
        if key in seen:
            if aliases is not None:
                aliases[name] = seen[key]
            notes.append(f"feature set '{name}' is the same as '{seen[key]}' here (sources {list(key)}); shown once")
            continue
        seen[key] = name
        frames = [sources[p].add_prefix(f"{p}:") for p in parts]
        sets[name] = pd.concat(frames, axis=1, join="outer")
    return sets, notes


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
    from sklearn.metrics import roc_auc_score

    return {"auc": lambda y, p: roc_auc_score(y, p),
            **{m: (lambda y, p, m=m: threshold_metrics(y, p)[m])
               for m in ("accuracy", "balanced_accuracy", "sensitivity", "specificity")}}


def node_statistics(y: np.ndarray, prob: np.ndarray, n_boot: int = 1000, random_state: int = 0) -> dict[str, Any]:
    """Point metrics with stratified bootstrap 95% CIs, DeLong CI of the AUC, calibration."""
    from glioma_nb import stats

    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=float)
    out: dict[str, Any] = {"n": int(len(y)), "n_pos": int(y.sum()), "n_neg": int((1 - y).sum())}
    for name, fn in _metric_fns().items():
        est, lo, hi = stats.bootstrap_ci(fn, y, prob, n_boot=n_boot, random_state=random_state)
        out.update({name: est, f"{name}_lo": lo, f"{name}_hi": hi})
    _, out["auc_delong_lo"], out["auc_delong_hi"] = stats.auc_ci_delong(y, prob)
    if out["auc"] < 1.0:
        cal = stats.calibration(y, prob)
        out.update(calibration_slope=cal.slope, calibration_intercept=cal.intercept)
    else:  # perfect separation: the logistic calibration fit diverges, the slope is undefined
        out.update(calibration_slope=np.nan, calibration_intercept=np.nan)
    out.update({k: v for k, v in threshold_metrics(y, prob).items() if k in ("tp", "tn", "fp", "fn")})
    return out


def roc_band(y: np.ndarray, prob: np.ndarray, n_boot: int = 500, grid: int = 101,
             random_state: int = 0) -> pd.DataFrame:
    """ROC curve on a fixed FPR grid with a stratified-bootstrap 95% band of the TPR."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=float)
    fpr_grid = np.linspace(0, 1, grid)

    def tpr_at(yy: np.ndarray, pp: np.ndarray) -> np.ndarray:
        fpr, tpr, _ = roc_curve(yy, pp)
        return np.interp(fpr_grid, fpr, tpr)

    rng = np.random.default_rng(random_state)
    idx = [np.flatnonzero(y == c) for c in (0, 1)]
    boots = np.array([tpr_at(y[b], prob[b]) for b in
                      (np.concatenate([rng.choice(i, len(i)) for i in idx]) for _ in range(n_boot))])
    return pd.DataFrame({"fpr": fpr_grid, "tpr": tpr_at(y, prob), "tpr_lo": np.quantile(boots, 0.025, axis=0),
                         "tpr_hi": np.quantile(boots, 0.975, axis=0)})


# ------------------------------------------------------------------------------------- final models
def data_hash(X: pd.DataFrame, y: pd.Series) -> str:
    """sha256 of the training table (case ids, feature names, values and labels), order-independent."""
    import hashlib

    Xs = X.sort_index().sort_index(axis=1)
    h = hashlib.sha256()
    h.update("\x1f".join(map(str, Xs.index)).encode())
    h.update("\x1f".join(map(str, Xs.columns)).encode())
    h.update(np.ascontiguousarray(Xs.to_numpy(dtype=float)).tobytes())
    h.update(np.ascontiguousarray(pd.Series(y).reindex(Xs.index).to_numpy(dtype=float)).tobytes())
    return h.hexdigest()


def fit_final(X: pd.DataFrame, y: pd.Series, groups: pd.Series | None = None, **search_kw: Any) -> Any:
    """Tune (inner grouped CV) and refit the pipeline on the whole training cohort."""
    groups = pd.Series(groups if groups is not None else X.index, index=X.index)
    search = tuned_search(X, **search_kw)
    search.fit(X, pd.Series(y).astype(int), groups=groups)
    return search


def save_model(path: Path, search: Any, X: pd.DataFrame, y: pd.Series, **meta: Any) -> dict[str, Any]:
    """Write a refitted model with its feature list, training-data hash and metadata (joblib); atomic."""
    import joblib
    import sklearn

    bundle = {"model": search.best_estimator_, "best_params": search.best_params_,
              "inner_cv_auc": float(search.best_score_), "features": list(X.columns),
              "n_train": int(len(X)), "class_counts": {int(k): int(v) for k, v in pd.Series(y).value_counts().items()},
              "training_data_sha256": data_hash(X, y), "sklearn_version": sklearn.__version__, **meta}
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; models of a run are never overwritten")
    tmp = path.with_name(path.name + ".part")
    joblib.dump(bundle, tmp)
    tmp.replace(path)
    return bundle


def load_model(path: Path) -> dict[str, Any]:
    """Read a model bundle written by :func:`save_model` (warns when scikit-learn's version differs)."""
    import warnings

    import joblib
    import sklearn

    bundle = joblib.load(path)
    if bundle.get("sklearn_version") != sklearn.__version__:
        warnings.warn(f"{Path(path).name} was saved with scikit-learn {bundle.get('sklearn_version')}, "
                      f"this is {sklearn.__version__}; predictions may differ", stacklevel=2)
    return bundle


def predict_model(bundle: dict[str, Any], X: pd.DataFrame) -> pd.Series:
    """Probability of the positive class for the cases of ``X`` with a saved model (features by name)."""
    Xf = model_features(bundle, X, f"model {bundle.get('node')}/{bundle.get('feature_set')}")
    return pd.Series(bundle["model"].predict_proba(Xf)[:, 1], index=X.index, name="prob")


def model_features(bundle: dict[str, Any], X: pd.DataFrame, what: str) -> pd.DataFrame:
    """The columns a saved model was trained on, by name and in its order; a clear error when any is missing."""
    missing = [f for f in bundle["features"] if f not in X.columns]
    if missing:
        raise KeyError(f"{what} needs {len(missing)} features missing from the table, e.g. {missing[:5]}; "
                       "extract them with the training run's settings")
    return X[bundle["features"]]


def top_features(bundle: dict[str, Any], n: int = 10) -> pd.DataFrame:
    """The selected features of a final model and their weight (standardised coefficient or importance)."""
    pipe = bundle["model"]
    names = np.asarray(bundle["features"])
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


# ------------------------------------------------------------------------------------ WHO CNS5 rules
CNS5_OLIGO = "Oligodendroglioma, IDH-mut, 1p/19q-codel"
CNS5_ASTRO = "Astrocytoma, IDH-mut"
CNS5_IDHMUT_NOS = "Glioma, IDH-mut, NOS (1p/19q unknown)"
CNS5_GBM = "Glioblastoma, IDH-wt"
CNS5_IDHWT_NOS = "Glioma, IDH-wt, NOS"
CNS5_UNKNOWN = "Unclassified (IDH unknown)"

#: WHO CNS5 (2021) integrated diagnosis from markers, first matching rule wins. Keys: idh (1 mutant),
#: codel (1 codeleted), tertp (1 mutant), gbm (1 = grade 4 / GBM histology); a key that is absent from a
#: rule matches anything; a rule value of None matches a missing marker.
CNS5_RULES: list[tuple[dict[str, int | None], str]] = [
    ({"idh": None}, CNS5_UNKNOWN),
    ({"idh": 1, "codel": 1}, CNS5_OLIGO),
    ({"idh": 1, "codel": 0}, CNS5_ASTRO),
    ({"idh": 1}, CNS5_IDHMUT_NOS),
    ({"idh": 0, "tertp": 1}, CNS5_GBM),
    ({"idh": 0, "gbm": 1}, CNS5_GBM),
    ({"idh": 0}, CNS5_IDHWT_NOS),
]


def cns5_diagnosis(idh: Any = None, codel: Any = None, tertp: Any = None, gbm: Any = None) -> str:
    """Integrated diagnosis from marker values (0/1, or missing) by :data:`CNS5_RULES`."""
    def norm(v: Any) -> int | None:
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else int(v)

    markers = {"idh": norm(idh), "codel": norm(codel), "tertp": norm(tertp), "gbm": norm(gbm)}
    for cond, diagnosis in CNS5_RULES:
        if all(markers[k] == v for k, v in cond.items()):
            return diagnosis
    raise AssertionError("CNS5_RULES must end with catch-all rules")  # pragma: no cover


def true_markers(clinical: pd.DataFrame) -> pd.DataFrame:
    """Reference markers (idh, codel, tertp, gbm) per case from the canonical clinical table."""
    c = clinical.set_index("case_id")
    num = lambda col: pd.to_numeric(c[col], errors="coerce") if col in c else pd.Series(np.nan, index=c.index)  # noqa: E731
    grade = num("who_grade")
    return pd.DataFrame({"idh": num("idh_mutant"), "codel": num("codel_1p19q"), "tertp": num("tertp_mutant"),
                         "gbm": (grade == 4).astype(float).where(grade.notna())})


#: node whose prediction gives each marker of the CNS5 rules
MARKER_NODES = {"idh": "idh", "codel": "codel_1p19q", "tertp": "tertp", "gbm": "gbm_vs_lgg"}


def cascade_cv(X: pd.DataFrame, clinical: pd.DataFrame, nodes: list[str], groups: pd.Series | None = None, *,
               outer_splits: int = 5, random_state: int = 0, **search_kw: Any) -> pd.DataFrame:
    """End-to-end CNS5 diagnosis with error propagation, cross-validated by patient.

    In each outer fold every node in ``nodes`` is tuned and fitted on its eligible, labelled
    training cases and then predicts *every* test case (so the 1p/19q model is applied to whoever
    the IDH model calls mutant). The predicted markers go through :data:`CNS5_RULES`; a marker
    whose node is not in ``nodes`` stays unknown. Returns per case: true and predicted markers
    and diagnoses.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    ref = true_markers(clinical).reindex(X.index)
    groups = pd.Series(groups if groups is not None else X.index, index=X.index)
    ref["diagnosis"] = [cns5_diagnosis(**r) for r in ref[["idh", "codel", "tertp", "gbm"]].to_dict("records")]
    strat = ref["diagnosis"].astype("category").cat.codes
    pred = pd.DataFrame(np.nan, index=X.index, columns=list(MARKER_NODES))
    clin = clinical.set_index("case_id").reindex(X.index).rename_axis("case_id").reset_index()
    outer = StratifiedGroupKFold(n_splits=outer_splits, shuffle=True, random_state=random_state)
    for train, test in outer.split(X, strat, groups):
        for marker, node_name in MARKER_NODES.items():
            if node_name not in nodes:
                continue
            node = NODES[node_name]
            tr = X.index[train]
            clin_tr = clin.iloc[train]
            elig = node.eligible(clin_tr).fillna(False).to_numpy(dtype=bool)
            y_tr = node.target(clin_tr).set_axis(tr)[elig].dropna()
            if y_tr.nunique() < 2:
                continue
            inner = int(min(search_kw.get("inner_splits", 3), y_tr.value_counts().min()))
            if inner < 2:
                continue
            kw = {**search_kw, "inner_splits": inner}
            search = fit_final(X.loc[y_tr.index], y_tr.astype(int), groups.loc[y_tr.index],
                               random_state=random_state, **kw)
            pred.loc[X.index[test], marker] = (search.predict_proba(X.iloc[test])[:, 1] >= 0.5).astype(float)
    pred["diagnosis"] = [cns5_diagnosis(**r) for r in pred[list(MARKER_NODES)].to_dict("records")]
    return pd.concat([ref.add_prefix("true_"), pred.add_prefix("pred_")], axis=1)


# ------------------------------------------------------------------------------------- orchestration
@dataclass
class ClassifyResult:
    """Everything notebook 03 shows: per node x feature set statistics, predictions, models, notes."""

    results: pd.DataFrame                 # one row per node x feature set
    oof: pd.DataFrame                     # long: case_id, node, feature_set, y, prob
    skipped: pd.DataFrame                 # node, reason
    notes: list[str]
    models: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

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


def evaluate(feature_sets: dict[str, pd.DataFrame], clinical: pd.DataFrame, *, nodes: list[str],
             baseline: str = "clinical", classifier: str = "logreg_l2", selection: str = "univariate",
             k_features: int = 10, outer_splits: int = 5, inner_splits: int = 3, repeats: int = 3,
             n_permutations: int = 100, n_bootstrap: int = 1000, min_class_size: int = 5, n_jobs: int = 1,
             random_state: int = 0, models_dir: Path | None = None, progress: bool = True) -> ClassifyResult:
    """Nested CV of every node on every feature set; statistics, permutation test, DeLong vs baseline.

    A node is evaluated on the cases that are eligible, labelled and present in the feature set.
    Nodes that cannot be trained (one class, too few cases) are skipped with the reason. With
    ``models_dir`` the final model of each node x set is refitted on all its cases and saved.
    """
    from tqdm import tqdm

    from glioma_nb import stats

    clin = clinical.set_index("case_id")
    groups_all = clin["patient_id"].fillna(pd.Series(clin.index, index=clin.index)) if "patient_id" in clin \
        else pd.Series(clin.index, index=clin.index)
    unknown = [n for n in nodes if n not in NODES]
    if unknown:
        raise ValueError(f"unknown classification nodes {unknown}; known: {list(NODES)}")
    rows, oofs, skipped, notes = [], [], [], []
    models: dict[tuple[str, str], dict[str, Any]] = {}
    cv_kw = dict(classifier=classifier, selection=selection, k=k_features, outer_splits=outer_splits,
                 inner_splits=inner_splits)
    todo = [(n, fs) for n in nodes for fs in feature_sets]
    bar = tqdm(total=len(todo), desc="nodes x feature sets", disable=not progress)
    for node_name in nodes:
        node = NODES[node_name]
        try:
            elig = node.eligible(clinical).fillna(False).to_numpy(dtype=bool)
            target = node.target(clinical).set_axis(clinical["case_id"])[elig].dropna().astype(int)
        except KeyError as exc:
            skipped.append({"node": node_name, "reason": f"no {exc} column in the clinical table"})
            bar.update(len(feature_sets))
            continue
        if target.empty:
            skipped.append({"node": node_name, "reason": "no labelled cases in this cohort"})
            bar.update(len(feature_sets))
            continue
        why = node_problem(target, groups_all.reindex(target.index), outer_splits, inner_splits, min_class_size)
        if why:  # a problem of the labels themselves: say it once for the node
            skipped.append({"node": node_name, "reason": why})
            bar.update(len(feature_sets))
            continue
        node_oof: dict[str, pd.DataFrame] = {}
        for fs_name, X_all in feature_sets.items():
            bar.update(1)
            ids = target.index.intersection(X_all.index)
            X, y, g = X_all.loc[ids], target.loc[ids], groups_all.reindex(ids)
            X = X.loc[:, X.notna().any()]
            why = node_problem(y, g, outer_splits, inner_splits, min_class_size)
            if why:
                skipped.append({"node": node_name, "feature_set": fs_name, "reason": why})
                continue
            res = nested_cv(X, y, g, repeats=repeats, random_state=random_state, **cv_kw)
            st = node_statistics(y.to_numpy(), res.oof["prob"].to_numpy(), n_boot=n_bootstrap,
                                 random_state=random_state)
            row = {"node": node_name, "kind": node.kind, "feature_set": fs_name, "n_features": X.shape[1], **st,
                   "auc_repeat_sd": float(np.std(res.auc_per_repeat))}
            if n_permutations:
                pt = permutation_test(X, y, g, res.auc, n_permutations=n_permutations, n_jobs=n_jobs,
                                      random_state=random_state, **cv_kw)
                row.update(perm_p=pt["p_value"], perm_n=pt["n_permutations"], perm_null_auc=pt["null_mean_auc"])
            rows.append(row)
            node_oof[fs_name] = res.oof
            oofs.append(res.oof[["y", "prob"]].rename_axis("case_id").reset_index()
                        .assign(node=node_name, feature_set=fs_name))
            if models_dir is not None:
                search = fit_final(X, y, g, classifier=classifier, selection=selection, k=k_features,
                                   inner_splits=inner_splits, random_state=random_state)
                models[(node_name, fs_name)] = save_model(
                    Path(models_dir) / f"{node_name}__{fs_name.replace('+', '-')}.joblib", search, X, y,
                    node=node_name, feature_set=fs_name, positive_class=node.description,
                    cv_metrics={k: row[k] for k in ("auc", "auc_lo", "auc_hi", "balanced_accuracy")})
        # DeLong against the baseline, on the cases both sets have
        if baseline in node_oof:
            base = node_oof[baseline]
            for r in rows:
                if r["node"] != node_name or r["feature_set"] == baseline:
                    continue
                other = node_oof[r["feature_set"]]
                common = base.index.intersection(other.index)
                yy = base.loc[common, "y"].to_numpy()
                if len(common) < 10 or yy.min() == yy.max():
                    continue
                d = stats.delong_test(yy, other.loc[common, "prob"].to_numpy(), base.loc[common, "prob"].to_numpy())
                r.update(delong_vs_baseline_diff=d.auc_1 - d.auc_2, delong_vs_baseline_p=d.p_value,
                         delong_n=int(len(common)))
    bar.close()
    results = pd.DataFrame(rows)
    oof = pd.concat(oofs, ignore_index=True) if oofs else pd.DataFrame(columns=["case_id", "y", "prob", "node",
                                                                               "feature_set"])
    return ClassifyResult(results, oof, pd.DataFrame(skipped, columns=["node", "feature_set", "reason"]), notes,
                          models)


def average_accuracy(results: pd.DataFrame, feature_set: str | None = None) -> pd.DataFrame:
    """The seed paper's summary: mean accuracy over histology nodes and over molecular nodes.

    Uses each node's best feature set (by AUC), or ``feature_set`` for every node when given.
    """
    if results.empty:
        return pd.DataFrame(columns=["kind", "nodes", "average_accuracy", "average_balanced_accuracy"])
    r = results if feature_set is None else results[results["feature_set"] == feature_set]
    if feature_set is None:
        r = r.loc[r.groupby("node", sort=False)["auc"].idxmax()]
    return (r.groupby("kind").agg(nodes=("node", lambda s: ", ".join(s)), average_accuracy=("accuracy", "mean"),
                                  average_balanced_accuracy=("balanced_accuracy", "mean")).reset_index())


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """The per node x feature set table of the report: estimates with their 95% CIs as text."""
    if results.empty:
        return results

    def ci(r: pd.Series, m: str) -> str:
        return f"{r[m]:.2f} [{r[m + '_lo']:.2f}-{r[m + '_hi']:.2f}]"

    out = pd.DataFrame({
        "node": results["node"], "feature set": results["feature_set"],
        "n (pos/neg)": [f"{r.n} ({r.n_pos}/{r.n_neg})" for r in results.itertuples()],
        "features": results["n_features"],
        **{label: [ci(r, m) for _, r in results.iterrows()] for label, m in
           [("AUC", "auc"), ("balanced acc.", "balanced_accuracy"), ("accuracy", "accuracy"),
            ("sensitivity", "sensitivity"), ("specificity", "specificity")]},
        "calib. slope": results["calibration_slope"].round(2),
    })
    if "perm_p" in results:
        out["permutation P"] = [f"{p:.3f} ({int(n)})" if pd.notna(p) else "" for p, n in
                                zip(results["perm_p"], results.get("perm_n", pd.Series(np.nan, index=results.index)))]
    if "delong_vs_baseline_p" in results:
        out["ΔAUC vs baseline (DeLong P)"] = [f"{d:+.2f} ({p:.3f})" if pd.notna(p) else "" for d, p in
                                              zip(results["delong_vs_baseline_diff"], results["delong_vs_baseline_p"])]
    return out.reset_index(drop=True)


def chance_statements(results: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """Plain sentences for every node x feature set that the permutation test cannot tell from chance."""
    out = []
    if results.empty or "perm_p" not in results:
        return out
    for r in results.itertuples():
        if pd.notna(r.perm_p) and r.perm_p >= alpha:
            out.append(f"**{r.node} with {r.feature_set} features is near chance**: AUC {r.auc:.2f} "
                       f"[{r.auc_lo:.2f}-{r.auc_hi:.2f}], permutation P = {r.perm_p:.2f} "
                       f"({int(r.perm_n)} permutations, mean null AUC {r.perm_null_auc:.2f}).")
    return out
