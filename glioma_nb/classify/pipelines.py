"""scikit-learn pipelines of a classification node (imputation -> scaling -> selection -> classifier) and
their tuning search, named in a registry so that YAML names map straight to estimators."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.base import clone
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
from glioma_nb import stats
from sklearn.model_selection import ParameterGrid, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC


# ------------------------------------------------------------------------------------------ the engine
class MedianImputer(SimpleImputer):
    """``SimpleImputer(strategy="median")`` with the same statistics, computed several times faster: missing
    values are sorted last and one ``np.partition`` per count of observed values finds the middle ones,
    instead of a masked-array median of every column (on 1,728 features the imputer was the costliest step
    of a fit). Columns missing everywhere are dropped, as SimpleImputer does; tests check the numbers agree."""

    def _dense_fit(self, X: np.ndarray, strategy: str, missing_values: Any, fill_value: Any) -> np.ndarray:
        if strategy != "median" or not (isinstance(missing_values, float) and np.isnan(missing_values)):
            return super()._dense_fit(X, strategy, missing_values, fill_value)
        missing = np.isnan(X)
        super()._fit_indicator(missing)
        n_valid = X.shape[0] - missing.sum(axis=0)
        out = np.full(X.shape[1], 0.0 if self.keep_empty_features else np.nan)
        filled = np.where(missing, np.inf, X)  # missing values sort last: the k-th smallest is a real value
        for n in np.unique(n_valid[n_valid > 0]):  # one partition per count of observed values
            cols = np.flatnonzero(n_valid == n)
            lo, hi = (n - 1) // 2, n // 2
            part = np.partition(filled[:, cols], [lo, hi], axis=0)
            out[cols] = np.mean(part[[lo, hi]], axis=0)
        return out


class FastStratifiedGroupKFold(StratifiedGroupKFold):
    """scikit-learn's StratifiedGroupKFold with the same folds, found faster: each group's best fold is
    chosen from all candidate folds at once (one array operation) instead of one fold at a time, with the
    same criterion and tie rule (tested equal). With one case per patient and 600 patients the fold search
    was a third of the cost of a cross-validation at fixed hyper-parameters."""

    def _find_best_fold(self, y_counts_per_fold: np.ndarray, y_cnt: np.ndarray,
                        group_y_counts: np.ndarray) -> int | None:
        k = self.n_splits
        cand = np.repeat(y_counts_per_fold[None], k, axis=0)   # candidate i: the group added to fold i
        cand[np.arange(k), np.arange(k)] += group_y_counts
        evals = np.mean(np.std(cand / y_cnt.reshape(1, 1, -1), axis=1), axis=1)
        samples = y_counts_per_fold.sum(axis=1)
        best, min_eval, min_samples = None, np.inf, np.inf
        for i in range(k):   # sklearn's sequential rule; np.isclose(e, inf) is False for finite e
            close = (evals[i] == min_eval) if np.isinf(min_eval) else \
                abs(evals[i] - min_eval) <= 1e-8 + 1e-5 * abs(min_eval)
            if evals[i] < min_eval or (close and samples[i] < min_samples):
                best, min_eval, min_samples = i, evals[i], samples[i]
        return best


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
    pipe = Pipeline([("impute", MedianImputer(strategy="median")), ("constant", VarianceThreshold(0.0)),
                     ("scale", StandardScaler()),
                     ("select", _selector(selection, k_eff, random_state)), ("clf", factory(random_state))])
    return pipe, dict(grid)


class PrefitSearch:
    """The inner loop of a node: a grid search over the ``clf`` step of a pipeline, scored by AUC.

    What :class:`sklearn.model_selection.GridSearchCV` does with the same splits, candidate order, scorer
    (decision function when the classifier has one, else the positive-class probability), tie rule (the
    first best candidate) and refit, except that the preprocessing (impute, drop constant, scale, select),
    which no candidate changes, is fitted once per inner split instead of once per candidate and split
    (``tests/test_classify_engine.py`` checks the two agree). With 4 candidates and 1,728 features this
    is about 3x faster; the grid may only name ``clf__`` parameters.
    """

    def __init__(self, pipeline: Pipeline, grid: dict[str, list[Any]], cv: Any) -> None:
        bad = [k for k in grid if not k.startswith("clf__")]
        if bad:
            raise ValueError(f"PrefitSearch tunes the clf step only; got {bad}")
        self.pipeline, self.grid, self.cv = pipeline, grid, cv

    @staticmethod
    def _score(clf: Any, Z: np.ndarray, y: np.ndarray) -> float:

        s = clf.decision_function(Z) if hasattr(clf, "decision_function") else clf.predict_proba(Z)[:, 1]
        return stats.auc(y, s)

    def fit(self, X: Any, y: Any, groups: Any = None) -> "PrefitSearch":
        X_given, X, y = X, np.asarray(X, dtype=float), np.asarray(y)
        candidates = list(ParameterGrid(self.grid))
        clf_params = [{k[len("clf__"):]: v for k, v in c.items()} for c in candidates]
        scores = []
        for train, test in self.cv.split(X, y, groups):
            pre = Pipeline(clone(self.pipeline).steps[:-1])
            z_train = pre.fit_transform(X[train], y[train])
            z_test = pre.transform(X[test])
            split = []
            for params in clf_params:
                clf = clone(self.pipeline.named_steps["clf"]).set_params(**params).fit(z_train, y[train])
                split.append(self._score(clf, z_test, y[test]))
            scores.append(split)
        mean = np.average(np.asarray(scores), axis=0)
        self.cv_scores_ = mean
        best = int(np.argmax(mean))
        self.best_index_, self.best_score_, self.best_params_ = best, float(mean[best]), candidates[best]
        # refitted on X as given (a DataFrame keeps its feature names in the model, as GridSearchCV does)
        self.best_estimator_ = clone(self.pipeline).set_params(**candidates[best]).fit(X_given, y)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:

        return self.best_estimator_.predict_proba(X)


def tuned_search(X: pd.DataFrame, *, classifier: str = "logreg_l2", selection: str = "univariate", k: int = 10,
                 inner_splits: int = 3, random_state: int = 0) -> PrefitSearch:
    """The inner loop: a grid search over the pipeline's classifier, grouped and stratified, scored by AUC."""
    pipe, grid = build_pipeline(classifier, selection, k, X.shape[1], random_state=random_state)
    inner = FastStratifiedGroupKFold(n_splits=inner_splits, shuffle=True, random_state=random_state)
    return PrefitSearch(pipe, grid, inner)


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
