"""The canonical clinical table: column names, units, and the parsing of free-text clinical values."""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np
import pandas as pd

from glioma_nb.io.qc import QCReport

TIME_UNITS_DAYS: dict[str, float] = {"days": 1.0, "months": 365.25 / 12.0, "years": 365.25}


# Canonical clinical columns (what the rest of the package relies on) and their kinds.
CLINICAL_COLUMNS: dict[str, str] = {
    "patient_id": "text",        # patient identity for patient-level splits (default: the case id)
    "site": "text",              # institution / scanner site
    "age": "number",             # years at diagnosis
    "sex": "sex",                # M | F
    "kps": "number",             # Karnofsky performance status, 0-100
    "histology": "text",         # e.g. astrocytoma, oligodendroglioma, glioblastoma
    "who_grade": "grade",        # 2 | 3 | 4
    "idh_mutant": "binary",      # 1 mutant, 0 wild-type
    "codel_1p19q": "binary",     # 1 codeleted, 0 retained
    "tertp_mutant": "binary",    # 1 mutant, 0 wild-type
    "mgmt_methylated": "binary", # 1 methylated, 0 unmethylated
    "resection": "resection",    # GTR | STR | biopsy
    "os_time": "number",         # overall survival in cohort.clinical.time_unit; stored as os_days
    "os_event": "binary",        # 1 death observed, 0 censored
}

#: what each canonical column means (the generated reference page and the CSV template, ``clinical_template``)
CLINICAL_MEANINGS: dict[str, str] = {
    "patient_id": "patient identity, for patient-level splits and the overlap guard (default: the case id)",
    "site": "institution or scanner site (site-wise validation, ComBat)",
    "age": "age in years at diagnosis",
    "sex": "sex",
    "kps": "Karnofsky performance status, 0-100",
    "histology": "histology as reported, e.g. astrocytoma, oligodendroglioma, glioblastoma",
    "who_grade": "WHO CNS grade",
    "idh_mutant": "IDH1/2 mutation",
    "codel_1p19q": "1p/19q codeletion",
    "tertp_mutant": "TERT promoter mutation",
    "mgmt_methylated": "MGMT promoter methylation",
    "resection": "extent of resection",
    "os_time": "overall survival time, in cohort.clinical.time_unit (days, months or years); stored as os_days",
    "os_event": "death observed (1) or censored (0) at os_time",
}


_BINARY_WORDS = {
    "1": 1, "1.0": 1, "true": 1, "yes": 1, "y": 1, "mutant": 1, "mut": 1, "mutated": 1, "positive": 1,
    "methylated": 1, "codeleted": 1, "codel": 1, "deceased": 1, "dead": 1,
    "0": 0, "0.0": 0, "false": 0, "no": 0, "n": 0, "wildtype": 0, "wild-type": 0, "wt": 0,
    "not_mutated": 0, "negative": 0, "unmethylated": 0, "retained": 0, "intact": 0, "non-codel": 0,
    "noncodel": 0, "alive": 0, "censored": 0,
}


_GRADE_WORDS = {"2": 2, "ii": 2, "g2": 2, "3": 3, "iii": 3, "g3": 3, "4": 4, "iv": 4, "g4": 4}


_SEX_WORDS = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}


_RESECTION_WORDS = {"gtr": "GTR", "gross total": "GTR", "total": "GTR", "str": "STR", "subtotal": "STR",
                    "partial": "STR", "biopsy": "biopsy", "bx": "biopsy"}


_MISSING = {"", "na", "n/a", "nan", "none", "null", "unknown", "not available", "[not available]", "--"}


# -------------------------------------------------------------------------------------------- clinical
def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return str(v).strip().lower() in _MISSING


