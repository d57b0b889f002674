"""Notebook 04's one call: survival overview, clinical Cox model, consensus clusters per subgroup and their
survival, the planted truth of synthetic cohorts, cross-validated Coxnet risk models and the locked models,
as a :class:`StratifyResult` the notebook only displays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import matplotlib.pyplot as plt
import pandas as pd

from glioma_nb import compute, config, flow, plotting, records, reporting
from glioma_nb.io import TIME_UNITS_DAYS, features
from glioma_nb.results import StepContext, StepResult
from glioma_nb.stratify import clustering, cox, risk, survival, truth
from glioma_nb.stratify import subgroups as subgroups_mod
from glioma_nb.stratify.clustering import SubgroupClusters


@dataclass(repr=False)  # StepResult.__repr__: what the result holds, not every table
class StratifyResult(StepResult):
    """Tables, figures and model records of notebook 04 (see :class:`glioma_nb.results.StepResult`)."""

    surv: pd.DataFrame | None = None
    clusters: dict[str, SubgroupClusters] = field(default_factory=dict)
    risk_results: dict[str, risk.RiskResult] = field(default_factory=dict)
    saved: pd.DataFrame = field(default_factory=pd.DataFrame)


def method_sentence(*, cluster_method: str, k: int | None, k_max: int, n_resamples: int, subsample: float,
                    pca_variance: float, adjust_for: Sequence[str], min_events_per_variable: float, l1_ratio: float,
                    outer_splits: int, inner_splits: int, repeats: int, min_events: int,
                    horizons_years: Sequence[float], calibration_years: float, risk_split: str,
                    n_bootstrap: int) -> str:
    """This run's method in words, from its own parameters (the notebook's introduction describes it in general)."""
    ks = f"k = {k} (fixed)" if k else f"k = 2..{k_max}, the one with the lowest PAC"
    return (f"**This run.** Consensus clustering: z-score -> PCA keeping {pca_variance:.0%} of the variance -> "
            f"{'k-means' if cluster_method == 'kmeans' else cluster_method} on {n_resamples} random "
            f"{subsample:.0%} subsets, {ks}. Cox models need {min_events_per_variable:g} events per covariate "
            f"(fewer: refused, with the counts); adjusted hazard ratios for "
            f"{', '.join(adjust_for) if adjust_for else 'nothing (no adjust_for)'} where recorded. Risk models: "
            f"Coxnet with l1_ratio {l1_ratio:g}, the penalty tuned in {inner_splits} inner folds, out-of-fold risk "
            f"from {outer_splits} outer folds stratified by event, repeated with {repeats} seed(s) (averaged); a "
            f"cohort needs {min_events} events. Harrell and Uno C, time-dependent AUC at "
            f"{', '.join(f'{h:g}' for h in horizons_years)} year(s) and the integrated Brier score with "
            f"{n_bootstrap:,}-resample bootstrap 95% CIs; calibration and RMST at {calibration_years:g} years; risk "
            f"groups split at the {'median' if risk_split == 'median' else risk_split} of the out-of-fold risk.")


def step(ctx: StepContext, *, time_unit_report: str = "months", km_groups: Sequence[str] = (),
         subgroups: Sequence[str] = ("all",), cluster_features: str = "all", k: int | None = None, k_max: int = 4,
         n_resamples: int = 100, subsample: float = 0.8, pca_variance: float = 0.8, cluster_method: str = "kmeans",
         adjust_for: Sequence[str] = (), min_events_per_variable: float = 5, risk_sets: Sequence[str] = (),
         l1_ratio: float = 0.5, outer_splits: int = 5, inner_splits: int = 3, repeats: int = 3, min_events: int = 10,
         horizons_years: Sequence[float] = (1, 2, 5), calibration_years: float = 2, risk_split: str = "median",
         n_bootstrap: int = 500, compare: Sequence[str] = (), n_jobs: int = -1) -> StratifyResult:
    """Everything notebook 04 shows (parameters: ``stratify`` in ``configs/base.yaml``)."""
    seed = ctx.seed
    pairs = config.parse_pairs(list(compare), "stratify.compare")  # malformed: fail before fitting anything
    years = TIME_UNITS_DAYS["years"] / TIME_UNITS_DAYS[time_unit_report]  # one year in the reporting unit
    unit = time_unit_report
    res = StratifyResult()   # res.notes: every analysis that could not be done, with its reason
    res.text["method"] = method_sentence(
        cluster_method=cluster_method, k=k, k_max=k_max, n_resamples=n_resamples, subsample=subsample,
        pca_variance=pca_variance, adjust_for=adjust_for, min_events_per_variable=min_events_per_variable,
        l1_ratio=l1_ratio, outer_splits=outer_splits, inner_splits=inner_splits, repeats=repeats,
        min_events=min_events, horizons_years=horizons_years, calibration_years=calibration_years,
        risk_split=risk_split, n_bootstrap=n_bootstrap)
    summary, clin_hazards = _survival(ctx, res, unit, km_groups, min_events_per_variable)
    image_sources = ctx.feature_tables()
    res.tables["subgroups"] = subgroups_mod.subgroup_table(ctx.clinical, list(subgroups))
    cluster_summary = _clusters(
        ctx, res, image_sources, cluster_features, subgroups, unit=unit, k=k, k_max=k_max, n_resamples=n_resamples,
        subsample=subsample, variance=pca_variance, method=cluster_method, adjust_for=list(adjust_for),
        horizon=calibration_years * years, min_events_per_variable=min_events_per_variable, random_state=seed)
    n_recovered = _truth(ctx, res, unit)
    risk_feature_sets, risk_metrics, best = _risk_models(
        ctx, res, image_sources, risk_sets, pairs, unit=unit, horizon=calibration_years * years, risk_split=risk_split,
        l1_ratio=l1_ratio, outer_splits=outer_splits, inner_splits=inner_splits, repeats=repeats, random_state=seed,
        n_bootstrap=n_bootstrap, min_events=min_events, horizons=[h * years for h in horizons_years], n_jobs=n_jobs)
    _flow(ctx, res, risk_feature_sets, best)
    _locked_models(ctx, res, risk_feature_sets, l1_ratio=l1_ratio, inner_splits=inner_splits, random_state=seed)
    surv = res.surv
    res.metrics = dict(
        n_with_survival=len(surv), n_events=int(surv["event"].sum()),
        logrank_p={r.grouping: r.logrank_p for r in summary.drop_duplicates("grouping").itertuples()},
        clinical_cox=reporting.risk_metrics_record(clin_hazards.rename(columns={"covariate": "feature_set"})),
        clusters=reporting.cluster_metrics(cluster_summary), risk_models=reporting.risk_metrics_record(risk_metrics),
        simulated_hr_recovered=n_recovered, notes=res.notes)
    return res


# ----------------------------------------------------------------------------------- the sections of 04
def _survival(ctx: StepContext, res: StratifyResult, unit: str, km_groups: Sequence[str],
              min_events_per_variable: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Overall survival: Kaplan-Meier by each grouping, the clinical Cox model. Returns (KM summary, hazards)."""
    surv = res.surv = survival.survival_frame(ctx.clinical, unit=unit)
    res.text["survival"] = (f"{len(surv)} of {len(ctx.clinical)} cases have survival data; "
                            f"{int(surv['event'].sum())} deaths observed; survival declared in "
                            f"{ctx.config['cohort']['clinical']['time_unit']}, reported in {unit}")
    res.add_figure("km", plotting.plot_km_panels(surv, [None, *km_groups], time_unit=unit))
    summary = survival.km_overview(surv, list(km_groups))
    res.tables["km_summary"] = summary

    clin_cox = cox.clinical_cox(surv, min_events_per_variable=min_events_per_variable)
    clin_hazards = cox.hazard_table({"clinical Cox": clin_cox})
    res.tables["cox_clinical"] = clin_hazards
    res.notes += [f"clinical Cox: {n}" for n in clin_cox.notes]
    res.text["clinical_cox"] = reporting.fit_sentence(clin_cox)
    if len(clin_cox.table):   # no fit (too few events per covariate): the sentence above says why, no empty plot
        fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(clin_hazards), 2) + 1.5))
        plotting.plot_forest(clin_hazards, ax=ax, title="Clinical Cox model: hazard ratios (95% CI)")
        res.add_figure("clinical_forest", fig)
    return summary, clin_hazards


