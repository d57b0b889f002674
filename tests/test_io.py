"""Cohort model and QC: a valid cohort passes with known volumes; each broken cohort fails with the exact error."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import AFFINE, SHAPE, SPHERE_RADIUS_MM, requires_shared, sphere_label

from glioma_nb import cli, config, io
from glioma_nb.io import clinical


def check(yaml_path: Path, *overrides: str):
    return io.check_cohort(config.resolve_config(str(yaml_path), list(overrides)), progress=False)


def messages(report: io.QCReport) -> list[str]:
    return [p.format() for p in report.errors]


def test_valid_cohort_passes_with_the_sphere_volume(tiny_cohort):
    cohort, report = check(tiny_cohort)
    assert report.ok, report.format()
    assert cohort.case_ids == ["C00", "C01", "C02"]
    voxel_ml = abs(np.linalg.det(AFFINE[:3, :3])) / 1000
    expected_ml = 4 / 3 * math.pi * SPHERE_RADIUS_MM ** 3 / 1000
    wt = report.case_table["WT_ml"]
    # voxelised sphere: within 3 voxels' worth of the analytic volume
    assert np.allclose(wt, expected_ml, atol=3 * voxel_ml * 10), (wt.tolist(), expected_ml)
    assert (report.case_table["ET_ml"] > 0).all() and (report.case_table["TC_ml"] < wt).all()


def test_clinical_table_is_canonical(tiny_cohort):
    cohort, _ = check(tiny_cohort)
    c = cohort.clinical.set_index("case_id")
    assert c.loc["C00", "who_grade"] == 2 and c.loc["C02", "who_grade"] == 4  # "II", "IV"
    assert c.loc["C00", "idh_mutant"] == 1 and c.loc["C01", "idh_mutant"] == 0  # mutant / wildtype
    assert c.loc["C01", "os_days"] == pytest.approx(11.0 * 365.25 / 12)  # months converted once
    assert c.loc["C00", "sex"] == "M" and c.loc["C00", "patient_id"] == "C00"


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


def _break_all(root: Path) -> None:
    """Break the tiny cohort in many independent ways at once."""
    (root / "C00" / "C00_flair.nii.gz").unlink()                                   # missing file
    (root / "C01" / "C01_t2.nii.gz").write_bytes(b"\x1f\x8b not really gzip")      # corrupt file
    _nifti(root / "C02" / "C02_t1ce.nii.gz", np.ones((20, 20, 10), np.float32))    # shape mismatch
    lab = sphere_label()
    lab[lab == 4] = 3                                                              # BraTS-2021 values
    _nifti(root / "C01" / "C01_seg.nii.gz", lab)
    clin = pd.read_csv(root / "clinical.csv")
    clin.loc[0, "os_months"] = -5                                                  # negative survival
    clin = pd.concat([clin, pd.DataFrame([{"case_id": "C99", "age": 50}])])        # row without images
    clin.to_csv(root / "clinical.csv", index=False)


def test_all_problems_are_collected_in_one_report(tiny_cohort):
    _break_all(tiny_cohort.parent / "tiny")
    _, report = check(tiny_cohort)
    text = "\n".join(messages(report))
    assert "case C00: tiny/C00/C00_flair.nii.gz: missing flair file" in text
    assert "unreadable t2 image" in text
    assert "case C02: tiny/C02/C02_t1ce.nii.gz: t1c shape (20, 20, 10) != t1 shape (24, 28, 16)" in text
    assert "label values [3] are not in scheme brats2018 [0, 1, 2, 4]" in text
    assert "the values look like scheme 'brats2023'" in text   # BraTS 2023+'s 1/2/3
    assert "negative survival time" in text
    assert "case C99:" in text and "clinical row has no images" in text
    assert len(report.errors) >= 6
    with pytest.raises(io.CohortError) as err:
        io.load_cohort(config.resolve_config(str(tiny_cohort)), progress=False)
    assert err.value.report.format() == report.format()


@pytest.mark.parametrize("breaker, expected", [
    (lambda r: _nifti(r / "C00" / "C00_t2.nii.gz", np.full(SHAPE, np.nan, np.float32)), "t2 has 10752 NaN/inf voxels"),
    (lambda r: _nifti(r / "C00" / "C00_t1.nii.gz", np.zeros(SHAPE, np.float32)), "t1 image is empty"),
    (lambda r: _nifti(r / "C00" / "C00_seg.nii.gz", np.zeros(SHAPE, np.uint8)), "label map is empty (no tumour voxel)"),
    (lambda r: _nifti(r / "C00" / "C00_flair.nii.gz", np.ones(SHAPE, np.float32) + np.arange(SHAPE[2]),
                      AFFINE @ np.diag([1, 1, 1.2, 1])), "flair affine differs from t1 affine"),
    (lambda r: _nifti(r / "C00" / "C00_t1.nii.gz", np.ones((*SHAPE, 2), np.float32)), "t1 image has 4 dimensions"),
])
def test_each_image_failure_has_its_message(tiny_cohort, breaker, expected):
    breaker(tiny_cohort.parent / "tiny")
    _, report = check(tiny_cohort)
    assert any(expected in m and "case C00:" in m for m in messages(report)), report.format()


def _edit_clinical(yaml_path: Path, fn) -> None:
    csv = yaml_path.parent / "tiny" / "clinical.csv"
    df = fn(pd.read_csv(csv))
    df.to_csv(csv, index=False)


@pytest.mark.parametrize("edit, expected", [
    (lambda d: pd.concat([d, d.iloc[[0]]]), "case C00: tiny/clinical.csv: duplicate clinical row"),
    (lambda d: d.iloc[1:], "case C00: tiny/clinical.csv: case has images but no clinical row"),
    (lambda d: d.assign(os_months=[np.nan, 1.0, 2.0]), "case C00: tiny/clinical.csv: survival event given but survival time missing"),
    (lambda d: d.assign(dead=[np.nan, 1, 0]), "case C00: tiny/clinical.csv: survival time given but event"),
    (lambda d: d.assign(grade=["V", "II", "III"]), "column 'grade' (who_grade): 'V' is not a WHO grade"),
    (lambda d: d.drop(columns=["idh"]), "source column 'idh' (for idh_mutant) not found"),
])
def test_each_clinical_failure_has_its_message(tiny_cohort, edit, expected):
    _edit_clinical(tiny_cohort, edit)
    _, report = check(tiny_cohort)
    text = "\n".join(messages(report))
    assert expected in text, report.format()


def test_unknown_canonical_column_is_an_error(tiny_cohort):
    _, report = check(tiny_cohort, "cohort.clinical.columns.tumour_colour=age")
    assert any("unknown clinical column 'tumour_colour'" in m for m in messages(report))


def test_rows_without_images_can_be_allowed_as_warnings(tiny_cohort):
    _edit_clinical(tiny_cohort, lambda d: d.iloc[1:])
    _, report = check(tiny_cohort, "cohort.clinical.require_all_cases=false")
    assert report.ok and any("no clinical row" in p.message for p in report.warnings)


def test_manifest_layout_and_duplicate_ids(tiny_cohort, tmp_path):
    root = tmp_path / "tiny"
    rows = [{"case": c, **{m: f"{c}/{c}_{s}.nii.gz" for m, s in
                           (("t1", "t1"), ("t1c", "t1ce"), ("t2", "t2"), ("flair", "flair"), ("label", "seg"))}}
            for c in ("C00", "C01", "C01")]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    _, report = check(tiny_cohort, "cohort.layout=manifest", "cohort.manifest=manifest.csv",
                      "cohort.clinical.require_all_cases=false")
    assert any("case C01:" in m and "duplicate case id in the manifest" in m for m in messages(report))


def test_per_case_layout_with_file_map(tmp_path):
    root = tmp_path / "pc"
    (root / "A").mkdir(parents=True)
    _nifti(root / "A" / "FLAIR_img.nii.gz", np.random.default_rng(0).random(SHAPE).astype(np.float32) + 1)
    _nifti(root / "A" / "roi.nii.gz", (sphere_label() > 0).astype(np.uint8))
    y = tmp_path / "pc.yaml"
    y.write_text(yaml.safe_dump({"cohort": {"root": str(root), "layout": "per_case", "modalities": ["flair"],
                                            "files": {"flair": "FLAIR_img.nii.gz", "label": "roi.nii.gz"},
                                            "label": {"present": True, "scheme": "binary"}}}))
    cohort, report = check(y)
    assert report.ok, report.format()
    assert cohort.case_ids == ["A"] and list(report.case_table.filter(like="_ml").columns) == ["WT_ml"]


def test_orientation_affine_maps_axes_to_world_directions():
    aff = io.orientation_affine((10, 20, 30), (0.9, 0.9, 5.0), "PLS")
    # i -> posterior (-y), j -> left (-x), k -> superior (+z)
    assert np.allclose(aff[:3, :3], [[0, -0.9, 0], [-0.9, 0, 0], [0, 0, 5.0]])
    assert np.allclose(aff[:3, :3] @ ((np.array([10, 20, 30]) - 1) / 2) + aff[:3, 3], 0)  # centred
    assert "".join(nib.aff2axcodes(aff)) == "PLS"
    with pytest.raises(ValueError, match="one of L/R"):
        io.orientation_affine((2, 2, 2), (1, 1, 1), "LLS")


def test_geometry_override_changes_volume_in_ml(tmp_path):
    root = tmp_path / "pc"
    (root / "A").mkdir(parents=True)
    img = np.random.default_rng(0).random(SHAPE).astype(np.float32) + 1
    lab = np.zeros(SHAPE, np.uint8)
    lab[5:15, 5:15, 4:8] = 1  # 400 voxels
    _nifti(root / "A" / "flair.nii.gz", img, np.eye(4))
    _nifti(root / "A" / "mask.nii.gz", lab, np.eye(4))
    y = tmp_path / "pc.yaml"
    y.write_text(yaml.safe_dump({"cohort": {"root": str(root), "layout": "per_case", "modalities": ["flair"],
                                            "files": {"flair": "flair.nii.gz", "label": "mask.nii.gz"},
                                            "label": {"present": True, "scheme": "binary"},
                                            "geometry": {"spacing": [0.5, 0.5, 4.0], "orientation": "PLS"}}}))
    cohort, report = check(y)
    assert report.case_table.loc[0, "WT_ml"] == pytest.approx(400 * 0.5 * 0.5 * 4.0 / 1000)
    assert report.case_table.loc[0, "orientation"] == "PLS"
    assert "".join(nib.aff2axcodes(cohort.load_image("A", "flair").affine)) == "PLS"


def _head(spacing: tuple[float, float, float], semi_axes_mm: tuple[float, float, float] = (78.0, 95.0, 70.0),
          tumour_mm: float = 0.0) -> np.ndarray:
    """A head phantom sampled at ``spacing`` (voxel axes R, A, S), the whole head in the field of view: an
    ellipsoid (semi-axes in mm) with a bright scalp, grey brain, dark ventricles and noise, plus a bright
    spherical 'tumour' of radius ``tumour_mm``."""
    shape = [int(np.ceil(2 * a / sp)) + 6 for a, sp in zip(semi_axes_mm, spacing)]
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * sp for n, sp in zip(shape, spacing)], indexing="ij")
    r = np.sqrt(sum((g / a) ** 2 for g, a in zip(grids, semi_axes_mm)))
    img = np.where(r <= 1.0, 300.0, 0.0) + np.where(r <= 0.93, -100.0, 0.0) + np.where(r <= 0.3, -120.0, 0.0)
    if tumour_mm:
        img[np.sqrt((grids[0] - 30) ** 2 + grids[1] ** 2 + (grids[2] - 20) ** 2) <= tumour_mm] = 350.0
    img += np.random.default_rng(0).normal(0, 8, img.shape) * (img > 0)
    return np.clip(img, 0, None).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _head_reference() -> tuple[float, float]:
    """The phantom head's axial area and height (volume / area), measured at 1 mm: the estimator's reference."""
    mask = io.head_mask(_head((1.0, 1.0, 1.0)))
    area = mask.sum(axis=(0, 1)).max()
    return float(area), float(mask.sum() / area)


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 5.0), (1.1, 1.1, 2.2), (0.7, 0.7, 7.0)])
def test_head_spacing_recovers_the_voxel_size_of_a_head_phantom(spacing):
    """Known answer: the same phantom head sampled at three voxel sizes; the estimate is within 3 %."""
    area, height = _head_reference()
    img = _head(spacing)
    got = io.estimate_head_spacing(img, "RAS", area, height)
    assert np.allclose(got, spacing, rtol=0.03), (got, spacing)
    # voxel axes in another order: the inferior-superior axis is found from the orientation
    got_t = io.estimate_head_spacing(np.transpose(img, (2, 0, 1)), "SRA", area, height)
    assert np.allclose(got_t, (spacing[2], spacing[0], spacing[1]), rtol=0.03)


def test_head_spacing_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="no head found"):
        io.estimate_head_spacing(np.zeros((64, 64, 20), np.float32), "RAS")
    with pytest.raises(ValueError, match="inferior-superior axis"):
        io.estimate_head_spacing(np.ones((64, 64), np.float32), "RA")
    with pytest.raises(ValueError, match="outside"):  # a small head against a huge reference
        io.estimate_head_spacing(_head((1.0, 1.0, 1.0), semi_axes_mm=(20.0, 24.0, 16.0)), "RAS",
                                 25312.0 * 1000, 123.6)


def test_cohort_head_spacing_gives_one_tumour_volume_at_two_slice_thicknesses(tmp_path):
    """Two stacks of the same head and tumour, exported without geometry (identity affine) at 2 and 6 mm
    slices: with ``spacing: head`` each gets its own voxel size and the tumour the same volume (mL)."""
    area, height = _head_reference()
    root = tmp_path / "heads"
    radius = 15.0
    for cid, sp in (("thin", (0.9, 0.9, 2.0)), ("thick", (0.9, 0.9, 6.0))):
        (root / cid).mkdir(parents=True)
        img = _head(sp, tumour_mm=radius)
        _nifti(root / cid / "flair.nii.gz", img, np.eye(4))
        _nifti(root / cid / "mask.nii.gz", (img > 340).astype(np.uint8), np.eye(4))
    y = tmp_path / "heads.yaml"
    y.write_text(yaml.safe_dump({"cohort": {
        "root": str(root), "layout": "per_case", "modalities": ["flair"],
        "files": {"flair": "flair.nii.gz", "label": "mask.nii.gz"}, "label": {"present": True, "scheme": "binary"},
        "geometry": {"spacing": "head", "orientation": "RAS",
                     "head_reference": {"axial_area_mm2": area, "height_mm": height}}}}))
    cohort, report = check(y)
    assert report.ok, report.format()
    t = report.case_table.set_index("case_id")
    assert float(t.loc["thin", "spacing_mm"].split("x")[2]) == pytest.approx(2.0, rel=0.03), t["spacing_mm"].tolist()
    assert cohort.load_image("thick", "flair").header.get_zooms()[2] == pytest.approx(6.0, rel=0.03)
    assert cohort.load_label("thick").header.get_zooms()[2] == pytest.approx(6.0, rel=0.03)  # same per-case voxel
    truth_ml = 4 / 3 * math.pi * radius ** 3 / 1000
    assert t["WT_ml"].to_numpy() == pytest.approx([truth_ml, truth_ml], rel=0.12), t["WT_ml"].tolist()
    # the same stacks with one fixed voxel size get volumes 3x apart
    _, fixed = check(y, "cohort.geometry.spacing=[0.9, 0.9, 2.0]")
    ml = fixed.case_table.set_index("case_id")["WT_ml"]
    assert ml["thick"] / ml["thin"] == pytest.approx(1 / 3, rel=0.12)


def test_cohort_head_spacing_error_names_the_case_and_the_fix(tmp_path):
    root = tmp_path / "blank"
    (root / "A").mkdir(parents=True)
    _nifti(root / "A" / "flair.nii.gz", np.zeros((32, 32, 8), np.float32) + np.eye(32, dtype=np.float32)[..., None],
           np.eye(4))
    y = tmp_path / "blank.yaml"
    y.write_text(yaml.safe_dump({"cohort": {"root": str(root), "layout": "per_case", "modalities": ["flair"],
                                            "files": {"flair": "flair.nii.gz"}, "label": {"present": False},
                                            "geometry": {"spacing": "head", "orientation": "RAS"}}}))
    _, report = check(y)
    msg = "\n".join(messages(report))
    assert "A" in msg and "flair.nii.gz" in msg and "cannot estimate the voxel size" in msg
    assert "cohort.geometry.spacing: [sx, sy, sz]" in msg


@requires_shared("tcga-lgg-native")
@pytest.mark.shared_data
def test_shared_head_reference_is_the_native_tcga_flair_and_its_tiff_stack_gets_its_voxel_size():
    """The reference head constants are what the estimator measures on TCGA-FG-6692's original FLAIR
    (true header 0.898 x 0.898 x 5.5 mm); on the same patient's TIFF-derived stack in tcga-lgg (identity
    affine) the estimate is within 5 % of 5.5 mm slices and of the in-plane size found by registration."""
    from conftest import SHARED

    raw = nib.load(SHARED / "tcga-lgg-native" / "TCGA-FG-6692" / "raw" / "fla.nii.gz")
    mask = io.head_mask(np.asanyarray(raw.dataobj))
    dx, _, dz = raw.header.get_zooms()[:3]
    area = mask.sum(axis=(0, 1)).max()
    assert area * dx * dx == pytest.approx(io.HEAD_AXIAL_AREA_MM2, rel=0.002)
    assert mask.sum() / area * dz == pytest.approx(io.HEAD_HEIGHT_MM, rel=0.002)
    tiff = SHARED / "tcga-lgg" / "cases" / "TCGA_FG_6692_20020606" / "flair.nii.gz"
    if tiff.exists():
        got = io.estimate_head_spacing(np.asanyarray(nib.load(tiff).dataobj), "PLS")
        assert got[2] == pytest.approx(5.5, rel=0.05) and got[0] == pytest.approx(0.78, rel=0.05), got


@pytest.mark.parametrize("raw, kind, expected", [
    ("IV", "grade", 4), ("G3", "grade", 3), ("2.0", "grade", 2), ("Mutant", "binary", 1), ("NOT_MUTATED", "binary", 0),
    ("female", "sex", "F"), ("Gross total", "resection", "GTR"), ("NA", "binary", None),
])
def test_clinical_value_parsing(raw, kind, expected):
    got = clinical._parse(kind, raw)
    assert (got is expected or got == expected) if expected is not None else np.isnan(got)


def test_molecular_subtype():
    assert io.molecular_subtype(1, 1) == "IDHmut-codel"
    assert io.molecular_subtype(1, 0) == "IDHmut-noncodel"
    assert io.molecular_subtype(0, np.nan) == "IDHwt"
    assert np.isnan(io.molecular_subtype(np.nan, 1))


def test_cli_validate_reports_problems_and_exit_code(tiny_cohort, capsys):
    assert cli.main(["validate", "--cohort", str(tiny_cohort)]) == 0
    (tiny_cohort.parent / "tiny" / "C00" / "C00_flair.nii.gz").unlink()
    assert cli.main(["validate", "--cohort", str(tiny_cohort)]) == 1
    assert "missing flair file" in capsys.readouterr().out


@requires_shared("brats18")
@pytest.mark.shared_data
def test_shared_brats18_dev_validates():
    cohort, report = io.check_cohort(config.resolve_config("brats18-dev"), progress=False)
    assert report.ok, report.format()
    assert len(cohort.cases) == 12 and cohort.modalities == ("t1", "t1c", "t2", "flair")
    assert (report.case_table["WT_ml"] > 0).all()
    c = cohort.clinical.set_index("case_id")
    assert c.loc["Brats18_TCIA01_201_1", "idh_mutant"] == 0 and c.loc["Brats18_TCIA01_201_1", "os_event"] == 1


@requires_shared("tcga-lgg")
@pytest.mark.shared_data
@pytest.mark.check
def test_shared_tcga_lgg_dev_validates_with_geometry_override():
    cohort, report = io.check_cohort(config.resolve_config("tcga-lgg-dev"), progress=False)
    assert report.ok, report.format()
    assert len(cohort.cases) == 60 and cohort.modalities == ("flair",)
    assert set(report.case_table["orientation"]) == {"PLS"}
    assert set(cohort.clinical["site"]) <= {"DU", "FG", "EZ", "CS", "HT"}
    assert cohort.clinical["idh_mutant"].notna().sum() >= 50  # a few TCGA patients lack IDH status


def _feature_cohort(tmp_path, features_csv: str, **cohort_extra) -> Path:
    root = tmp_path / "tab"
    root.mkdir()
    (root / "feats.csv").write_text(features_csv)
    pd.DataFrame({"ID": ["a", "b", "c", "z"], "age": [50, 60, 70, 80], "IDH": ["mut", "wt", "wt", "wt"]}).to_csv(
        root / "clin.csv", index=False)
    cfg = {"cohort": {"root": str(root), "layout": "table", "modalities": [], "label": {"present": False},
                      "features": {"radiomics": {"file": "feats.csv", "id_column": "ID", "drop": ["idh"]}},
                      "clinical": {"file": "clin.csv", "id_column": "ID", "require_all_cases": False,
                                   "columns": {"age": "age", "idh_mutant": "IDH"}}, **cohort_extra}}
    path = tmp_path / "tab.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_table_layout_cohort_is_its_feature_table(tmp_path):
    y = _feature_cohort(tmp_path, "ID,f1,f2,idh\na,1.0,2,1\nb,3.5,,0\nc,0.1,4,0\n")
    cohort, report = io.check_cohort(config.resolve_config(str(y)), progress=False)
    assert report.ok, report.format()
    assert cohort.case_ids == ["a", "b", "c"] and cohort.modalities == ()
    t = cohort.features["radiomics"]
    assert list(t.columns) == ["f1", "f2"] and np.isnan(t.loc["b", "f2"])  # the label column is dropped
    assert cohort.clinical.set_index("case_id")["idh_mutant"].tolist() == [1, 0, 0]
    assert [p.message for p in report.warnings] == ["clinical row has no features"]  # patient z
    assert str(y.parent / "tab" / "feats.csv") in map(str, cohort.input_files())


def test_table_layout_without_features_is_its_clinical_table(tmp_path):
    y = _feature_cohort(tmp_path, "ID,f1\na,1\n", features={})
    cohort, report = io.check_cohort(config.resolve_config(str(y)), progress=False)
    assert report.ok, report.format()
    assert cohort.case_ids == ["a", "b", "c", "z"] and cohort.features == {}
    assert cohort.clinical["age"].tolist() == [50, 60, 70, 80]


@requires_shared("tables/tcga-gbmlgg")
@pytest.mark.shared_data
def test_shared_tcga_gbmlgg_clinical_cohort():
    cohort, report = io.check_cohort(config.resolve_config("tcga-gbmlgg"), progress=False)
    assert report.ok, report.format()
    c = cohort.clinical.set_index("case_id")
    assert len(c) == 769 and c["os_event"].sum() == 388           # Deceased 388 / Alive 381 (SOURCE.txt)
    assert c.loc["TCGA-CS-4938", "os_days"] == 3574                  # days, whatever the header says
    assert c["molecular_subtype"].value_counts().to_dict() == {"IDHwt": 335, "IDHmut-noncodel": 220, "IDHmut-codel": 142}


@pytest.mark.parametrize("csv, extra, expected", [
    ("ID,f1,diagnosis\na,1,GBM\n", {}, "non-numeric columns ['diagnosis']"),
    ("ID,f1\na,1\na,2\n", {}, "duplicate id in feature table 'radiomics'"),
    ("case,f1\na,1\n", {}, "id column 'ID' not found"),
    ("ID,f1\na,1\n", {"modalities": ["flair"]}, "layout 'table' has no images or label maps"),
])
def test_feature_table_problems(tmp_path, csv, extra, expected):
    y = _feature_cohort(tmp_path, csv, **extra)
    _, report = io.check_cohort(config.resolve_config(str(y)), progress=False)
    assert any(expected in p.message for p in report.errors), report.format()


@requires_shared("tables/ucsf-pdgm")
@pytest.mark.shared_data
def test_shared_ucsf_pdgm_feature_cohort():
    cohort, report = io.check_cohort(config.resolve_config("ucsf-pdgm-features"), progress=False)
    assert report.ok, report.format()
    assert len(cohort.cases) == 60 and cohort.features["radiomics"].shape == (60, 856)
    assert not {"gbma", "idh_mutated"} & set(cohort.features["radiomics"].columns)
    c = cohort.clinical
    assert (c["idh_mutant"].value_counts().to_dict() == {0: 30, 1: 30}) and c["mgmt_methylated"].notna().sum() == 39


# ------------------------------------------------------- tables of larger real cohorts (UPenn-GBM layout)
def _multi_file_cohort(tmp_path, **clinical_extra) -> Path:
    """Two feature files of one table (one per region), a clinical table with survival times but no
    censoring column, an acquisition table holding the scanner."""
    root = tmp_path / "multi"
    (root / "feats").mkdir(parents=True)
    (root / "feats" / "FLAIR_ET.csv").write_text("SubjectID,FLAIR_ET_mean\na,1\nb,2\nc,3\n")
    (root / "feats" / "FLAIR_ED.csv").write_text("SubjectID,FLAIR_ED_mean\na,4\nb,5\n")
    (root / "clin.csv").write_text("ID,Age,Days,IDH1\na,50,300,Wildtype\nb,60,Not Available,Mutated\nc,70,20,NOS/NEC\n")
    (root / "acq.csv").write_text("ID,Field\na,3\nb,1.5\nc,3\n")
    clinical = {"file": "clin.csv", "id_column": "ID", "join": [{"file": "acq.csv", "id_column": "ID"}],
                "os_event_if_time_known": 1,
                "columns": {"age": "Age", "os_time": "Days", "who_grade": {"constant": 4},
                            "idh_mutant": {"source": "IDH1", "values": {"Wildtype": 0, "Mutated": 1, "NOS/NEC": None}},
                            "site": {"source": "Field", "values": {"3": "3T", "1.5": "1.5T"}}}, **clinical_extra}
    cfg = {"cohort": {"root": str(root), "layout": "table", "modalities": [], "label": {"present": False},
                      "features": {"captk": {"file": "feats/*.csv", "id_column": "SubjectID"}},
                      "clinical": clinical}}
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_feature_files_join_and_the_survival_event_rule(tmp_path):
    cohort, report = io.check_cohort(config.resolve_config(str(_multi_file_cohort(tmp_path))), progress=False)
    assert report.ok, report.format()
    t = cohort.features["captk"]
    assert list(t.columns) == ["FLAIR_ED_mean", "FLAIR_ET_mean"] and np.isnan(t.loc["c", "FLAIR_ED_mean"])
    c = cohort.clinical.set_index("case_id")
    # no censoring column: a recorded survival time is a death; no time, no event (not a censoring)
    assert c["os_event"].tolist()[0] == 1 and pd.isna(c.loc["b", "os_event"]) and c.loc["c", "os_event"] == 1
    assert c["os_days"].tolist()[::2] == [300, 20]
    assert c["site"].tolist() == ["3T", "1.5T", "3T"] and c["who_grade"].tolist() == [4, 4, 4]
    assert c["idh_mutant"].tolist()[:2] == [0, 1] and pd.isna(c.loc["c", "idh_mutant"])


def test_survival_event_rule_and_an_event_column_are_not_both_allowed(tmp_path):
    y = _multi_file_cohort(tmp_path)
    cfg = yaml.safe_load(y.read_text())
    cfg["cohort"]["clinical"]["columns"]["os_event"] = "Age"
    y.write_text(yaml.safe_dump(cfg))
    _, report = io.check_cohort(config.resolve_config(str(y)), progress=False)
    assert any("os_event_if_time_known is set and so is columns.os_event" in p.message for p in report.errors)


def test_feature_families_are_column_subsets_left_out_of_all():
    from glioma_nb.io import features
    from glioma_nb.signature.step import feature_families

    t = pd.DataFrame({"FLAIR_ET_a": [1.0, 2], "T1_ET_a": [3.0, 4], "FLAIR_ED_a": [5.0, 6]}, index=["x", "y"])
    fams = feature_families({"captk": t}, {"captk.flair": "^FLAIR_", "captk.et": "^[A-Z0-9]+_ET_"})
    assert list(fams["captk.flair"].columns) == ["FLAIR_ET_a", "FLAIR_ED_a"]
    assert list(fams["captk.et"].columns) == ["FLAIR_ET_a", "T1_ET_a"]
    sets, _ = features.assemble_feature_sets({"captk": t, **fams}, ["all", "captk.et"])
    assert sets["all"].shape[1] == 3 and list(sets["captk.et"].columns) == ["captk.et:FLAIR_ET_a", "captk.et:T1_ET_a"]
    for bad, msg in [({"flair": "^F"}, "must be named <table>.<family>"), ({"other.f": "^F"}, "does not have"),
                     ({"captk.t2": "^T2_"}, "no column of 'captk' matches")]:
        with pytest.raises(ValueError, match=msg):
            feature_families({"captk": t}, bad)


@requires_shared("tables/upenn-gbm")
@pytest.mark.shared_data
def test_shared_upenn_gbm_cohorts():
    cohort, report = io.check_cohort(config.resolve_config("upenn-gbm"), progress=False)
    assert report.ok, report.format()
    c = cohort.clinical
    assert cohort.features["captk"].shape == (611, 1728)
    assert c["idh_mutant"].value_counts().to_dict() == {0: 499, 1: 16}
    assert c["mgmt_methylated"].value_counts().to_dict() == {0: 151, 1: 111}
    assert int(c["os_event"].sum()) == 452 and c["os_event"].isna().sum() == 159   # the survival-event rule
    assert c["site"].value_counts().to_dict() == {"3T": 538, "1.5T": 73}
    corrected, report = io.check_cohort(config.resolve_config("upenn-gbm-corrected"), progress=False)
    assert report.ok, report.format()
    assert corrected.features["captk"].shape == (232, 1728) == corrected.features["captk_auto"].shape
    assert set(corrected.case_ids) <= set(cohort.case_ids)


def _brats2023_cohort(tmp_path: Path, layout: str = "brats2023", scheme: str = "brats2023") -> Path:
    """Two cases named as BraTS 2023+ and the BraTS orchestrator name them (BraTS-GLI-00000-000-t1n.nii.gz, -t1c,
    -t2w, -t2f, -seg), labels 1 NCR, 2 ED, 3 ET (the conftest sphere with its enhancing shell relabelled 4 -> 3)."""
    root = tmp_path / "BraTS2023-GLI"
    lab = sphere_label()
    lab[lab == 4] = 3
    rng = np.random.default_rng(3)
    rows = []
    for cid in ("BraTS-GLI-00000-000", "BraTS-GLI-00002-001"):
        (root / cid).mkdir(parents=True)
        for suffix in ("t1n", "t1c", "t2w", "t2f"):
            _nifti(root / cid / f"{cid}-{suffix}.nii.gz", (rng.normal(500, 50, SHAPE) + 200 * (lab > 0)).astype(np.float32))
        _nifti(root / cid / f"{cid}-seg.nii.gz", lab)
        rows.append({"case_id": cid, "age": 50})
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    y = tmp_path / "b23.yaml"
    y.write_text(yaml.safe_dump({"cohort": {"root": str(root), "layout": layout,
                                            "label": {"present": True, "scheme": scheme},
                                            "clinical": {"file": "clinical.csv", "id_column": "case_id",
                                                         "columns": {"age": "age"}}}}))
    return y


def test_brats2023_names_and_labels_load_with_their_regions(tmp_path):
    cohort, report = check(_brats2023_cohort(tmp_path))
    assert report.ok, report.format()
    assert cohort.case_ids == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-001"] and cohort.scheme.name == "brats2023"
    case = cohort.cases[0]
    assert {m: p.name for m, p in case.images.items()} == {
        "t1": "BraTS-GLI-00000-000-t1n.nii.gz", "t1c": "BraTS-GLI-00000-000-t1c.nii.gz",
        "t2": "BraTS-GLI-00000-000-t2w.nii.gz", "flair": "BraTS-GLI-00000-000-t2f.nii.gz"}
    assert case.label.name == "BraTS-GLI-00000-000-seg.nii.gz"
    lab = sphere_label()
    voxel_ml = abs(np.linalg.det(AFFINE[:3, :3])) / 1000
    row = report.case_table.iloc[0]
    # ET is label 3 here: the same volumes as the 1/2/4 sphere of the brats layout
    assert row["ET_ml"] == pytest.approx((lab == 4).sum() * voxel_ml) and row["ET_ml"] > 0
    assert row["TC_ml"] == pytest.approx(np.isin(lab, (1, 4)).sum() * voxel_ml)
    assert row["WT_ml"] == pytest.approx((lab > 0).sum() * voxel_ml)
    # a mask written for this cohort keeps its scheme: enhancing is 3, as in its reference maps
    from glioma_nb.segment import transforms

    classes = np.array([0, 1, 2, 3], np.uint8)
    out, scheme = transforms.classes_to_label(classes, "brats", cohort.scheme)
    assert scheme.name == "brats2023" and out.tolist() == [0, 1, 2, 3] and cohort.scheme.brats
    assert not io.LABEL_SCHEMES["binary"].brats and io.LABEL_SCHEMES["brats2018"].brats


def test_brats2023_names_under_the_2021_layout_or_scheme_are_named_with_the_fix(tmp_path):
    _, report = check(_brats2023_cohort(tmp_path, layout="brats"))
    msgs = messages(report)
    assert len(msgs) == 2 * 5 and all("set cohort.layout: brats2023" in m for m in msgs), msgs[:2]
    assert "BraTS-GLI-00000-000_t1.nii.gz" in msgs[0] and "missing t1 file" in msgs[0]
    _, report = check(_brats2023_cohort(tmp_path / "s", scheme="brats2018"))
    msgs = messages(report)
    assert msgs and all("label values [3] are not in scheme brats2018" in m and "brats2023" in m for m in msgs), msgs


def test_the_clinical_template_has_every_canonical_column_and_reads_back_through_a_cohort(tmp_path):
    """docs/reference/clinical_template.csv (generated): every canonical column, and a cohort whose clinical file is
    the template, each column mapped to itself, reads both rows without a problem."""
    from glioma_nb.api import docs

    template = clinical.clinical_template()
    assert list(template.columns) == ["case_id", *clinical.CLINICAL_COLUMNS]
    root = tmp_path / "tpl"
    for cid in template["case_id"]:
        (root / cid).mkdir(parents=True)
        _nifti(root / cid / "flair.nii.gz", np.random.default_rng(0).random(SHAPE).astype(np.float32) + 1)
    template.to_csv(root / "clinical_template.csv", index=False)
    y = tmp_path / "tpl.yaml"
    y.write_text(yaml.safe_dump({"cohort": {
        "root": str(root), "layout": "per_case", "modalities": ["flair"], "files": {"flair": "flair.nii.gz"},
        "label": {"present": False}, "clinical": {"file": "clinical_template.csv", "id_column": "case_id",
                                                  "time_unit": "months",
                                                  "columns": {c: c for c in clinical.CLINICAL_COLUMNS}}}}))
    cohort, report = check(y)
    assert report.ok, report.format()
    got = cohort.clinical.set_index("case_id")
    assert got.loc["P001", "who_grade"] == 4 and got.loc["P002", "codel_1p19q"] == 1 and got.loc["P001", "sex"] == "F"
    assert got.loc["P002", "os_days"] == pytest.approx(60 * 365.25 / 12) and got.loc["P001", "resection"] == "GTR"
    page = docs.clinical_page()
    for c in clinical.CLINICAL_COLUMNS:
        assert f"| `{c}` | {clinical.CLINICAL_MEANINGS[c]} |" in page
