"""Cox proportional-hazards fits (lifelines) that turn every 'cannot be estimated' into a note: the clinical
model, cluster hazard ratios and the table of hazard ratios."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd


# --------------------------------------------------------------------------------------------- Cox models
@dataclass
class CoxFit:
    """A lifelines Cox fit as a tidy table, or the reason there is none."""

    table: pd.DataFrame          # covariate, hr, hr_low, hr_high, p, ph_p
    n: int
    events: int
    notes: list[str] = field(default_factory=list)
    concordance: float = float("nan")


def cox_design(frame: pd.DataFrame, group: str | None, covariates: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Numeric Cox design from canonical columns: group dummies (reference = lowest level), age per
    10 years, KPS per 10 points, gross total resection, MGMT methylated, sex male, grade dummies,
    IDH wild-type, 1p/19q codeleted. Covariates absent, empty or constant are left out with a note."""
    notes: list[str] = []
    out = pd.DataFrame(index=frame.index)
    if group is not None:
        levels = sorted(frame[group].dropna().unique())
        for lv in levels[1:]:
            out[f"{group}={lv} vs {levels[0]}"] = (frame[group] == lv).astype(float).where(frame[group].notna())
    for cov in covariates:
        col = frame.get(cov)
        if col is None or col.isna().all():
            notes.append(f"{cov} is not recorded in this subgroup; not adjusted for")
            continue
        if cov == "age":
            out["age_per_10y"] = pd.to_numeric(col, errors="coerce") / 10
        elif cov == "kps":
            out["kps_per_10"] = pd.to_numeric(col, errors="coerce") / 10
        elif cov == "resection":
            out["gtr"] = (col == "GTR").astype(float).where(col.notna())
        elif cov == "sex":
            out["sex_male"] = col.map({"M": 1.0, "F": 0.0})
        elif cov == "who_grade":
            g = pd.to_numeric(col, errors="coerce")
            for lv in (3, 4):
                if (g == lv).any():
                    out[f"grade{lv}"] = (g == lv).astype(float).where(g.notna())
        elif cov == "idh_mutant":
            out["idh_wildtype"] = 1 - pd.to_numeric(col, errors="coerce")
        elif cov == "codel_1p19q":
            out["codel"] = pd.to_numeric(col, errors="coerce")
        elif cov == "mgmt_methylated":
            out["mgmt_methylated"] = pd.to_numeric(col, errors="coerce")
        else:
            out[cov] = pd.to_numeric(col, errors="coerce")
    const = [c for c in out.columns if out[c].nunique(dropna=True) < 2]
    for c in const:
        if group is None or not c.startswith(f"{group}="):
            notes.append(f"{c} does not vary in this subgroup; left out")
    return out.drop(columns=[c for c in const if group is None or not c.startswith(f"{group}=")]), notes


