"""Words and headline tables for the reader: the sentences the notebooks show, the estimate-[CI] text tables
and the JSON-ready records of the step metrics. Low layer: it reads data frames and result objects and
computes no statistics.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

#: The seed paper's mean accuracies (MISSION.md): context beside a validation, never a like-for-like benchmark.
PAPER_ACCURACY = {"histology": {"cross-validation": 0.898, "independent test": 0.839},
                  "molecular": {"cross-validation": 0.861, "independent test": 0.804}}


def _row(metric: str, harm: str, train: Sequence[Any] = (np.nan,) * 3, val: Sequence[Any] = (np.nan,) * 3,
         n: Any = np.nan, paper_cv: Any = np.nan, paper_test: Any = np.nan, train_n: Any = np.nan) -> dict[str, Any]:
    f = lambda v: float(v) if v is not None and pd.notna(v) else np.nan  # noqa: E731
    return {"metric": metric, "harmonisation": harm, "train_cv": f(train[0]), "train_cv_lo": f(train[1]),
            "train_cv_hi": f(train[2]), "train_n": f(train_n), "validation": f(val[0]), "validation_lo": f(val[1]),
            "validation_hi": f(val[2]), "validation_n": f(n), "paper_cv": f(paper_cv), "paper_test": f(paper_test)}


#: columns of a headline table (training CV beside validation, with CIs and the paper's figures)
HEADLINE_COLUMNS: list[str] = list(_row("", "").keys())


def headline_table(*, segmentation: pd.DataFrame | None = None, chosen: pd.DataFrame | None = None,
                   accuracy: pd.DataFrame | None = None, cns5: Mapping[str, Mapping[str, Any]] | None = None,
                   cns5_train: Any = None, clusters: pd.DataFrame | None = None, risk: pd.DataFrame | None = None
                   ) -> pd.DataFrame:
    """Every headline metric of a validation: training CV (reference run) beside the validation cohort,
    with 95% CIs, and the seed paper's figure where it has one (different cohorts: context only)."""
    rows = []
    if segmentation is not None:
        for r in segmentation[segmentation["metric"] == "Dice"].itertuples():
            level = getattr(r, "level", "global")
            rows.append(_row(f"Dice {r.region}" if level != "lesion-wise" else f"lesion-wise Dice {r.region}", "none", (r.mean_train, r.ci_low_train, r.ci_high_train),
                             (r.mean_validation, r.ci_low_validation, r.ci_high_validation), r.n_validation,
                             train_n=r.n_train))
    if chosen is not None and len(chosen):
        for r in chosen.itertuples():
            rows.append(_row(f"AUC {r.node} ({r.feature_set})", r.harmonisation,
                             (r.train_cv_auc, r.train_cv_auc_lo, r.train_cv_auc_hi),
                             (getattr(r, "auc", np.nan), getattr(r, "auc_lo", np.nan), getattr(r, "auc_hi", np.nan)),
                             r.n, train_n=getattr(r, "train_cv_n", np.nan)))
    if accuracy is not None:
        for r in accuracy.itertuples():
            p = PAPER_ACCURACY.get(r.kind, {})
            rows.append(_row(f"mean accuracy, {r.kind} nodes ({r.nodes})", r.harmonisation,
                             (r.train_cv_accuracy, np.nan, np.nan), (r.validation_accuracy, np.nan, np.nan),
                             paper_cv=p.get("cross-validation"), paper_test=p.get("independent test")))
    for harm, c in (cns5 or {}).items():
        rows.append(_row(f"CNS5 diagnosis accuracy ({c['feature_set']})", harm, (cns5_train, np.nan, np.nan),
                         (c["accuracy"], c["accuracy_lo"], c["accuracy_hi"]), c["n"]))
    if risk is not None and len(risk) and "train_cv_c_harrell" in risk:
        r_ok = risk.dropna(subset=["train_cv_c_harrell"])
        if len(r_ok):
            best = r_ok.loc[r_ok.groupby("harmonisation")["train_cv_c_harrell"].idxmax()]
            for r in best.itertuples():
                rows.append(_row(f"C-index, Cox model {r.feature_set}", r.harmonisation,
                                 (r.train_cv_c_harrell, r.train_cv_c_harrell_low, r.train_cv_c_harrell_high),
                                 (getattr(r, "c_harrell", np.nan), getattr(r, "c_harrell_low", np.nan),
                                  getattr(r, "c_harrell_high", np.nan)), r.n))
                rows.append(_row(f"log-rank P, risk groups at the training median ({r.feature_set})", r.harmonisation,
                                 val=(getattr(r, "logrank_p", np.nan), np.nan, np.nan), n=r.n))
    if clusters is not None:
        for r in clusters.itertuples():
            rows.append(_row(f"log-rank P, consensus clusters of {r.subgroup}", getattr(r, "harmonisation", "none"),
                             (getattr(r, "logrank_p_train", np.nan), np.nan, np.nan),
                             (getattr(r, "logrank_p_validation", np.nan), np.nan, np.nan),
                             getattr(r, "n_cases_validation", np.nan), paper_cv=getattr(r, "paper_logrank_p", np.nan),
                             train_n=getattr(r, "n_cases_train", np.nan)))
    return _drop_empty(pd.DataFrame(rows, columns=HEADLINE_COLUMNS))


