"""DICOM series in: find every series under a patient folder, name its modality, refuse what is not a volume.

SimpleITK's GDCM reader does the reading (it is already a dependency, it sorts slices by position along the
slice normal and gives the LPS geometry; dcm2niix would be a subprocess and pydicom leaves the geometry to us).
What GDCM does not check, this module does before a series becomes a volume: a single-slice (2D) series, a
localiser / scout, and slice positions that are not uniformly spaced (a missing slice, a stack of two
acquisitions). Modalities are named by regular expressions on SeriesDescription + ProtocolName; a patient with
two candidates for one modality (or none) is an error that names the patient, lists the series found and says
how to settle it (``cohort.raw.select``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from glioma_nb.io.series import LOCALISER, SERIES_PATTERNS

TAGS = {"series_uid": "0020|000e", "description": "0008|103e", "protocol": "0018|1030",
        "series_number": "0020|0011", "image_type": "0008|0008", "patient_id": "0010|0020",
        "position": "0020|0032", "orientation": "0020|0037", "modality": "0008|0060"}


class DicomError(ValueError):
    """A patient's DICOM series cannot give one volume per modality; the message names the patient and the fix."""


@dataclass
class Series:
    """One DICOM series: its files in slice order and what its headers say."""

    uid: str
    files: list[str]
    description: str = ""
    protocol: str = ""
    number: str = ""
    image_type: str = ""
    problems: list[str] = field(default_factory=list)   # why it is not a usable volume ([] when it is)

    @property
    def label(self) -> str:
        return f"series {self.number or '?'} '{self.description or self.protocol or self.uid[-12:]}' ({len(self.files)} files)"

    def matches(self, rx: re.Pattern[str]) -> bool:
        """Does the SeriesDescription or the ProtocolName match?"""
        return bool(rx.search(self.description) or (self.protocol and rx.search(self.protocol)))


def _meta(path: str) -> dict[str, str]:
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(path)
    r.LoadPrivateTagsOff()
    r.ReadImageInformation()
    return {k: r.GetMetaData(t).strip() if r.HasMetaDataKey(t) else "" for k, t in TAGS.items()}


def slice_positions(metas: list[dict[str, str]]) -> np.ndarray:
    """Positions (mm) of the slices along the slice normal, from ImagePositionPatient and ImageOrientationPatient."""
    o = np.array([float(v) for v in metas[0]["orientation"].split("\\")]) if metas[0]["orientation"] else None
    if o is None or o.size != 6:
        return np.array([])
    normal = np.cross(o[:3], o[3:])
    pos = np.array([[float(v) for v in m["position"].split("\\")] for m in metas if m["position"]])
    return np.sort(pos @ normal) if len(pos) == len(metas) else np.array([])


def check_series(s: Series, metas: list[dict[str, str]], max_gap_ratio: float) -> None:
    """Fill ``s.problems``: 2D, localiser, non-uniform slice spacing."""
    if s.matches(LOCALISER) or "LOCALIZER" in s.image_type.upper():
        s.problems.append("localiser / scout")
    if len(s.files) < 3:
        s.problems.append(f"2D series ({len(s.files)} slice{'s' if len(s.files) > 1 else ''})")
        return
    pos = slice_positions(metas)
    if pos.size == 0:
        s.problems.append("no ImagePositionPatient / ImageOrientationPatient: slice geometry unknown")
        return
    gaps = np.diff(pos)
    step = float(np.median(gaps))
    if step <= 1e-6:
        s.problems.append("several slices at the same position (two acquisitions in one series?)")
    elif np.max(np.abs(gaps - step)) > max_gap_ratio * step:
        s.problems.append(f"non-uniform slice spacing: gaps {gaps.min():.2f}-{gaps.max():.2f} mm (median {step:.2f}); "
                          "a missing slice or two stacks in one series")


def find_series(folder: Path, max_gap_ratio: float = 0.05) -> list[Series]:
    """Every DICOM series anywhere under ``folder`` (each sub-folder scanned by GDCM), checked."""
    import SimpleITK as sitk

    out: list[Series] = []
    dirs = sorted({p.parent for p in Path(folder).rglob("*") if p.is_file()})
    for d in dirs:
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ():
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), uid))
            metas = [_meta(f) for f in files]
            m0 = metas[0]
            s = Series(uid, files, m0["description"], m0["protocol"], m0["series_number"], m0["image_type"])
            check_series(s, metas, max_gap_ratio)
            out.append(s)
    return out