def fit_cox(surv: pd.DataFrame, design: pd.DataFrame, *, min_events_per_variable: float = 5.0,
            penalizer: float = 0.0) -> CoxFit:
    """Cox proportional-hazards fit (lifelines) on complete cases with the PH test (Schoenfeld, rank time).

    Refuses with a note, not a crash: no covariates, fewer events than ``min_events_per_variable`` per
    covariate, a covariate level without events (infinite HR), or a fit that does not converge.
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning
    from lifelines.statistics import proportional_hazard_test

    empty = pd.DataFrame(columns=["covariate", "hr", "hr_low", "hr_high", "p", "ph_p"])
    data = pd.concat([design, surv[["time", "event"]]], axis=1).dropna()
    notes = []
    if len(data) < len(surv):
        notes.append(f"{len(surv) - len(data)} of {len(surv)} cases lack a covariate and are left out")
    n, events = len(data), int(data["event"].sum()) if len(data) else 0
    if design.shape[1] == 0:
        return CoxFit(empty, n, events, notes + ["no covariate to fit"])
    p = design.shape[1]
    if events < min_events_per_variable * p:
        return CoxFit(empty, n, events, notes + [f"too few events for a Cox fit: {events} events for {p} covariates "
                                                 f"(need {min_events_per_variable:g} per covariate, min_events_per_variable: "
                                                 f"at least {math.ceil(min_events_per_variable * p)} events, or "
                                                 f"at most {int(events // min_events_per_variable)} covariates)"])
    for c in design.columns:
        vals = data[c].unique()
        if len(vals) <= 2:  # binary: each level needs events, else the HR runs off to 0 or infinity
            for v in vals:
                if data.loc[data[c] == v, "event"].sum() == 0:
                    return CoxFit(empty, n, events, notes + [f"no events where {c} = {v:g}: its hazard ratio is not "
                                                             "estimable (log-rank only)"])
    cph = CoxPHFitter(penalizer=penalizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            cph.fit(data, duration_col="time", event_col="event")
        except (ConvergenceError, np.linalg.LinAlgError, ValueError) as exc:
            return CoxFit(empty, n, events, notes + [f"the Cox fit did not converge ({str(exc).splitlines()[0][:160]})"])
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            notes.append(f"convergence warning: {str(w.message).splitlines()[0][:160]}")
    s = cph.summary
    table = pd.DataFrame({"covariate": s.index, "hr": s["exp(coef)"].to_numpy(),
                          "hr_low": s["exp(coef) lower 95%"].to_numpy(), "hr_high": s["exp(coef) upper 95%"].to_numpy(),
                          "coef": s["coef"].to_numpy(), "coef_low": s["coef lower 95%"].to_numpy(),
                          "coef_high": s["coef upper 95%"].to_numpy(), "p": s["p"].to_numpy()})
    wild = table.loc[(table["coef"].abs() > 10) | ~np.isfinite(table["coef_high"] - table["coef_low"]), "covariate"]
    if len(wild):
        return CoxFit(empty, n, events, notes + [f"monotone likelihood (quasi-complete separation) for "
                                                 f"{', '.join(wild)}: hazard ratio not estimable (log-rank only)"])
    try:
        ph = proportional_hazard_test(cph, data, time_transform="rank").summary["p"]
        table["ph_p"] = table["covariate"].map(ph).to_numpy(dtype=float)
        bad = table.loc[table["ph_p"] < 0.05, "covariate"].tolist()
        if bad:
            notes.append(f"proportional hazards doubtful (Schoenfeld P < 0.05) for {', '.join(bad)}")
    except Exception as exc:  # the PH test is a check; its failure must not hide the fit
        table["ph_p"] = np.nan
        notes.append(f"proportional-hazards test failed ({exc})")
    return CoxFit(table, n, events, notes, float(cph.concordance_index_))


#: covariates of the clinical Cox model (those a cohort does not record are left out with a note)
CLINICAL_COX = ("age", "sex", "kps", "who_grade", "idh_mutant", "codel_1p19q", "mgmt_methylated", "resection")


def clinical_cox(surv: pd.DataFrame, covariates: Sequence[str] = CLINICAL_COX, *,
                 min_events_per_variable: float = 5.0) -> CoxFit:
    """Multivariable Cox model of the recorded clinical and molecular covariates (with the PH test)."""
    design, notes = cox_design(surv, None, covariates)
    fit = fit_cox(surv, design, min_events_per_variable=min_events_per_variable)
    fit.notes[:0] = notes
    return fit


def hazard_table(fits: dict[str, CoxFit]) -> pd.DataFrame:
    """Rows of several Cox fits (model name -> fit) for a forest plot, with each model's n and events."""
    parts = [f.table.assign(model=name, n=f.n, events=f.events) for name, f in fits.items() if len(f.table)]
    if not parts:
        return pd.DataFrame(columns=["model", "covariate", "hr", "hr_low", "hr_high", "p", "ph_p", "n", "events"])
    return pd.concat(parts, ignore_index=True)[["model", "covariate", "hr", "hr_low", "hr_high", "p", "ph_p", "n", "events"]]