def _clusters(ctx: StepContext, res: StratifyResult, image_sources: dict[str, pd.DataFrame], cluster_features: str,
              subgroups: Sequence[str], *, unit: str, **kw: Any) -> pd.DataFrame:
    """Consensus clusters of the image features within each subgroup, their survival and Cox models
    (``kw``: :func:`clustering.cluster_subgroups`). Returns the cluster summary."""
    cluster_sets, cluster_notes = features.assemble_feature_sets(image_sources, [cluster_features])
    cluster_X = cluster_sets.get(cluster_features)
    res.notes += cluster_notes
    res.text["cluster_features"] = ("\n".join(f"- {n}" for n in cluster_notes) or
                                    f"Clustered features: **{cluster_features}** "
                                    f"({0 if cluster_X is None else cluster_X.shape[1]} columns)")
    clusters = res.clusters = clustering.cluster_subgroups(ctx.clinical, cluster_X, list(subgroups), time_unit=unit,
                                                           **kw)
    cluster_summary = clustering.cluster_table(clusters)
    res.tables["clusters_summary"] = cluster_summary
    res.add_figure("consensus", plotting.plot_consensus(clusters))
    res.add_figure("cluster_km", plotting.plot_cluster_km(clusters, time_unit=unit))
    res.tables["clusters_km"] = clustering.cluster_details(clusters)
    hazards = cox.hazard_table(clustering.cluster_cox_fits(clusters))
    res.tables["cox_hazard_ratios"] = hazards
    res.notes += clustering.cluster_notes(clusters)
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(hazards), 2) + 1.5))
    plotting.plot_forest(hazards, ax=ax, title="Cox hazard ratios of the clusters (95% CI)")
    res.add_figure("cluster_forest", fig)
    res.tables["paper_comparison"] = clustering.paper_comparison(cluster_summary)
    return cluster_summary


