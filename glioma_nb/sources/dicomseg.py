"""The DICOM objects of a downloaded IDC scan: header checks of its structural series, and DICOM SEG.

- :func:`check_scan`: what the series' own headers say about T1 vs T1c. ContrastBolusAgent (0018,0010) names
  the contrast agent of a post-contrast series; where both series or neither carry it, the series time (the
  later of two T1 series of one session is the post-contrast one) decides a provisional pair. A pair the
  manifest assigned provisionally is confirmed or swapped; a pattern's or an override's assignment that the
  headers contradict is reported, not changed. The outcome is ``<scan>/series.json``, which 00_preprocess reads.
- :func:`read_seg`: a DICOM SEG (read with highdicom) as a label map on the grid of the series it references,
  its segments mapped to label values by the cohort's ``cohort.idc.seg.labels`` (regular expressions on each
  segment's label and property type).
- :func:`write_seg`: a label map on a source series' grid written as a DICOM SEG referencing that series, one
  segment per label value (opens in OHIF or 3D Slicer beside the images).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from glioma_nb import __version__, provenance
from glioma_nb.sources.idc import OVERLAP_RULES, IdcError

SERIES_JSON = "series.json"
# Default segment -> BraTS 2018 label (1 necrotic / non-enhancing core, 2 oedema, 4 enhancing), the first match
# wins: "non-enhancing" must be tried before "enhancing"
DEFAULT_SEG_LABELS = {r"necro|non.?enhanc|core": 1, r"oedema|edema": 2, r"enhanc": 4}


def series_files(folder: Path) -> list[Path]:
    """The instance files of a downloaded series folder (its dot-files, the download record, left out)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []


def _header(folder: Path) -> dict[str, Any]:
    """The first instance's header fields of a series folder that the checks read."""
    import pydicom

    files = series_files(folder)
    if not files:
        raise IdcError(f"{folder}: no DICOM files")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    t = str(ds.get("SeriesTime", "") or ds.get("AcquisitionTime", "") or "")
    return {"agent": str(ds.get("ContrastBolusAgent", "") or "").strip(), "time": t.strip(),
            "number": str(ds.get("SeriesNumber", "")), "description": str(ds.get("SeriesDescription", "")),
            "inversion_time": ds.get("InversionTime", None), "uid": str(ds.get("SeriesInstanceUID", ""))}


def _seconds(t: str) -> float | None:
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", t)
    if not m:
        return None
    return int(m[1]) * 3600 + int(m[2] or 0) * 60 + int(m[3] or 0) + float(m[4] or 0)


