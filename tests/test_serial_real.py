"""Serial scans grown from real ones (issue 47, ``glioma-nb synth --serial-from``): planted volumes to a voxel,
nested growth, the lesion's own intensities in the new rim, the mass effect's known displacement, enhancement
only after the planted transformation, and the folder a run reads; on a real BraTS case in ``make check``."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import ndimage

from glioma_nb import config, io, paths, serial_real

SPACING = 1.5
SHAPE = (72, 72, 56)
CENTRE = np.array([30.0, 36.0, 28.0])     # voxels
LANDMARK_X = 58                           # a bright dot on the lesion's +x axis, far from any growth
ALPHA, DECAY = 0.5, 15.0


def _phantom(root: Path, n: int = 2) -> Path:
    """A skull-stripped 4-modality cohort (1.5 mm) with a spherical BraTS lesion (core 1, enhancing rim 4,
    oedema 2) and a bright landmark 2 voxels wide on the lesion's +x axis."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    g = np.indices(SHAPE).astype(float)
    r = np.sqrt(sum((g[i] - CENTRE[i]) ** 2 for i in range(3))) * SPACING    # mm from the centre
    brain = sum(((g[i] - (np.array(SHAPE) - 1)[i] / 2) / (np.array(SHAPE)[i] / 2 - 2)) ** 2 for i in range(3)) <= 1
    lab = np.zeros(SHAPE, np.uint8)
    lab[r <= 12] = 2
    lab[r <= 8] = 4
    lab[r <= 5] = 1
    tissue = {"t1": (600, 420, 380, 300, 450), "t1c": (620, 440, 400, 320, 1100), "t2": (400, 800, 850, 900, 700),
              "flair": (450, 900, 800, 500, 760)}   # normal, oedema, core... by label 0, 2, 1 (core), 4
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    rows = []
    for k in range(n):
        cid = f"R{k}"
        (root / cid).mkdir()
        for m, (norm, oed, core, _, enh) in tissue.items():
            img = np.select([lab == 2, lab == 1, lab == 4], [oed, core, enh], norm) + rng.normal(0, 20, SHAPE)
            img[LANDMARK_X:LANDMARK_X + 2, 35:37, 27:29] = 3000    # the landmark, in every modality
            img = np.where(brain, img, 0).astype(np.float32)
            nib.save(nib.Nifti1Image(np.round(img).astype(np.int16), affine),
                     root / cid / f"{cid}_{serial_real.SUFFIX[m]}.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), root / cid / f"{cid}_seg.nii.gz")
        rows.append({"case_id": cid, "age": 50})
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    path = root.parent / "real.yaml"
    path.write_text(yaml.safe_dump({"cohort": {
        "root": str(root), "layout": "brats", "label": {"present": True, "scheme": "brats2018"},
        "clinical": {"file": "clinical.csv", "id_column": "case_id", "columns": {"age": "age"}}}}))
    return path


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    base = tmp_path_factory.mktemp("serial_real")
    cfg = config.resolve_config(str(_phantom(base / "real")))
    cohort = io.load_cohort(cfg, progress=False)
    out = serial_real.generate_from(cohort, cfg["cohort"], base / "serial", ["R0", "R1"], seed=4,
                                    model=serial_real.GrowthModel(mass_effect=ALPHA, mass_effect_decay_mm=DECAY),
                                    progress=False)
    return cohort, out


def _load(out: Path, sid: str, suffix: str) -> np.ndarray:
    return np.asarray(nib.load(out / sid / f"{sid}_{suffix}.nii.gz").dataobj).astype(float)


def test_planted_volumes_are_drawn_to_a_voxel_and_growth_is_nested(grown):
    cohort, out = grown
    scans = pd.read_csv(out / "scans_truth.csv")
    truth = pd.read_csv(out / "truth.csv").set_index("patient_id")
    assert set(truth.index) == {"R0", "R1"} and (truth["n_scans"] >= 3).all()
    vox = SPACING ** 3
    for pid, g in scans.groupby("patient_id"):
        g = g.sort_values("days")
        # the planted line: MTD = MTD0 + VDE t, the baseline the real lesion's own MTD
        expect = truth.loc[pid, "d0_mm"] + truth.loc[pid, "vde_mm_per_year"] * g["days"] / 365.25
        assert np.allclose(g["planted_mtd_mm"], expect, atol=1e-3)
        # one voxel more or less moves the MTD by MTD / (3 n): the drawn masks are that close
        for row in g.itertuples():
            lab = _load(out, row.case_id, "seg")
            n = (lab > 0).sum()
            assert row.drawn_mtd_mm == pytest.approx(np.cbrt(2 * n * vox), abs=1e-3)
            assert abs(row.drawn_mtd_mm - row.planted_mtd_mm) < 2 * row.planted_mtd_mm / (3 * n) + 1e-6
        masks = [_load(out, c, "seg") > 0 for c in g["case_id"]]
        assert all((a & ~b).sum() == 0 for a, b in zip(masks, masks[1:]))     # each scan holds the one before
        assert masks[-1].sum() > 1.5 * masks[0].sum()


def test_the_new_rim_takes_the_lesions_intensities_and_the_tissue_is_pushed_out(grown):
    cohort, out = grown
    scans = pd.read_csv(out / "scans_truth.csv")
    last = scans.sort_values("drawn_mtd_mm").iloc[-1]     # the largest scan
    pid = last.patient_id
    real = {m: np.asarray(cohort.load_image(pid, m).dataobj).astype(float) for m in ("flair", "t2")}
    ref = np.asarray(cohort.load_label(pid).dataobj)
    lab = _load(out, last.case_id, "seg")
    rim = (lab == 2) & (ref == 0)
    inner = rim & ndimage.binary_erosion(lab > 0, iterations=2)   # 3 mm from the new edge (logistic width 0.7 mm)
    assert inner.sum() > 300
    for m, suffix in (("flair", "flair"), ("t2", "t2")):
        img = _load(out, last.case_id, suffix)
        oedema = real[m][ref == 2].mean()
        # the rim's intensity is the real oedema's, not the tissue's it replaced (normal: flair 450, t2 400)
        assert img[inner].mean() == pytest.approx(oedema, rel=0.08)
        assert abs(real[m][rim].mean() - oedema) > 300
    # the first scan is the real one (no enhancement removal touches FLAIR)
    first = scans[scans["patient_id"] == pid].sort_values("days").iloc[0]
    assert np.array_equal(_load(out, first.case_id, "flair"), real["flair"])
    # mass effect: the landmark, D mm outside the real boundary, moves out by e = alpha s exp(-(D + e) / decay)
    s = _margin(out, last)
    d_mm = (LANDMARK_X + 0.5 - CENTRE[0]) * SPACING - 12.0
    e = 0.0
    for _ in range(50):
        e = ALPHA * s * np.exp(-(d_mm + e) / DECAY)
    img = _load(out, last.case_id, "flair")
    sl = img[:, 35:37, 27:29].mean(axis=(1, 2))
    w = np.clip(sl - 1000, 0, None)
    w[: LANDMARK_X - 8] = 0
    moved = (np.sum(w * np.arange(len(w))) / w.sum() - (LANDMARK_X + 0.5)) * SPACING
    assert e > 0.3 and moved == pytest.approx(e, abs=0.35)


def _margin(out: Path, row) -> float:
    """The margin of a scan, back from its planted mask: the largest distance of a grown voxel from the real lesion."""
    ref = _load(out, f"{row.patient_id}_s0", "seg") > 0
    lab = _load(out, row.case_id, "seg") > 0
    dist = ndimage.distance_transform_edt(~ref, sampling=SPACING)
    return float(dist[lab].max())


def test_enhancement_appears_only_from_the_planted_transformation(grown):
    cohort, out = grown
    scans = pd.read_csv(out / "scans_truth.csv")
    tps = pd.read_csv(out / "timepoints.csv").set_index("case_id")
    real_t1c = np.asarray(cohort.load_image("R0", "t1c").dataobj).astype(float)
    ref = np.asarray(cohort.load_label("R0").dataobj)
    for row in scans.itertuples():
        lab = _load(out, row.case_id, "seg")
        assert (row.enhancing_voxels > 0) == bool(row.transformed) == ((lab == 4).sum() > 0)
        assert tps.loc[row.case_id, "grade"] == (3 if row.transformed else 2)
        if not row.transformed and row.patient_id == "R0":
            t1c = _load(out, row.case_id, "t1ce")
            et = ref == 4
            # the real rim enhanced at 1100; before transformation it reads as the lesion's own T1 -> T1c relation
            assert real_t1c[et].mean() > 1000 and t1c[et].mean() < 600
    truth = pd.read_csv(out / "truth.csv").set_index("patient_id")
    for pid, g in scans.groupby("patient_id"):
        first = g.loc[g["transformed"] == 1, "days"].min()
        if truth.loc[pid, "transformation_observed"]:
            assert first == truth.loc[pid, "transformation_days"] >= truth.loc[pid, "transformation_latent_days"]
        else:
            assert np.isnan(first)


def test_the_folder_is_a_serial_cohort_a_run_reads_and_is_reused_not_overwritten(grown, tmp_path):
    cohort, out = grown
    yml = out / "real-serial.yaml"
    cfg = config.resolve_config(str(yml))
    serial = io.load_cohort(cfg, progress=False)
    assert serial.timepoints is not None and len(serial.case_ids) == len(pd.read_csv(out / "timepoints.csv"))
    assert serial.modalities == ("t1", "t1c", "t2", "flair") and serial.scheme.name == "brats2018"
    derived = cfg["cohort"]["derived_from"]     # each scan's source case: a model that trained on it is not scored
    assert derived["cohort"] == "real" and {derived["cases"][c] for c in serial.case_ids} == {"R0", "R1"}
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["transformation_log_hazard_ratios"] and meta["source_cohort"] == "real"
    from glioma_nb.longitudinal import truth
    planted, log_hr = truth.serial_truth(out)
    assert planted is not None and log_hr == meta["transformation_log_hazard_ratios"]
    before = (out / "truth.csv").stat().st_mtime_ns
    same = serial_real.generate_from(cohort, {"name": "real"}, out, ["R0", "R1"], seed=4,
                                     model=serial_real.GrowthModel(mass_effect=ALPHA, mass_effect_decay_mm=DECAY),
                                     progress=False)
    assert same == out and (out / "truth.csv").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="spec"):
        serial_real.generate_from(cohort, {"name": "real"}, out, ["R0"], seed=4, progress=False)
    with pytest.raises(ValueError, match="no case"):
        serial_real.generate_from(cohort, {"name": "real"}, tmp_path / "x", ["R9"], progress=False)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp-*"))