def assign(case_id: str, series: list[Series], modalities: list[str], patterns: Mapping[str, str] | None = None,
           select: Mapping[str, Any] | None = None) -> dict[str, Series]:
    """One usable series per modality, or :class:`DicomError` naming the patient, the series found and the fix."""
    pats = {**SERIES_PATTERNS, **(patterns or {})}
    select = {k: str(v) for k, v in (select or {}).items()}
    usable = [s for s in series if not s.problems]
    found = "\n".join(f"    {s.label}" + (f": not a volume ({'; '.join(s.problems)})" if s.problems else "")
                      for s in series) or "    (no DICOM series)"
    out: dict[str, Series] = {}
    errors: list[str] = []
    for m in modalities:
        if m in select:   # a SeriesNumber, or a SeriesInstanceUID (an IDC cohort's manifest names series by UID)
            hits = [s for s in series if (s.uid if _is_uid(select[m]) else s.number) == select[m]]
            if len(hits) != 1:
                errors.append(f"{m}: cohort.raw.select names series {select[m]}, which matches {len(hits)} series")
                continue
            if hits[0].problems:
                errors.append(f"{m}: the selected {hits[0].label} is not a volume: {'; '.join(hits[0].problems)}")
                continue
            out[m] = hits[0]
            continue
        rx = re.compile(pats[m], re.IGNORECASE)
        hits = [s for s in usable if s.matches(rx)]
        bad = [s for s in series if s.problems and s.matches(rx)]
        if len(hits) == 1:
            out[m] = hits[0]
        elif not hits:
            why = f" (matching but unusable: {'; '.join(s.label + ': ' + '; '.join(s.problems) for s in bad)})" if bad else ""
            errors.append(f"{m}: no series matches /{pats[m]}/{why}; fix: add its SeriesDescription to "
                          f"cohort.raw.series.{m}, or name it in cohort.raw.select: {{{case_id}: {{{m}: <SeriesNumber>}}}}")
        else:
            errors.append(f"{m}: ambiguous, {len(hits)} series match ({', '.join(s.label for s in hits)}); fix: "
                          f"cohort.raw.select: {{{case_id}: {{{m}: <SeriesNumber>}}}} or a narrower cohort.raw.series.{m}")
    taken: dict[str, str] = {}
    for m, s in out.items():
        if s.uid in taken:
            errors.append(f"{m} and {taken[s.uid]} both match {s.label}; fix: narrow cohort.raw.series or use cohort.raw.select")
        taken[s.uid] = m
    if errors:
        raise DicomError(f"patient {case_id}: " + "\n  ".join(errors) + f"\n  series found:\n{found}")
    return out


def _child_uid(parent: str, n: int) -> str:
    """``<parent>.<n>``, or where that passes DICOM's 64 characters (real UIDs often have 60+) a UID derived from
    both: ``2.25.<the decimal of a name-based UUID>`` (DICOM PS3.5 B.2), the same for the same inputs."""
    import uuid

    uid = f"{parent}.{n}"
    return uid if len(uid) <= 64 else f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, uid).int}"


def _is_uid(text: str) -> bool:
    """A DICOM UID (dotted digits, at least three parts), as opposed to a SeriesNumber."""
    return bool(re.fullmatch(r"\d+(\.\d+){2,}", text))


def read_series(s: Series) -> Any:
    """The series as a SimpleITK image (LPS geometry from the headers, slices sorted along the normal)."""
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames(s.files)
    return r.Execute()


def write_series(img: Any, folder: Path, description: str, series_number: int, patient_id: str = "anon",
                 study_uid: str = "1.2.826.0.1.3680043.2.1125.1", image_type: str = "ORIGINAL\\PRIMARY\\M\\ND",
                 positions: list[float] | None = None, tags: Mapping[str, str] | None = None,
                 series_uid: str | None = None) -> list[Path]:
    """Write a 3D SimpleITK image as a DICOM MR series, one file per slice (tests and examples).

    ``positions`` overrides the slice positions along the normal (mm from the origin), to write a series with
    non-uniform spacing. Intensities are written as 16-bit integers. ``tags``: more header fields
    (``"0018|0010"``: ContrastBolusAgent, ``"0008|0031"``: SeriesTime, ...); ``series_uid``: its
    SeriesInstanceUID (default: one made from the study UID, the series number and the time).
    """
    import locale

    saved = locale.setlocale(locale.LC_ALL)   # GDCM's writer sets the C locale: text I/O would turn ASCII
    try:
        return _write_series(img, Path(folder), description, series_number, patient_id, study_uid, image_type,
                             positions, dict(tags or {}), series_uid)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_series(img: Any, folder: Path, description: str, series_number: int, patient_id: str, study_uid: str,
                  image_type: str, positions: list[float] | None, extra: dict[str, str],
                  series_uid: str | None) -> list[Path]:
    import time

    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.Cast(sitk.RescaleIntensity(img, 0, 4095) if img.GetPixelID() not in (sitk.sitkInt16, sitk.sitkUInt16)
                    else img, sitk.sitkInt16)
    direction = np.array(img.GetDirection()).reshape(3, 3)
    uid = series_uid or f"{study_uid}.{series_number}.{int(time.time() * 1000) % 10**9}"
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    files = []
    orient = "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        z = positions[k] if positions is not None else k * img.GetSpacing()[2]
        pos = np.array(img.GetOrigin()) + direction[:, 2] * z
        tags = {"0008|0060": "MR", "0010|0020": patient_id, "0010|0010": patient_id, "0020|000d": study_uid,
                "0020|000e": uid, "0008|103e": description, "0020|0011": str(series_number),
                "0008|0008": image_type, "0020|0013": str(k + 1), "0020|0037": orient,
                "0020|0032": "\\".join(f"{v:.6f}" for v in pos), "0018|0050": f"{img.GetSpacing()[2]:.6f}",
                "0028|0030": f"{img.GetSpacing()[1]:.6f}\\{img.GetSpacing()[0]:.6f}",
                "0008|0018": _child_uid(uid, k + 1), "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
                "0020|0052": _child_uid(study_uid, 1), **extra}
        for t, v in tags.items():
            sl.SetMetaData(t, v)
        out = folder / f"{series_number:03d}_{k:04d}.dcm"
        w.SetFileName(str(out))
        w.Execute(sl)
        files.append(out)
    return files