def check_scan(scan_dir: Path, rows: Sequence[Mapping[str, Any]], pair: tuple[str, str] = ("t1", "t1c")) -> dict[str, Any]:
    """Settle or check the T1/T1c assignment of one downloaded scan from its headers; writes and returns the
    scan's ``series.json``: ``series`` (modality -> SeriesInstanceUID), ``seg`` (the SEG's UID and the series it
    references, or null), ``status`` (ok | contradiction | unsettled), ``notes``."""
    scan_dir = Path(scan_dir)
    rows = list(rows)
    scan = str(rows[0]["scan_id"])
    series = {r["modality"]: r for r in rows if r["modality"] != "seg"}
    seg = next((r for r in rows if r["modality"] == "seg"), None)
    chosen = {m: str(r["SeriesInstanceUID"]) for m, r in series.items()}
    notes: list[str] = []
    status = "ok"
    pre, post = pair
    if pre in series and post in series:
        h = {m: _header(scan_dir / chosen[m]) for m in (pre, post)}
        label = {m: f"series {h[m]['number']} '{h[m]['description']}' ({chosen[m]})" for m in (pre, post)}
        agent = {m: bool(h[m]["agent"]) for m in (pre, post)}
        secs = {m: _seconds(h[m]["time"]) for m in (pre, post)}
        provisional = str(series[pre]["rule"]).startswith("provisional")
        if agent[pre] != agent[post]:
            says_post = post if agent[post] else pre
            by = f"ContrastBolusAgent '{h[says_post]['agent']}' on {label[says_post]} only"
        elif secs[pre] is not None and secs[post] is not None and secs[pre] != secs[post]:
            says_post = post if secs[post] > secs[pre] else pre
            by = f"series time: {label[says_post]} is the later one"
        else:
            says_post, by = None, "no ContrastBolusAgent on either (or on both) and no series time to order them"
        if says_post is None:
            if provisional:
                status = "unsettled"
                notes.append(f"{pre}/{post} of scan {scan} stay unsettled: {by}; name them in cohort.idc.overrides "
                             f"({scan},{pre},<uid>) and ({scan},{post},<uid>)")
            else:
                notes.append(f"{pre}/{post}: the headers say nothing against the manifest ({by})")
        elif says_post == post:
            notes.append(f"{pre}/{post} " + ("confirmed" if provisional else "consistent") + f" by {by}")
        elif provisional:
            chosen[pre], chosen[post] = chosen[post], chosen[pre]
            notes.append(f"{pre}/{post} swapped from the provisional manifest order by {by}")
        else:
            status = "contradiction"
            notes.append(f"contradiction in scan {scan}: the manifest's {post} is {label[post]} (rule "
                         f"{series[post]['rule']}) but the headers point at {label[pre]} as post-contrast ({by}); "
                         f"not guessed: settle it in cohort.idc.overrides ({scan},{post},<uid>) and make the manifest again")
    rec = {"scan_id": scan, "series": chosen, "status": status, "notes": notes,
           "seg": ({"uid": str(seg["SeriesInstanceUID"]), "source_series": str(seg["source_series"]),
                    "description": str(seg["SeriesDescription"])} if seg is not None else None),
           "checked_utc": provenance.utc_now().isoformat(timespec="seconds")}
    provenance.write_json_atomic(scan_dir / SERIES_JSON, rec)
    return rec


def read_scan_record(scan_dir: Path) -> dict[str, Any] | None:
    p = Path(scan_dir) / SERIES_JSON
    return json.loads(p.read_text()) if p.exists() else None


def segment_values(seg: Any, labels: Mapping[str, int] | None = None, where: str = "") -> dict[int, int]:
    """Segment number -> label value, by the first pattern of ``labels`` that matches the segment's label or its
    property type's meaning; a segment no pattern matches is an error naming it."""
    labels = labels or DEFAULT_SEG_LABELS
    out: dict[int, int] = {}
    for item in seg.SegmentSequence:
        num = int(item.SegmentNumber)
        if num == 0:   # a LABELMAP SEG's background (dcmqi describes it as a segment)
            continue
        text = " ".join([str(getattr(item, "SegmentLabel", "")),
                         *[str(c.CodeMeaning) for c in getattr(item, "SegmentedPropertyTypeCodeSequence", [])]])
        hit = next((int(v) for rx, v in labels.items() if re.search(rx, text, re.IGNORECASE)), None)
        if hit is None:
            raise SegError(f"{where}: segment {num} '{text.strip()}' matches none of cohort.idc.seg.labels "
                           f"{dict(labels)}; add a pattern for it")
        out[num] = hit
    return out


# ------------------------------------------------------------------------------------------------- DICOM SEG in
# A SEG is placed on its source series by geometry (each frame's ImagePositionPatient, the orientation and the
# pixel spacing against the source slices), never by what its producer wrote about spatial locations: dcmqi, which
# wrote every SEG of the IDC's UPenn-GBM, does not write SpatialLocationsPreserved, and highdicom's indexing by
# source frame refuses such SEGs. Pixels are decoded by pydicom (1-bit BINARY, FRACTIONAL, and the LABELMAP SEGs
# that dcmqi 1.5 and highdicom 0.23+ write).
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"            # Segmentation Storage (BINARY / FRACTIONAL)
LABELMAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"   # Label Map Segmentation Storage
TOLERANCE_MM = 0.05       # a frame lies on a source slice when its corners are this close (cohort.idc.seg.tolerance_mm)
# Nested regions, outermost first (innermost wins): whole tumour (its segments mapped to oedema, 2) contains the
# tumour core (mapped to necrosis / non-enhancing core, 1), which contains the enhancing tumour (4; 3 in BraTS 2023)
NESTING = {2: 0, 1: 1, 4: 2, 3: 2}
_GRID_TAGS = ["SOPInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "ImagePositionPatient",
              "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"]


