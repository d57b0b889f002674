"""A public collection of the NCI Imaging Data Commons (IDC) as a glioma-nb cohort: the manifest.

The IDC's series-level index ships as a wheel (``idc-index-data``: one row per DICOM series of every public
collection, with its S3 URL, size and instance count), so the cohort is defined offline: :func:`build_manifest`
reads that index, picks the four structural series of every scan by the rules of the cohort's ``cohort.idc``
block, names each scan after the cohort's id table, and adds the DICOM SEG series that serve as reference
labels. The manifest (one row per series, :data:`MANIFEST_COLUMNS`) is the pinned, citable definition of the
cohort: :mod:`glioma_nb.sources.download` fetches exactly its rows, and every run of the cohort records it.

The rules, in the order they are tried for each scan (the ``rule`` column says which one picked a series):

1. ``override``: the cohort's overrides table (``scan_id, modality, SeriesInstanceUID``) names the series;
2. ``pattern:<m>``: exactly one series of the scan matches modality m's pattern (``cohort.idc.series``,
   defaults :data:`glioma_nb.io.series.SERIES_PATTERNS`), repeated until nothing changes, so a series matching
   two patterns is settled once the other modality is taken;
3. ``pair``: two series left for two modalities, both matching the first one's pattern (two ``T1 MPRAGE``
   without a contrast word): the one matching ``cohort.idc.pre`` is the first modality, or else the lower
   SeriesNumber is, with the rule ``provisional:...`` saying so. The header check after download
   (:func:`glioma_nb.sources.dicomseg.check_headers`) confirms or corrects it.

A scan is the series of one patient within ``scan_gap_days`` of each other (UPenn-GBM stores one study per
series, and a few scans span two dates). Its id comes from the id table: the table's ids of a patient
(``<patient>_<visit>``) in visit order, matched to the patient's scans in date order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from glioma_nb import paths, provenance
from glioma_nb.io.cohort import source_root
from glioma_nb.io.series import SERIES_PATTERNS

MANIFEST_COLUMNS = ["scan_id", "patient_id", "study_date", "modality", "SeriesInstanceUID", "crdc_series_uuid",
                    "series_aws_url", "instance_count", "size_mb", "idc_version", "rule", "SeriesDescription",
                    "SeriesNumber", "StudyInstanceUID", "source_series"]
# report status: complete | incomplete (a structural series missing or unsettled) | absent (in the id table, not in
# the index) | not selected (cohort.idc.scans) | no reference (cohort.idc.seg.require and no such SEG)
# cohort.idc.seg: the reference SEG of each scan. series: a pattern on its SeriesDescription; modality: the series
# it references; require: a scan without one is listed, not downloaded; prefer: patterns to choose among several;
# labels: segment pattern -> BraTS label value; overlap: segments of different labels that share voxels are refused
# (refuse) or painted as nested regions, innermost wins (nested); tolerance_mm: how far a SEG frame may lie from a
# source slice (glioma_nb.sources.dicomseg)
SEG_KEYS = ("series", "modality", "require", "prefer", "labels", "overlap", "tolerance_mm")
OVERLAP_RULES = ("refuse", "nested")
REPORT_COLUMNS = ["scan_id", "patient_id", "study_date", "n_series", "status", "reason", "size_mb", "seg"]
INDEX_COLUMNS = ["collection_id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "StudyDate",
                 "Modality", "SeriesDescription", "SeriesNumber", "instanceCount", "series_size_MB",
                 "crdc_series_uuid", "series_aws_url", "aws_bucket"]
SCANS = ("baseline", "follow-up", "all")
DEFAULT_ENDPOINT = "https://s3.amazonaws.com"
ID_PATTERN = r"^(?P<patient>.+)_(?P<visit>\d+)$"   # cohort.idc.ids.pattern's default: <patient>_<visit>


class IdcError(ValueError):
    """An IDC cohort cannot be defined or fetched; the message names the cohort, the scan or series, and the fix."""


def index_version() -> int:
    """The IDC data release of the installed index (``idc-index-data`` 25.x is IDC v25)."""
    import idc_index_data

    return int(str(idc_index_data.__version__).split(".")[0])


def load_index(collection: str) -> Any:
    """The bundled index's rows of one collection (:data:`INDEX_COLUMNS`), read offline from the wheel."""
    import idc_index_data
    import pandas as pd

    df = pd.read_parquet(idc_index_data.IDC_INDEX_PARQUET_FILEPATH, columns=INDEX_COLUMNS,
                         filters=[("collection_id", "==", collection)])
    if df.empty:
        raise IdcError(f"collection {collection!r} is not in the bundled IDC index (v{index_version()}); the "
                       "collection_id is the lower-case one of https://portal.imaging.datacommons.cancer.gov "
                       "(e.g. upenn_gbm, ucsf_pdgm, tcga_lgg)")
    return df.reset_index(drop=True)


