"""dcmqi's own command-line tools (the pinned dcmqi wheel) as the tests' reference DICOM SEG producer and reader:
itkimage2segimage writes a SEG from a label map over a DICOM series, segimage2itkimage reads one back."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

BIN = Path(sys.executable).parent            # dcmqi's and dcm2niix's command-line tools (their wheels, pinned)


def run_tool(tool: str, *args: str | Path) -> subprocess.CompletedProcess:
    out = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{tool} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


def _code(scheme_value: str, meaning: str) -> dict:
    return {"CodeValue": scheme_value, "CodingSchemeDesignator": "SCT", "CodeMeaning": meaning}


def dcmqi_metadata(path: Path, names: dict[int, str]) -> Path:
    """dcmqi's JSON metadata (its documented schema) for a label map whose values are ``names``' keys."""
    types = {"Necrosis": _code("6574001", "Necrosis"), "Edema": _code("79654002", "Edema")}
    path.write_text(json.dumps({
        "ContentCreatorName": "glioma-nb^tests", "ClinicalTrialSeriesID": "1", "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "dcmqi segmentation", "SeriesNumber": "300", "InstanceNumber": "1",
        "ContentLabel": "SEGMENTATION", "ContentDescription": "test", "ClinicalTrialCoordinatingCenterName": "tests",
        "segmentAttributes": [[{
            "labelID": v, "SegmentLabel": name, "SegmentDescription": name, "SegmentAlgorithmType": "MANUAL",
            "SegmentedPropertyCategoryCodeSequence": _code("49755003", "Morphologically Altered Structure"),
            "SegmentedPropertyTypeCodeSequence": types.get(name, _code("4147007", "Mass"))} for v, name in names.items()]]}))
    return path


def dcmqi_seg(label: np.ndarray, like: sitk.Image, series_dir: Path, out: Path, names: dict[int, str],
              kind: str = "binary") -> Path:
    """A SEG written by dcmqi's itkimage2segimage from ``label`` (on ``like``'s grid) over a DICOM series."""
    img = sitk.GetImageFromArray(label.astype(np.uint8))
    img.CopyInformation(like)
    sitk.WriteImage(img, str(out.with_suffix(".nii.gz")))
    run_tool("itkimage2segimage", "--inputImageList", out.with_suffix(".nii.gz"), "--inputDICOMDirectory",
             series_dir, "--inputMetadata", dcmqi_metadata(out.with_suffix(".json"), names), "--outputDICOM", out,
             "--segmentationType", kind)
    return out


def dcmqi_read(seg: Path, like: sitk.Image, work: Path) -> dict[int, np.ndarray]:
    """Each segment as dcmqi's segimage2itkimage writes it, resampled (nearest, identity: the same grid) onto
    the source series' grid: segment number -> mask."""
    work.mkdir(parents=True)
    run_tool("segimage2itkimage", "--inputDICOM", seg, "--outputDirectory", work, "-p", "s", "-t", "nifti")
    out = {}
    for f in work.glob("s-*.nii.gz"):
        img = sitk.Resample(sitk.ReadImage(str(f)), like, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        out[int(f.name[2:].split(".")[0])] = sitk.GetArrayFromImage(img) > 0
    return out