class SegError(IdcError):
    """A DICOM SEG that cannot be read onto its source series, or a label map that cannot be written as one; the
    message names the file, the series and the fix."""


def plane_corners(position: np.ndarray, orientation: np.ndarray, spacing: np.ndarray, rows: int,
                  columns: int) -> np.ndarray:
    """The centres (3, 3) of a plane's first pixel, the last of its first row and its last pixel (mm): three
    points that fix where the plane lies, its orientation and its pixel spacing."""
    row_end = position + orientation[:3] * spacing[1] * (columns - 1)
    return np.stack([position, row_end, row_end + orientation[3:] * spacing[0] * (rows - 1)])


@dataclass(frozen=True)
class SourceGrid:
    """The geometry of a source series: one entry per file, in the order given (the slice order of
    :func:`glioma_nb.preprocess.dicom.read_series`)."""

    files: tuple[str, ...]
    sop_uids: tuple[str, ...]
    positions: np.ndarray          # (slices, 3) ImagePositionPatient, mm (LPS)
    orientation: np.ndarray        # (6,) ImageOrientationPatient: row direction, column direction
    spacing: np.ndarray            # (2,) PixelSpacing: between rows, between columns (mm)
    rows: int
    columns: int
    series_uid: str
    frame_of_reference: str

    @property
    def label(self) -> str:
        folder = Path(self.files[0]).parent if self.files else Path("?")
        return f"series {self.series_uid} ({len(self.files)} files in {folder})"


def source_grid(files: Sequence[str | Path]) -> SourceGrid:
    """Read the geometry of a source series from its files' headers (no pixel data)."""
    import pydicom

    if not files:
        raise SegError("no source files given for the SEG: give the files of the series it references")
    heads = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_GRID_TAGS)
        except Exception as exc:   # pydicom raises many kinds on a damaged file; each is named with the file
            raise SegError(f"{f}: not a readable DICOM file ({type(exc).__name__}: {exc}); download the series "
                           "again") from exc
        missing = [t for t in _GRID_TAGS if t not in ds and t != "FrameOfReferenceUID"]
        if missing:
            raise SegError(f"{f}: no {', '.join(missing)} in its header: not an image slice with a geometry; give "
                           "the files of the image series the SEG references")
        heads.append(ds)
    first = heads[0]
    orient = np.array([float(v) for v in first.ImageOrientationPatient])
    spacing = np.array([float(v) for v in first.PixelSpacing])
    for f, ds in zip(files, heads):
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)) or \
                not np.allclose([float(v) for v in ds.ImageOrientationPatient], orient, atol=1e-4) or \
                str(ds.SeriesInstanceUID) != str(first.SeriesInstanceUID):
            raise SegError(f"{f}: not of the series of {files[0]} (another series, size or orientation); give one "
                           "series' files")
    return SourceGrid(tuple(str(f) for f in files), tuple(str(ds.SOPInstanceUID) for ds in heads),
                      np.array([[float(v) for v in ds.ImagePositionPatient] for ds in heads]), orient, spacing,
                      int(first.Rows), int(first.Columns), str(first.SeriesInstanceUID),
                      str(first.get("FrameOfReferenceUID", "")))


@dataclass
class SegFrames:
    """A SEG's frames placed on a source grid: per frame its source slice and its segment (0 for a LABELMAP
    SEG, whose pixel values are the segment numbers)."""

    file: Path
    grid: SourceGrid
    kind: str                               # BINARY | FRACTIONAL | LABELMAP
    texts: dict[int, str]                   # segment number -> its label and property type
    slices: np.ndarray                      # (frames,) index into the grid's slices
    segment_of_frame: np.ndarray            # (frames,)
    dataset: Any = None                     # the SEG's pydicom dataset (with pixel data when asked for)


def _seq_item(frame: Any, shared: Any, name: str) -> Any:
    for group in (frame, shared):
        seq = getattr(group, name, None) if group is not None else None
        if seq:
            return seq[0]
    return None