@dataclass
class IdcSpec:
    """The ``cohort.idc`` block of a cohort configuration (see ``configs/cohorts/upenn-gbm-idc.yaml``)."""

    cohort: str
    collection: str
    modalities: list[str]
    index_version: int | None = None
    include: str = ""
    strip: str = ""
    series: dict[str, str] = field(default_factory=dict)
    pre: str = r"\bpre\b"
    scan_gap_days: int = 7
    scans: str = "all"
    ids: dict[str, Any] = field(default_factory=dict)
    overrides: Path | None = None
    seg: dict[str, Any] = field(default_factory=dict)
    endpoint: str = DEFAULT_ENDPOINT

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "IdcSpec":
        c = cfg["cohort"]
        block = dict(c.get("idc") or {})
        name = c.get("name", "?")
        if not block.get("collection"):
            raise IdcError(f"cohort {name}: cohort.idc.collection is not set; name the IDC collection_id "
                           "(e.g. upenn_gbm) in configs/cohorts/<name>.yaml")
        known = set(cls.__dataclass_fields__) - {"cohort", "modalities"}
        unknown = sorted(set(block) - known)
        if unknown:
            raise IdcError(f"cohort {name}: unknown keys in cohort.idc: {unknown}; known: {sorted(known)}")
        scans = str(block.get("scans", "all"))
        if scans not in SCANS:
            raise IdcError(f"cohort {name}: cohort.idc.scans {scans!r}: use one of {list(SCANS)}")
        mods = [m for m in c.get("modalities") or [] if m in SERIES_PATTERNS]
        over = block.get("overrides")
        spec = cls(cohort=name, modalities=mods, **{k: v for k, v in block.items() if k != "overrides"})
        spec.scans = scans
        spec.series = {**SERIES_PATTERNS, **(block.get("series") or {})}
        spec.overrides = paths.resolve_path(over, base=paths.configs_dir() / "cohorts") if over else None
        seg_unknown = sorted(set(spec.seg) - set(SEG_KEYS))
        if seg_unknown:
            raise IdcError(f"cohort {name}: unknown keys in cohort.idc.seg: {seg_unknown}; known: {list(SEG_KEYS)}")
        if str(spec.seg.get("overlap", "refuse")) not in OVERLAP_RULES:
            raise IdcError(f"cohort {name}: cohort.idc.seg.overlap {spec.seg['overlap']!r}: use one of {list(OVERLAP_RULES)}")
        for key, rx in [("include", spec.include), ("strip", spec.strip), ("pre", spec.pre), *spec.series.items()]:
            try:
                re.compile(rx)
            except re.error as exc:
                raise IdcError(f"cohort {name}: cohort.idc pattern {key!r} /{rx}/ is not a regular expression: {exc}")
        return spec


def _date(text: Any) -> Any:
    import pandas as pd

    return pd.to_datetime(str(text), errors="coerce")


def _scans_of(series: Any, gap_days: int) -> Any:
    """A scan number per series: a patient's series in date order, a new scan after a gap of more than
    ``gap_days`` days."""
    s = series.sort_values(["PatientID", "date", "SeriesNumber_int", "SeriesInstanceUID"])
    gap = s.groupby("PatientID")["date"].diff().dt.days
    s["scan_no"] = (gap.fillna(0) > gap_days).groupby(s["PatientID"]).cumsum().astype(int)
    return s.reset_index(drop=True)