def _drop_empty(table: pd.DataFrame) -> pd.DataFrame:
    """Rows with neither a training nor a validation estimate say nothing (e.g. an empty subgroup)."""
    return table[table[["train_cv", "validation"]].notna().any(axis=1)].reset_index(drop=True)


def format_headline(table: pd.DataFrame) -> pd.DataFrame:
    """The headline table as text: estimate [95% CI], P values with 3 significant digits."""
    def fmt(v: float, lo: float, hi: float, p: bool) -> str:
        if pd.isna(v):
            return ""
        s = f"{v:.3g}" if p else f"{v:.3f}"
        return s + (f" [{lo:.3f}, {hi:.3f}]" if pd.notna(lo) and pd.notna(hi) else "")

    out = []
    for r in table.itertuples():
        p = "P" in r.metric.split(",")[0]
        out.append({**({"validation cohort": r.validation_cohort} if "validation_cohort" in table else {}),
                    "metric": r.metric, "harmonisation": r.harmonisation,
                    "training (CV)": fmt(r.train_cv, r.train_cv_lo, r.train_cv_hi, p),
                    "validation": fmt(r.validation, r.validation_lo, r.validation_hi, p),
                    "n validation": "" if pd.isna(r.validation_n) else int(r.validation_n),
                    "paper CV / test": " / ".join(f"{v:.3g}" for v in (r.paper_cv, r.paper_test) if pd.notna(v))})
    return pd.DataFrame(out)


