"""DICOM written by the real producing tools, not by us: the SEGs dcmqi wrote (the tool behind every UPenn-GBM SEG
in the IDC) over a real GE CT, a real GE MP-RAGE series (oblique, file names without .dcm), dcmqi's own
itkimage2segimage / segimage2itkimage as the reference both ways, and dcm2niix as the reference of 00's series
reader. Every failure a real file showed is a test here, each with the file named in the error."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import SHARED, requires_shared
from dcmqi_tools import dcmqi_metadata, dcmqi_read, dcmqi_seg, run_tool

from glioma_nb.preprocess import dicom
from glioma_nb.preprocess import register as reg
from glioma_nb.sources import dicomseg

DCMQI = SHARED / "third-party" / "dcmqi-segmentations"
GE = SHARED / "third-party" / "dcm-qa-ge-mprage" / "In"
BRATS = {"necro": 1, "edema": 2, "enhanc": 4}
pytestmark = requires_shared("third-party/dcmqi-segmentations")


@pytest.fixture(scope="module")
def ct():
    """dcmqi's 3-slice GE CT, in the slice order 00's reader gives (GDCM: along the slice normal)."""
    return dicom.find_series(DCMQI / "ct-3slice")[0]


@pytest.fixture(scope="module")
def ge():
    return dicom.find_series(GE)[0]


def _nrrd(name: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(DCMQI / name)))


def _ellipsoids(shape: tuple[int, ...]) -> np.ndarray:
    """Nested BraTS-like regions: oedema 2 around a core 1 around enhancing 4."""
    z, y, x = np.indices(shape)
    c = np.array(shape) / 2
    lab = np.zeros(shape, np.uint8)
    for v, r in ((2, (0.3, 0.25, 0.2)), (1, (0.15, 0.12, 0.1)), (4, (0.07, 0.05, 0.05))):
        rz, ry, rx = (max(1.0, f * n) for f, n in zip(r, shape))
        lab[((z - c[0]) / rz) ** 2 + ((y - c[1]) / ry) ** 2 + ((x - c[2]) / rx) ** 2 < 1] = v
    return lab


# -------------------------------------------------------------------------------- dcmqi's own SEGs, read
def test_every_dcmqi_seg_reads_as_its_reference_label_maps(ct):
    """liver.dcm: 107,098 voxels over 3 slices, voxel-identical to liver_seg.nrrd; partial_overlaps.dcm: each of
    its five segments equal to the label of that number in the NRRD files it was made from. dcmqi writes no
    SpatialLocationsPreserved: the frames are placed by geometry."""
    assert "SpatialLocationsPreserved" not in str(pydicom.dcmread(DCMQI / "liver.dcm", stop_before_pixels=True))
    liver = dicomseg.read_seg(DCMQI / "liver.dcm", ct.files, {"liver": 1})
    ref = _nrrd("liver_seg.nrrd")
    np.testing.assert_array_equal(liver, ref)
    assert int(liver.sum()) == 107_098 and [int(s.sum()) for s in liver] == [36_233, 35_645, 35_220]
    texts, masks = dicomseg.read_segments(DCMQI / "partial_overlaps.dcm", ct.files)
    assert len(masks) == 5 and texts[4] == "LIGHT_BLUE Edema"
    refs = [_nrrd(f"partial_overlaps-{k}.nrrd") for k in (1, 2, 3)]
    for num, mask in masks.items():
        expected = next(r == num for r in refs if (r == num).any())
        np.testing.assert_array_equal(mask, expected)
    assert {n: int(m.sum()) for n, m in masks.items()} == {1: 9602, 2: 11888, 3: 10743, 4: 6693, 5: 4713}


PARTIAL_LABELS = {"tissue": 2, "artery|capillary|vein": 1, "edema": 4}


def test_overlapping_segments_are_refused_by_name_or_nested_innermost_wins(ct):
    seg = DCMQI / "partial_overlaps.dcm"
    with pytest.raises(dicomseg.SegError, match=r"partial_overlaps\.dcm: segments overlap.*segments 1 'GREEN Tissue' "
                                                r"\(label 2\) and 2 'ORANGE Artery' \(label 1\) share 3017 voxels.*overlap: nested"):
        dicomseg.read_seg(seg, ct.files, PARTIAL_LABELS)
    nested = dicomseg.read_seg(seg, ct.files, PARTIAL_LABELS, overlap="nested")
    # the rule, from the reference NRRDs: the innermost region covering a voxel gives its label (4 > 1 > 2)
    refs = [_nrrd(f"partial_overlaps-{k}.nrrd") for k in (1, 2, 3)]
    seg_of = {1: 2, 2: 1, 3: 1, 4: 4, 5: 1}
    expected = np.zeros(refs[0].shape, np.uint8)
    for value in (2, 1, 4):
        for num, v in seg_of.items():
            if v == value:
                expected[np.any([r == num for r in refs], axis=0)] = value
    np.testing.assert_array_equal(nested, expected)
    assert {int(v): int((nested == v).sum()) for v in (1, 2, 4)} == {1: 27294, 2: 6518, 4: 6693}
    # segments of one label may overlap: no conflict
    one = dicomseg.read_seg(seg, ct.files, {".": 1})
    assert int(one.sum()) == int(np.any([r > 0 for r in refs], axis=0).sum())
    with pytest.raises(dicomseg.SegError, match=r"segment\(s\) 4 'LIGHT_BLUE Edema' \(label 5\) map to no nested"):
        dicomseg.read_seg(seg, ct.files, {**PARTIAL_LABELS, "edema": 5}, overlap="nested")
    with pytest.raises(dicomseg.SegError, match="overlap 'innermost': use one of"):
        dicomseg.read_seg(seg, ct.files, PARTIAL_LABELS, overlap="innermost")


def test_nested_regions_written_by_dcmqi_become_brats_labels(ct, tmp_path):
    """Whole tumour, tumour core and enhancing tumour as three overlapping segments (one dcmqi input file each,
    as region-based tools export them): nested gives back the BraTS label map; refuse names the segments."""
    like = sitk.ReadImage(ct.files)
    lab = _ellipsoids(sitk.GetArrayFromImage(like).shape)
    regions = {"Whole tumor": lab > 0, "Tumor core": np.isin(lab, (1, 4)), "Enhancing tumor": lab == 4}
    files, attrs = [], []
    for k, (name, mask) in enumerate(regions.items()):
        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        img.CopyInformation(like)
        files.append(tmp_path / f"region{k}.nii.gz")
        sitk.WriteImage(img, str(files[-1]))
        attrs.append(json.loads(dcmqi_metadata(tmp_path / "m.json", {1: name}).read_text())["segmentAttributes"][0])
    meta = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**meta, "segmentAttributes": attrs}))
    run_tool("itkimage2segimage", "--inputImageList", ",".join(map(str, files)), "--inputDICOMDirectory",
             DCMQI / "ct-3slice", "--inputMetadata", tmp_path / "m.json", "--outputDICOM", tmp_path / "regions.dcm")
    labels = {"whole": 2, "core": 1, "enhanc": 4}
    np.testing.assert_array_equal(dicomseg.read_seg(tmp_path / "regions.dcm", ct.files, labels, overlap="nested"), lab)
    with pytest.raises(dicomseg.SegError, match=r"segments 1 'Whole tumor Mass' \(label 2\) and 2 'Tumor core Mass' "
                                                r"\(label 1\) share \d+ voxels"):
        dicomseg.read_seg(tmp_path / "regions.dcm", ct.files, labels)


# -------------------------------------------------------------------------------- wrong, partial, damaged
@requires_shared("third-party/dcm-qa-ge-mprage")
def test_a_seg_read_against_other_or_partial_files_is_an_error_never_zeros(ct, ge, tmp_path):
    seg = DCMQI / "liver.dcm"
    with pytest.raises(dicomseg.SegError, match=rf"SEG {seg} on series {ge.uid} .*references series .*not this one"):
        dicomseg.read_seg(seg, ge.files, {"liver": 1})
    # without the series reference, the geometry still refuses it (512 x 512 frames on 256 x 256 slices)
    ds = pydicom.dcmread(seg)
    del ds.ReferencedSeriesSequence
    del ds.FrameOfReferenceUID
    ds.save_as(tmp_path / "noref.dcm")
    with pytest.raises(dicomseg.SegError, match=r"noref\.dcm on series .*512 x 512 pixels, the series' slices 256 x 256"):
        dicomseg.read_seg(tmp_path / "noref.dcm", ge.files, {"liver": 1})
    # two of the three slices: the third's instance is missing, named, never a partial mask
    with pytest.raises(dicomseg.SegError, match=r"references 1 instance\(s\) of the series that are not among the 2 "
                                                r"files given.*download it again"):
        dicomseg.read_seg(seg, ct.files[:2], {"liver": 1})
    # a frame moved 0.5 mm off its slice (the same series, another grid)
    ds = pydicom.dcmread(seg)
    pos = ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0]
    pos.ImagePositionPatient = [float(pos.ImagePositionPatient[0]) + 0.5, *pos.ImagePositionPatient[1:]]
    ds.save_as(tmp_path / "moved.dcm")
    with pytest.raises(dicomseg.SegError, match=r"moved\.dcm on series .*1 of 3 frames lie on no slice.*frame 2 "
                                                r"\(segment 1\).*0\.500 mm from the nearest slice.*tolerance_mm = 0\.05"):
        dicomseg.read_seg(tmp_path / "moved.dcm", ct.files, {"liver": 1})
    assert dicomseg.read_seg(tmp_path / "moved.dcm", ct.files, {"liver": 1}, tolerance_mm=0.6).sum() == 107_098


def test_damaged_and_wrong_files_are_named_with_the_fix(ct, tmp_path):
    seg = DCMQI / "liver.dcm"
    data = seg.read_bytes()
    (tmp_path / "short.dcm").write_bytes(data[: len(data) // 2])          # a download cut short
    (tmp_path / "stub.dcm").write_bytes(data[:100])
    (tmp_path / "empty.dcm").write_bytes(b"")
    for name in ("short.dcm", "stub.dcm", "empty.dcm"):
        with pytest.raises(dicomseg.SegError, match=rf"SEG {tmp_path / name}: .*(truncated|not a readable).*download it again"):
            dicomseg.read_seg(tmp_path / name, ct.files, {"liver": 1})
    with pytest.raises(dicomseg.SegError, match=rf"SEG {ct.files[0]}: not a DICOM Segmentation \(Modality CT"):
        dicomseg.read_seg(Path(ct.files[0]), ct.files, {"liver": 1})
    # no category codes (some vendors write none): read by label and type as before
    ds = pydicom.dcmread(seg)
    del ds.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence
    ds.save_as(tmp_path / "nocategory.dcm")
    np.testing.assert_array_equal(dicomseg.read_seg(tmp_path / "nocategory.dcm", ct.files, {"liver": 1}),
                                  _nrrd("liver_seg.nrrd"))
    # nothing to match on: named
    del ds.SegmentSequence[0].SegmentLabel
    del ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence
    ds.save_as(tmp_path / "nameless.dcm")
    with pytest.raises(dicomseg.SegError, match=r"nameless\.dcm: segment 1 '' matches none of cohort\.idc\.seg\.labels"):
        dicomseg.read_seg(tmp_path / "nameless.dcm", ct.files, {"liver": 1})
    # a source file that is not DICOM
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(dicomseg.SegError, match=rf"{tmp_path / 'junk.dcm'}: not a readable DICOM file"):
        dicomseg.read_seg(seg, [*ct.files[:2], str(tmp_path / "junk.dcm")], {"liver": 1})


# -------------------------------------------------------------------------------- write_seg on real headers
def test_write_seg_on_real_headers_and_dcmqi_reads_it(ct, tmp_path):
    """The GE CT's empty SpecificCharacterSet, headers without the patient / study Type 2 attributes and with a
    vendor private tag: written, and read back by dcmqi voxel-identical; a label value without a name refused."""
    assert pydicom.dcmread(ct.files[0]).SpecificCharacterSet == ""
    lab = _nrrd("liver_seg.nrrd").astype(np.uint8)
    lab[1, 250:260, 250:260] = 4
    out = dicomseg.write_seg(lab, ct.files, tmp_path / "ct.dcm", {1: "Liver", 4: "Enhancing tumor"})
    np.testing.assert_array_equal(dicomseg.read_seg(out, ct.files, {"liver": 1, "enhanc": 4}), lab)
    like = sitk.ReadImage(ct.files)
    got = dcmqi_read(out, like, tmp_path / "dcmqi")
    assert set(got) == {1, 2}
    np.testing.assert_array_equal(got[1], lab == 1)
    np.testing.assert_array_equal(got[2], lab == 4)
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    for f in ct.files:
        ds = pydicom.dcmread(f)
        for key in ("PatientName", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
            if key in ds:
                delattr(ds, key)
        ds.add_new(0x00091001, "LO", "a vendor's private value")
        ds.save_as(stripped / Path(f).name)
    files = [str(stripped / Path(f).name) for f in ct.files]
    out2 = dicomseg.write_seg(lab, files, tmp_path / "stripped.dcm", {1: "Liver", 4: "Enhancing tumor"})
    np.testing.assert_array_equal(dicomseg.read_seg(out2, files, {"liver": 1, "enhanc": 4}), lab)
    with pytest.raises(dicomseg.SegError, match=r"bad\.dcm: label value\(s\) \[4\] of the label map have no segment name"):
        dicomseg.write_seg(lab, ct.files, tmp_path / "bad.dcm", {1: "Liver"})
    assert not (tmp_path / "bad.dcm").exists() and not list(tmp_path.glob("*.tmp"))


# -------------------------------------------------------------------------------- dcmqi both ways, GE MR
@requires_shared("third-party/dcm-qa-ge-mprage")
@pytest.mark.parametrize("kind", ["binary", "labelmap"])
def test_dcmqi_round_trips_both_ways_on_the_oblique_ge_mr(ge, kind, tmp_path):
    """A label map on the real oblique GE MP-RAGE grid: dcmqi's SEG (BINARY and LABELMAP) is read by read_seg
    voxel-identical; our SEG is read by dcmqi voxel-identical, segment by segment."""
    like = dicom.read_series(ge)
    lab = _ellipsoids(sitk.GetArrayFromImage(like).shape)
    names = {1: "Necrosis", 2: "Edema", 4: "Enhancing tumor"}
    theirs = dcmqi_seg(lab, like, GE, tmp_path / f"dcmqi_{kind}.dcm", names, kind)
    np.testing.assert_array_equal(dicomseg.read_seg(theirs, ge.files, BRATS), lab)
    if kind == "binary":
        ours = dicomseg.write_seg(lab, ge.files, tmp_path / "ours.dcm", names)
        got = dcmqi_read(ours, like, tmp_path / "dcmqi")
        for num, value in enumerate(sorted(names), start=1):
            np.testing.assert_array_equal(got[num], lab == value)


def test_dcmqi_round_trips_both_ways_on_the_ct(ct, tmp_path):
    like = sitk.ReadImage(ct.files)
    ref = _nrrd("liver_seg.nrrd").astype(np.uint8)
    theirs = dcmqi_seg(ref, like, DCMQI / "ct-3slice", tmp_path / "liver.dcm", {1: "Liver"})
    np.testing.assert_array_equal(dicomseg.read_seg(theirs, ct.files, {"liver": 1}), ref)
    ours = dicomseg.write_seg(ref, ct.files, tmp_path / "ours.dcm", {1: "Liver"})
    np.testing.assert_array_equal(dcmqi_read(ours, like, tmp_path / "back")[1], ref == 1)


# -------------------------------------------------------------------------------- 00's reader vs dcm2niix
@requires_shared("third-party/dcm-qa-ge-mprage")
@pytest.mark.parametrize("which", ["ge-mr", "ct"])
def test_00_reads_real_series_as_dcm2niix_does(which, tmp_path):
    """00's series reader (GDCM through SimpleITK) against dcm2niix's NIfTI of the same files: the same voxels
    and intensities (the CT's rescale intercept applied by both), affines within 1e-3 mm at every corner."""
    src = GE if which == "ge-mr" else DCMQI / "ct-3slice"
    run_tool("dcm2niix", "-z", "n", "-b", "n", "-o", tmp_path, "-f", "ref", src)
    theirs = nib.load(tmp_path / "ref.nii")
    series = dicom.find_series(src)
    assert len(series) == 1 and series[0].problems == []
    img = dicom.read_series(series[0])
    ours = nib.Nifti1Image(sitk.GetArrayFromImage(img).transpose(2, 1, 0), reg.ras_affine(img))
    a, b = nib.as_closest_canonical(ours), nib.as_closest_canonical(theirs)   # dcm2niix flips the rows
    assert a.shape == b.shape
    corners = np.array([[i, j, k] for i in (0, a.shape[0] - 1) for j in (0, a.shape[1] - 1) for k in (0, a.shape[2] - 1)])
    gap = np.abs(nib.affines.apply_affine(a.affine, corners) - nib.affines.apply_affine(b.affine, corners)).max()
    assert gap < 1e-3, f"corners {gap:.2e} mm apart"
    np.testing.assert_array_equal(np.asarray(a.dataobj, dtype=np.float64), np.asarray(b.dataobj, dtype=np.float64))
    if which == "ge-mr":
        assert a.shape == (256, 256, 130)
        ref = json.loads((GE.parent / "dcm2niix_reference.json").read_text())
        direction = np.array(img.GetDirection()).reshape(3, 3)           # columns: row, column, slice directions
        np.testing.assert_allclose(direction[:, :2].T.ravel(), ref["ImageOrientationPatientDICOM"], atol=1e-4)
        assert img.GetSpacing()[2] == pytest.approx(ref["SpacingBetweenSlices"], abs=1e-4)