def _id_table(spec: IdcSpec, cfg: Mapping[str, Any]) -> Any:
    """The cohort's scan ids per patient from ``cohort.idc.ids`` (file, column, pattern, baseline), or None."""
    import pandas as pd

    ids = spec.ids
    if not ids:
        return None
    path = paths.resolve_path(ids["file"], base=source_root(cfg))
    if not path.exists():
        if ids.get("optional"):
            return None
        raise IdcError(f"cohort {spec.cohort}: the id table {paths.display_path(path)} (cohort.idc.ids.file) does "
                       "not exist; set GLIOMA_NB_SHARED or fix the path, or set cohort.idc.ids.optional: true to name "
                       "the scans from the index (<patient>_<date>, the first scan of a patient its baseline)")
    table = pd.read_csv(path, dtype=str)
    col = ids.get("column", "ID")
    if col not in table.columns:
        raise IdcError(f"cohort {spec.cohort}: the id table {path.name} has no column {col!r} (cohort.idc.ids.column); "
                       f"columns: {list(table.columns)[:8]}")
    rx = re.compile(ids.get("pattern", ID_PATTERN))
    rows = []
    for sid in table[col].dropna():
        m = rx.match(sid)
        if not m:
            raise IdcError(f"cohort {spec.cohort}: id {sid!r} of {path.name} does not match cohort.idc.ids.pattern "
                           f"/{rx.pattern}/ (named groups patient and visit)")
        rows.append({"scan_id": sid, "patient_id": m["patient"], "visit": int(m["visit"])})
    return pd.DataFrame(rows).sort_values(["patient_id", "visit"]).reset_index(drop=True)


def _load_overrides(spec: IdcSpec) -> dict[str, dict[str, str]]:
    import pandas as pd

    if spec.overrides is None:
        return {}
    if not spec.overrides.exists():
        raise IdcError(f"cohort {spec.cohort}: the overrides table {paths.display_path(spec.overrides)} "
                       "(cohort.idc.overrides) does not exist")
    t = pd.read_csv(spec.overrides, dtype=str, comment="#")
    need = {"scan_id", "modality", "SeriesInstanceUID"}
    if not need <= set(t.columns):
        raise IdcError(f"cohort {spec.cohort}: {spec.overrides.name} needs the columns {sorted(need)}")
    out: dict[str, dict[str, str]] = {}
    for r in t.itertuples():
        out.setdefault(r.scan_id, {})[r.modality] = r.SeriesInstanceUID
    return out


def assign_series(scan: Any, spec: IdcSpec, override: Mapping[str, str] | None = None
                  ) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """One series per modality of one scan (the rules of the module docstring): {modality: (row label, rule)},
    and the reasons it is incomplete ([] when complete)."""
    desc = {i: str(d) for i, d in scan["desc"].items()}
    number = scan["SeriesNumber_int"].to_dict()
    uid = scan["SeriesInstanceUID"].to_dict()
    rx = {m: re.compile(spec.series[m], re.IGNORECASE) for m in spec.modalities}
    hits = {m: {i for i, d in desc.items() if rx[m].search(d)} for m in spec.modalities}
    out: dict[str, tuple[int, str]] = {}
    reasons: list[str] = []
    for m, u in (override or {}).items():
        rows = [i for i, v in uid.items() if v == u]
        if m not in spec.modalities or len(rows) != 1:
            reasons.append(f"override {m}={u} names no series of this scan")
            continue
        out[m] = (rows[0], "override")
    changed = True
    while changed:
        changed = False
        taken = {i for i, _ in out.values()}
        for m in spec.modalities:
            if m in out:
                continue
            left = hits[m] - taken
            if len(left) == 1:
                out[m] = (left.pop(), f"pattern:{m}")
                taken = {i for i, _ in out.values()}
                changed = True
    taken = {i for i, _ in out.values()}
    todo = [m for m in spec.modalities if m not in out]
    free = [i for i in desc if i not in taken]
    if len(todo) == 2 and len(free) == 2 and all(i in hits[todo[0]] | hits[todo[1]] for i in free):
        pre = re.compile(spec.pre, re.IGNORECASE)
        marked = [i for i in free if pre.search(desc[i])]
        if len(marked) == 1:
            first = marked[0]
            out[todo[0]] = (first, f"pair:{todo[0]} is the one named /{spec.pre}/")
            out[todo[1]] = (next(i for i in free if i != first), f"pair:{todo[1]} is the other of /{spec.pre}/")
        else:
            lo, hi = sorted(free, key=lambda i: (number[i], uid[i]))
            why = (f"provisional:{'{}'} of two like series by SeriesNumber ({number[lo]} < {number[hi]}: "
                   f"{todo[0]} first); the header check after download confirms it")
            out[todo[0]] = (lo, why.format(todo[0]))
            out[todo[1]] = (hi, why.format(todo[1]))
        todo = []
    for m in todo:
        left = sorted(hits[m] - {i for i, _ in out.values()})
        if not left:
            reasons.append(f"no {m} series")
        else:
            reasons.append(f"{len(left)} candidates for {m}: " + ", ".join(f"{number[i]} '{desc[i]}'" for i in left))
    if reasons:
        reasons.append("series: " + ", ".join(f"{number[i]} '{desc[i]}'" for i in sorted(desc, key=lambda i: number[i])))
    return out, reasons


