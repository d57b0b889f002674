"""Survival stratification: survival frames, Kaplan-Meier summaries and log-rank tests (lifelines).

Signature clustering and Cox risk models come with the stratify issue; this module already gives
the clinical-group survival overview they build on.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from glioma_nb.io import TIME_UNITS_DAYS


def survival_frame(clinical: pd.DataFrame, unit: str = "months") -> pd.DataFrame:
    """Cases with survival data: ``time`` in ``unit`` (from canonical ``os_days``) and ``event`` 0/1."""
    if unit not in TIME_UNITS_DAYS:
        raise ValueError(f"unit must be one of {sorted(TIME_UNITS_DAYS)}, got {unit!r}")
    df = clinical.copy()
    df["time"] = pd.to_numeric(df["os_days"], errors="coerce") / TIME_UNITS_DAYS[unit]
    df["event"] = pd.to_numeric(df["os_event"], errors="coerce")
    return df.dropna(subset=["time", "event"]).assign(event=lambda d: d["event"].astype(int)).reset_index(drop=True)


def km_summary(surv: pd.DataFrame, group: str | None = None, min_group: int = 2) -> pd.DataFrame:
    """Per group: n, events, median survival with 95 % CI (lifelines; NaN bound = not reached)."""
    from lifelines import KaplanMeierFitter
    from lifelines.utils import median_survival_times

    data = surv if group is None else surv.dropna(subset=[group])
    groups = [("all", data)] if group is None else [(k, g) for k, g in data.groupby(group) if len(g) >= min_group]
    rows = []
    for name, g in groups:
        kmf = KaplanMeierFitter().fit(g["time"], g["event"])
        ci = median_survival_times(kmf.confidence_interval_)
        lo, hi = (float(v) for v in np.asarray(ci).ravel()[:2])
        med = float(kmf.median_survival_time_)
        rows.append({"group": name, "n": len(g), "events": int(g["event"].sum()),
                     "median": med if np.isfinite(med) else np.nan,
                     "median_ci_low": lo if np.isfinite(lo) else np.nan,
                     "median_ci_high": hi if np.isfinite(hi) else np.nan})
    return pd.DataFrame(rows)


def logrank(surv: pd.DataFrame, group: str, min_group: int = 2) -> dict[str, float] | None:
    """Multi-group log-rank test; ``None`` when fewer than two groups have ``min_group`` cases or no events."""
    from lifelines.statistics import multivariate_logrank_test

    data = surv.dropna(subset=[group])
    sizes = data[group].value_counts()
    data = data[data[group].isin(sizes[sizes >= min_group].index)]
    if data[group].nunique() < 2 or data["event"].sum() == 0:
        return None
    res = multivariate_logrank_test(data["time"], data[group], data["event"])
    return {"test_statistic": float(res.test_statistic), "p_value": float(res.p_value),
            "degrees_of_freedom": int(res.degrees_of_freedom), "groups": int(data[group].nunique())}


def km_overview(surv: pd.DataFrame, groupings: list[str], min_group: int = 2) -> pd.DataFrame:
    """Median survival (95 % CI) per group of each grouping, with the grouping's log-rank P.

    Columns: grouping, group, n, events, median, median_ci_low, median_ci_high, logrank_p.
    The whole cohort is the first row (grouping ``all``); groupings absent from ``surv`` are skipped.
    """
    parts = [km_summary(surv).assign(grouping="all", logrank_p=np.nan)]
    for g in groupings:
        if g not in surv or surv[g].notna().sum() < min_group:
            continue
        table = km_summary(surv, g, min_group=min_group)
        if table.empty:
            continue
        test = logrank(surv, g, min_group=min_group)
        parts.append(table.assign(grouping=g, logrank_p=test["p_value"] if test else np.nan))
    out = pd.concat(parts, ignore_index=True) if len(surv) else pd.DataFrame(
        columns=["grouping", "group", "n", "events", "median", "median_ci_low", "median_ci_high", "logrank_p"])
    out["group"] = out["group"].astype(str)
    return out[["grouping", "group", "n", "events", "median", "median_ci_low", "median_ci_high", "logrank_p"]]