def _segment_texts(ds: Any) -> dict[int, str]:
    out = {}
    for item in ds.SegmentSequence:
        if int(item.SegmentNumber) == 0:   # a LABELMAP SEG's background
            continue
        types = [str(c.CodeMeaning) for c in getattr(item, "SegmentedPropertyTypeCodeSequence", []) or []]
        out[int(item.SegmentNumber)] = " ".join([str(getattr(item, "SegmentLabel", "") or ""), *types]).strip()
    return out


def _open_seg(seg_file: Path, pixels: bool) -> Any:
    import pydicom

    try:
        ds = pydicom.dcmread(seg_file, stop_before_pixels=not pixels)
    except Exception as exc:   # truncated, empty, not DICOM: pydicom's error kinds vary; the file is named
        raise SegError(f"SEG {seg_file}: not a readable DICOM file ({type(exc).__name__}: {exc}); the download "
                       "is incomplete or the file is damaged: download it again (glioma-nb idc download resumes)") from exc
    sop = str(ds.get("SOPClassUID", ""))
    if sop not in (SEG_STORAGE, LABELMAP_SEG_STORAGE):
        raise SegError(f"SEG {seg_file}: not a DICOM Segmentation (Modality {ds.get('Modality', '?')}, SOP class "
                       f"{sop or '?'}); point cohort.idc.seg.series at the segmentation series, not an image series")
    lacks = [k for k in ("SegmentSequence", "PerFrameFunctionalGroupsSequence") if k not in ds]
    if lacks:
        raise SegError(f"SEG {seg_file}: a Segmentation without its {' and '.join(lacks)}, so its segments or "
                       f"frames cannot be read: the file is truncated ({Path(seg_file).stat().st_size} bytes) or "
                       "damaged; download it again (glioma-nb idc download resumes)")
    return ds


