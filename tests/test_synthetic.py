"""Synthetic cohort: deterministic, valid, and its planted effects are really there."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_yaml

from glioma_nb import config, io, synthetic


def test_clinical_sampling_is_deterministic():
    a = synthetic.sample_clinical(50, np.random.default_rng(3))
    b = synthetic.sample_clinical(50, np.random.default_rng(3))
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(synthetic.sample_clinical(50, np.random.default_rng(4)))


def test_planted_clinical_structure():
    df = synthetic.sample_clinical(4000, np.random.default_rng(0))
    idhwt, idhmut = df[df.idh_mutant == 0], df[df.idh_mutant == 1]
    assert idhwt.age.mean() - idhmut.age.mean() > 15
    assert (idhwt.who_grade == 4).mean() > 0.7 and (df[df.codel_1p19q == 1].who_grade == 4).mean() == 0
    assert df[df.codel_1p19q == 1].idh_mutant.eq(1).all()  # codeletion only in IDH-mutant
    assert (df[df.codel_1p19q == 1].histology == "oligodendroglioma").all()
    assert df.tertp_mutant[df.codel_1p19q == 1].mean() > 0.9


def test_cox_recovers_the_simulated_hazard_ratios():
    from lifelines import CoxPHFitter

    df = synthetic.sample_clinical(3000, np.random.default_rng(1))
    x = pd.DataFrame({"idh_wildtype": 1 - df.idh_mutant, "grade3": (df.who_grade == 3).astype(int),
                      "grade4": (df.who_grade == 4).astype(int), "codel": df.codel_1p19q,
                      "age_per_10y": (df.age - 50) / 10, "mgmt_in_idhwt": df.mgmt_methylated * (1 - df.idh_mutant),
                      "kps_per_10": (df.kps - 80) / 10, "gtr": (df.resection == "GTR").astype(int),
                      "risk_group": df.risk_group, "T": df.os_days, "E": df.os_event})
    cph = CoxPHFitter().fit(x, "T", "E")
    ci = cph.confidence_intervals_
    for name, beta in synthetic.HAZARD_LOG_HR.items():
        lo, hi = ci.loc[name].to_numpy()
        assert lo <= beta <= hi, f"{name}: simulated {beta} outside 95% CI [{lo:.2f}, {hi:.2f}]"


def test_generated_cohort_is_valid_and_deterministic(synthetic_small, tmp_path):
    y = synthetic_yaml(synthetic_small, tmp_path / "syn.yaml")
    cohort, report = io.check_cohort(config.resolve_config(str(y)), progress=False)
    assert report.ok, report.format()
    assert len(cohort.cases) == 12 and cohort.scheme.name == "brats2018"
    # non-identity affine from the MNI template
    assert not np.allclose(cohort.load_image("SYN_000", "t1").affine, np.eye(4))
    # same spec twice -> identical voxels and tables
    import nibabel as nib

    spec = synthetic.SyntheticSpec(n_cases=2, seed=5)
    a_dir = synthetic.generate_cohort(tmp_path / "a", spec, progress=False)
    b_dir = synthetic.generate_cohort(tmp_path / "b", spec, progress=False)
    for mod in ("t1ce", "flair", "seg"):
        a = np.asanyarray(nib.load(a_dir / "SYN_001" / f"SYN_001_{mod}.nii.gz").dataobj)
        b = np.asanyarray(nib.load(b_dir / "SYN_001" / f"SYN_001_{mod}.nii.gz").dataobj)
        assert np.array_equal(a, b), mod
    assert (a_dir / "clinical.csv").read_text() == (b_dir / "clinical.csv").read_text()


def test_existing_cohort_is_reused_and_other_spec_refused(synthetic_small):
    before = (synthetic_small / "clinical.csv").stat().st_mtime_ns
    assert synthetic.generate_cohort(synthetic_small, synthetic.SyntheticSpec(n_cases=12, seed=7)) == synthetic_small
    assert (synthetic_small / "clinical.csv").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="another folder"):
        synthetic.generate_cohort(synthetic_small, synthetic.SyntheticSpec(n_cases=12, seed=8))


def test_planted_imaging_effects(tmp_path):
    """IDH-wt tumours enhance and necrose more and have more oedema; IDH-mut sit frontally more often."""
    out = synthetic.generate_cohort(tmp_path / "fx", synthetic.SyntheticSpec(n_cases=16, seed=11), progress=False)
    y = synthetic_yaml(out, tmp_path / "fx.yaml")
    _, report = io.check_cohort(config.resolve_config(str(y)), progress=False)
    t = report.case_table.merge(pd.read_csv(out / "truth.csv"), on="case_id")
    wt, mut = t[t.idh_mutant == 0], t[t.idh_mutant == 1]
    assert len(wt) >= 3 and len(mut) >= 3
    assert wt.ET_ml.mean() > 3 * mut.ET_ml.mean()  # enhancement (ring in GBM) vs little/none
    assert ((wt.WT_ml - wt.TC_ml) / wt.WT_ml).mean() > ((mut.WT_ml - mut.TC_ml) / mut.WT_ml).mean()
    frontal = t.centre_mm.map(lambda s: float(s.strip("[]").split(",")[1]) > 0)
    assert frontal[t.idh_mutant == 1].mean() > frontal[t.idh_mutant == 0].mean()
    # grade 2 tumours have no enhancing voxels
    assert (t[t.who_grade == 2].ET_ml == 0).all()
