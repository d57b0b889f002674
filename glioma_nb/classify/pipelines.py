"""scikit-learn pipelines of a classification node (imputation -> scaling -> selection -> classifier) and
their tuning search, named in a registry so that YAML names map straight to estimators."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import (
    SelectFromModel,
    SelectKBest,
    VarianceThreshold,
    f_classif,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC


# ------------------------------------------------------------------------------------------ the engine
def _logreg(penalty: str, random_state: int | None) -> Any:

    # scikit-learn >= 1.8: the penalty is chosen by l1_ratio (1 = lasso, 0 = ridge)
    return LogisticRegression(l1_ratio=1.0 if penalty == "l1" else 0.0, solver="liblinear",
                              class_weight="balanced", max_iter=5000, random_state=random_state)


def _svm(kernel: str, random_state: int | None) -> Any:

    # scikit-learn >= 1.9 deprecates SVC(probability=True) for this (Platt scaling on internal CV)
    return CalibratedClassifierCV(SVC(kernel=kernel, class_weight="balanced", random_state=random_state),
                                  method="sigmoid", cv=3, ensemble=False)


def _forest(random_state: int | None) -> Any:

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
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; known: {sorted(CLASSIFIERS)}")
    factory, grid = CLASSIFIERS[classifier]
    k_eff = min(k, n_features) if n_features else k
    pipe = Pipeline([("impute", SimpleImputer(strategy="median")), ("constant", VarianceThreshold(0.0)),
                     ("scale", StandardScaler()),
                     ("select", _selector(selection, k_eff, random_state)), ("clf", factory(random_state))])
    return pipe, dict(grid)


def tuned_search(X: pd.DataFrame, *, classifier: str = "logreg_l2", selection: str = "univariate", k: int = 10,
                 inner_splits: int = 3, random_state: int = 0) -> Any:
    """The inner loop: a grid search over the pipeline, grouped and stratified, scored by AUC."""
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