def _truth(ctx: StepContext, res: StratifyResult, unit: str) -> int:
    """The planted truth of a synthetic cohort against what was found; returns how many simulated HRs were recovered."""
    log_hr, latent = truth.synthetic_truth(ctx.cohort.root)
    recovery = truth.truth_recovery(ctx.clinical, log_hr, unit) if log_hr else pd.DataFrame()
    agreement = truth.cluster_truth_agreement(res.clusters, latent) if latent is not None else pd.DataFrame()
    res.text["truth"], n_recovered = reporting.truth_summary(recovery)
    res.frames.update(truth_recovery=recovery, truth_agreement=agreement)
    return n_recovered


def _risk_models(ctx: StepContext, res: StratifyResult, image_sources: dict[str, pd.DataFrame],
                 risk_sets: Sequence[str], pairs: list[tuple[str, str]], *, unit: str, horizon: float,
                 risk_split: str, random_state: int, n_bootstrap: int, **kw: Any
                 ) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, risk.RiskResult | None]:
    """Cross-validated penalised Cox risk models of each feature set (``kw``: :func:`risk.evaluate_risk_models`),
    their paired comparisons, and the best one's risk groups and calibration. Returns (feature sets, metrics, best)."""
    surv_by_case = res.surv.set_index("case_id")
    risk_sources = risk.survival_sources(ctx.clinical, image_sources)
    risk_feature_sets, risk_notes = features.assemble_feature_sets(risk_sources, list(risk_sets))
    with getattr(ctx, "executor", compute.SERIAL).joblib():   # compute.executor: the folds on its Dask workers
        risk_results, risk_metrics, fit_notes = risk.evaluate_risk_models(
            risk_feature_sets, surv_by_case, random_state=random_state, n_bootstrap=n_bootstrap, **kw)
    res.risk_results = risk_results
    res.notes += risk_notes + fit_notes
    res.text["risk_notes"] = "\n".join(f"- {n}" for n in risk_notes + fit_notes)
    res.tables.update(risk_models=risk_metrics, risk_oof=risk.oof_table(risk_results))
    if pairs:
        res.tables["risk_comparisons"] = survival.compare_risks(
            {n: r.oof for n, r in risk_results.items()}, pairs, n_bootstrap=n_bootstrap, random_state=random_state)
    res.frames["risk_table"] = reporting.risk_table(risk_metrics, unit)
    best = risk.best_risk_model(risk_results, risk_metrics)
    res.text["best_risk"] = (f"Risk groups and calibration below use **{best.name}** (highest Harrell C)." if best
                             else "No risk model could be fitted: see the notes above.")
    if best is not None:
        groups, lr = risk.risk_group_frame(best, risk_split)
        res.add_figure("risk_groups", plotting.plot_risk_panels(
            groups, risk.survival_calibration(best, horizon), name=best.name, logrank_p=lr, split=risk_split,
            horizon=horizon, time_unit=unit))
    else:
        res.add_figure("risk_groups", plotting.plot_risk_panels(None))
    return risk_feature_sets, risk_metrics, best


