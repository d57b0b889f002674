"""Nested CV engine: finds a planted signal, stays at chance on noise (no leakage), respects patients."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import planted_table

from glioma_nb import compute
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


# ------------------------------------------------------------------------------- speed without change
@pytest.mark.parametrize("classifier, selection", [("logreg_l2", "univariate"), ("svm_linear", "l1"),
                                                   ("random_forest", "none")])
def test_prefit_search_equals_gridsearchcv(classifier, selection):
    """The inner search that fits the preprocessing once per split picks, scores and refits exactly as
    scikit-learn's GridSearchCV on the same splits."""
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold

    X, y = _table(n=90, p=40, signal=0.8, seed=4)
    X.iloc[3, 5] = np.nan
    groups = np.arange(90) // 2
    ours = pipelines.tuned_search(X, classifier=classifier, selection=selection, k=5, inner_splits=3,
                                  random_state=3).fit(X, y, groups=groups)
    pipe, grid = pipelines.build_pipeline(classifier, selection, 5, X.shape[1], random_state=3)
    ref = GridSearchCV(pipe, grid, cv=StratifiedGroupKFold(3, shuffle=True, random_state=3), scoring="roc_auc",
                       error_score="raise").fit(X, y, groups=groups)
    assert ours.best_params_ == ref.best_params_
    np.testing.assert_array_equal(ours.cv_scores_, ref.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(ours.predict_proba(X), ref.predict_proba(X))
    with pytest.raises(ValueError, match="tunes the clf step only"):
        pipelines.PrefitSearch(pipe, {"select__k": [2, 3]}, None)


def test_fixed_permutation_statistic_finds_signal_and_keeps_chance():
    """The cheap exact test: one CV at fixed hyper-parameters, on observed and permuted labels alike."""
    X, y = _table(n=60, p=10, signal=2.0, seed=1)
    kw = dict(outer_splits=4, inner_splits=3, k=5)
    sig = cv.permutation_test(X, y, None, 0.0, n_permutations=19, n_jobs=1, method="fixed", **kw)
    assert sig["statistic"] > 0.8 and sig["p_value"] == pytest.approx(1 / 20) and sig["method"] == "fixed"
    y_perm = pd.Series(np.random.default_rng(5).permutation(y.to_numpy()), index=y.index)
    null = cv.permutation_test(X, y_perm, None, 0.0, n_permutations=19, n_jobs=1, method="fixed", **kw)
    assert null["p_value"] > 0.05 and abs(null["null_mean_auc"] - 0.5) < 0.1
    with pytest.raises(ValueError, match="unknown permutation method"):
        cv.permutation_test(X, y, None, 0.5, method="cheap")


def test_sequential_stopping_point_does_not_depend_on_n_jobs():
    """Noise stops early; where it stops (and so p) is the same for 1 and 2 processes (batches of 2 vs 4)."""
    rng = np.random.default_rng(2)
    X = pd.DataFrame(rng.normal(size=(40, 6)))
    y = pd.Series(rng.integers(0, 2, 40))
    kw = dict(outer_splits=4, inner_splits=2, k=3, method="fixed", stop_after=3)
    a = cv.permutation_test(X, y, None, 0.0, n_permutations=40, n_jobs=1, **kw)
    b = cv.permutation_test(X, y, None, 0.0, n_permutations=40, n_jobs=2, **kw)
    assert a["stopped_early"] and a == b


def test_a_small_grid_stays_in_process_and_a_large_one_starts_the_pool():
    """The first pair is timed: a grid whose rest takes less than the pool's start runs here, with the same
    tables as a grid forced into 2 processes."""
    X, y = _table(n=24, p=6, signal=1.5, seed=3)
    clin = pd.DataFrame({"case_id": X.index, "idh_mutant": y.to_numpy(), "who_grade": 4, "age": 50.0, "sex": "M"})
    sets = {"toy": X, "toy2": X.iloc[:, :3], "toy3": X.iloc[:, 3:]}
    kw = dict(nodes=["idh"], repeats=1, n_permutations=0, n_bootstrap=20, outer_splits=3, inner_splits=2,
              progress=False)
    small = cv.evaluate(sets, clin, n_jobs=2, **kw)
    forced = cv.evaluate(sets, clin, n_jobs=2, pool_start_s=0, **kw)
    assert (small.processes, forced.processes) == (1, 2)
    pd.testing.assert_frame_equal(small.results, forced.results)
    pd.testing.assert_frame_equal(small.oof, forced.oof)


def test_grid_in_parallel_equals_serial_and_resumes_from_its_cache(tmp_path):
    """Node x feature set pairs in 2 processes give the serial tables; a second call reads every pair back."""
    X, y = _table(n=40, p=10, signal=1.5, seed=6)
    rng = np.random.default_rng(6)
    clin = pd.DataFrame({"case_id": X.index, "idh_mutant": y.to_numpy(), "mgmt_methylated": rng.integers(0, 2, 40),
                         "who_grade": 4, "age": rng.normal(55, 10, 40), "sex": "M"})
    sets = {"clinical": clin.set_index("case_id")[["age"]], "toy": X, "toy+clinical": X.assign(age=clin["age"].to_numpy())}
    kw = dict(nodes=["idh", "mgmt"], repeats=1, n_permutations=9, permutation="fixed", n_bootstrap=50,
              outer_splits=4, progress=False)
    serial = cv.evaluate(sets, clin, n_jobs=1, **kw)
    parallel = cv.evaluate(sets, clin, n_jobs=2, cache_dir=tmp_path, pool_start_s=0, **kw)
    assert (serial.processes, parallel.processes) == (1, 2)
    pd.testing.assert_frame_equal(serial.results, parallel.results)
    pd.testing.assert_frame_equal(serial.oof, parallel.oof)
    assert len(list(tmp_path.glob("*.joblib"))) == 6 and not parallel.notes
    again = cv.evaluate(sets, clin, n_jobs=1, cache_dir=tmp_path, **kw)
    pd.testing.assert_frame_equal(serial.results, again.results)
    assert again.notes == ["6 of 6 node x feature set evaluations reused from the step's cache"]
    changed = cv.evaluate(sets, clin, n_jobs=1, cache_dir=tmp_path, **{**kw, "n_bootstrap": 60})
    assert not changed.notes  # other settings: nothing reused
    with compute.Executor("local:2") as ex, ex.joblib():   # compute.executor local:2: the grid on Dask workers
        on_dask = cv.evaluate(sets, clin, n_jobs=-1, pool_start_s=1e9, **kw)   # never timed in process there
    assert on_dask.processes == 2
    pd.testing.assert_frame_equal(serial.results, on_dask.results)
    pd.testing.assert_frame_equal(serial.oof, on_dask.oof)


def test_average_accuracy_has_a_ci_from_the_cases_resampled_together():
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(80)]
    rows, oof = [], []
    for node, kind, acc in (("idh", "molecular", 0.9), ("codel_1p19q", "molecular", 0.7), ("gbm_vs_lgg", "histology", 0.8)):
        y = rng.integers(0, 2, 80)
        right = rng.random(80) < acc
        prob = np.where(right, y, 1 - y) * 0.8 + 0.1
        oof.append(pd.DataFrame({"case_id": ids, "y": y, "prob": prob, "node": node, "feature_set": "toy"}))
        rows.append({"node": node, "kind": kind, "feature_set": "toy", "auc": 0.8, "accuracy": float(right.mean()),
                     "balanced_accuracy": float(right.mean())})
    avg = cv.average_accuracy(pd.DataFrame(rows), oof=pd.concat(oof), n_boot=500).set_index("kind")
    mol = avg.loc["molecular"]
    assert mol["average_accuracy_lo"] < mol["average_accuracy"] < mol["average_accuracy_hi"]
    assert 0.05 < mol["average_accuracy_hi"] - mol["average_accuracy_lo"] < 0.25      # about 2 x 1.96 x SD of 160 cases
    assert avg.loc["histology", "average_accuracy"] == pytest.approx(rows[2]["accuracy"])
    no_ci = cv.average_accuracy(pd.DataFrame(rows))                                 # without predictions: said as NaN
    assert no_ci["average_accuracy_lo"].isna().all()