def _parse(kind: str, v: Any) -> Any:
    """Canonical value of ``v`` for a column kind; raises ValueError when it cannot be understood."""
    if _is_missing(v):
        return np.nan
    s = str(v).strip()
    low = s.lower()
    if kind == "text":
        return s
    if kind == "number":
        return float(s)
    if kind == "binary":
        if low in _BINARY_WORDS:
            return _BINARY_WORDS[low]
        raise ValueError(f"{s!r} is not a binary value (1/0, yes/no, mutant/wildtype, ...)")
    if kind == "grade":
        key = re.sub(r"^(who\s*)?(grade\s*)?", "", low).replace(".0", "")
        if key in _GRADE_WORDS:
            return _GRADE_WORDS[key]
        raise ValueError(f"{s!r} is not a WHO grade (2/3/4, II/III/IV)")
    if kind == "sex":
        if low in _SEX_WORDS:
            return _SEX_WORDS[low]
        raise ValueError(f"{s!r} is not a sex (M/F, male/female)")
    if kind == "resection":
        if low in _RESECTION_WORDS:
            return _RESECTION_WORDS[low]
        raise ValueError(f"{s!r} is not an extent of resection (GTR/STR/biopsy)")
    raise ValueError(f"unknown column kind {kind}")


def accepted_values(kind: str) -> str:
    """What a column of ``kind`` (a value of ``CLINICAL_COLUMNS``) accepts, as the parser reads it."""
    words = {"binary": _BINARY_WORDS, "grade": _GRADE_WORDS, "sex": _SEX_WORDS, "resection": _RESECTION_WORDS}.get(kind)
    if words is None:
        return "a number" if kind == "number" else "any text"
    by_value: dict[Any, list[str]] = {}
    for word, value in words.items():
        by_value.setdefault(value, []).append(word)
    return "; ".join(f"{value}: {', '.join(ws)}" for value, ws in by_value.items())


def clinical_template() -> pd.DataFrame:
    """A clinical table with every canonical column (and ``case_id``), two example rows: what a cohort's
    ``clinical.file`` can be, read with ``columns`` mapping each canonical name to itself."""
    rows = [
        {"case_id": "P001", "patient_id": "P001", "site": "A", "age": 61, "sex": "F", "kps": 80,
         "histology": "glioblastoma", "who_grade": 4, "idh_mutant": 0, "codel_1p19q": "", "tertp_mutant": 1,
         "mgmt_methylated": 1, "resection": "GTR", "os_time": 14.5, "os_event": 1},
        {"case_id": "P002", "patient_id": "P002", "site": "B", "age": 38, "sex": "M", "kps": 100,
         "histology": "oligodendroglioma", "who_grade": 2, "idh_mutant": 1, "codel_1p19q": 1, "tertp_mutant": 1,
         "mgmt_methylated": "", "resection": "STR", "os_time": 60.0, "os_event": 0},
    ]
    return pd.DataFrame(rows, columns=["case_id", *CLINICAL_COLUMNS])


def molecular_subtype(idh_mutant: Any, codel: Any) -> str | float:
    """WHO-style molecular group from IDH and 1p/19q: IDHmut-codel, IDHmut-noncodel, IDHwt (or NaN)."""
    if _is_missing(idh_mutant):
        return np.nan
    if int(idh_mutant) == 0:
        return "IDHwt"
    if _is_missing(codel):
        return "IDHmut"
    return "IDHmut-codel" if int(codel) == 1 else "IDHmut-noncodel"