def place_frames(seg_file: Path, source_files: Sequence[str | Path], tolerance_mm: float = TOLERANCE_MM,
                 pixels: bool = False) -> SegFrames:
    """Place every frame of a SEG on a slice of its source series by geometry, and check that it belongs there:
    the series and frame of reference it references, every source instance it references among the files given,
    its frames' size, orientation and spacing, and each frame's corners within ``tolerance_mm`` of a slice's.
    Anything that does not fit is a :class:`SegError` naming the SEG, the series and what does not fit."""
    seg_file = Path(seg_file)
    ds = _open_seg(seg_file, pixels)
    grid = source_grid(source_files)
    where = f"SEG {seg_file} on {grid.label}"
    refs = {str(r.SeriesInstanceUID): [str(i.ReferencedSOPInstanceUID) for i in getattr(r, "ReferencedInstanceSequence", [])]
            for r in getattr(ds, "ReferencedSeriesSequence", []) or []}
    if refs and grid.series_uid not in refs:
        raise SegError(f"{where}: the SEG references series {', '.join(refs)}, not this one: it does not belong to "
                       "these files; give it the series it references (make the manifest again, or check "
                       "cohort.idc.seg.modality)")
    seg_for = str(ds.get("FrameOfReferenceUID", ""))
    if seg_for and grid.frame_of_reference and seg_for != grid.frame_of_reference:
        raise SegError(f"{where}: FrameOfReferenceUID {seg_for} differs from the series' {grid.frame_of_reference}: "
                       "another patient space; give it the series it references")
    kind = "LABELMAP" if str(ds.SOPClassUID) == LABELMAP_SEG_STORAGE else str(ds.get("SegmentationType", "BINARY"))
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    rows, cols = int(ds.Rows), int(ds.Columns)
    if (rows, cols) != (grid.rows, grid.columns):
        raise SegError(f"{where}: its frames are {rows} x {cols} pixels, the series' slices {grid.rows} x "
                       f"{grid.columns}: not this series' grid (another series, or a cropped SEG, which is not read); "
                       "give it the series it references")
    referenced = set(refs.get(grid.series_uid, []))
    slices, segs, off = [], [], []
    src = np.stack([plane_corners(p, grid.orientation, grid.spacing, grid.rows, grid.columns) for p in grid.positions])
    for i, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pos = _seq_item(frame, shared, "PlanePositionSequence")
        ori = _seq_item(frame, shared, "PlaneOrientationSequence")
        meas = _seq_item(frame, shared, "PixelMeasuresSequence")
        if pos is None or ori is None or meas is None or "PixelSpacing" not in meas:
            raise SegError(f"{where}: frame {i + 1} has no plane position, orientation or pixel spacing, so it cannot "
                           "be placed on the series; the SEG is damaged or not of a volume: download it again")
        for d in getattr(frame, "DerivationImageSequence", []) or []:
            referenced |= {str(s.ReferencedSOPInstanceUID) for s in getattr(d, "SourceImageSequence", []) or []}
        num = 0
        if kind != "LABELMAP":
            ident = _seq_item(frame, shared, "SegmentIdentificationSequence")
            if ident is None:
                raise SegError(f"{where}: frame {i + 1} names no segment (SegmentIdentificationSequence); the SEG is "
                               "damaged: download it again")
            num = int(ident.ReferencedSegmentNumber)
        c = plane_corners(np.array([float(v) for v in pos.ImagePositionPatient]),
                          np.array([float(v) for v in ori.ImageOrientationPatient]),
                          np.array([float(v) for v in meas.PixelSpacing]), rows, cols)
        dist = np.linalg.norm(src - c[None], axis=2).max(axis=1)   # the farthest of the three corners, per slice
        k = int(np.argmin(dist))
        if dist[k] > tolerance_mm:
            off.append((i, num, c[0], k, float(dist[k])))
        slices.append(k)
        segs.append(num)
    missing = sorted(referenced - set(grid.sop_uids))
    if missing:
        raise SegError(f"{where}: the SEG references {len(missing)} instance(s) of the series that are not among the "
                       f"{len(grid.files)} files given (e.g. {missing[0]}): the series is incomplete; download it "
                       "again (glioma-nb idc download verifies and resumes)")
    if off:
        i, num, p, k, d = off[0]
        raise SegError(f"{where}: {len(off)} of {len(slices)} frames lie on no slice of the series: frame {i + 1}"
                       f"{f' (segment {num})' if num else ''} at ({p[0]:.2f}, {p[1]:.2f}, {p[2]:.2f}) mm is {d:.3f} "
                       f"mm from the nearest slice ({Path(grid.files[k]).name}; tolerance cohort.idc.seg.tolerance_mm "
                       f"= {tolerance_mm} mm): the SEG was made on another grid; give it the series it references, "
                       "or raise the tolerance if the difference is rounding")
    texts = _segment_texts(ds)
    unknown = sorted(set(segs) - set(texts) - ({0} if kind == "LABELMAP" else set()))
    if unknown:
        raise SegError(f"{where}: frames name segment(s) {unknown}, which the SegmentSequence does not describe; the "
                       "SEG is damaged: download it again")
    return SegFrames(seg_file, grid, kind, texts, np.array(slices, int), np.array(segs, int), ds)


def read_segments(seg_file: Path, source_files: Sequence[str | Path],
                  tolerance_mm: float = TOLERANCE_MM) -> tuple[dict[int, str], dict[int, np.ndarray]]:
    """Each segment of a SEG as a boolean mask (slices, rows, columns) on its source series' grid, placed by
    :func:`place_frames`; returns (segment number -> label text, segment number -> mask)."""
    placed, masks = _read(Path(seg_file), source_files, tolerance_mm)
    return placed.texts, masks


def _read(seg_file: Path, source_files: Sequence[str | Path], tolerance_mm: float) -> tuple[SegFrames, dict[int, np.ndarray]]:
    placed = place_frames(seg_file, source_files, tolerance_mm, pixels=True)
    ds = placed.dataset
    n = len(placed.slices)
    try:
        px = np.asarray(ds.pixel_array).reshape(n, ds.Rows, ds.Columns)
    except Exception as exc:   # a short or damaged pixel data element
        raise SegError(f"SEG {seg_file}: its pixel data cannot be decoded ({type(exc).__name__}: {exc}): the file "
                       "is truncated or damaged; download it again (glioma-nb idc download resumes)") from exc
    shape = (len(placed.grid.files), placed.grid.rows, placed.grid.columns)
    masks = {num: np.zeros(shape, bool) for num in placed.texts}
    if placed.kind == "FRACTIONAL":
        on = px >= 0.5 * float(ds.get("MaximumFractionalValue", 255))
    else:
        on = px
    for i, (k, num) in enumerate(zip(placed.slices, placed.segment_of_frame)):
        if placed.kind == "LABELMAP":
            for v in np.unique(on[i]):
                if v and int(v) in masks:
                    masks[int(v)][k] |= on[i] == v
        else:
            masks[int(num)][k] |= on[i].astype(bool)
    return placed, masks