@dataclass
class Manifest:
    """:func:`build_manifest`'s answer: ``table`` (one row per selected series, :data:`MANIFEST_COLUMNS`) and
    ``report`` (one row per scan of the collection and of the id table, :data:`REPORT_COLUMNS`)."""

    cohort: str
    collection: str
    idc_version: int
    table: Any
    report: Any
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        r = self.report
        sel = r[r["status"] == "complete"]
        structural = self.table[self.table["modality"] != "seg"]
        seg = self.table[self.table["modality"] == "seg"]
        return {"cohort": self.cohort, "collection": self.collection, "idc_version": self.idc_version,
                "scans_in_index": int((r["status"] != "absent").sum()), "complete": int(len(sel)),
                "incomplete": int((r["status"] == "incomplete").sum()), "absent": int((r["status"] == "absent").sum()),
                "not_selected": int((r["status"] == "not selected").sum()),
                "no_reference": int((r["status"] == "no reference").sum()),
                "provisional_scans": int(self.table[self.table["rule"].str.startswith("provisional")]["scan_id"].nunique())
                if len(self.table) else 0,
                "series": int(len(structural)), "structural_gb": round(float(structural["size_mb"].sum()) / 1000, 2),
                "seg_series": int(len(seg)), "seg_gb": round(float(seg["size_mb"].sum()) / 1000, 3)}

    def text(self) -> str:
        s = self.summary()
        lines = [f"IDC cohort {self.cohort}: collection {self.collection}, IDC v{self.idc_version}",
                 f"  scans in the index: {s['scans_in_index']}; with their four structural series: "
                 f"{s['complete'] + s['no_reference'] + s['not_selected']}; complete (selected): {s['complete']} "
                 f"({s['provisional_scans']} with a provisional pair, settled by the header check after download); "
                 f"incomplete: {s['incomplete']}; absent from the index: {s['absent']}; not selected "
                 f"(cohort.idc.scans): {s['not_selected']}; without the required SEG: {s['no_reference']}",
                 f"  download: {s['series']} structural series, {s['structural_gb']} GB; {s['seg_series']} SEG series, "
                 f"{s['seg_gb']} GB"]
        bad = self.report[self.report["status"].isin(["incomplete", "absent"])]
        if len(bad):
            lines.append("  not complete:")
            lines += [f"    {r.scan_id}: {r.status}: {r.reason}" for r in bad.itertuples()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def build_manifest(cfg: Mapping[str, Any], index: Any = None) -> Manifest:
    """The manifest of an IDC cohort from the bundled index (``index``: its rows of the collection, for tests)."""
    import pandas as pd

    spec = IdcSpec.from_config(cfg)
    version = index_version()
    notes = []
    if spec.index_version is not None and int(spec.index_version) != version:
        notes.append(f"the config was written against IDC v{spec.index_version}; the installed index is v{version}: "
                     "series may have been added or revised since (the manifest pins what was found)")
    idx = load_index(spec.collection) if index is None else index.copy()
    idx["SeriesNumber_int"] = pd.to_numeric(idx["SeriesNumber"], errors="coerce").fillna(-1).astype(int)
    idx["date"] = idx["StudyDate"].map(_date)
    structural = idx[(idx["Modality"] == "MR")
                     & idx["SeriesDescription"].fillna("").str.contains(spec.include or ".", case=False, regex=True)].copy()
    structural["desc"] = structural["SeriesDescription"].fillna("").str.replace(spec.strip, "", regex=True).str.strip() \
        if spec.strip else structural["SeriesDescription"].fillna("")
    structural = _scans_of(structural, int(spec.scan_gap_days))
    segs = idx[(idx["Modality"] == "SEG") & idx["SeriesDescription"].fillna("").str.contains(
        spec.seg.get("series", "."), case=False, regex=True)] if spec.seg else idx.iloc[:0]
    ids = _id_table(spec, cfg)
    from_index = bool(spec.ids) and ids is None   # the id table is optional and absent: ids from the index
    if from_index:
        notes.append(f"the id table {spec.ids['file']} is not here (cohort.idc.ids.optional): scans are named "
                     "<patient>_<date> from the index, and each patient's first scan is taken as its baseline "
                     "(a patient whose only scan in the collection is a follow-up is then counted as baseline)")
    overrides = _load_overrides(spec)
    rows, report = [], []
    seen_ids: set[str] = set()
    baseline_visit = str((spec.ids or {}).get("baseline", "")) or None
    for pid, pat in structural.groupby("PatientID", sort=True):
        n_scans = int(pat["scan_no"].max()) + 1
        names: list[str | None]
        mismatch = None
        if ids is not None:
            mine = ids[ids["patient_id"] == pid]
            if len(mine) == n_scans:
                names = list(mine["scan_id"])
            else:
                names = [None] * n_scans
                mismatch = (f"the id table lists {len(mine)} scan(s) of {pid} ({', '.join(mine['scan_id']) or 'none'}), "
                            f"the index holds {n_scans} (dates {', '.join(str(d)[:10] for d in pat.groupby('scan_no')['date'].min())})")
        else:
            names = [f"{pid}_{str(d)[:10].replace('-', '')}" for d in pat.groupby("scan_no")["date"].min()]
        for k, scan in pat.groupby("scan_no"):
            sid = names[k] or f"{pid}#scan{k + 1}"
            seen_ids.add(sid)
            dates = sorted({str(d)[:10] for d in scan["date"]})
            base = {"scan_id": sid, "patient_id": pid, "study_date": dates[0], "n_series": len(scan),
                    "size_mb": round(float(scan["series_size_MB"].sum()), 2), "seg": ""}
            if mismatch:
                report.append({**base, "status": "incomplete", "reason": mismatch})
                continue
            picked, reasons = assign_series(scan, spec, overrides.get(sid))
            if reasons:
                report.append({**base, "status": "incomplete", "reason": "; ".join(reasons)})
                continue
            is_base = (k == 0) if from_index else baseline_visit is None or _visit(sid, spec) == baseline_visit
            if (spec.scans == "baseline" and not is_base) or (spec.scans == "follow-up" and is_base):
                report.append({**base, "status": "not selected", "reason": f"not a {spec.scans} scan"})
                continue
            note = f"spans {len(dates)} dates ({', '.join(dates)})" if len(dates) > 1 else ""
            for m in spec.modalities:
                i, rule = picked[m]
                rows.append(_row(scan.loc[i], sid, pid, dates[0], m, rule, version))
            seg_row, seg_reason = _seg_for(segs, scan, picked, spec, sid, pid, dates[0], version)
            if seg_row is None and spec.seg.get("require"):
                del rows[-len(spec.modalities):]
                report.append({**base, "status": "no reference", "reason": seg_reason})
                continue
            if seg_row is not None:
                rows.append(seg_row)
            report.append({**base, "status": "complete", "reason": note,
                           "size_mb": round(float(scan.loc[[i for i, _ in picked.values()], "series_size_MB"].sum()), 2),
                           "seg": seg_row["SeriesDescription"] if seg_row is not None else seg_reason})
    if ids is not None:
        in_index = set(structural["PatientID"])
        for r in ids[~ids["scan_id"].isin(seen_ids)].itertuples():
            present = r.patient_id in in_index
            report.append({"scan_id": r.scan_id, "patient_id": r.patient_id, "study_date": "", "n_series": 0,
                           "size_mb": 0.0, "seg": "", "status": "absent" if not present else "incomplete",
                           "reason": f"patient {r.patient_id} has no structural series in the IDC v{version} index"
                           if not present else "matched to no scan of the index"})
    table = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    rep = pd.DataFrame(report, columns=REPORT_COLUMNS).sort_values("scan_id").reset_index(drop=True)
    return Manifest(spec.cohort, spec.collection, version, table, rep, notes)


def _visit(scan_id: str, spec: IdcSpec) -> str | None:
    m = re.match((spec.ids or {}).get("pattern", ID_PATTERN), scan_id)
    return str(int(m["visit"])) if m else None


def _row(r: Any, sid: str, pid: str, date: str, modality: str, rule: str, version: int,
         source: str = "") -> dict[str, Any]:
    return {"scan_id": sid, "patient_id": pid, "study_date": date, "modality": modality,
            "SeriesInstanceUID": r["SeriesInstanceUID"], "crdc_series_uuid": r["crdc_series_uuid"],
            "series_aws_url": r["series_aws_url"], "instance_count": int(r["instanceCount"]),
            "size_mb": float(r["series_size_MB"]), "idc_version": version, "rule": rule,
            "SeriesDescription": r["SeriesDescription"], "SeriesNumber": str(r["SeriesNumber"]),
            "StudyInstanceUID": r["StudyInstanceUID"], "source_series": source}


def _seg_for(segs: Any, scan: Any, picked: Mapping[str, tuple[int, str]], spec: IdcSpec, sid: str, pid: str,
             date: str, version: int) -> tuple[dict[str, Any] | None, str]:
    """The scan's reference SEG (``cohort.idc.seg``) among ``segs`` (the collection's SEG series whose
    description matches ``series``): the one whose study is that of the ``modality``'s series (IDC's UPenn-GBM
    SEGs sit in their source series' study). Several matches: the first of ``prefer`` patterns that matches,
    else the lowest SeriesNumber."""
    seg = spec.seg
    if not seg:
        return None, ""
    on = seg.get("modality", spec.modalities[0])
    study_of = {m: scan.loc[i, "StudyInstanceUID"] for m, (i, _) in picked.items()}
    of_scan = segs[segs["StudyInstanceUID"].isin(list(study_of.values()))]
    cand = of_scan[of_scan["StudyInstanceUID"] == study_of[on]]
    if cand.empty and str(picked[on][1]).startswith("provisional"):
        # the provisional pair may be the wrong way round: the SEG on the pair's other series is the T1c's
        # if the header check swaps them (00 maps it through whichever modality its series turns out to be)
        other = [m for m, (_, rule) in picked.items() if m != on and str(rule).startswith("provisional")]
        cand = of_scan[of_scan["StudyInstanceUID"].isin([study_of[m] for m in other])]
    if cand.empty:
        return None, f"no SEG /{seg.get('series', '.')}/ on its {on} series"
    for rx in seg.get("prefer") or []:
        pref = cand[cand["SeriesDescription"].str.contains(rx, case=False, regex=True)]
        if len(pref):
            cand = pref
            break
    r = cand.sort_values(["SeriesNumber_int", "SeriesInstanceUID"]).iloc[0]
    src_mod = next(m for m, s in study_of.items() if s == r["StudyInstanceUID"])
    src = scan.loc[picked[src_mod][0]]
    rule = f"seg on {src_mod}" + (f" (first of {len(cand)})" if len(cand) > 1 else "") \
        + (" (provisional pair: the header check settles which it is)" if src_mod != on else "")
    return _row(r, sid, pid, date, "seg", rule, version, source=src["SeriesInstanceUID"]), ""


def write_manifest(man: Manifest, out: Path) -> tuple[Path, Path]:
    """``out`` (the manifest CSV) and ``<out stem>.report.csv`` beside it, each written atomically; an existing
    file is never overwritten (a manifest is a published definition: write a new one under a new name)."""
    out = Path(out)
    rep = out.with_name(out.stem + ".report.csv")
    for p in (out, rep):
        if p.exists():
            raise FileExistsError(f"{paths.display_path(p)} exists; a manifest is never overwritten: give another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    for frame, p in ((man.table, out), (man.report, rep)):
        tmp = p.with_name(p.name + ".tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(p)
    return out, rep


def read_manifest(path: Path) -> Any:
    """A manifest CSV written by :func:`write_manifest` (every id column as text)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise IdcError(f"manifest {paths.display_path(path)} does not exist; make it with "
                       "glioma-nb idc manifest --cohort <name> --out <file>")
    t = pd.read_csv(path, dtype={c: str for c in MANIFEST_COLUMNS if c not in ("instance_count", "size_mb", "idc_version")},
                    keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in t.columns]
    if missing:
        raise IdcError(f"{paths.display_path(path)} is not a glioma-nb IDC manifest: columns {missing} are missing")
    return t


def run_record(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a run of an IDC cohort records: the manifest its scans were downloaded from (``<root>/manifest.csv``:
    sha256, IDC version, series and scans), or the fact that none is there yet."""
    c = cfg["cohort"]
    pinned = paths.resolve_path(c["root"]) / "manifest.csv" if c.get("root") else None
    if pinned is None or not pinned.exists():
        return {"collection": (c.get("idc") or {}).get("collection"), "manifest": None}
    t = read_manifest(pinned)
    return {"collection": c["idc"].get("collection"), "manifest": paths.display_path(pinned),
            "sha256": provenance.sha256_file(pinned), "idc_version": int(t["idc_version"].iloc[0]) if len(t) else None,
            "series": int(len(t)), "scans": int(t["scan_id"].nunique())}