def _flow(ctx: StepContext, res: StratifyResult, risk_feature_sets: dict[str, pd.DataFrame],
          best: risk.RiskResult | None) -> None:
    """The participant flow of 04: who has overall survival, and who the best risk model could score."""
    surv = res.surv
    cases = ctx.clinical["case_id"].astype(str)
    with_os = set(surv["case_id"].astype(str))
    no_os = [c for c in cases if c not in with_os]
    os_reason = "no overall survival (time or status missing)"
    flows = [flow.analysis_flow("04 overall survival (Kaplan-Meier)", cases, [(os_reason, no_os)],
                                surv["case_id"])]
    if best is not None:
        with_features = set(risk_feature_sets[best.name].index.astype(str))
        flows.append(flow.analysis_flow(
            f"04 overall survival risk model ({best.name})", cases,
            [(os_reason, no_os), (f"no {best.name} features", [c for c in cases if c not in with_features])],
            best.oof.index))
    res.tables["flow_04_stratify"] = flow.combine(*flows)
    res.add_figure("flow", plotting.plot_flow(res.tables["flow_04_stratify"]))


def _locked_models(ctx: StepContext, res: StratifyResult, risk_feature_sets: dict[str, pd.DataFrame], *,
                   l1_ratio: float, inner_splits: int, random_state: int) -> None:
    """Locked models for other cohorts: every clustering, and each risk model refitted on all cases."""
    surv_by_case = res.surv.set_index("case_id")
    saved = []
    for name, r in res.clusters.items():
        if r.model is None:
            continue
        rec = records.make("clusters", f"clusters__{records.safe_name(name)}", r.model,
                           features=list(r.model.feature_names_in_), subgroup=r.subgroup.name,
                           query=r.subgroup.query, k=r.model.best_k_, labels=r.labels, cohort=ctx.cohort.name)
        res.models[rec.name] = rec
        saved.append({"model": f"{rec.name}.joblib", "kind": "consensus clusters", "subgroup": name,
                      "k": r.model.best_k_, "features": len(r.model.feature_names_in_)})
    for name in res.risk_results:
        X = risk_feature_sets[name].loc[lambda d: d.index.isin(surv_by_case.index)]
        rec = risk.final_risk_record(X, surv_by_case, name=f"risk__{records.safe_name(name)}", feature_set=name,
                                     cohort=ctx.cohort.name, cv_metrics=res.risk_results[name].metrics,
                                     l1_ratio=l1_ratio, inner_splits=inner_splits, random_state=random_state)
        res.models[rec.name] = rec
        saved.append({"model": f"{rec.name}.joblib", "kind": "Coxnet risk model", "subgroup": "all", "k": "",
                      "features": len(rec.features)})
    res.saved = pd.DataFrame(saved)
    res.saved.attrs["table"] = "saved"