def check_seg(seg_file: Path, source_files: Sequence[str | Path], labels: Mapping[str, int] | None = None,
              overlap: str = "refuse", tolerance_mm: float = TOLERANCE_MM) -> dict[str, Any]:
    """What can be checked of a SEG without its pixels (00's discovery, per scan): it is a SEG, it references
    this series and only files given, its frames lie on the series' slices, every segment maps to a label, and
    ``overlap`` is a known rule; returns the segment -> label mapping and the frame count."""
    if overlap not in OVERLAP_RULES:
        raise SegError(f"cohort.idc.seg.overlap {overlap!r}: use one of {list(OVERLAP_RULES)}")
    placed = place_frames(seg_file, source_files, tolerance_mm)
    values = segment_values(placed.dataset, labels, where=f"SEG {seg_file}")
    return {"segments": {n: placed.texts[n] for n in sorted(placed.texts)}, "values": values,
            "frames": int(len(placed.slices)), "kind": placed.kind}


def read_seg(seg_file: Path, source_files: Sequence[str | Path], labels: Mapping[str, int] | None = None,
             overlap: str = "refuse", tolerance_mm: float = TOLERANCE_MM) -> np.ndarray:
    """The SEG as a label map (slices, rows, columns) on the grid of the source series whose files (in slice
    order, as :func:`glioma_nb.preprocess.dicom.read_series` reads them) are ``source_files``.

    Segments are mapped to label values by ``labels`` (:func:`segment_values`). Segments of different values
    that share voxels are refused (``overlap="refuse"``), naming them, or painted outermost first when they are
    nested regions (``overlap="nested"``: whole tumour, tumour core, enhancing tumour; innermost wins)."""
    if overlap not in OVERLAP_RULES:
        raise SegError(f"cohort.idc.seg.overlap {overlap!r}: use one of {list(OVERLAP_RULES)}")
    placed, masks = _read(Path(seg_file), source_files, tolerance_mm)
    texts = placed.texts
    values = segment_values(placed.dataset, labels, where=f"SEG {seg_file}")
    shape = (len(placed.grid.files), placed.grid.rows, placed.grid.columns)
    if overlap == "refuse":
        nums = sorted(masks)
        clashes = [(a, b, int((masks[a] & masks[b]).sum())) for i, a in enumerate(nums) for b in nums[i + 1:]
                   if values[a] != values[b]]
        clashes = [c for c in clashes if c[2]]
        if clashes:
            said = "; ".join(f"segments {a} '{texts[a]}' (label {values[a]}) and {b} '{texts[b]}' (label {values[b]}) "
                             f"share {n} voxels" for a, b, n in clashes)
            raise SegError(f"SEG {seg_file}: segments overlap, so they cannot be one label map: {said}; if they are "
                           "nested regions (whole tumour, tumour core, enhancing tumour) set cohort.idc.seg.overlap: "
                           "nested (innermost wins), otherwise map them to one label or leave the scan out "
                           "(cohort.exclude)")
        order = nums
    else:
        unranked = [n for n in masks if values[n] not in NESTING]
        if unranked:
            raise SegError(f"SEG {seg_file}: cohort.idc.seg.overlap is nested, but segment(s) "
                           + ", ".join(f"{n} '{texts[n]}' (label {values[n]})" for n in unranked)
                           + f" map to no nested BraTS region (labels {sorted(NESTING)}); map them to one")
        order = sorted(masks, key=lambda n: (NESTING[values[n]], n))
    out = np.zeros(shape, np.uint8)
    for num in order:
        out[masks[num]] = values[num]
    return out


