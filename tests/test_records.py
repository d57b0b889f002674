"""One saved-model record for every fitted object: round trips, kinds, legacy bundles, version warnings."""
from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import pytest
from conftest import planted_table
from sklearn.linear_model import LogisticRegression

from glioma_nb import records
from glioma_nb.signature.stability import StabilityFilter
from glioma_nb.stratify.clustering import ConsensusClustering


def test_every_kind_round_trips_and_is_found_by_kind(tmp_path):
    X, y = planted_table(n=60, p=6)
    clf = LogisticRegression().fit(X, y)
    clusters = ConsensusClustering(k=2, n_resamples=10, random_state=0).fit(X)
    filt = StabilityFilter().fit(X)
    recs = [records.make("classifier", "idh__x", clf, X=X, y=y, node="idh", feature_set="x"),
            records.make("clusters", "clusters__all", clusters, features=list(X.columns), subgroup="all"),
            records.make("stability_filter", "signature_filter__x", filt, X=X)]
    for r in recs:
        records.save(r, tmp_path / f"{r.name}.joblib")
    assert [p.name for p in records.find(tmp_path, "classifier")] == ["idh__x.joblib"]
    assert [p.name for p in records.find(tmp_path, "clusters")] == ["clusters__all.joblib"]
    assert records.find(tmp_path, "risk") == []
    back = records.load(tmp_path / "idh__x.joblib")
    np.testing.assert_allclose(back.predict(X), clf.predict_proba(X)[:, 1])
    assert list(records.load(tmp_path / "clusters__all.joblib").predict(X)) == list(clusters.predict(X))
    with pytest.raises(TypeError, match="does not predict"):
        records.load(tmp_path / "signature_filter__x.joblib").predict(X)
    assert "classifier" in repr(back) and "idh__x" in repr(back)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown kind 'net'.*classifier"):
        records.ModelRecord("net", "x", object())
    with pytest.raises(ValueError, match="unknown model kind"):
        records.find(".", "net")


def test_a_model_written_before_records_is_read_as_one(tmp_path):
    """Reference runs made before model records keep working: plain dict bundles and bare filters."""
    X, y = planted_table(n=40, p=4)
    clf = LogisticRegression().fit(X, y)
    joblib.dump({"model": clf, "features": list(X.columns), "node": "idh", "feature_set": "x",
                 "training_data_sha256": records.data_hash(X, y), "sklearn_version": "0.0"}, tmp_path / "idh__x.joblib")
    joblib.dump(StabilityFilter().fit(X), tmp_path / "signature_filter__x.joblib")
    with pytest.warns(UserWarning, match="saved with scikit-learn 0.0"):
        rec = records.load(tmp_path / "idh__x.joblib")
    assert rec.kind == "classifier" and rec.meta == {"node": "idh", "feature_set": "x"}
    np.testing.assert_allclose(rec.predict(X[X.columns[::-1]]), clf.predict_proba(X)[:, 1])
    assert records.load(tmp_path / "signature_filter__x.joblib").kind == "stability_filter"


def test_data_hash_ignores_order_and_sees_every_value():
    X, y = planted_table(n=30, p=3)
    h = records.data_hash(X, y)
    assert records.data_hash(X.sample(frac=1, random_state=1)[X.columns[::-1]], y) == h
    assert records.data_hash(X, 1 - y) != h and records.data_hash(X) != h
    X2 = X.copy()
    X2.iloc[3, 1] = np.nextafter(X2.iloc[3, 1], np.inf)
    assert records.data_hash(X2, y) != h
    assert records.data_hash(pd.DataFrame(index=["b", "a"])) == records.data_hash(pd.DataFrame(index=["a", "b"]))
