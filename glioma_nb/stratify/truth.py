"""Planted truth of the synthetic cohort: does a Cox fit recover the simulated log hazard ratios, and do the
clusters follow the latent groups?"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import adjusted_rand_score

from glioma_nb.stratify.clustering import SubgroupClusters
from glioma_nb.stratify.cox import cox_design, fit_cox
from glioma_nb.stratify.survival import survival_frame


def simulated_truth(cohort_root: Any) -> dict[str, float] | None:
    """The synthetic cohort's simulated log hazard ratios (``cohort.json``), or ``None`` for real data."""
    if cohort_root is None:
        return None
    p = Path(cohort_root) / "cohort.json"
    if not p.exists():
        return None
    model = json.loads(p.read_text()).get("hazard_model") or {}
    return model.get("log_hazard_ratios")


def synthetic_truth(cohort_root: Any) -> tuple[dict[str, float] | None, pd.DataFrame | None]:
    """The synthetic cohort's simulated log hazard ratios and latent truth table (``None`` for real data)."""
    hr = simulated_truth(cohort_root)
    p = Path(cohort_root) / "truth.csv" if cohort_root is not None else None
    truth = pd.read_csv(p) if p is not None and p.exists() else None
    return hr, truth


def truth_recovery(clinical: pd.DataFrame, log_hr: dict[str, float], time_unit: str = "months") -> pd.DataFrame:
    """Multivariable Cox on the observed covariates of the simulation against the simulated log HRs.

    The latent risk group is not observed, so its effect is left out of the fit (the omission
    shrinks the other log HRs slightly towards 0: Cox models are non-collapsible).
    """
    surv = survival_frame(clinical, time_unit)
    design, _ = cox_design(surv, None, ["age", "kps", "resection", "who_grade", "idh_mutant", "codel_1p19q"])
    if {"mgmt_methylated", "idh_mutant"} <= set(surv.columns):
        design["mgmt_in_idhwt"] = pd.to_numeric(surv["mgmt_methylated"]) * (1 - pd.to_numeric(surv["idh_mutant"]))
    fit = fit_cox(surv, design, min_events_per_variable=2.0)
    names = ("age_per_10y", "kps_per_10", "gtr", "grade3", "grade4", "idh_wildtype", "codel", "mgmt_in_idhwt")
    if not len(fit.table):
        return pd.DataFrame({"covariate": list(names), "note": "; ".join(fit.notes)})
    t = fit.table.set_index("covariate")
    rows = []
    for cov in names:
        if cov not in t.index:
            continue
        true = log_hr.get(cov)
        r = t.loc[cov]
        rows.append({"covariate": cov, "simulated_log_hr": true, "estimated_log_hr": r["coef"],
                     "ci_low": r["coef_low"], "ci_high": r["coef_high"],
                     "ci_covers_truth": bool(true is not None and r["coef_low"] <= true <= r["coef_high"])})
    return pd.DataFrame(rows).assign(n=fit.n, events=fit.events)


def cluster_truth_agreement(results: dict[str, SubgroupClusters], truth: pd.DataFrame) -> pd.DataFrame:
    """Adjusted Rand index of each subgroup's clusters with the synthetic latent variables, and the
    share of the latent risk group per cluster (does the high-hazard cluster hold the risk group?)."""
    t = truth.assign(case_id=truth["case_id"].astype(str)).set_index("case_id")
    rows = []
    for name, r in results.items():
        if r.labels is None:
            continue
        tt = t.reindex(r.labels.index)
        row: dict[str, Any] = {"subgroup": name, "n": len(r.labels)}
        for col in ("risk_group", "subtype"):
            if col in tt:
                row[f"ari_{col}"] = adjusted_rand_score(tt[col].astype(str), r.labels)
        if "risk_group" in tt:
            share = tt["risk_group"].groupby(r.labels).mean()
            row["risk_group_share_by_cluster"] = "/".join(f"{v:.2f}" for v in share.to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)