# ------------------------------------------------------------------------------------------------ DICOM SEG out
# Type 2 attributes of the patient and study modules that highdicom copies from the source images: real headers
# sometimes lack them (anonymisers remove them), and an empty value is what DICOM asks for then
_TYPE2 = {"PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "", "StudyDate": "",
          "StudyTime": "", "ReferringPhysicianName": "", "StudyID": "", "AccessionNumber": ""}


SEG_COLOURS = ("red", "green", "yellow", "blue", "magenta", "cyan")   # segment display colours in order


def _writable(ds: Any) -> Any:
    """A source header as highdicom can copy it: an empty SpecificCharacterSet (the default repertoire, as
    GE CT writes it) removed, missing Type 2 patient / study attributes present and empty."""
    if "SpecificCharacterSet" in ds and not str(ds.SpecificCharacterSet or "").strip():
        del ds.SpecificCharacterSet
    for key, value in _TYPE2.items():
        if key not in ds:
            setattr(ds, key, value)
    return ds


def _share_plane_geometry(sources: list[Any], out: Path) -> None:
    """Give every source header the first one's orientation and pixel spacing where they agree within 1e-4:
    scanners write them per slice with rounding in the last digits (a GE MP-RAGE: 32 variants 6e-8 apart),
    and highdicom requires one shared value."""
    for key in ("ImageOrientationPatient", "PixelSpacing"):
        first = [float(v) for v in sources[0].get(key) or []]
        for ds in sources[1:]:
            this = [float(v) for v in ds.get(key) or []]
            if len(this) != len(first) or not np.allclose(this, first, atol=1e-4):
                raise SegError(f"{out}: the source slices of {Path(str(sources[0].filename)).parent} differ in {key} "
                               f"({first} vs {this}): not one volume; give one series' files")
            setattr(ds, key, sources[0].get(key))


def write_seg(label: np.ndarray, source_files: Sequence[str | Path], out: Path, names: Mapping[int, str],
              series_number: int = 900, description: str = "glioma-nb segmentation") -> Path:
    """Write ``label`` (slices, rows, columns on the source series' grid, files in slice order) as a DICOM SEG
    referencing the source series: one segment per value of ``names`` (value -> segment label), present or not.
    A non-zero value of ``label`` without a name is an error, never dropped."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    out = Path(out)
    unnamed = sorted(int(v) for v in np.unique(label) if v and int(v) not in names)
    if unnamed:
        raise SegError(f"{out}: label value(s) {unnamed} of the label map have no segment name (names: {dict(names)}); "
                       "name each value, or set it to 0 before writing")
    try:
        sources = [_writable(pydicom.dcmread(f)) for f in source_files]
    except Exception as exc:
        raise SegError(f"{out}: a source file of {Path(source_files[0]).parent} is not readable DICOM "
                       f"({type(exc).__name__}: {exc}); give the image series' files") from exc
    if label.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise SegError(f"{out}: label map {label.shape} does not fit its {len(sources)} source instances of "
                       f"{sources[0].Rows} x {sources[0].Columns} in {Path(source_files[0]).parent}")
    _share_plane_geometry(sources, out)
    algo = hd.AlgorithmIdentificationSequence(name="glioma-nb", version=__version__,
                                              family=codes.cid7162.ArtificialIntelligence)
    values = sorted(names)
    descs = [hd.seg.SegmentDescription(segment_number=k + 1, segment_label=names[v],
                                       segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                                       segmented_property_type=codes.SCT.Neoplasm,
                                       algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                       algorithm_identification=algo,
                                       display_color=hd.color.CIELabColor.from_string(SEG_COLOURS[k % len(SEG_COLOURS)]))
             for k, v in enumerate(values)]
    pixels = np.zeros(label.shape, np.uint8)
    for k, v in enumerate(values):
        pixels[label == v] = k + 1
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=pixels,
                              segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descs,
                              series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
                              instance_number=1, manufacturer="glioma-nb", manufacturer_model_name="glioma-nb",
                              software_versions=__version__, device_serial_number="0",
                              series_description=description, omit_empty_frames=True,
                              content_creator_name="glioma-nb^")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        seg.save_as(tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
