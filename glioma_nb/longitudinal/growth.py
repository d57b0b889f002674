"""Growth of a tumour over serial scans: volumes, mean tumour diameter, velocity of diametric expansion.

The mean tumour diameter of a scan is MTD = (2V)^(1/3) (V the whole-tumour volume in mm^3; for an ellipsoid of
diameters D1, D2, D3, V = D1 D2 D3 / 2, so MTD is their geometric mean; Mandonnet et al., Ann Neurol 2003). A
patient's velocity of diametric expansion (VDE) is the least-squares slope of MTD over time in mm/year, with a
t-based 95% CI from two or more degrees of freedom (three or more scans); 8 mm/year separates slow from fast
growth (Pallud et al., Ann Neurol 2006). The volume doubling time is ln 2 over the slope of ln V against time.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

DAYS_PER_YEAR = 365.25
REGIONS = ("WT", "TC", "ET")


def mean_tumour_diameter(volume_ml: float | np.ndarray | pd.Series) -> np.ndarray | float:
    """MTD in mm of a whole-tumour volume in mL: (2V)^(1/3) with V in mm^3."""
    return np.cbrt(2.0 * np.asarray(volume_ml, dtype=float) * 1000.0)


def scan_table(timepoints: pd.DataFrame, volumes: pd.DataFrame, source: str) -> pd.DataFrame:
    """One row per scan: patient, days and years from the first scan, region volumes (mL) and MTD (mm).

    ``volumes`` is indexed by case id with ``WT_ml``, ``TC_ml``, ``ET_ml`` (those present); ``source`` names
    where they come from (predicted, reference). A scan without a volume keeps NaN (noted by the caller).
    """
    cols = [f"{r}_ml" for r in REGIONS if f"{r}_ml" in volumes]
    t = timepoints.merge(volumes[cols], left_on="case_id", right_index=True, how="left")
    t["years"] = t["days"] / DAYS_PER_YEAR
    t["mtd_mm"] = mean_tumour_diameter(t["WT_ml"]) if "WT_ml" in t else np.nan
    t["volumes_from"] = source
    return t.sort_values(["patient_id", "days"]).reset_index(drop=True)


def fit_growth(years: Sequence[float], mtd_mm: Sequence[float], wt_ml: Sequence[float]) -> dict[str, float]:
    """VDE (mm/year) with its 95% CI and standard error, and the volume doubling time (years), of one patient."""
    x, y, v = (np.asarray(a, dtype=float) for a in (years, mtd_mm, wt_ml))
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = dict(n_scans=int(ok.sum()), follow_up_years=float(x.max() - x.min()) if len(x) else np.nan,
               vde_mm_per_year=np.nan, vde_se=np.nan, vde_low=np.nan, vde_high=np.nan, vde_r2=np.nan,
               doubling_time_years=np.nan)
    if len(x) < 2 or np.ptp(x) == 0:
        return out
    fit = stats.linregress(x, y)
    out.update(vde_mm_per_year=float(fit.slope))
    if len(x) >= 3:
        half = float(stats.t.ppf(0.975, len(x) - 2) * fit.stderr)
        out.update(vde_se=float(fit.stderr), vde_low=float(fit.slope - half), vde_high=float(fit.slope + half),
                   vde_r2=float(fit.rvalue ** 2))
    vol = v[ok]
    pos = vol > 0
    if pos.sum() >= 2 and np.ptp(x[pos]) > 0:
        k = stats.linregress(x[pos], np.log(vol[pos])).slope
        out["doubling_time_years"] = float(np.log(2) / k) if k > 0 else np.inf
    return out


def patient_growth(scans: pd.DataFrame, until_days: pd.Series | None = None) -> pd.DataFrame:
    """Per patient (index): :func:`fit_growth` on its scans, and the baseline volumes and MTD.

    ``until_days`` (patient -> days) limits each patient's fit to the scans up to that day (e.g. the growth
    before and up to malignant transformation); patients absent from it use every scan.
    """
    rows = {}
    for pid, g in scans.groupby("patient_id", sort=True):
        g = g.sort_values("days")
        base = g.iloc[0]
        if until_days is not None and pid in until_days.index and pd.notna(until_days[pid]):
            g = g[g["days"] <= until_days[pid]]
        rows[pid] = {"baseline_case": base["case_id"], "scans_total": int(len(scans[scans["patient_id"] == pid])),
                     **{f"baseline_{r}_ml": float(base[f"{r}_ml"]) for r in REGIONS if f"{r}_ml" in base},
                     "baseline_mtd_mm": float(base["mtd_mm"]),
                     **fit_growth(g["years"], g["mtd_mm"], g.get("WT_ml", g["mtd_mm"]))}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("patient_id")


def vde_group(vde: pd.Series, cut: float = 8.0) -> pd.Series:
    """"slow" (VDE < cut) or "fast" (VDE >= cut) per patient; NaN without a VDE."""
    return pd.Series(np.where(vde.isna(), None, np.where(vde >= cut, f"fast (>= {cut:g} mm/y)",
                                                          f"slow (< {cut:g} mm/y)")), index=vde.index, dtype=object)