def headline_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The headline table as JSON-ready records (NaN -> None), for metrics/05_validate.json."""
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in table.to_dict("records")]


def describe(val: Any) -> str:
    """(``val``: a :class:`glioma_nb.validate.step.ValidateResult`.) The paragraph that opens the validation section: what was applied to whom, what was left out."""
    ref = val.reference
    n_models = sum(1 for k in ref.models if k.endswith(".joblib"))
    text = (f"Locked models of the training run **{ref.run_id}** (cohort `{ref.cohort}`, commit "
            f"{ref.manifest['git']['short']}): {n_models} model files, each checked against the sha256 recorded "
            f"when the training run wrote it. Nothing was refitted on this cohort. ")
    if val.excluded:
        text += (f"\n\n**WARNING: {len(val.excluded)} patient(s) of this cohort are also in the training cohort** "
                 f"({', '.join(val.excluded)}); they are left out of every metric below.")
    else:
        text += "\n\nNo patient of this cohort was found in the training cohort (by id or by image)."
    return text


def training_note(ctx: Any) -> str:
    """What 05 says in a training run: how to validate its locked models elsewhere (an interactive 05 names its
    upstream run, which holds them)."""
    return (f"This is a training run (no `validate.reference_run`): its models in `models/` are the ones a "
            f"validation run locks. To apply them to an independent cohort:\n\n"
            f"    glioma-nb run --cohort <other cohort> --set validate.reference_run={ctx.inputs.name}\n\n"
            f"or run both cohorts in one command as a study: `make run-all COHORTS=\"{ctx.cohort.name} <other cohort>\"`.")


def classifier_table(results: pd.DataFrame) -> pd.DataFrame:
    """The locked classifiers' validation metrics as text with CIs, beside the training CV AUC."""
    if results.empty:
        return results
    def ci(r: pd.Series, m: str) -> str:
        if pd.isna(r.get(m)):
            return ""
        lo, hi = r.get(f"{m}_lo"), r.get(f"{m}_hi")
        return f"{r[m]:.2f}" + (f" [{lo:.2f}-{hi:.2f}]" if pd.notna(lo) else "")

    return pd.DataFrame({
        "node": results["node"], "feature set": results["feature_set"], "harmonisation": results["harmonisation"],
        "n (pos/neg)": [f"{r.n} ({r.n_pos}/{r.n_neg})" for r in results.itertuples()],
        "training CV AUC": [ci(r, "train_cv_auc") for _, r in results.iterrows()],
        "validation AUC": [ci(r, "auc") for _, r in results.iterrows()],
        "validation accuracy": [ci(r, "accuracy") for _, r in results.iterrows()],
        "balanced acc.": [ci(r, "balanced_accuracy") for _, r in results.iterrows()],
        "calib. slope": results.get("calibration_slope", pd.Series(np.nan, index=results.index)).round(2),
        "Brier": results.get("brier", pd.Series(np.nan, index=results.index)).round(3),
    })




def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """The per node x feature set table of the report: estimates with their 95% CIs as text."""
    if results.empty:
        return results

    def ci(r: pd.Series, m: str) -> str:
        return f"{r[m]:.2f} [{r[m + '_lo']:.2f}-{r[m + '_hi']:.2f}]"

    out = pd.DataFrame({
        "node": results["node"], "feature set": results["feature_set"],
        "n (pos/neg)": [f"{r.n} ({r.n_pos}/{r.n_neg})" for r in results.itertuples()],
        "features": results["n_features"],
        **{label: [ci(r, m) for _, r in results.iterrows()] for label, m in
           [("AUC", "auc"), ("balanced acc.", "balanced_accuracy"), ("accuracy", "accuracy"),
            ("sensitivity", "sensitivity"), ("specificity", "specificity")]},
        "calib. slope": [f"{r.calibration_slope:.2f} [{r.calibration_slope_lo:.2f}-{r.calibration_slope_hi:.2f}]"
                         if pd.notna(getattr(r, "calibration_slope_lo", np.nan)) else
                         (f"{r.calibration_slope:.2f}" if pd.notna(r.calibration_slope) else "")
                         for r in results.itertuples()],
    })
    if "perm_p" in results:
        out["permutation P (permutations)"] = [f"{p:.3f} ({int(n)})" if pd.notna(p) else "" for p, n in
                                zip(results["perm_p"], results.get("perm_n", pd.Series(np.nan, index=results.index)))]
    if "delong_vs_baseline_p" in results:
        out["ΔAUC vs baseline (DeLong P)"] = [f"{d:+.2f} ({p:.3f})" if pd.notna(p) else "" for d, p in
                                              zip(results["delong_vs_baseline_diff"], results["delong_vs_baseline_p"])]
    return out.reset_index(drop=True)


