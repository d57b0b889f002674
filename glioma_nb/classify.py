"""Classification: the tree of binary nodes and the nested cross-validation engine for one node.

``NODES``: each node is a target column of the canonical clinical table, the positive class, and a
filter giving the patients for whom the question is asked. ``nested_cv``: impute -> scale -> select
-> classifier (registry ``CLASSIFIERS``), tuned in an inner loop, evaluated in an outer loop split by
patient and stratified by class, repeated over seeds. Statistics live in ``glioma_nb.stats``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
    for node in NODES.values():
        if not {"who_grade", "idh_mutant"} <= set(clinical.columns):
            raise KeyError("clinical table lacks canonical columns; load it with glioma_nb.io")
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
    return LogisticRegression(l1_ratio=1.0 if penalty == "l1" else 0.0,
                              solver="liblinear" if penalty == "l1" else "lbfgs",
                              class_weight="balanced", max_iter=5000, random_state=random_state)


def _svm(kernel: str, random_state: int | None) -> Any:
    from sklearn.svm import SVC

    return SVC(kernel=kernel, probability=True, class_weight="balanced", random_state=random_state)


def _forest(random_state: int | None) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=300, class_weight="balanced_subsample", min_samples_leaf=2,
                                  random_state=random_state, n_jobs=1)


#: classifier name -> (factory(random_state), hyper-parameter grid of the `clf` step)
CLASSIFIERS: dict[str, tuple[Callable[[int | None], Any], dict[str, list[Any]]]] = {
    "logreg_l1": (lambda rs: _logreg("l1", rs), {"clf__C": [0.05, 0.2, 1.0, 5.0]}),
    "logreg_l2": (lambda rs: _logreg("l2", rs), {"clf__C": [0.01, 0.1, 1.0, 10.0]}),
    "svm_linear": (lambda rs: _svm("linear", rs), {"clf__C": [0.01, 0.1, 1.0]}),
    "svm_rbf": (lambda rs: _svm("rbf", rs), {"clf__C": [0.1, 1.0, 10.0], "clf__gamma": ["scale"]}),
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
    """impute (median) -> scale -> select at most ``k`` features -> classifier; and its tuning grid.

    Every step is fitted on training folds only when the pipeline is cross-validated.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; known: {sorted(CLASSIFIERS)}")
    factory, grid = CLASSIFIERS[classifier]
    k_eff = min(k, n_features) if n_features else k
    pipe = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()),
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


def nested_cv(X: pd.DataFrame, y: pd.Series, groups: pd.Series | None = None, *, classifier: str = "logreg_l2",
              selection: str = "univariate", k: int = 10, outer_splits: int = 5, inner_splits: int = 3,
              repeats: int = 3, random_state: int = 0) -> NestedCVResult:
    """Nested cross-validation of one binary node, split by patient (``groups``) and stratified by class.

    The outer loop estimates performance; inside each outer training set a grid search (inner
    grouped CV, scored by AUC) tunes the pipeline, so imputation, scaling, feature selection and
    tuning never see the outer test fold. Repeated ``repeats`` times with different splits.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold

    y = pd.Series(y).astype(int)
    if set(y.unique()) != {0, 1}:
        raise ValueError("nested_cv needs both classes 0 and 1")
    groups = pd.Series(groups if groups is not None else X.index, index=X.index)
    n_groups_min = min(groups[y == c].nunique() for c in (0, 1))
    if n_groups_min < outer_splits:
        raise ValueError(f"the smaller class has {n_groups_min} patients, fewer than {outer_splits} outer folds")
    probs = pd.DataFrame(index=X.index)
    best_params: list[dict[str, Any]] = []
    for r in range(repeats):
        seed = random_state + r
        outer = StratifiedGroupKFold(n_splits=outer_splits, shuffle=True, random_state=seed)
        col = np.full(len(X), np.nan)
        for train, test in outer.split(X, y, groups):
            pipe, grid = build_pipeline(classifier, selection, k, X.shape[1], random_state=seed)
            inner = StratifiedGroupKFold(n_splits=inner_splits, shuffle=True, random_state=seed)
            search = GridSearchCV(pipe, grid, cv=inner, scoring="roc_auc", n_jobs=1, error_score="raise")
            search.fit(X.iloc[train], y.iloc[train], groups=groups.iloc[train])
            col[test] = search.predict_proba(X.iloc[test])[:, 1]
            best_params.append(search.best_params_)
        probs[f"prob_r{r}"] = col
    oof = pd.concat([y.rename("y"), probs.mean(axis=1).rename("prob"), probs], axis=1)
    return NestedCVResult(oof, best_params)
