"""Classification around the engine: permutation test, feature sets, final models, CNS5 rules, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import planted_table

from glioma_nb import config, records, stats
from glioma_nb.classify import cns5, cv, pipelines
from glioma_nb.io import features


def _table(n=80, p=20, signal=1.5, seed=0):
    return planted_table(n, p, signal, seed)


def _clinical(markers: pd.DataFrame) -> pd.DataFrame:
    """A canonical clinical table from columns idh, codel, tertp, grade (NaN allowed)."""
    return pd.DataFrame({"case_id": markers.index, "who_grade": markers["grade"], "idh_mutant": markers["idh"],
                         "codel_1p19q": markers["codel"], "tertp_mutant": markers["tertp"],
                         "mgmt_methylated": np.nan, "age": 50.0, "sex": "F"})


# -------------------------------------------------------------------------------- permutation test
def test_permutation_test_separates_signal_from_permuted_labels():
    X, y = _table(n=60, p=10, signal=2.0, seed=1)
    kw = dict(outer_splits=4, inner_splits=3, k=5)
    obs = cv.nested_cv(X, y, repeats=1, **kw).auc
    sig = cv.permutation_test(X, y, None, obs, n_permutations=19, n_jobs=2, **kw)
    assert obs > 0.8 and sig["p_value"] == pytest.approx(1 / 20) and sig["n_permutations"] == 19
    assert sig["null_mean_auc"] == pytest.approx(0.5, abs=0.1)
    y_perm = pd.Series(np.random.default_rng(5).permutation(y.to_numpy()), index=y.index)
    obs_p = cv.nested_cv(X, y_perm, repeats=1, **kw).auc
    null = cv.permutation_test(X, y_perm, None, obs_p, n_permutations=19, n_jobs=2, **kw)
    assert 0.3 < obs_p < 0.7 and null["p_value"] > 0.05


def test_permutations_keep_a_patients_scans_together():
    X, y = _table(n=40, p=5, seed=2)
    groups = pd.Series([f"p{i // 2}" for i in range(40)], index=X.index)
    y.iloc[1::2] = y.iloc[0::2].to_numpy()
    seen = []
    orig = cv.nested_cv

    def spy(X_, y_, g_, **kw):
        seen.append(pd.Series(y_).groupby(g_).nunique().max())
        return orig(X_, y_, g_, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(cv, "nested_cv", spy)
    try:
        cv.permutation_test(X, y, groups, 0.9, n_permutations=4, n_jobs=1, outer_splits=4, inner_splits=2)
    finally:
        mp.undo()
    assert seen and max(seen) == 1  # every permuted label set gives one label per patient


# ----------------------------------------------------------------------------------------- leakage
def test_leaky_selection_is_detectable_and_nested_cv_is_not_leaky():
    """Selecting features on all data before CV inflates the AUC on pure noise; the nested pipeline does not."""
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(60, 2000)))
    y = pd.Series(rng.integers(0, 2, 60))
    leaky_X = SelectKBest(f_classif, k=10).fit_transform(X, y)  # sees the test folds
    leaky = cross_val_predict(LogisticRegression(), leaky_X, y, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                              method="predict_proba")[:, 1]
    assert roc_auc_score(y, leaky) > 0.8  # the detector works: leakage shows up on noise
    honest = cv.nested_cv(X, y, k=10, repeats=1, outer_splits=5).auc
    assert 0.3 < honest < 0.7


def test_imputation_is_fitted_inside_the_folds(monkeypatch):
    from sklearn.impute import SimpleImputer

    X, y = _table(n=50, p=6, seed=4)
    X.iloc[::7, 1] = np.nan
    rows = []
    orig = SimpleImputer.fit

    def spy(self, X_, y_=None):
        rows.append(len(X_))
        return orig(self, X_, y_)

    monkeypatch.setattr(SimpleImputer, "fit", spy)
    res = cv.nested_cv(X, y, repeats=1, outer_splits=5, inner_splits=3)
    assert rows and max(rows) < len(X)  # never on all cases
    assert res.oof["prob"].notna().all()


# --------------------------------------------------------------------------------------- statistics
def test_bootstrap_ci_covers_the_true_auc():
    """Binormal scores, true AUC = Phi(d / sqrt 2): the 95% CI covers it in about 95% of samples."""
    from scipy.stats import norm, rankdata

    def fast_auc(y, s):
        r = rankdata(s)
        n1 = y.sum()
        return (r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1))

    d, truth = 1.0, norm.cdf(1.0 / np.sqrt(2))
    rng = np.random.default_rng(0)
    hits = 0
    reps = 150
    for i in range(reps):
        y = np.repeat([0, 1], 40)
        s = rng.normal(size=80) + d * y
        _, lo, hi = stats.bootstrap_ci(fast_auc, y, s, n_boot=300, random_state=i)
        hits += lo <= truth <= hi
    assert 0.88 <= hits / reps <= 0.995


def test_delong_variance_hand_computed():
    """neg (0.1, 0.4), pos (0.35, 0.8): AUC 3/4; V10 = (1/2, 1), V01 = (1, 1/2); var = 1/8/2 + 1/8/2."""
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    aucs, cov = stats.delong_covariance(y, [s])
    assert aucs[0] == pytest.approx(0.75) and cov[0, 0] == pytest.approx(0.125)


def test_threshold_metrics_known_counts():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.1, 0.3, 0.4])
    m = cv.threshold_metrics(y, p)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 4)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 0.8) / 2) and m["accuracy"] == pytest.approx(6 / 8)


# -------------------------------------------------------------------------------------- feature sets
def test_feature_sets_join_prefix_skip_and_dedupe():
    a = pd.DataFrame({"x": [1.0, 2.0]}, index=["c1", "c2"])
    b = pd.DataFrame({"x": [3.0]}, index=["c2"])
    aliases: dict[str, str] = {}
    sets, notes = features.assemble_feature_sets({"clinical": a, "volumetric": b},
                                                 ["clinical", "signature", "volumetric+clinical", "all"], aliases)
    assert aliases == {"all": "volumetric+clinical"}
    assert list(sets) == ["clinical", "volumetric+clinical"]
    assert list(sets["volumetric+clinical"].columns) == ["volumetric:x", "clinical:x"]
    assert np.isnan(sets["volumetric+clinical"].loc["c1", "volumetric:x"])  # outer join, imputed in the folds
    assert any("'signature' skipped" in n for n in notes) and any("'all' is the same" in n for n in notes)
    none, notes = features.assemble_feature_sets({}, ["all"])  # a clinical-only cohort has no image tables
    assert none == {} and "'all' skipped" in notes[0]


def test_clinical_features_encode_sex_and_take_whole_tumour_volume():
    clin = pd.DataFrame({"case_id": ["a", "b"], "age": [40.0, 60.0], "sex": ["M", "F"]})
    vol = pd.DataFrame({"WT__volume__ml": [10.0, 20.0], "TC__volume__ml": [1.0, 2.0]}, index=["a", "b"])
    f = features.clinical_features(clin, vol)
    assert f.to_dict("list") == {"age": [40.0, 60.0], "sex_male": [1.0, 0.0], "WT_volume_ml": [10.0, 20.0]}


# ------------------------------------------------------------------------------------- final models
def test_final_model_round_trip(tmp_path):
    X, y = _table(n=60, seed=6)
    search = cv.fit_final(X, y, k=5, inner_splits=3)
    rec = records.make("classifier", "idh__toy", search.best_estimator_, X=X, y=y, node="idh", feature_set="toy")
    records.save(rec, tmp_path / "idh.joblib")
    again = records.load(tmp_path / "idh.joblib")
    assert again.kind == "classifier" and again.meta == {"node": "idh", "feature_set": "toy"}
    assert again.features == list(X.columns) and again.training_data_sha256 == rec.training_data_sha256
    assert again.versions["scikit-learn"] and again.versions["numpy"]  # library versions travel with the model
    shuffled = X.sample(frac=1, random_state=0)[list(reversed(X.columns))]  # order of rows/columns is irrelevant
    pd.testing.assert_series_equal(again.predict(shuffled).loc[X.index],
                                   pd.Series(search.predict_proba(X)[:, 1], index=X.index, name="prob"))
    assert records.data_hash(shuffled, y) == rec.training_data_sha256
    X2 = X.copy()
    X2.iloc[0, 0] += 1e-9
    assert records.data_hash(X2, y) != rec.training_data_sha256
    with pytest.raises(FileExistsError, match="never overwritten"):
        records.save(rec, tmp_path / "idh.joblib")
    with pytest.raises(KeyError, match="needs 1 features missing.*f3"):
        again.predict(X.drop(columns=["f3"]))
    top = cv.top_features(again, n=3)
    assert top["feature"].iloc[0] == "f0" and top["weight"].iloc[0] > 0  # the planted feature leads


# ---------------------------------------------------------------------------------------- CNS5 rules
@pytest.mark.parametrize("idh, codel, tertp, gbm, expected", [
    (1, 1, None, None, cns5.CNS5_OLIGO),
    (1, 1, 1, 1, cns5.CNS5_OLIGO),          # TERTp is common in oligodendroglioma: still oligo
    (1, 0, None, 1, cns5.CNS5_ASTRO),       # grade 4 IDH-mutant astrocytoma is not a GBM in CNS5
    (1, None, None, None, cns5.CNS5_IDHMUT_NOS),
    (0, None, 1, 0, cns5.CNS5_GBM),         # molecular GBM: IDH-wt + TERTp, any grade
    (0, 0, 0, 1, cns5.CNS5_GBM),
    (0, 1, 0, 0, cns5.CNS5_IDHWT_NOS),
    (0, None, None, None, cns5.CNS5_IDHWT_NOS),
    (None, 1, 1, 1, cns5.CNS5_UNKNOWN),
    (np.nan, 0, 0, 0, cns5.CNS5_UNKNOWN),
])
def test_cns5_rules(idh, codel, tertp, gbm, expected):
    assert cns5.cns5_diagnosis(idh=idh, codel=codel, tertp=tertp, gbm=gbm) == expected


def test_cascade_propagates_marker_predictions():
    """Features that reveal IDH and codel exactly give the exact diagnosis; a marker without a node stays unknown."""
    rng = np.random.default_rng(7)
    n = 90
    idh = rng.integers(0, 2, n).astype(float)
    codel = np.where(idh == 1, rng.integers(0, 2, n), 0).astype(float)
    grade = np.where(idh == 1, 2, rng.choice([2, 4], n)).astype(float)
    ids = [f"c{i}" for i in range(n)]
    m = pd.DataFrame({"idh": idh, "codel": codel, "tertp": np.nan, "grade": grade}, index=ids)
    X = pd.DataFrame({"a": idh * 4 + rng.normal(0, 0.3, n), "b": codel * 4 + rng.normal(0, 0.3, n),
                      "c": (grade == 4) * 4 + rng.normal(0, 0.3, n)}, index=ids)
    out = cns5.cascade_cv(X, _clinical(m), ["idh", "codel_1p19q", "gbm_vs_lgg"], inner_splits=3, k=3)
    assert (out["true_diagnosis"] == out["pred_diagnosis"]).mean() > 0.95
    assert out["pred_tertp"].isna().all()  # no tertp node: never guessed
    only_idh = cns5.cascade_cv(X, _clinical(m), ["idh"], inner_splits=3, k=3)
    mutant = only_idh["pred_idh"] == 1
    assert (only_idh.loc[mutant, "pred_diagnosis"] == cns5.CNS5_IDHMUT_NOS).all()


# ------------------------------------------------------------------------------------------ bad input
def test_untrainable_nodes_are_skipped_with_a_reason():
    X, y = _table(n=40, seed=8)
    m = pd.DataFrame({"idh": y.astype(float).to_numpy(), "codel": np.nan, "tertp": 1.0, "grade": 2.0}, index=X.index)
    m.loc[m.index[m["idh"] == 1][:3], "codel"] = [0.0, 1.0, 0.0]  # 1p/19q is asked of IDH-mutants only
    res = cv.evaluate({"toy": X}, _clinical(m), nodes=["idh", "gbm_vs_lgg", "codel_1p19q", "tertp", "mgmt"],
                            repeats=1, n_permutations=0, n_bootstrap=50, outer_splits=4)
    assert res.results["node"].tolist() == ["idh"] and res.results["auc"].iloc[0] > 0.75
    reasons = dict(zip(res.skipped["node"], res.skipped["reason"]))
    assert "only one class" in reasons["gbm_vs_lgg"] and "only one class" in reasons["tertp"]
    assert "fewer than classify.min_class_size" in reasons["codel_1p19q"]
    assert reasons["mgmt"] == "no labelled cases in this cohort"
    # 6 positives: 4 or 5 per outer training set, fewer than 5 inner folds need
    small = pipelines.node_problem(pd.Series([0] * 10 + [1] * 6), pd.Series(range(16)), outer_splits=5,
                                  inner_splits=5, min_class_size=5)
    assert "too few for 5 outer x 5 inner folds" in small
    assert pipelines.node_problem(pd.Series([0] * 10 + [1] * 6), pd.Series(range(16)), outer_splits=5,
                                 inner_splits=3, min_class_size=5) is None
    with pytest.raises(ValueError, match="unknown classification nodes"):
        cv.evaluate({"toy": X}, _clinical(m), nodes=["idh", "tumour_colour"])


@pytest.mark.slow
def test_synthetic_cohort_planted_idh_signal_and_permuted_labels(synthetic_40):
    """The planted subtype effects are found from the volumetric features; permuting IDH removes them."""
    from glioma_nb import io
    from glioma_nb.signature import volumetric

    cohort = io.load_cohort(config.resolve_config(str(synthetic_40)), progress=False)
    X = volumetric.cohort_features(cohort, progress=False)
    y = cohort.clinical.set_index("case_id")["idh_mutant"].astype(int).reindex(X.index)
    kw = dict(outer_splits=5, inner_splits=3, k=10)
    res = cv.nested_cv(X, y, repeats=2, **kw)
    assert res.auc > 0.8, res
    y_perm = pd.Series(np.random.default_rng(0).permutation(y.to_numpy()), index=y.index)
    perm = cv.nested_cv(X, y_perm, repeats=1, **kw)
    test = cv.permutation_test(X, y_perm, None, perm.auc, n_permutations=19, n_jobs=2, **kw)
    assert 0.25 < perm.auc < 0.75 and test["p_value"] > 0.05, (perm, test)


def test_compare_sets_pairs_feature_sets_on_the_same_patients():
    rng = np.random.default_rng(2)
    n = 120
    y = rng.integers(0, 2, n)
    ids = [f"c{i}" for i in range(n)]
    oof = pd.concat([pd.DataFrame({"case_id": ids, "y": y, "prob": p, "node": "idh", "feature_set": fs})
                     for fs, p in [("good", y * 0.5 + rng.random(n) * 0.6), ("noise", rng.random(n))]])
    table = cv.compare_sets(oof, config.parse_pairs(["good vs noise", "good vs absent"], "classify.compare"),
                            n_bootstrap=200)
    assert len(table) == 1 and table.loc[0, "n"] == n and table.loc[0, "difference_low"] > 0.2
    assert table.loc[0, "p_delong"] < 0.001
    with pytest.raises(ValueError, match="classify.compare: 'good - noise' is not a comparison"):
        config.parse_pairs(["good - noise"], "classify.compare")


def test_labels_layout_cohort_of_masks_only(tmp_path):
    import nibabel as nib
    import yaml

    from glioma_nb import config, io

    root = tmp_path / "masks"
    root.mkdir()
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:5, 2:5, 2:5] = 2
    lab[3, 3, 3] = 4
    for name in ("TCGA-02-0001_2001.01.01_mask.nii.gz", "TCGA-02-0002_2002.02.02_mask.nii.gz", "notes.txt"):
        (nib.save(nib.Nifti1Image(lab, np.eye(4)), root / name) if name.endswith(".gz")
         else (root / name).write_text("x"))
    cfg = {"cohort": {"root": str(tmp_path), "layout": "labels", "case_glob": "masks/*", "modalities": [],
                      "case_id_regex": "^(TCGA-..-....)_", "label": {"present": True, "scheme": "brats2018"}}}
    y = tmp_path / "labels.yaml"
    y.write_text(yaml.safe_dump(cfg))
    cohort, report = io.check_cohort(config.resolve_config(str(y)), progress=False)
    assert report.ok, report.format()
    assert cohort.case_ids == ["TCGA-02-0001", "TCGA-02-0002"] and cohort.modalities == ()
    assert report.case_table["WT_ml"].tolist() == [0.027, 0.027]
    cfg["cohort"]["case_id_regex"] = "^(TCGA-02)-"      # two files, one id: a named error
    y.write_text(yaml.safe_dump(cfg))
    _, report = io.check_cohort(config.resolve_config(str(y)), progress=False)
    assert any("a second label map for this case" in p.message for p in report.errors)


def test_a_node_is_one_entry_of_nodes_reading_canonical_columns(monkeypatch):
    """Every node reads canonical clinical columns; a node added to NODES alone (here 'egfr_amp' on a column
    added to CLINICAL_COLUMNS) is in the label table and the participant flow, with its own exclusion reason."""
    from glioma_nb.classify import nodes
    from glioma_nb.io import clinical as clin

    assert all(set(n.columns) <= set(clin.CLINICAL_COLUMNS) for n in nodes.NODES.values())
    assert nodes.node_columns() == ["who_grade", "idh_mutant", "codel_1p19q", "tertp_mutant", "mgmt_methylated"]
    monkeypatch.setitem(clin.CLINICAL_COLUMNS, "egfr_amplified", "binary")
    monkeypatch.setitem(nodes.NODES, "egfr_amp", nodes.Node(
        "egfr_amp", "EGFR amplified vs not (IDH-wild-type only)", lambda df: pd.to_numeric(df["egfr_amplified"]),
        lambda df: pd.to_numeric(df["idh_mutant"], errors="coerce") == 0, "molecular", ("egfr_amplified", "idh_mutant"),
        "not eligible: not IDH-wild-type"))
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(14)], "idh_mutant": [0] * 12 + [1, 1],
                          "egfr_amplified": [1, 0] * 6 + [1, 1]})
    assert "egfr_amplified" in nodes.with_node_columns(table.drop(columns="egfr_amplified")).columns
    row = nodes.node_label_table(table).set_index("node").loc["egfr_amp"]
    assert (row["eligible"], row["positive"], row["negative"], bool(row["trainable"])) == (12, 6, 6, True)
    flow = nodes.node_flow("03", table, "egfr_amp", "clinical", table["case_id"], table["case_id"][:12])
    assert "not eligible: not IDH-wild-type" in set(flow["reason"].dropna())
