"""Nested CV engine: finds a planted signal, stays at chance on noise (no leakage), respects patients."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import planted_table

from glioma_nb.classify import cv, pipelines


def _table(n=120, p=30, signal=1.5, seed=0):
    return planted_table(n, p, signal, seed)


@pytest.mark.parametrize("classifier, selection", [("logreg_l2", "univariate"), ("logreg_l1", "l1"),
                                                   ("random_forest", "none")])
def test_planted_signal_is_found(classifier, selection):
    X, y = _table()
    res = cv.nested_cv(X, y, classifier=classifier, selection=selection, k=5, repeats=1, outer_splits=4)
    assert res.auc > 0.75, res
    assert res.oof["prob"].between(0, 1).all() and list(res.oof.index) == list(X.index)


def test_selection_inside_folds_keeps_pure_noise_at_chance():
    """2000 noise features, 60 cases: selecting on all data would give a high AUC; nested CV must not."""
    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(60, 2000)))
    y = pd.Series(rng.integers(0, 2, 60))
    res = cv.nested_cv(X, y, classifier="logreg_l2", selection="univariate", k=10, repeats=2, outer_splits=5)
    assert 0.3 < res.auc < 0.7, res


def test_permuted_labels_are_near_chance():
    X, y = _table(seed=2)
    y_perm = pd.Series(np.random.default_rng(0).permutation(y.to_numpy()), index=y.index)
    res = cv.nested_cv(X, y_perm, repeats=2, outer_splits=4)
    assert 0.3 < res.auc < 0.7, res


def test_patients_never_span_train_and_test(monkeypatch):
    """Two scans per patient: an outer fold holds both or neither (StratifiedGroupKFold)."""
    X, y = _table(n=80, seed=3)
    groups = pd.Series([f"p{i // 2}" for i in range(80)], index=X.index)
    y.iloc[1::2] = y.iloc[0::2].to_numpy()  # both scans of a patient share the label
    from sklearn.model_selection import StratifiedGroupKFold

    seen = []
    orig = StratifiedGroupKFold.split

    def spy(self, X_, y_=None, groups=None):
        for tr, te in orig(self, X_, y_, groups):
            g = np.asarray(groups)
            seen.append(set(g[tr]) & set(g[te]))
            yield tr, te

    monkeypatch.setattr(StratifiedGroupKFold, "split", spy)
    cv.nested_cv(X, y, groups, repeats=1, outer_splits=4, inner_splits=3)
    assert seen and all(not s for s in seen)


def test_deterministic_and_clear_errors():
    X, y = _table(n=60, seed=4)
    a = cv.nested_cv(X, y, repeats=1, outer_splits=3)
    b = cv.nested_cv(X, y, repeats=1, outer_splits=3)
    pd.testing.assert_frame_equal(a.oof, b.oof)
    with pytest.raises(ValueError, match="unknown classifier"):
        pipelines.build_pipeline("xgboost")
    with pytest.raises(ValueError, match="fewer than 5 outer folds"):
        cv.nested_cv(X.iloc[:8], pd.Series([0, 1, 0, 1, 0, 0, 0, 1], index=X.index[:8]))
