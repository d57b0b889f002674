"""Serial scans (issue 37): the timeline QC, growth (MTD, VDE, doubling time), the transformation event, the
synthetic serial cohort and notebook 06 end to end."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from glioma_nb import config, io, paths, runner, synthetic
from glioma_nb.longitudinal import growth, transformation
from glioma_nb.stratify import cox
from tests.conftest import write_brats_cohort


# ------------------------------------------------------------------------------------------------- growth
def test_mtd_is_the_geometric_mean_diameter_of_a_voxelised_ellipsoid():
    """MTD = (2V)^(1/3): for an ellipsoid of diameters D1 D2 D3 (V = pi/6 D1 D2 D3) it is (pi/3)^(1/3) times their
    geometric mean; a voxelised ellipsoid at 1 mm measures within 1 %."""
    d = np.array([40.0, 30.0, 24.0])
    z, y, x = np.ogrid[-30:31, -30:31, -30:31]
    inside = (x / (d[0] / 2)) ** 2 + (y / (d[1] / 2)) ** 2 + (z / (d[2] / 2)) ** 2 <= 1
    mtd = growth.mean_tumour_diameter(inside.sum() / 1000.0)
    assert mtd == pytest.approx((np.pi / 3) ** (1 / 3) * np.prod(d) ** (1 / 3), rel=0.01)
    assert growth.mean_tumour_diameter(0.5 * 40 * 30 * 24 / 1000) == pytest.approx(np.prod(d) ** (1 / 3))


def test_vde_and_doubling_time_of_known_growth():
    t = np.array([0.0, 0.5, 1.2, 2.0, 3.1])
    exact = growth.fit_growth(t, 30 + 6.0 * t, 2 ** (t / 1.5))
    assert exact["vde_mm_per_year"] == pytest.approx(6.0) and exact["vde_high"] - exact["vde_low"] < 1e-6
    assert exact["doubling_time_years"] == pytest.approx(1.5) and exact["n_scans"] == 5
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(200):   # the 95% CI of a noisy slope covers the truth about 95% of the time
        f = growth.fit_growth(t, 30 + 6.0 * t + rng.normal(0, 1.0, len(t)), np.ones(len(t)))
        covered += f["vde_low"] <= 6.0 <= f["vde_high"]
    assert 0.90 <= covered / 200 <= 0.99
    two = growth.fit_growth([0, 1], [30, 35], [1, 2])
    assert two["vde_mm_per_year"] == pytest.approx(5) and np.isnan(two["vde_low"])   # no CI from two scans
    shrinking = growth.fit_growth([0, 1, 2], [30, 29, 28], [3, 2, 1])
    assert shrinking["doubling_time_years"] == np.inf and np.isnan(growth.fit_growth([0], [30], [1])["vde_mm_per_year"])
    groups = growth.vde_group(pd.Series([7.99, 8.0, np.nan]), 8)
    assert groups.iloc[0].startswith("slow") and groups.iloc[1].startswith("fast") and groups.iloc[2] is None


# ----------------------------------------------------------------------------------------- transformation
def _scans(rows):
    return pd.DataFrame(rows, columns=["patient_id", "case_id", "days", "ET_ml", "grade"])


def test_transformation_rules_date_the_event_at_the_first_scan_that_shows_it():
    s = _scans([("A", "a0", 0, 0.0, 2), ("A", "a1", 200, 0.5, 2), ("A", "a2", 400, 3.0, 2), ("A", "a3", 600, 5.0, 3),
                ("B", "b0", 0, 2.5, 2), ("B", "b1", 300, 4.0, 3),           # enhancing at baseline
                ("C", "c0", 0, 0.0, 2), ("C", "c1", 365, 0.2, 2),           # censored at the last scan
                ("D", "d0", 0, 0.0, 2)])                                      # one scan
    enh, _ = transformation.transformation_events(s, rule="enhancement", enhancement_ml=1.0, dated="scan")
    assert enh.loc["A", ["event", "days"]].tolist() == [1, 400] and enh.loc["A", "by"] == "enhancement"
    mid, _ = transformation.transformation_events(s, rule="enhancement", enhancement_ml=1.0)
    assert mid.loc["A", ["event", "days", "scan_days"]].tolist() == [1, 300, 400]   # halfway from the scan before
    assert mid.loc["C", "days"] == 365 and np.isnan(mid.loc["C", "scan_days"])
    assert not enh.loc["B", "at_risk"] and "enhancing at baseline" in enh.loc["B", "why_not"]
    assert enh.loc["C", ["event", "days"]].tolist() == [0, 365] and enh.loc["C", "at_risk"]
    assert not enh.loc["D", "at_risk"] and "single scan" in enh.loc["D", "why_not"]
    hist, _ = transformation.transformation_events(s, rule="histology", dated="scan")
    assert hist.loc["A", ["event", "days"]].tolist() == [1, 600] and hist.loc["B", "at_risk"]
    assert hist.loc["B", ["event", "days"]].tolist() == [1, 300]
    either, _ = transformation.transformation_events(s, rule="either", dated="scan")
    both, _ = transformation.transformation_events(s, rule="both", dated="scan")
    assert either.loc["A", "days"] == 400 and both.loc["A", "days"] == 600 and both.loc["A", "by"] == "histology"
    no_grade, notes = transformation.transformation_events(s.drop(columns="grade"), rule="histology")
    assert no_grade["event"].sum() == 0 and "no per-scan grade" in notes[0]
    with pytest.raises(ValueError, match="rule must be one of"):
        transformation.transformation_events(s, rule="radiological")


def test_a_simulated_transformation_hazard_ratio_is_recovered():
    """The planted model of the synthetic serial cohort, without images: 600 patients, transformation seen only
    at scan dates. Dated at the midpoint between scans (the default), a Cox model of time to transformation on the
    planted VDE and IDH status covers both planted hazard ratios with its 95% CI; dated at the scan that shows
    it, the VDE HR is biased upwards (slow growers are scanned less often, so their events are seen later)."""
    rng = np.random.default_rng(3)
    pts = synthetic._serial_patients(600, rng)
    scans = []
    for i, p in pts.iterrows():
        for k, d in enumerate(synthetic._serial_timeline(p, rng)):
            scans.append({"patient_id": p.patient_id, "case_id": f"{i}_{k}", "days": d,
                          "grade": 3 if d >= p.transformation_latent_days else 2})
    scans = pd.DataFrame(scans)
    design = pd.DataFrame({"vde_mm_per_year": pts["vde_mm_per_year"].to_numpy(),
                           "idh_wildtype": 1 - pts["idh_mutant"].to_numpy()}, index=pts["patient_id"])
    planted = synthetic.SERIAL["transformation_log_hr"]
    hr = {}
    for dated in ("midpoint", "scan"):
        ev, _ = transformation.transformation_events(scans, rule="histology", dated=dated)
        ev = ev[ev["at_risk"]]
        fit = cox.fit_cox(pd.DataFrame({"time": ev["days"] / 365.25, "event": ev["event"]}), design.loc[ev.index])
        hr[dated] = t = fit.table.set_index("covariate")
        assert ev["event"].mean() > 0.3
    for cov, key in (("vde_mm_per_year", "vde_per_mm_per_year"), ("idh_wildtype", "idh_wildtype")):
        t = hr["midpoint"]
        assert t.loc[cov, "hr_low"] <= np.exp(planted[key]) <= t.loc[cov, "hr_high"], (cov, t.loc[cov].to_dict())
    assert hr["scan"].loc["vde_mm_per_year", "hr"] > hr["midpoint"].loc["vde_mm_per_year", "hr"] > np.exp(
        planted["vde_per_mm_per_year"])


# ----------------------------------------------------------------------------------------------- timeline
def _serial_tiny(tmp_path, timepoints: pd.DataFrame):
    y = write_brats_cohort(tmp_path / "tiny", n=6)
    cfg = yaml.safe_load(y.read_text())
    timepoints.to_csv(tmp_path / "tiny" / "timepoints.csv", index=False)
    cfg["cohort"]["timepoints"] = {"file": "timepoints.csv", "columns": {"case_id": "scan", "days": "day"}}
    y.write_text(yaml.safe_dump(cfg))
    return y


def test_timeline_problems_are_reported_by_scan_with_the_fix_and_refuse_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIOMA_NB_REPORTS", str(tmp_path / "reports"))  # not the worker's: others run "tiny" too
    tp = pd.DataFrame({"patient_id": ["P1", "P1", "P2", "P2", "P3", "P3", "P4"],
                       "scan": ["C00", "C01", "C02", "C03", "C04", "C04", "C05"],
                       "day": [0, 0, 0, -30, 0, 100, 12], "visit": [1, 2, 1, 2, 1, 2, 1]})
    y = _serial_tiny(tmp_path, tp)
    cfg = config.resolve_config(str(y))
    _, report = io.check_cohort(cfg, progress=False)
    df = report.to_frame()
    msg = lambda case: " | ".join(df.loc[df["case"].fillna("").str.contains(case), "message"])  # noqa: E731
    assert "2 scans on day 0 (duplicate scans)" in msg("C00")
    assert "dated before the baseline" in msg("C03") and "first scan is at day -30" not in msg("C03")
    assert "not in date order" in msg("C02")
    assert "listed more than once" in msg("C04")
    assert "first scan is at day 12, not 0" in msg("C05") and "single scan" in msg("C05")
    assert (df.loc[df["message"].str.contains("single scan"), "severity"] == "warning").all()
    assert all(f for f in df["fix"]) and not report.ok
    with pytest.raises(io.CohortError, match="duplicate scans"):
        runner.create_run(str(y), progress=False)
    assert not (tmp_path / "reports" / "tiny").exists() or not any((tmp_path / "reports" / "tiny").iterdir())


def test_a_clean_timeline_adds_06_and_06_needs_one(tmp_path):
    tp = pd.DataFrame({"patient_id": ["P1", "P1", "P1", "P2", "P2", "P2"],
                       "scan": [f"C0{i}" for i in range(6)], "day": [0, 180, 400, 0, 200, 390]})
    y = _serial_tiny(tmp_path, tp)
    cfg = config.resolve_config(str(y))
    cohort, report = io.check_cohort(cfg, progress=False)
    assert report.ok and not report.warnings and list(cohort.timepoints["days"]) == [0, 180, 400, 0, 200, 390]
    rd = runner.create_run(str(y), progress=False)
    m = json.loads((rd / "manifest.json").read_text())
    assert m["steps"][-1]["name"] == "06_longitudinal" and any(k.endswith("timepoints.csv") for k in m["inputs"])
    plain = write_brats_cohort(tmp_path / "plain")
    with pytest.raises(config.ConfigError, match="06_longitudinal needs serial scans"):
        runner.create_run(str(plain), steps=["06_longitudinal"], progress=False)


# ---------------------------------------------------------------------------------- synthetic serial cohort
#: eight patients have a handful of transformations: folds small enough to fit the risk models on them
SMALL_CV = ["longitudinal.min_events=3", "longitudinal.outer_splits=2", "longitudinal.inner_splits=2"]
@pytest.fixture(scope="module")
def serial_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "n8"
    return synthetic.generate_longitudinal(out, synthetic.SyntheticSpec(n_cases=8, seed=8), progress=False)


def test_synthetic_serial_cohort_grows_as_planted(serial_cohort):
    scans = pd.read_csv(serial_cohort / "scans_truth.csv")
    truth = pd.read_csv(serial_cohort / "truth.csv").set_index("patient_id")
    tp = pd.read_csv(serial_cohort / "timepoints.csv")
    assert tp.groupby("patient_id").size().max() <= 6 and (tp.groupby("patient_id")["days"].min() == 0).all()
    for r in scans.itertuples():
        lab = np.asarray(nib.load(serial_cohort / r.case_id / f"{r.case_id}_seg.nii.gz").dataobj)
        measured = growth.mean_tumour_diameter((lab > 0).sum() * 8 / 1000)
        assert measured == pytest.approx(r.planted_mtd_mm, rel=0.05), r.case_id
        assert ((lab == 4).sum() > 0) == bool(r.transformed), r.case_id   # enhancement from transformation on
    seen = scans[scans["transformed"] == 1].groupby("patient_id")["days"].min()
    for pid, day in seen.items():
        assert truth.loc[pid, "transformation_days"] == day >= truth.loc[pid, "transformation_latent_days"]
    with pytest.raises(FileExistsError, match="not"):
        synthetic.generate_longitudinal(serial_cohort, synthetic.SyntheticSpec(n_cases=9, seed=8), progress=False)


def test_notebook_06_on_reference_masks_recovers_the_planted_growth(serial_cohort, tmp_path):
    cfg = yaml.safe_load((paths.configs_dir() / "cohorts" / "synthetic-longitudinal.yaml").read_text())
    cfg["cohort"].update(source="files", root=str(serial_cohort))
    cfg.pop("run")
    y = tmp_path / "serial8.yaml"
    y.write_text(yaml.safe_dump(cfg))
    rd = runner.run(str(y), ["longitudinal.masks=reference", "longitudinal.n_bootstrap=50", "longitudinal.repeats=1",
                             *SMALL_CV], steps=["06_longitudinal"], progress=False)
    m = json.loads((rd / "metrics" / "06_longitudinal.json").read_text())
    assert m["masks"] == "reference" and m["n_patients"] == 8
    rec = pd.read_csv(rd / "tables" / "vde_recovery.csv").set_index("volumes_from")
    assert list(rec.index) == ["reference"]   # no 01 in this run: no predicted masks
    assert rec.loc["reference", "pearson_r"] > 0.97 and abs(rec.loc["reference", "bias_mm_per_year"]) < 0.5
    pts = pd.read_csv(rd / "tables" / "longitudinal_patients.csv").set_index("patient_id")
    truth = pd.read_csv(serial_cohort / "truth.csv").set_index("patient_id")
    at = pts[pts["at_risk"]]
    assert (at["event"] == truth.loc[at.index, "transformation_observed"]).all()   # histology rule: exact events
    flows = pd.read_csv(rd / "tables" / "flow_06_longitudinal.csv")
    n = flows.pivot_table(index="analysis", columns="stage", values="n", aggfunc="sum", fill_value=0)
    assert (n["analysed"] + n.get("excluded", 0) == n["in"]).all() and (n["in"] == 8).all()
    for f in ("growth", "transformation_km", "forest", "vde_recovery", "flow"):
        assert (rd / "figures" / f"06_longitudinal__{f}.png").exists(), f
    html = (rd / "06_longitudinal.html").read_text()
    assert "349 lower-grade glioma patients that we do not have" in html
    saved = sorted(p.name for p in (rd / "models").glob("*.joblib"))
    assert "os__baseline_volume.joblib" in saved, saved   # eight patients: too few transformations for Coxnet here
    # the locked models applied unchanged to another cohort: here the same patients, so each locked model scores
    # the patients it was refitted on, and its C-index is its apparent one
    rd2 = runner.run(str(y), ["longitudinal.masks=reference", "longitudinal.n_bootstrap=50", "longitudinal.repeats=1",
                              *SMALL_CV, f"longitudinal.reference_run={rd}"], steps=["06_longitudinal"], progress=False)
    val = pd.read_csv(rd2 / "tables" / "longitudinal_validation.csv").set_index("model")
    assert set(val.index) == set(saved) and (val["reference_run"] == rd.name).all()
    from glioma_nb import records
    from glioma_nb.stratify.survival import harrell_c
    rec = records.load(rd / "models" / "os__baseline_volume.joblib")
    X = pts[[c.split(":", 1)[1] for c in rec.features]].add_prefix("baseline_volume:")
    clin = pd.read_csv(serial_cohort / "clinical.csv").set_index("case_id").loc[pts["baseline_case"]]
    expected = harrell_c(clin["os_days"].to_numpy(float), clin["os_event"].to_numpy(int), rec.predict(X).to_numpy())
    row = val.loc["os__baseline_volume.joblib"]
    assert row["n"] == rec.meta["n_train"] == 8 and row["c_harrell"] == pytest.approx(expected)


def test_a_measured_volume_error_widens_each_vde_ci_as_it_moves_the_fitted_slope():
    """Known answer: scans whose whole-tumour volumes carry a log-normal segmentation error of SD 0.2 around a true
    linear MTD growth. The SD of log(predicted / reference) recovers 0.2; the propagated slope SD of each patient
    (growth.vde_with_segmentation_error) equals the spread of the slopes fitted over 3,000 simulated patients within
    5 %; a patient whose widened CI straddles 8 mm/year is named, one far from it is not."""
    rng = np.random.default_rng(3)
    years = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    n_pat, sigma = 3000, 0.2
    true_mtd = 30.0 + 6.0 * years                                   # 6 mm/year, no error of the fit itself
    true_ml = true_mtd ** 3 / 2 / 1000
    eps = rng.normal(0, sigma, (n_pat, len(years)))
    pred_ml = true_ml[None, :] * np.exp(eps)
    rows = [{"patient_id": f"P{p}", "case_id": f"P{p}_{k}", "days": y * growth.DAYS_PER_YEAR, "years": y,
             "WT_ml": pred_ml[p, k], "mtd_mm": float(growth.mean_tumour_diameter(pred_ml[p, k]))}
            for p in range(n_pat) for k, y in enumerate(years)]
    scans = pd.DataFrame(rows)
    measured, n = growth.volume_error_sd(pd.Series(pred_ml.ravel()), pd.Series(np.tile(true_ml, n_pat)))
    assert n == pred_ml.size and measured == pytest.approx(sigma, rel=0.02)
    pts = growth.patient_growth(scans)
    seg = growth.vde_with_segmentation_error(scans, pts, sigma, cut=8.0)
    empirical = pts["vde_mm_per_year"].std()
    assert seg["vde_seg_se"].median() == pytest.approx(empirical, rel=0.05)
    assert pts["vde_mm_per_year"].mean() == pytest.approx(6.0, abs=0.1)
    # the group flag: near the cut and uncertain, or far from it
    lo, hi = seg["vde_seg_low"], seg["vde_seg_high"]
    assert (seg["vde_group_uncertain"] == ((lo < 8.0) & (hi >= 8.0))).all()
    assert seg.at[(pts["vde_mm_per_year"] - 8.0).abs().idxmin(), "vde_group_uncertain"]
    assert 0 < seg["vde_group_uncertain"].mean() < 1
    assert (hi - lo > 2 * 1.96 * seg["vde_seg_se"] - 1e-9).all()      # never narrower than the error alone


def test_06_says_which_patients_the_segmentation_error_could_move_or_why_it_carries_none():
    from glioma_nb.longitudinal import step as lstep

    years = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    rows = []
    for p, speed in (("slow", 1.0), ("edge", 8.2), ("fast", 30.0)):
        for k, y in enumerate(years):
            mtd = 30 + speed * y + (0.2 if k == 1 else 0.0)
            rows.append({"patient_id": p, "case_id": f"{p}{k}", "days": y * growth.DAYS_PER_YEAR, "years": y,
                         "WT_ml": mtd ** 3 / 2000, "mtd_mm": mtd})
    main = pd.DataFrame(rows)
    pts = growth.patient_growth(main)
    ref = main.set_index("case_id")[["WT_ml"]]
    noise = np.tile([1.1, 0.92, 1.05, 0.97, 1.0], 3)
    volumes = {"predicted": ref.assign(WT_ml=ref["WT_ml"] * noise), "reference": ref}
    out, text = lstep._segmentation_error(volumes, main, pts, "predicted", 8.0)
    assert "measured on the 15 scans" in text and "**1 of 3** patients could change within it: edge." in text
    assert out.loc["edge", "vde_group_uncertain"] and not out.loc["fast", "vde_group_uncertain"]
    assert out.loc["slow", "vde_seg_low"] < out.loc["slow", "vde_low"]
    _, text = lstep._segmentation_error({"predicted": volumes["predicted"]}, main, pts, "predicted", 8.0)
    assert "No measured segmentation error" in text
    # no reference masks: the volume error of the WT model's held-out cases on its card (flair-wt: 17 cases)
    from glioma_nb.segment import models as seg_models
    card = seg_models.card_volumes("flair-wt")
    assert card is not None and len(card) == 17 and set(card["cohort"]) == {"brats18-dev", "tcga-lgg-dev"}
    sigma = np.std(np.log(card["WT_ml_predicted"] / card["WT_ml_reference"]), ddof=1)
    pred = volumes["predicted"].assign(model="brats-4mod", regions="WT: flair-wt; TC, ET: brats-4mod")
    assert lstep.wt_model(pred) == "flair-wt" and lstep.wt_model(pred.drop(columns="regions")) == "brats-4mod"
    out, text = lstep._segmentation_error({"predicted": pred}, main, pts, "predicted", 8.0)
    assert f"SD of log(predicted / reference) whole-tumour volume {sigma:.3f}" in text
    assert "17 held-out cases of flair-wt's model card" in text and out["vde_seg_low"].notna().all()
    _, text = lstep._segmentation_error({"predicted": pred.assign(model="my-nnunet", regions=None)}, main, pts,
                                        "predicted", 8.0)
    assert "model my-nnunet has no held-out per-case volumes" in text
    _, text = lstep._segmentation_error(volumes, main, pts, "reference", 8.0)
    assert "reference masks" in text