def standardise_clinical(raw: pd.DataFrame, c: Mapping[str, Any], report: QCReport,
                         file_label: str) -> pd.DataFrame:
    """Map a raw clinical table onto the canonical columns (see ``CLINICAL_COLUMNS``).

    Problems (unknown canonical names, missing source columns, unparseable values, duplicate ids,
    negative or missing survival times) are added to ``report``.
    """
    spec = c["clinical"]
    id_col = spec["id_column"]
    if id_col not in raw.columns:
        report.add(None, file_label, f"id column '{id_col}' not found (columns: {list(raw.columns)[:12]}...)",
                   "set cohort.clinical.id_column")
        return pd.DataFrame(columns=["case_id"])
    out = pd.DataFrame({"case_id": raw[id_col].astype(str).str.strip()})
    dups = out["case_id"][out["case_id"].duplicated()].unique().tolist()
    for d in dups:
        report.add(d, file_label, "duplicate clinical row for this id", "keep one row per case")
    for canon, src in (spec.get("columns") or {}).items():
        if canon not in CLINICAL_COLUMNS:
            report.add(None, file_label, f"unknown clinical column '{canon}' in cohort.clinical.columns",
                       f"use one of {sorted(CLINICAL_COLUMNS)}")
            continue
        values_map: Mapping[Any, Any] = {}
        if isinstance(src, Mapping) and "constant" in src:  # one value for every case (e.g. an all-GBM cohort)
            try:
                out[canon] = _parse(CLINICAL_COLUMNS[canon], src["constant"])
            except ValueError as exc:
                report.add(None, file_label, f"cohort.clinical.columns.{canon}.constant: {exc}", "fix the value")
            continue
        if isinstance(src, Mapping):
            values_map = src.get("values") or {}
            src = src.get("source")
        if src not in raw.columns:
            report.add(None, file_label, f"source column '{src}' (for {canon}) not found",
                       "fix cohort.clinical.columns to name an existing column")
            continue
        kind = CLINICAL_COLUMNS[canon]
        parsed = []
        for cid, v in zip(out["case_id"], raw[src]):
            if values_map and not _is_missing(v):
                key = str(v).strip()
                v = values_map.get(key, values_map.get(_num_key(key), v))
            try:
                parsed.append(_parse(kind, v))
            except ValueError as exc:
                report.add(cid, file_label, f"column '{src}' ({canon}): {exc}",
                           f"fix the value or map it with cohort.clinical.columns.{canon}.values")
                parsed.append(np.nan)
        out[canon] = parsed
    for col in spec.get("keep") or []:
        if col not in raw.columns:
            report.add(None, file_label, f"kept column '{col}' not found", "fix cohort.clinical.keep")
        else:
            out[col] = raw[col].values
    for canon in CLINICAL_COLUMNS:
        if canon not in out:
            out[canon] = np.nan
    out["patient_id"] = out["patient_id"].where(out["patient_id"].notna(), out["case_id"])
    if spec.get("site_from_id"):
        site = out["case_id"].str.extract(spec["site_from_id"], expand=False)
        out["site"] = out["site"].where(out["site"].notna(), site)
    unit = spec["time_unit"]
    if unit not in TIME_UNITS_DAYS:
        report.add(None, file_label, f"unknown time unit {unit!r}", f"use one of {sorted(TIME_UNITS_DAYS)}")
        unit = "days"
    out["os_days"] = pd.to_numeric(out.pop("os_time"), errors="coerce") * TIME_UNITS_DAYS[unit]
    rule = spec.get("os_event_if_time_known")
    if rule is not None:
        if (spec.get("columns") or {}).get("os_event") is not None:
            report.add(None, file_label, "cohort.clinical.os_event_if_time_known is set and so is columns.os_event",
                       "keep one: the table's event column, or the rule for a table without one")
        elif rule not in (0, 1):
            report.add(None, file_label, f"cohort.clinical.os_event_if_time_known must be 0, 1 or null, not {rule!r}",
                       "1: every patient with a survival time died; 0: all censored")
        else:
            out["os_event"] = np.where(out["os_days"].notna(), float(rule), np.nan)
    for _, r in out.iterrows():
        t, e = r["os_days"], r["os_event"]
        if pd.notna(t) and t < 0:
            report.add(r["case_id"], file_label, f"negative survival time {t:g} days",
                       "survival time must be >= 0 (check the date arithmetic)")
        if pd.isna(t) and pd.notna(e):
            report.add(r["case_id"], file_label, "survival event given but survival time missing",
                       "fill the survival time or clear the event")
        if pd.notna(t) and pd.isna(e):
            report.add(r["case_id"], file_label, "survival time given but event (death/censored) missing",
                       "fill the event column (1 death, 0 censored)")
    out["molecular_subtype"] = [molecular_subtype(i, c_) for i, c_ in zip(out["idh_mutant"], out["codel_1p19q"])]
    for col in (c for c, kind in CLINICAL_COLUMNS.items() if kind in ("grade", "binary")):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    return out.drop_duplicates("case_id").reset_index(drop=True)


def _num_key(key: str) -> Any:
    try:
        f = float(key)
    except ValueError:
        return key
    return int(f) if f.is_integer() else f
