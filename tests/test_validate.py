"""Validation: locked reference models, overlap guard, site shift, ComBat fitted on training only, studies."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import planted_table, requires_shared, synthetic_yaml, write_brats_cohort

from glioma_nb import config, io, paths, records, reporting, runner, runs
from glioma_nb.classify import cv
from glioma_nb.io import features
from glioma_nb.validate import apply, harmonise, overlap, study
from glioma_nb.validate.reference import VALIDATION_STEPS


# ---------------------------------------------------------------------------------------- ComBat and shift
def _sites(seed: int = 0, n_train: int = 60, n_val: int = 25, p: int = 30):
    rng = np.random.default_rng(seed)
    mu, sd = rng.normal(0, 3, p), rng.uniform(0.5, 2, p)
    cols = [f"f{j}" for j in range(p)]
    train = pd.DataFrame(rng.normal(mu, sd, (n_train, p)), columns=cols, index=[f"t{i}" for i in range(n_train)])
    # the validation site: the same biology, scanner-scaled and shifted per feature
    val = pd.DataFrame(rng.normal(mu, sd, (n_val, p)) * 1.8 + 2.5 * sd, columns=cols,
                       index=[f"v{i}" for i in range(n_val)])
    return train, val


def test_combat_moves_a_shifted_site_onto_the_training_distribution():
    train, val = _sites()
    before = harmonise.shift_table(train, val)
    cb = harmonise.ReferenceComBat().fit(train)
    after = harmonise.shift_table(train, cb.transform(val))
    assert before["smd"].abs().median() > 1.0 and (before["ks_q"] < 0.05).mean() > 0.7
    assert after["smd"].abs().median() < 0.15 and (after["ks_q"] < 0.05).mean() < 0.1
    sd_ratio = cb.transform(val).std() / train.std()
    assert sd_ratio.between(0.8, 1.25).mean() > 0.9   # the 1.8x scanner scale is removed too


def test_combat_is_fitted_on_training_only():
    train, val = _sites()
    cb = harmonise.ReferenceComBat().fit(train)
    mean, sd = cb.mean_.copy(), cb.sd_.copy()
    pd.testing.assert_series_equal(mean, train.mean())          # training statistics, nothing else
    other = (val * 5 - 100).set_axis([f"o{i}" for i in range(len(val))])
    a = cb.transform(val)
    cb.transform(other)                                          # seeing other cohorts changes nothing fitted
    pd.testing.assert_series_equal(cb.mean_, mean)
    pd.testing.assert_series_equal(cb.sd_, sd)
    pd.testing.assert_frame_equal(cb.transform(val), a)
    # a validation batch is harmonised by its own location/scale: other cases do not leak into it
    both = cb.transform(pd.concat([val, other]), batch=pd.Series(["A"] * len(val) + ["B"] * len(other),
                                                                 index=[*val.index, *other.index]))
    pd.testing.assert_frame_equal(both.loc[val.index], a)
    with pytest.raises(ValueError, match="at least 3"):
        cb.transform(val.iloc[:2])


def test_shift_table_measures_a_planted_difference():
    rng = np.random.default_rng(1)
    a = pd.DataFrame(rng.normal(0, 1, (200, 5)), columns=list("abcde"))
    b = pd.DataFrame(rng.normal(0, 1, (200, 5)), columns=list("abcde"))
    b["a"] += 1.0
    t = harmonise.shift_table(a, b).set_index("feature")
    assert t.loc["a", "smd"] == pytest.approx(1.0, abs=0.2) and t.loc["a", "ks_q"] < 1e-6
    assert (t.drop(index="a")["smd"].abs() < 0.3).all() and (t.drop(index="a")["ks_q"] > 0.05).all()


# ------------------------------------------------------------------------------------------ overlap guard
def test_patient_ids_are_compared_across_naming_schemes():
    assert overlap.normalise_patient_id("TCGA_DU_A5TR_19970726") == "TCGA-DU-A5TR"
    assert overlap.normalise_patient_id("tcga-du-a5tr") == "TCGA-DU-A5TR"
    assert overlap.normalise_patient_id(np.nan) is None


def test_overlap_guard_finds_a_copied_scan_under_another_id(synthetic_small, tmp_path):
    train = io.load_cohort(config.resolve_config(str(synthetic_yaml(synthetic_small, tmp_path / "a.yaml"))), progress=False)
    # the validation cohort: one training case re-saved under a new id and patient id, intensity-rescaled
    # and stored flipped left-right (the affine says so)
    root = tmp_path / "val"
    copied, new = train.case_ids[0], "Renamed_case_1"
    (root / new).mkdir(parents=True)
    for f in sorted((synthetic_small / copied).iterdir()):
        img = nib.load(f)
        a = np.asarray(img.dataobj)
        flip = np.diag([-1.0, 1, 1, 1])
        flip[0, 3] = a.shape[0] - 1
        data = a[::-1] if "seg" in f.name else (a[::-1] * 3.0 + 7).astype(np.float32)
        nib.save(nib.Nifti1Image(data, img.affine @ flip), root / new / f.name.replace(copied, new))
    clin = pd.read_csv(synthetic_small / "clinical.csv")
    clin = clin[clin["case_id"] == copied].assign(case_id=new, patient_id="P-new")
    clin.to_csv(root / "clinical.csv", index=False)
    val = io.load_cohort(config.resolve_config(str(synthetic_yaml(root, tmp_path / "v.yaml"))), progress=False)
    table, notes = overlap.patient_overlap(train, val)
    assert list(zip(table["validation_case"], table["training_case"], table["by"])) == [(new, copied, "image")]
    assert table["image_correlation"].iloc[0] > 0.999 and not notes
    # by id: the same patient id is found whatever the images (here another training patient's id)
    other = train.case_ids[5]
    clin["patient_id"] = train.clinical.set_index("case_id").loc[other, "patient_id"]
    clin.to_csv(root / "clinical.csv", index=False)
    val = io.load_cohort(config.resolve_config(str(synthetic_yaml(root, tmp_path / "v.yaml"))), progress=False)
    table, _ = overlap.patient_overlap(train, val)
    assert set(zip(table["training_case"], table["by"])) == {(copied, "image"), (other, "id")}
    table, _ = overlap.patient_overlap(train, val, fingerprints=False)
    assert set(zip(table["training_case"], table["by"])) == {(other, "id")}


@requires_shared("tcga-lgg")
@requires_shared("brats18")
@pytest.mark.check
def test_overlap_guard_finds_the_known_brats18_tcga_duplicates():
    brats = io.load_cohort(config.resolve_config("brats18-dev"), progress=False)
    tcga = io.load_cohort(config.resolve_config("tcga-lgg-dev"), progress=False)
    table, _ = overlap.patient_overlap(brats, tcga, fingerprints=False)
    assert set(table["patient_id"]) == {"TCGA-DU-A5TR", "TCGA-DU-A5TW"}
    assert set(table["training_case"]) == {"Brats18_TCIA10_628_1", "Brats18_TCIA10_639_1"}


# ------------------------------------------------------------------------------------------ reference runs
@pytest.fixture
def reference(tiny_cohort):
    """A completed training run (steps 02-04) with one locked IDH classifier on a planted signature table."""
    rd = runner.create_run(str(tiny_cohort), steps=["01_segment", "02_signature", "03_classify", "04_stratify"],
                           progress=False)
    X, y = planted_table(n=80, p=12)
    X.rename_axis("case_id").reset_index().to_parquet(rd / "tables" / "features_signature.parquet")
    Xs = features.assemble_feature_sets({"signature": X}, ["signature"])[0]["signature"]  # as 03 builds it
    search = cv.fit_final(Xs, y, inner_splits=3, random_state=0)
    records.save(records.make("classifier", "idh__signature", search.best_estimator_, X=Xs, y=y, node="idh",
                              feature_set="signature"), rd / "models" / "idh__signature.joblib")
    (rd / "metrics" / "01_segment.json").write_text(json.dumps({"model": "brats-4mod"}))
    m = runs.load_manifest(rd)
    for s in m["steps"]:
        s["status"] = "completed"
    m["status"] = "completed"
    m["models_sha256"] = runs.model_hashes(rd)
    (rd / "manifest.json").write_text(json.dumps(m))
    return rd


def _validation_table(n=40, seed=3):
    X, y = planted_table(n=n, p=12, seed=seed)
    X.index = [f"v{i}" for i in range(n)]
    clinical = pd.DataFrame({"case_id": X.index, "idh_mutant": y.to_numpy()})
    return X, clinical


def test_locked_models_predict_identically_twice_and_the_reference_is_untouched(reference):
    ref = runs.load_reference(reference)
    X, clinical = _validation_table()
    before = runs.model_hashes(reference)
    a, pa, _ = apply.apply_classifiers(ref, {"signature": X}, clinical, n_bootstrap=100)
    b, pb, _ = apply.apply_classifiers(ref, {"signature": X}, clinical, n_bootstrap=100)
    pd.testing.assert_frame_equal(pa, pb)
    pd.testing.assert_frame_equal(a, b)
    assert a.loc[0, "auc"] > 0.75 and a.loc[0, "n"] == 40        # the planted signal carries over
    assert runs.model_hashes(reference) == before and runs.verify_unchanged(ref)["unchanged"].all()
    # overlap cases are predicted but never scored
    c, pc, _ = apply.apply_classifiers(ref, {"signature": X}, clinical, exclude=["v0", "v1"], n_bootstrap=100)
    assert c.loc[0, "n"] == 38 and not pc.set_index("case_id").loc[["v0", "v1"], "scored"].any()


def test_reference_run_is_refused_when_models_changed_missing_or_unfinished(reference):
    model = reference / "models" / "idh__signature.joblib"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(runs.ValidationError, match="changed since the run wrote them"):
        runs.load_reference(reference)
    spare = reference / "models" / "spare.joblib"
    spare.write_bytes(b"not recorded")
    model.unlink()
    with pytest.raises(runs.ValidationError, match=r"missing: \['models/idh__signature.joblib'\]"):
        runs.load_reference(reference)
    spare.unlink()
    with pytest.raises(runs.ValidationError, match="has no models"):
        runs.load_reference(reference)
    m = runs.load_manifest(reference)
    m["steps"][3]["status"] = "failed"
    (reference / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(runs.ValidationError, match=r"not completed.*resume it"):
        runs.load_reference(reference)


def test_locked_model_refuses_validation_features_that_do_not_match(reference):
    ref = runs.load_reference(reference)
    X, clinical = _validation_table()
    with pytest.raises(runs.ValidationError, match="f3"):
        apply.apply_classifiers(ref, {"signature": X.drop(columns=["f3"])}, clinical)


def test_validation_run_takes_the_reference_settings_and_refuses_a_missing_modality(reference, tmp_path):
    ok = write_brats_cohort(tmp_path / "val_ok", seed=5)
    rd = runner.create_run(str(ok), [f"validate.reference_run={reference}", "segment.tta=true"], progress=False)
    cfg = config.load_yaml(rd / "params.yaml")
    assert cfg["segment"]["model"] == "brats-4mod" and cfg["segment"]["tta"] is False  # locked to the reference
    assert cfg["signature"]["filter_from"] == str(reference)
    m = runs.load_manifest(rd)
    assert [s["name"] for s in m["steps"]] == list(VALIDATION_STEPS)
    assert m["reference"]["models_sha256"] == runs.model_hashes(reference)
    locked = pd.read_csv(rd / "qc" / "locked_settings.csv").set_index("setting")
    assert bool(locked.loc["segment.tta", "overridden"])
    # a FLAIR-only validation cohort cannot feed the reference's four-modality model: clear error, no folder
    flair_only = write_brats_cohort(tmp_path / "val_flair", seed=6)
    y = yaml.safe_load(flair_only.read_text())
    y["cohort"]["modalities"] = ["flair"]
    flair_only.write_text(yaml.safe_dump(y))
    with pytest.raises(runs.ValidationError, match=r"lacks t1, t1c, t2.*brats-4mod"):
        runner.create_run(str(flair_only), [f"validate.reference_run={reference}"], progress=False)
    assert not (paths.reports_dir() / "val_flair").exists()
    with pytest.raises(config.ConfigError, match="would refit"):
        runner.create_run(str(ok), [f"validate.reference_run={reference}"], steps=["03_classify"], progress=False)


# ---------------------------------------------------------------------------------------------- a study
@pytest.mark.slow
def test_study_validates_a_locked_training_run_and_its_summary_is_the_notebooks(synthetic_training_run, tmp_path):
    from glioma_nb import synthetic

    _, train_dir = synthetic_training_run
    train_hashes = runs.model_hashes(train_dir)
    # an independent cohort from another site: other phantoms, BraTS-2021 labels (ET = 3), no IDH column,
    # an extra clinical column
    root = synthetic.generate_cohort(tmp_path / "other", synthetic.SyntheticSpec(n_cases=8, seed=21), progress=False)
    clin = pd.read_csv(root / "clinical.csv")
    for case in clin["case_id"]:  # other patients: phantoms of every seed are named SYN_000... (the guard would say so)
        (root / case).rename(root / f"OTH{case}")
        for f in (root / f"OTH{case}").iterdir():
            f.rename(f.with_name("OTH" + f.name))
    clin["case_id"], clin["patient_id"] = "OTH" + clin["case_id"], "OTH" + clin["patient_id"].astype(str)
    for seg in root.glob("*/*_seg.nii.gz"):
        img = nib.load(seg)
        lab = np.asarray(img.dataobj).copy()
        lab[lab == 4] = 3
        nib.save(nib.Nifti1Image(lab, img.affine, img.header), seg)
    clin = clin.drop(columns=["idh_mutant"]).assign(scanner="3T")
    clin.to_csv(root / "clinical.csv", index=False)
    y = synthetic_yaml(root, tmp_path / "othersite.yaml", label={"present": True, "scheme": "brats2021"})
    cfg = yaml.safe_load(y.read_text())
    del cfg["cohort"]["clinical"]["columns"]["idh_mutant"]
    y.write_text(yaml.safe_dump(cfg))
    study_yaml = tmp_path / "study.yaml"
    study_yaml.write_text(yaml.safe_dump({"training": {"run": str(train_dir)}, "validation": [{"cohort": str(y)}],
                                          "overrides": ["validate.n_bootstrap=100", "segment.n_overlay_cases=2"]}))
    sdir = runner.run_study(str(study_yaml), progress=False)

    spec = json.loads((sdir / "study.json").read_text())
    assert spec["status"] == "completed" and spec["training"]["run_id"] == train_dir.name
    vdir = paths.reports_dir() / spec["validation"][0]["run"]
    m = runs.load_manifest(vdir)
    assert [s["name"] for s in m["steps"]] == list(VALIDATION_STEPS) and m["status"] == "completed"
    assert m["reference"]["run_id"] == train_dir.name and m["reference"]["overlap_cases"] == []
    # the summary regenerates from the manifests, and holds exactly the numbers notebook 05 saved
    summary = pd.read_csv(sdir / "tables" / "study_summary.csv")
    regenerated = study.study_table(sdir)
    num = ["train_cv", "validation", "validation_lo", "validation_hi", "validation_n"]
    np.testing.assert_allclose(summary[num].to_numpy(float), regenerated[num].to_numpy(float), rtol=1e-12)
    headline = pd.read_csv(vdir / "tables" / "validation_headline.csv")
    assert list(summary["metric"]) == list(headline["metric"]) and len(summary) >= 5
    np.testing.assert_allclose(summary[num].to_numpy(float), headline[num].to_numpy(float), rtol=1e-12)
    # ... and the executed notebook displays them
    shown = (vdir / "05_validate.ipynb").read_text()
    for text in reporting.format_headline(headline)["validation"].head(4):
        if text:
            assert text in shown, text
    # label scheme 2021: ET scored; the missing IDH column is said, not hidden; the reference is untouched
    assert {"Dice WT", "Dice ET"} <= set(headline["metric"])
    assert headline.set_index("metric").loc["Dice ET", "validation"] > 0
    notes = json.loads((vdir / "metrics" / "05_validate.json").read_text())["notes"]
    assert any("lacks idh labels" in n for n in notes)
    assert runs.model_hashes(train_dir) == train_hashes
    assert (sdir / "study_summary.html").exists() and (sdir / "figures" / "study_forest.png").exists()
    # the study's supplement: both runs and the summary under one index, every exclusion of 05 accounted for
    from glioma_nb.publish import publish

    from test_publish import check_supplement

    publish(sdir, tmp_path / "study.zip", progress=False)
    got = check_supplement(tmp_path / "study.zip", tmp_path / "unzipped")
    cohorts = {runs.load_manifest(train_dir)["cohort"], m["cohort"]}
    assert {f"runs/{c}/05_validate.html" for c in cohorts} | {"study/study_summary.html"} <= got["files"]
    val_flow = pd.read_csv(vdir / "tables" / "flow_05_validate.csv")
    assert val_flow["analysis"].str.contains("locked").any() and not val_flow["reason"].fillna("").str.contains(
        "no reason recorded").any()


@requires_shared("tcga-lgg")
def test_site_subsets_know_which_patients_the_segmentation_weights_saw():
    from glioma_nb.segment import models

    spec = models.load_spec("flair-wt")
    seen = {}
    for name in ("tcga-lgg-dev", "tcga-lgg-du", "tcga-lgg-fg"):
        c, report = io.check_cohort(config.resolve_config(name), progress=False, images=False)  # test_io reads them
        assert report.ok
        seen[name] = models.training_cases(spec.train["sources"], "renamed-" + name, c.case_ids, c.root)  # by data folder, not name
    assert len(seen["tcga-lgg-dev"]) == 46 and seen["tcga-lgg-du"] | seen["tcga-lgg-fg"] <= seen["tcga-lgg-dev"]
    assert (len(seen["tcga-lgg-du"]), len(seen["tcga-lgg-fg"])) == (34, 11)


def test_locked_model_on_a_cohort_lacking_a_source_or_a_clinical_covariate():
    """A training-only table inside a locked set is a note, not an error; an absent clinical covariate is
    imputed by the model's own training median (said in the notes); an absent image feature stays an error."""
    X, y = planted_table(80, 4, 1.5, 0)
    X = X.add_prefix("location:").assign(**{"clinical:age": np.linspace(30, 70, 80), "clinical:kps": 80.0})
    pipe = cv.fit_final(X, y, inner_splits=3, k=3).best_estimator_
    rec = records.make("classifier", "idh__location-clinical", pipe, X=X, y=y)
    assert apply.lacking_sources(rec, {"location": X, "clinical": X}) == []
    assert apply.lacking_sources(rec, {"location": X}) == ["clinical"]
    notes: list[str] = []
    filled = apply.fill_clinical(X.drop(columns=["clinical:kps"]), rec, "idh/location+clinical", notes)
    np.testing.assert_allclose(rec.predict(filled).to_numpy(), rec.predict(X).to_numpy())  # median of a constant
    assert notes == ["idh/location+clinical: the validation cohort does not record ['clinical:kps']; "
                     "imputed with the training median"]
    with pytest.raises(KeyError, match="missing from the table"):
        rec.predict(apply.fill_clinical(X.drop(columns=["location:f0"]), rec, "x", []))