@pytest.mark.check
@pytest.mark.shared_data
def test_a_real_brats_case_grows_as_planted(tmp_path):
    """On a real BraTS 2018 case: the drawn masks hold the planted MTD to a voxel and the first scan's FLAIR is
    the real one."""
    if not (paths.shared_data_dir() / "brats18").exists():
        pytest.skip("../shared/data/brats18 is absent")
    cfg = config.resolve_config("brats18-dev")
    cohort = io.load_cohort(cfg, progress=False)
    out = serial_real.generate_from(cohort, cfg["cohort"], tmp_path / "s", ["Brats18_2013_20_1"], seed=1,
                                    progress=False)
    scans = pd.read_csv(out / "scans_truth.csv")
    assert len(scans) >= 3
    assert (abs(scans["drawn_mtd_mm"] - scans["planted_mtd_mm"]) < 0.1).all()
    real = np.asarray(cohort.load_image("Brats18_2013_20_1", "flair").dataobj)
    assert np.array_equal(_load(out, scans["case_id"].iloc[0], "flair"), real)


def test_the_command_grows_the_cases_it_is_given_and_names_what_it_cannot(grown, tmp_path, capsys):
    from glioma_nb import cli

    _, out = grown
    yml = str(out.parent / "real.yaml")
    assert cli.main(["synth", "--serial-from", yml, "--out", str(tmp_path / "a"), "--cases", "held-out:flair-wt"]) == 2
    assert "holds no case of cohort real out of its training" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert cli.main(["synth", "--serial-from", yml, "--out", str(tmp_path / "b"), "--cases", "R1", "--seed", "4"]) == 0
    said = capsys.readouterr().out
    assert "grown from 1 real cases" in said and "real-serial.yaml" in said
    assert set(pd.read_csv(tmp_path / "b" / "truth.csv")["source_case"]) == {"R1"}
    assert cli.main(["synth", "--serial-from", yml, "--out", str(tmp_path / "c"), "--cases", "R7"]) == 2
    assert "no case(s) ['R7']" in capsys.readouterr().err
