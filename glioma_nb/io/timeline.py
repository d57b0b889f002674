"""Serial scans: the ``cohort.timepoints`` table (one row per scan of each patient) and its QC.

Each scan is a case of the cohort as any other (its own folder, images and label map); the timepoints table
says whose scan it is and when it was taken: ``patient_id``, ``case_id`` (the scan), ``days`` from the patient's
first scan, and optionally ``visit`` (the scan's order), ``surgery_days`` (days from the first scan to an
operation) and per-scan labels (e.g. ``grade``: the histological grade of a re-operation). Columns are mapped
with ``cohort.timepoints.columns`` (canonical name -> column of the file), as the clinical table's are.

:func:`read_timepoints` collects every timeline problem into the cohort's :class:`QCReport`, each naming the
scan, the file and the fix: a scan without images or images without a scan row, a scan listed twice, two scans
of one patient on the same day, a follow-up dated before the baseline (negative days), a patient whose first scan
is not at day 0, visits out of date order, a patient given a different id in the clinical table (errors: the
run is refused), and a patient with one scan (a warning: no growth rate, the patient stays in the baseline
analyses).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from glioma_nb import paths
from glioma_nb.io.qc import QCReport

#: canonical columns of a timepoints table; the first three are required
TIMEPOINT_COLUMNS: tuple[str, ...] = ("patient_id", "case_id", "days", "visit", "surgery_days")
REQUIRED = TIMEPOINT_COLUMNS[:3]


def has_timepoints(cohort_cfg: Mapping[str, Any]) -> bool:
    """Whether a cohort declares serial scans (``cohort.timepoints.file``)."""
    return bool((cohort_cfg.get("timepoints") or {}).get("file"))


def read_timepoints(cohort_cfg: Mapping[str, Any], root: Path, case_ids: Sequence[str], report: QCReport,
                    clinical: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """The timepoints table of a cohort with serial scans, checked against its cases; ``None`` without one.

    Returns one row per scan with the canonical columns (``days`` as float, sorted by patient and days) plus
    the file's other columns (per-scan labels); every problem goes to ``report``.
    """
    spec = cohort_cfg.get("timepoints") or {}
    if not spec.get("file"):
        return None
    path = paths.resolve_path(spec["file"], base=root)
    label = report.show(path)
    raw = report.read_csv(path, "timepoints table", "cohort.timepoints.file")
    if raw is None:
        return None
    mapping = {c: (spec.get("columns") or {}).get(c, c) for c in TIMEPOINT_COLUMNS}
    missing = [f"{c} (column {mapping[c]!r})" for c in REQUIRED if mapping[c] not in raw.columns]
    if missing:
        report.add(None, label, f"timepoints table lacks {', '.join(missing)}",
                   "add the column, or map it with cohort.timepoints.columns")
        return None
    tp = raw.rename(columns={v: k for k, v in mapping.items() if v in raw.columns})
    for c in ("patient_id", "case_id"):
        tp[c] = tp[c].astype(str).str.strip()
    days = pd.to_numeric(tp["days"].str.strip(), errors="coerce")
    for cid in tp.loc[days.isna(), "case_id"]:
        report.add(cid, label, f"scan has no number of days ({mapping['days']!r} is empty or not a number)",
                   "give the days from the patient's first scan (0 for the first)")
    tp["days"] = days
    for c in ("visit", "surgery_days"):
        if c in tp:
            tp[c] = pd.to_numeric(tp[c].str.strip(), errors="coerce")
    # scans against the cohort's cases
    have = set(case_ids)
    listed = set(tp["case_id"])
    for cid in sorted(listed - have):
        report.add(cid, label, "scan listed in the timepoints table has no images",
                   "remove the row, or add the scan's folder")
    for cid in sorted(have - listed):
        report.add(cid, label, "case has images but no row in the timepoints table",
                   "add the scan (patient_id, days from the patient's first scan)")
    dup = tp["case_id"].duplicated(keep=False)
    for cid in sorted(set(tp.loc[dup, "case_id"])):
        report.add(cid, label, "scan listed more than once in the timepoints table", "keep one row per scan")
    tp = tp.loc[~tp["case_id"].duplicated()].copy()
    ok = tp["days"].notna()
    same_day = tp[ok].duplicated(["patient_id", "days"], keep=False)
    for (pid, d), g in tp[ok][same_day].groupby(["patient_id", "days"]):
        report.add(", ".join(g["case_id"]), label, f"patient {pid} has {len(g)} scans on day {d:g} (duplicate scans)",
                   "keep one scan per date (the one the analysis should use) or correct the days")
    for cid, d, pid in tp.loc[ok & (tp["days"] < 0), ["case_id", "days", "patient_id"]].itertuples(index=False):
        report.add(cid, label, f"follow-up of patient {pid} dated before the baseline (days = {d:g})",
                   "days count from the patient's first scan: correct the dates (the first scan is day 0)")
    for pid, g in tp[ok].groupby("patient_id"):
        first = g["days"].min()
        if first > 0:
            report.add(g.loc[g["days"].idxmin(), "case_id"], label,
                       f"patient {pid}'s first scan is at day {first:g}, not 0",
                       "days count from the patient's first scan: subtract the baseline date")
        if "visit" in g and g["visit"].notna().all():
            by_visit = g.sort_values("visit")["days"].to_numpy()
            if (np.diff(by_visit) <= 0).any():
                report.add(", ".join(g.sort_values("visit")["case_id"]), label,
                           f"patient {pid}'s visits are not in date order (days by visit: "
                           f"{', '.join(f'{v:g}' for v in by_visit)})", "correct the visit numbers or the days")
        if len(g) == 1:
            report.add(g["case_id"].iloc[0], label, f"patient {pid} has a single scan: no growth rate",
                       "nothing to do if there is no follow-up; the patient stays in the baseline analyses",
                       "warning")
    declared = ((cohort_cfg.get("clinical") or {}).get("columns") or {}).get("patient_id")
    if declared and clinical is not None and "patient_id" in clinical:   # else the clinical table's is the case id
        clin = clinical.set_index("case_id")["patient_id"].astype(str)
        for cid, pid in tp[["case_id", "patient_id"]].itertuples(index=False):
            if cid in clin.index and clin[cid] not in ("", "nan", pid):
                report.add(cid, label, f"scan belongs to patient {pid} in the timepoints table but to {clin[cid]} "
                           "in the clinical table", "give the scan one patient id in both tables")
    return tp.sort_values(["patient_id", "days", "case_id"]).reset_index(drop=True)