def chance_statements(results: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """Plain sentences for every node x feature set that the permutation test cannot tell from chance."""
    out = []
    if results.empty or "perm_p" not in results:
        return out
    for r in results.itertuples():
        if pd.notna(r.perm_p) and r.perm_p >= alpha:
            how = (f"; statistic: one CV at fixed hyper-parameters, AUC {r.perm_statistic:.2f}"
                   if getattr(r, "perm_method", "nested") == "fixed" else "")
            out.append(f"**{r.node} with {r.feature_set} features is near chance**: AUC {r.auc:.2f} "
                       f"[{r.auc_lo:.2f}-{r.auc_hi:.2f}], permutation P = {r.perm_p:.2f} "
                       f"({int(r.perm_n)} permutations, mean null AUC {r.perm_null_auc:.2f}{how}).")
    return out




def fit_sentence(fit: Any) -> str:
    """Markdown (``fit``: a :class:`glioma_nb.stratify.cox.CoxFit`): the fit's size, its apparent concordance when fitted, and its notes as bullets."""
    head = f"{fit.n} cases, {fit.events} events"
    head += (f"; apparent (in-sample) concordance {fit.concordance:.3f}" if len(fit.table)
             else "; no model fitted")
    return "\n".join([head + ".", *[f"- {n}" for n in fit.notes]])


def risk_table(metrics: pd.DataFrame, time_unit: str = "") -> pd.DataFrame:
    """Readable risk-model table: C-index, time-dependent AUC (td-AUC at t, in ``time_unit``, the unit of the
    survival times) and integrated Brier score (IBS; the Kaplan-Meier curve's beside it), each estimate [95% CI],
    per feature set."""
    if metrics.empty:
        return metrics
    fmt = lambda r, m: f"{r[m]:.3f} [{r[m + '_low']:.3f}-{r[m + '_high']:.3f}]"  # noqa: E731
    out = metrics[["feature_set", "variant", "n", "events", "n_features"]].copy()
    out["Harrell C"] = [fmt(r, "c_harrell") for _, r in metrics.iterrows()]
    out["Uno C"] = [fmt(r, "c_uno") for _, r in metrics.iterrows()]
    out["vs chance"] = np.where(metrics["c_harrell_low"] > 0.5, "above chance", "CI includes 0.5: no evidence of prognostic value")
    for c in [c for c in metrics.columns if c.startswith("auc_t") and not c.endswith(("_low", "_high"))] + \
            [c for c in ("ibs", "ibs_km_reference") if c in metrics]:
        t = c[5:] if c.startswith("auc_t") else ""
        label = (f"td-AUC at {float(t):g} {time_unit}".rstrip() if t else "IBS" if c == "ibs" else "IBS, KM reference")
        if f"{c}_low" in metrics:
            out[label] = [f"{r[c]:.3f} [{r[c + '_low']:.3f}-{r[c + '_high']:.3f}]" if pd.notna(r[c]) else ""
                          for _, r in metrics.iterrows()]
        else:
            out[label] = metrics[c].round(3)
    return out


def truth_summary(recovery: pd.DataFrame) -> tuple[str, int | None]:
    """A sentence on the simulated-HR check, and how many simulated log HRs the 95% CIs cover."""
    if recovery.empty:
        return "Real cohort: no simulated truth.", None
    if "ci_covers_truth" not in recovery:
        return f"The Cox model of the simulated covariates could not be fitted: {recovery['note'].iloc[0]}", None
    k = int(recovery["ci_covers_truth"].sum())
    return (f"{k} of {len(recovery)} simulated log hazard ratios lie inside the 95% CI of a Cox model of the simulated "
            f"covariates alone ({int(recovery['n'].iloc[0])} cases, {int(recovery['events'].iloc[0])} events; a check "
            "of the simulation, fitted whatever the events-per-covariate rule says of the clinical model above)."), k


def _jsonable(v: Any) -> Any:
    """A table cell as a JSON value: missing (NaN, NA, None) -> None, numpy scalars -> Python."""
    if v is None or (np.ndim(v) == 0 and pd.isna(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def cluster_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """Headline clustering numbers per subgroup for the step metrics (JSON-safe)."""
    out = {}
    for _, r in table.iterrows():
        out[r["subgroup"]] = {k: _jsonable(v) for k, v in r.items() if k in ("n_cases", "events", "k", "pac", "stability_ari",
                                                             "median_os_by_cluster", "logrank_p", "hr", "hr_adjusted")}
    return out


def risk_metrics_record(metrics: pd.DataFrame) -> dict[str, Any]:
    """C-indices (with CIs), td-AUCs and IBS per risk feature set for the step metrics (JSON-safe)."""
    out = {}
    for _, r in metrics.iterrows():
        out[r["feature_set"]] = {k: _jsonable(v) for k, v in r.items() if k != "feature_set"}
    return out


# ------------------------------------------------------------------------------- tables as a reader sees them
#: column name -> what a reader sees, for every table a notebook displays (the saved CSVs keep the names)
COLUMN_LABELS: dict[str, str] = {
    "case_id": "case", "patient_id": "patient", "node": "question", "feature_set": "feature set",
    "n_features": "features", "n": "n", "n_pos": "n positive", "n_neg": "n negative", "events": "events",
    "n_events": "events", "auc": "AUC", "auc_lo": "AUC 95% CI low", "auc_hi": "AUC 95% CI high",
    "auc_delong_lo": "AUC 95% CI low (DeLong)", "auc_delong_hi": "AUC 95% CI high (DeLong)",
    "auc_repeat_sd": "AUC SD over CV repeats", "balanced_accuracy": "balanced accuracy", "accuracy": "accuracy",
    "sensitivity": "sensitivity", "specificity": "specificity", "calibration_slope": "calibration slope",
    "calibration_intercept": "calibration intercept", "perm_p": "permutation P", "perm_n": "permutations run",
    "perm_null_auc": "mean AUC, permuted labels", "perm_method": "permutation test", "perm_statistic":
    "statistic permuted", "delong_vs_baseline_diff": "ΔAUC vs baseline", "delong_vs_baseline_p":
    "DeLong P vs baseline", "delong_n": "n (DeLong)", "hr": "HR", "hr_low": "HR 95% CI low",
    "hr_high": "HR 95% CI high", "hr_adjusted": "HR adjusted", "ph_p": "PH test P (Schoenfeld)", "p": "P",
    "logrank_p": "log-rank P", "trend_p": "trend P", "median": "median survival", "median_ci_low":
    "median 95% CI low", "median_ci_high": "median 95% CI high", "ci_low": "95% CI low", "ci_high": "95% CI high",
    "rmst": "RMST", "pac": "PAC (ambiguous clustering)", "stability_ari": "stability (ARI)", "k": "clusters (k)",
    "ibs": "integrated Brier score", "ibs_km_reference": "integrated Brier score, Kaplan-Meier reference",
    "c_harrell": "Harrell C", "c_uno": "Uno C", "covariate": "covariate", "variant": "variant", "WT_ml": "WT (ml)",
    "TC_ml": "TC (ml)", "ET_ml": "ET (ml)", "seconds": "seconds", "status": "status", "flags": "flags",
    "postprocess": "post-processing", "backend": "inference backend", "scheme": "label scheme",
    "n_cases": "cases", "cns5_accuracy": "CNS5 accuracy", "average_accuracy": "average accuracy",
    "average_balanced_accuracy": "average balanced accuracy", "prob": "probability", "y": "label",
    "vde_mm_per_year": "VDE (mm/year)", "icc": "ICC(3,1)", "feature": "feature", "reason": "reason",
    "vde_low": "VDE 95% CI low", "vde_high": "VDE 95% CI high",
    "vde_seg_low": "VDE 95% CI low, with the segmentation error", "vde_seg_high":
        "VDE 95% CI high, with the segmentation error", "vde_seg_se": "VDE SE from the segmentation error",
    "vde_group_uncertain": "VDE group could change",
}
_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"^lesion_dice_(WT|TC|ET)$", "lesion-wise Dice {}"), (r"^lesion_hd95_(WT|TC|ET)$", "lesion-wise HD95 {} (mm)"),
    (r"^dice_(WT|TC|ET)$", "Dice {}"), (r"^hd95_(WT|TC|ET)$", "HD95 {} (mm)"), (r"^nsd_(WT|TC|ET)$", "NSD {}"),
    (r"^pred_(WT|TC|ET)_ml$", "predicted {} (ml)"), (r"^ref_(WT|TC|ET)_ml$", "reference {} (ml)"),
    (r"^median_(WT|TC|ET)_ml$", "median {} (ml)"),
    # a whole column name inside: labelled in turn
    (r"^(.+)_n$", "n ({})"), (r"^(.+)_(?:lo|low)$", "{} 95% CI low"), (r"^(.+)_(?:hi|high)$", "{} 95% CI high"),
)


def column_label(name: Any) -> Any:
    """What a reader sees for a column (``COLUMN_LABELS``, then the patterns of per-region metrics, time points
    (``auc_t<t>``) and CI bounds); other snake_case names with spaces, anything else as it is."""
    if not isinstance(name, str):
        return name
    if name in COLUMN_LABELS:
        return COLUMN_LABELS[name]
    m = re.fullmatch(r"auc_t(\d+(?:\.\d+)?)", name)
    if m:
        return f"time-dependent AUC at t = {float(m.group(1)):g}"
    for pattern, text in _PATTERNS:
        m = re.match(pattern, name)
        if m:
            whole = "(.+)" in pattern
            return text.format(*[column_label(g) if whole else g for g in m.groups()])
    return name.replace("_", " ") if re.fullmatch(r"[a-z0-9_]+", name) else name


#: table name (``StepResult.tables`` / ``frames`` key) -> its caption
CAPTIONS: dict[str, str] = {
    "case_table": "The cohort's cases as this run found them: files, image geometry and the clinical values read.",
    "problems": "Every problem the cohort check found, with the file and the fix.",
    "segmentation_cases": "Per case: the model, where it ran, the tumour volumes of its mask (ml), the quality flags "
                          "and whether the mask was computed now or read back from an earlier attempt.",
    "segmentation_summary": "Segmentation metrics over the scored cases: median and 95% bootstrap CI of each metric "
                            "per region (Dice, 95th-percentile Hausdorff distance in mm, normalised surface "
                            "distance, BraTS lesion-wise metrics).",
    "segmentation_scores": "Per case and region: the BraTS metrics of the predicted mask against the reference.",
    "volumes": "Reference region volumes per case (ml).",
    "metrics": "Segmentation metrics, median [95% bootstrap CI] over the cases the weights never saw.",
    "stability_signature": "Feature stability: ICC(3,1) of each feature between the original extraction and the "
                           "perturbed ones, and whether it passed the filter.",
    "classification_results": "Every question x feature set: nested cross-validated AUC with its 95% bootstrap CI, "
                              "balanced accuracy, calibration, the permutation test P (how often permuted labels "
                              "reached the observed AUC) and DeLong's test against the baseline feature set.",
    "classification_summary": "Every question x feature set: estimate [95% bootstrap CI] of the nested cross-validated "
                              "metrics (calibration slope: Wald CI of its logistic fit). Permutation P: the share of label permutations (their number in brackets; "
                              "sequential stopping ends early once the P is clearly large) whose AUC reached the "
                              "observed one, (1 + hits) / (1 + permutations), so its smallest value is "
                              "1 / (1 + permutations). DeLong: the AUC difference to the baseline feature set on the "
                              "same patients, with its P.",
    "classification_average_accuracy": "Mean accuracy over the histological and the molecular questions "
                                       "(the seed paper's headline), with 95% bootstrap CIs.",
    "classification_nodes": "The diagnostic questions (nodes): who is eligible, the positive and negative class, "
                            "and how many labelled patients each has.",
    "classification_skipped": "Questions or feature sets not evaluated, with the reason.",
    "classification_top_features": "Features most often selected inside the cross-validation folds.",
    "cns5_predictions": "Per case: the integrated WHO CNS5 diagnosis from the predicted IDH, 1p/19q and grade "
                        "nodes, beside the true one where labelled.",
    "km_summary": "Kaplan-Meier per group: median survival with its 95% CI, restricted mean survival time (RMST) "
                  "and the log-rank test.",
    "cox_hazard_ratios": "Cox proportional-hazards model: hazard ratio per covariate with its 95% CI, P, and the "
                         "Schoenfeld-residual test of proportional hazards.",
    "cox_clinical": "Cox model of the clinical covariates alone.",
    "risk_models": "Cross-validated risk models: Harrell and Uno C-index [95% CI], time-dependent AUC and the "
                   "integrated Brier score (lower is better; the Kaplan-Meier reference beside it).",
    "clusters_summary": "Consensus clustering: per k, the proportion of ambiguous clustering (PAC; lower is "
                        "more stable), the stability (adjusted Rand index over resamples) and the group sizes.",
    "paper_comparison": "This run beside the seed paper's figures (context, not a like-for-like benchmark).",
    "validation_headline": "Training cross-validation beside independent validation: each metric with its 95% CI.",
    "headline": "Training cross-validation beside independent validation: each metric with its 95% CI.",
    "subgroups": "Each prognostic subgroup's size and deaths before anything is fitted; an empty subgroup says why.",
    "clusters_km": "Per subgroup and cluster: size, deaths, median overall survival [95% CI] and RMST.",
    "truth_recovery": "Simulated log hazard ratios of the synthetic cohort beside a Cox model of the simulated "
                      "covariates: estimate, 95% CI and whether the CI covers the truth.",
    "truth_agreement": "Clusters against the latent risk groups of the synthetic cohort (adjusted Rand index).",
    "risk_table": "Cross-validated risk models: Harrell and Uno C-index, time-dependent AUC (td-AUC at t) and the "
                  "integrated Brier score (IBS; lower is better, the Kaplan-Meier reference beside it), each estimate "
                  "[95% bootstrap CI over patients].",
    "segmentation_native": "Masks mapped back to each scan's native grid: volumes there against BraTS space.",
    "segmentation_summary_out_of_fold": "Out-of-fold segmentation metrics of the shipped model's own cross-validation.",
    "metrics_out_of_fold": "Out-of-fold segmentation metrics of the shipped model's own cross-validation.",
    "classifiers": "The locked classifiers of the training run on this cohort: AUC, accuracy and balanced accuracy "
                   "[95% bootstrap CI], calibration slope and Brier score, beside the training cross-validation.",
    "locked": "The locked models of the training run this validation applies, with their hashes.",
    "provenance": "Where each number of this validation comes from: runs, models and their hashes.",
    "run_summary": "The run's steps, their status and time.",
    "longitudinal_patients": "Per patient: scans, growth velocity (VDE) with its CI, transformation and survival.",
    "longitudinal_scans": "Per scan: date, tumour volume and mean tumour diameter.",
    "vde_recovery": "Planted against measured growth velocity (synthetic serial cohort).",
    "hazard_recovery": "Planted against estimated hazard ratios of transformation and survival (synthetic cohort).",
    "saved": "The locked models this step saved (models/), with what each was fitted on.",
    "flagged": "Cases whose predicted mask failed a sanity check, with the check (the masks are kept; look at them).",
    "feature_sets": "Cases and features in each feature set the questions are evaluated on.",
    "counts": "Features per source before and after the stability filter, with the reason for each removal.",
    "errors": "Cases whose feature extraction failed, with the error.",
}


def table_caption(df: pd.DataFrame) -> str:
    """The caption of a displayed table: ``df.attrs["caption"]``, else :data:`CAPTIONS` of its table name, else its
    name as words."""
    attrs = getattr(df, "attrs", {}) or {}
    if attrs.get("caption"):
        return str(attrs["caption"])
    name = attrs.get("table")
    if not name:
        return ""
    if name in CAPTIONS:
        return CAPTIONS[name]
    if str(name).startswith("flow_"):
        return (f"Participant flow of {name[5:]}: every case in, each left out with its reason, and those "
                "analysed.")
    return str(name).replace("_", " ").capitalize() + "."


def table_html(df: pd.DataFrame) -> str:
    """A data frame as a notebook shows it to a reader: its caption, and columns and index named in words."""
    import html as html_mod

    try:
        shown = df.rename(columns=column_label)
        if any(n is not None for n in shown.index.names):
            names = [column_label(n) for n in shown.index.names]
            shown.index = shown.index.set_names(names if shown.index.nlevels > 1 else names[0])
        body = shown._repr_html_() or ""
    except Exception:   # a display must never fail a report: the frame as pandas shows it
        return df._repr_html_() or ""
    caption = table_caption(df)
    if caption and "<table" in body:
        i = body.index(">", body.index("<table")) + 1
        body = f'{body[:i]}<caption style="caption-side: top; text-align: left">{html_mod.escape(caption)}</caption>{body[i:]}'
    return body
