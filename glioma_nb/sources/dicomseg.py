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
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from glioma_nb import __version__, provenance
from glioma_nb.sources.idc import IdcError

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


def _sop_uids(files: Sequence[str | Path]) -> list[str]:
    import pydicom

    return [str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            for f in files]


def segment_values(seg: Any, labels: Mapping[str, int] | None = None, where: str = "") -> dict[int, int]:
    """Segment number -> label value, by the first pattern of ``labels`` that matches the segment's label or its
    property type's meaning; a segment no pattern matches is an error naming it."""
    labels = labels or DEFAULT_SEG_LABELS
    out: dict[int, int] = {}
    for item in seg.SegmentSequence:
        num = int(item.SegmentNumber)
        text = " ".join([str(getattr(item, "SegmentLabel", "")),
                         *[str(c.CodeMeaning) for c in getattr(item, "SegmentedPropertyTypeCodeSequence", [])]])
        hit = next((int(v) for rx, v in labels.items() if re.search(rx, text, re.IGNORECASE)), None)
        if hit is None:
            raise IdcError(f"{where}: segment {num} '{text.strip()}' matches none of cohort.idc.seg.labels "
                           f"{dict(labels)}; add a pattern for it")
        out[num] = hit
    return out


def read_seg(seg_file: Path, source_files: Sequence[str | Path], labels: Mapping[str, int] | None = None) -> np.ndarray:
    """The SEG as a label map (slices, rows, columns) on the grid of the source series whose files (in slice
    order, as :func:`glioma_nb.preprocess.dicom.read_series` reads them) are ``source_files``."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_file))
    values = segment_values(seg, labels, where=f"SEG {seg_file}")
    uids = _sop_uids(source_files)
    try:
        arr = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False,
                                                assert_missing_frames_are_empty=True)
    except (ValueError, KeyError) as exc:
        raise IdcError(f"SEG {seg_file} does not fit its source series ({len(uids)} instances): {exc}") from exc
    out = np.zeros(arr.shape, np.uint8)
    for num, val in values.items():
        out[arr == num] = val
    return out


def write_seg(label: np.ndarray, source_files: Sequence[str | Path], out: Path, names: Mapping[int, str],
              series_number: int = 900, description: str = "glioma-nb segmentation") -> Path:
    """Write ``label`` (slices, rows, columns on the source series' grid, files in slice order) as a DICOM SEG
    referencing the source series: one segment per value of ``names`` (value -> segment label) present or not."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in source_files]
    if label.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise IdcError(f"label map {label.shape} does not fit its {len(sources)} source instances of "
                       f"{sources[0].Rows} x {sources[0].Columns}")
    algo = hd.AlgorithmIdentificationSequence(name="glioma-nb", version=__version__,
                                              family=codes.cid7162.ArtificialIntelligence)
    values = sorted(names)
    descs = [hd.seg.SegmentDescription(segment_number=k + 1, segment_label=names[v],
                                       segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                                       segmented_property_type=codes.SCT.Neoplasm,
                                       algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                       algorithm_identification=algo) for k, v in enumerate(values)]
    pixels = np.zeros(label.shape, np.uint8)
    for k, v in enumerate(values):
        pixels[label == v] = k + 1
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=pixels,
                              segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descs,
                              series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
                              instance_number=1, manufacturer="glioma-nb", manufacturer_model_name="glioma-nb",
                              software_versions=__version__, device_serial_number="0",
                              series_description=description, omit_empty_frames=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    seg.save_as(tmp)
    tmp.replace(out)
    return out
