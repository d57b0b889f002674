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


def volume_error_sd(predicted_ml: pd.Series, reference_ml: pd.Series) -> tuple[float, int]:
    """The segmentation's whole-tumour volume error as the SD of log(predicted / reference) over the scans that have
    both (> 0), and how many there were; (NaN, n) with fewer than 3."""
    both = pd.concat([predicted_ml.rename("p"), reference_ml.rename("r")], axis=1).dropna()
    both = both[(both["p"] > 0) & (both["r"] > 0)]
    if len(both) < 3:
        return float("nan"), int(len(both))
    return float(np.std(np.log(both["p"] / both["r"]), ddof=1)), int(len(both))


def vde_with_segmentation_error(scans: pd.DataFrame, pts: pd.DataFrame, sigma_log_volume: float,
                                cut: float = 8.0) -> pd.DataFrame:
    """Each patient's VDE 95% CI widened by a segmentation volume error of SD ``sigma_log_volume`` (log scale, per
    scan, independent between scans), and whether that CI crosses ``cut`` (the patient's VDE group could change).

    A volume error e on the log scale moves MTD = (2V)^(1/3) by the factor exp(e/3), about MTD (1 + e/3); the least-
    squares slope then varies by sum((t_i - t_mean)^2 (MTD_i sigma / 3)^2) / Sxx^2 (t the scan's time), added to the
    fit's own variance (t-based with three or more scans; the error alone, normal, with two)."""
    rows = {}
    for pid, g in scans.dropna(subset=["mtd_mm", "years"]).groupby("patient_id"):
        if pid not in pts.index or pd.isna(pts.at[pid, "vde_mm_per_year"]):
            continue
        g = g[g["years"] <= g["years"].min() + pts.at[pid, "follow_up_years"] + 1e-9]   # the scans of the fit
        x, mtd = g["years"].to_numpy(float), g["mtd_mm"].to_numpy(float)
        dx = x - x.mean()
        sxx = float(np.sum(dx ** 2))
        var_seg = float(np.sum(dx ** 2 * (mtd * sigma_log_volume / 3.0) ** 2) / sxx ** 2) if sxx > 0 else np.nan
        se_fit = pts.at[pid, "vde_se"]
        if len(x) >= 3 and np.isfinite(se_fit):
            half = float(stats.t.ppf(0.975, len(x) - 2) * np.sqrt(se_fit ** 2 + var_seg))
        else:
            half = float(stats.norm.ppf(0.975) * np.sqrt(var_seg))
        v = pts.at[pid, "vde_mm_per_year"]
        rows[pid] = {"vde_seg_se": float(np.sqrt(var_seg)), "vde_seg_low": v - half, "vde_seg_high": v + half,
                     "vde_group_uncertain": bool(v - half < cut <= v + half)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("patient_id")


def vde_group(vde: pd.Series, cut: float = 8.0) -> pd.Series:
    """"slow" (VDE < cut) or "fast" (VDE >= cut) per patient; NaN without a VDE."""
    return pd.Series(np.where(vde.isna(), None, np.where(vde >= cut, f"fast (>= {cut:g} mm/y)",
                                                          f"slow (< {cut:g} mm/y)")), index=vde.index, dtype=object)
