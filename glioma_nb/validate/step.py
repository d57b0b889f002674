"""Notebook 05's one call: :func:`step` applies a reference run's locked models to this run's cohort and
returns a :class:`ValidateResult` whose tables and figures the notebook only displays."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from glioma_nb import flow, io, plotting, reporting, runs
from glioma_nb.results import StepContext, StepResult
from glioma_nb.classify.nodes import node_flow
from glioma_nb.runs import Reference
from glioma_nb.segment import metrics as seg_metrics
from glioma_nb.stratify.survival import survival_frame
from glioma_nb.validate.apply import (
    apply_classifiers,
    apply_clusters,
    apply_risk_models,
    average_accuracy,
    cluster_comparison,
    cns5_validation,
    scored_diagnoses,
    segmentation_comparison,
    training_choice,
    validation_calibration_curves,
    validation_roc_curves,
    validation_sources,
)
from glioma_nb.validate.harmonise import (
    IMAGE_SOURCES,
    harmonised_sources,
    shift_summary,
    shift_table,
)


# ------------------------------------------------------------------------------------------- the 05 step
@dataclass
class Validation:
    """The locked models of a reference run applied to a validation cohort (see :func:`validate_locked`)."""

    reference: Reference
    overlap: pd.DataFrame
    locked: pd.DataFrame
    segmentation: pd.DataFrame
    shift: dict[tuple[str, str], pd.DataFrame]
    shift_summary: pd.DataFrame
    sources: dict[str, dict[str, pd.DataFrame]]          # harmonisation -> source -> table
    classifiers: pd.DataFrame
    predictions: pd.DataFrame
    chosen: pd.DataFrame
    accuracy: pd.DataFrame
    cns5: dict[str, dict[str, Any]]
    cns5_cases: pd.DataFrame
    clusters: dict[str, dict[str, Any]]                   # harmonisation -> subgroup -> SubgroupClusters
    cluster_comparison: pd.DataFrame
    risk: pd.DataFrame
    risks: pd.DataFrame
    headline: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def excluded(self) -> list[str]:
        return sorted(set(self.overlap["validation_case"].astype(str)))

    def cns5_scored(self, harmonisation: str = "none") -> pd.DataFrame:
        """Predicted and true CNS5 diagnoses of the cases the accuracy of ``harmonisation`` is scored on."""
        if self.cns5_cases.empty:
            return self.cns5_cases
        c = self.cns5_cases[self.cns5_cases["harmonisation"] == harmonisation].set_index("case_id")
        return scored_diagnoses(c, self.excluded)


def validate_locked(ctx: Any, reference_run: str, harmonisation: Sequence[str] = ("none", "combat"),
                  n_bootstrap: int = 1000, progress: bool = True) -> Validation:
    """Apply the reference run's locked models to this run's cohort (notebook 05 of a validation run)."""
    bad = [h for h in harmonisation if h not in ("none", "combat")]
    if bad or "none" not in harmonisation:
        raise ValueError(f"validate.harmonisation must list none (always reported) and optionally combat, got {list(harmonisation)}")
    ref = runs.load_reference(reference_run)
    seed = ctx.seed
    notes = list(ref.notes)
    overlap = runs.read_table(ctx.run_dir, "overlap", "qc", dtype={"validation_case": str, "training_case": str})
    if overlap is None:
        overlap = pd.DataFrame(columns=["validation_case", "training_case", "patient_id", "by"])
    locked = runs.read_table(ctx.run_dir, "locked_settings", "qc")
    locked = pd.DataFrame() if locked is None else locked
    notes += (runs.load_manifest(ctx.run_dir).get("reference") or {}).get("overlap_notes", [])
    exclude = set(overlap["validation_case"].astype(str))
    unit = ctx.config["stratify"]["time_unit_report"]
    years = io.TIME_UNITS_DAYS["years"] / io.TIME_UNITS_DAYS[unit]
    horizon = float(ctx.config["stratify"]["calibration_years"]) * years

    scores = runs.read_table(ctx.inputs, "segmentation_scores")
    if scores is not None:  # per case; cases the segmentation weights were trained on are not scored
        if "trained_on" in scores:
            n_tr = int(scores["trained_on"].sum())
            if n_tr:
                notes.append(f"segmentation: {n_tr} validation cases were in the segmentation model's training "
                             "data; their Dice is left out")
            scores = scores[~scores["trained_on"].astype(bool)]
        scores = scores[["case_id", *seg_metrics.score_columns(scores.columns)]]
    segmentation = segmentation_comparison(ref, scores, exclude=exclude, random_state=seed)

    tables = ctx.feature_tables()
    train_tables = ref.feature_tables()
    batch = ctx.clinical.set_index("case_id")["site"] if "site" in ctx.clinical else None
    sources: dict[str, dict[str, pd.DataFrame]] = {"none": dict(tables)}
    if "combat" in harmonisation:
        sources["combat"], _, hn = harmonised_sources(ref, tables, batch)
        notes += [f"ComBat: {n}" for n in hn]
    shift = {}
    for harm, src in sources.items():
        for name, X in src.items():
            if name in train_tables and name in IMAGE_SOURCES:
                shift[(name, harm)] = shift_table(train_tables[name], X.drop(index=list(exclude & set(X.index))))
    results, preds, cns5, cns5_cases, clusters, comps, risks, risk_rows = [], [], {}, [], {}, [], [], []
    diag_fs = ctx.config["classify"]["diagnosis_features"]
    for harm, src in sources.items():
        cs = validation_sources(ctx.clinical, src)
        r, p, n = apply_classifiers(ref, cs, ctx.clinical, exclude=exclude, n_bootstrap=n_bootstrap,
                                    random_state=seed, harmonisation=harm)
        results.append(r)
        preds.append(p)
        notes += [f"[{harm}] {x}" for x in n] if harm == "none" else []
        if len(p) and diag_fs in set(p["feature_set"]):
            cases, cns5[harm] = cns5_validation(ref, p, ctx.clinical, diag_fs, exclude=exclude,
                                                n_bootstrap=n_bootstrap, random_state=seed)
            cns5_cases.append(cases.rename_axis("case_id").reset_index().assign(harmonisation=harm))
        clusters[harm], n = apply_clusters(ref, src, ctx.clinical, exclude=exclude, time_unit=unit, horizon=horizon)
        notes += [f"[{harm}] clusters {x}" for x in n]
        comps.append(cluster_comparison(ref, clusters[harm]).assign(harmonisation=harm))
        rm, rk, n = apply_risk_models(ref, src, ctx.clinical, exclude=exclude, time_unit=unit,
                                      n_bootstrap=min(n_bootstrap, 500), random_state=seed, harmonisation=harm)
        risk_rows.append(rm), risks.append(rk)
        notes += [f"[{harm}] {x}" for x in n] if harm == "none" else []
    classifiers = pd.concat(results, ignore_index=True) if any(len(r) for r in results) else pd.DataFrame()
    predictions = pd.concat(preds, ignore_index=True)
    chosen = training_choice(classifiers) if len(classifiers) else pd.DataFrame()
    accuracy = average_accuracy(chosen)
    risk = pd.concat(risk_rows, ignore_index=True) if any(len(r) for r in risk_rows) else pd.DataFrame()
    comparison = pd.concat(comps, ignore_index=True)
    cns5_train = ref.metrics("03_classify").get("cns5_accuracy")
    head = reporting.headline_table(segmentation=segmentation, chosen=chosen, accuracy=accuracy, cns5=cns5,
                          cns5_train=cns5_train, clusters=comparison, risk=risk)
    return Validation(ref, overlap, locked, segmentation, shift, shift_summary(shift), sources, classifiers,
                            predictions, chosen, accuracy, cns5,
                            pd.concat(cns5_cases, ignore_index=True) if cns5_cases else pd.DataFrame(),
                            clusters, comparison, risk, pd.concat(risks, ignore_index=True), head, notes)


def shift_long(val: Validation) -> pd.DataFrame:
    """Every shift table in one (source, harmonisation, feature, ...) table."""
    parts = [t.assign(source=s, harmonisation=h) for (s, h), t in val.shift.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def most_shifted_source(val: Validation) -> str | None:
    """The image table with the largest median |SMD| before harmonisation."""
    if val.shift_summary.empty:   # no image table to compare (e.g. location features only: atlas space)
        return None
    s = val.shift_summary[val.shift_summary["harmonisation"] == "none"].dropna(subset=["median_abs_smd"])
    return None if s.empty else str(s.sort_values("median_abs_smd").iloc[-1]["source"])


def risk_groups_frame(val: Validation, harmonisation: str = "none") -> tuple[pd.DataFrame, str | None]:
    """Validation cases of the training-best Cox model with their risk group (cut at the training
    median): the data of the risk-group Kaplan-Meier plot, and the model's name."""
    r = val.risk
    if r.empty or "train_cv_c_harrell" not in r or r["train_cv_c_harrell"].isna().all():
        return pd.DataFrame(), None
    rr = r[r["harmonisation"] == harmonisation].dropna(subset=["train_cv_c_harrell"])
    if rr.empty:
        return pd.DataFrame(), None
    fs = rr.sort_values("train_cv_c_harrell").iloc[-1]["feature_set"]
    d = val.risks[(val.risks["feature_set"] == fs) & (val.risks["harmonisation"] == harmonisation)]
    d = d.assign(risk_group=np.where(d["risk"] > d["training_median_risk"], "high", "low"))
    return d, fs


def validation_flows(val: Validation, clinical: pd.DataFrame) -> pd.DataFrame:
    """The participant flow of the locked models on this cohort (no harmonisation): per node its training-chosen
    feature set, and each locked risk model; the overlap guard's cases are the first exclusion of every one."""
    overlap = [("also in the training cohort (overlap guard)", val.excluded)]
    parts = []
    preds = val.predictions
    chosen = val.chosen[val.chosen["harmonisation"] == "none"] if len(val.chosen) else val.chosen
    for r in chosen.itertuples():
        p = preds[(preds["node"] == r.node) & (preds["feature_set"] == r.feature_set) & (preds["harmonisation"] == "none")]
        parts.append(node_flow(f"05 {r.node} ({r.feature_set}, locked)", clinical, r.node, r.feature_set,
                               p["case_id"], p.loc[p["scored"].astype(bool), "case_id"], before=overlap))
    cases = clinical["case_id"].astype(str)
    with_os = set(survival_frame(clinical)["case_id"].astype(str))
    risks = val.risks[val.risks["harmonisation"] == "none"] if len(val.risks) else val.risks
    no_os = [c for c in cases if c not in with_os]
    for fs, d in (risks.groupby("feature_set", sort=False) if len(risks) else []):
        scored = set(d["case_id"].astype(str))
        parts.append(flow.analysis_flow(
            f"05 overall survival, locked risk model ({fs})", cases,
            [*overlap, ("no overall survival (time or status missing)", no_os),
             (f"no {fs} features", [c for c in cases if c not in scored])], d["case_id"]))
    return flow.combine(*parts)


@dataclass(repr=False)  # StepResult.__repr__: what the result holds, not every table
class ValidateResult(StepResult):
    """Tables, figures and metrics of notebook 05 (see :class:`glioma_nb.results.StepResult`); ``val`` is the
    :class:`Validation` of a validation run, None in a training run."""

    val: Validation | None = None


def step(ctx: StepContext, *, reference_run: str = "", harmonisation: Sequence[str] = ("none", "combat"),
         n_bootstrap: int = 1000, smd_threshold: float = 0.5) -> ValidateResult:
    """Notebook 05: the run's steps and provenance and, in a validation run, every locked model of the
    reference run applied to this cohort (parameters: ``validate`` in ``configs/base.yaml``)."""
    res = ValidateResult()
    summary = runs.run_summary(ctx.inputs)
    res.tables["run_summary"] = summary
    res.frames["provenance"] = runs.provenance_table(ctx.inputs)
    val = res.val = validate_locked(ctx, reference_run, harmonisation, n_bootstrap) if reference_run else None
    res.text["intro"] = reporting.describe(val) if val else reporting.training_note(ctx)
    res.text["not_validation"] = ("Nothing here: this is a training run, not a validation run "
                                  "(`validate.reference_run` is empty; see above).")
    unit = ctx.config["stratify"]["time_unit_report"]
    headline = val.headline if val else pd.DataFrame()
    if val:
        res.frames["locked"] = val.locked
        res.tables.update(validation_overlap=val.overlap, validation_segmentation=val.segmentation,
                          validation_shift_summary=val.shift_summary, validation_shift=shift_long(val),
                          validation_classifiers=val.classifiers, validation_predictions=val.predictions,
                          validation_average_accuracy=val.accuracy, validation_cns5=val.cns5_cases,
                          validation_clusters=val.cluster_comparison, validation_risk=val.risk,
                          validation_risk_cases=val.risks, validation_headline=headline)
        res.add_figure("shift", plotting.plot_shift(val.shift, threshold=smd_threshold))
        top = most_shifted_source(val)
        if top:
            res.text["shifted"] = f"The most shifted features of the **{top}** table (largest median |SMD|):"
            res.add_figure("shifted_features", plotting.plot_shifted_features(
                val.reference.feature_tables()[top], val.sources["none"][top].drop(index=val.excluded, errors="ignore"),
                val.sources.get("combat", {}).get(top), val.shift[(top, "none")]))
        res.frames["classifiers"] = reporting.classifier_table(val.classifiers)
        if len(val.chosen):
            res.add_figure("roc", plotting.plot_validation_roc(
                validation_roc_curves(val.reference.table("oof_predictions"), val.predictions, val.chosen), val.chosen))
            res.add_figure("calibration", plotting.plot_validation_calibration(
                validation_calibration_curves(val.predictions, val.chosen), val.chosen))
        res.frames["cns5"] = pd.DataFrame(val.cns5).T
        known = val.cns5_scored("none")
        if len(known):
            fig, ax = plt.subplots(figsize=(8, 6))
            plotting.plot_diagnosis_confusion(known, ax=ax)
            ax.set_title("CNS5 diagnosis on the validation cohort (locked models, no harmonisation)")
            res.add_figure("cns5_confusion", fig)
        res.add_figure("cluster_km", plotting.plot_cluster_km(val.clusters["none"], time_unit=unit))
        risk_cases, risk_model = risk_groups_frame(val)
        if risk_model:
            fig, ax = plt.subplots(figsize=(8, 5.5))
            plotting.plot_km(risk_cases, "risk_group", ax=ax, time_unit=unit)
            ax.set_title(f"Validation cohort by locked risk group ({risk_model}, cut at the training median)")
            res.add_figure("risk_groups", fig)
        res.tables["flow_05_validate"] = validation_flows(val, ctx.clinical)
        res.add_figure("flow", plotting.plot_flow(res.tables["flow_05_validate"]))
        res.frames["headline"] = reporting.format_headline(headline)
        res.add_figure("headline", plotting.plot_study_forest(headline))
        hashes = runs.verify_unchanged(val.reference)
        res.text["unchanged"] = f"{int(hashes['unchanged'].sum())} of {len(hashes)} model files unchanged."
        res.notes = list(val.notes)
    res.metrics = dict(steps_completed=int((summary["status"] == "completed").sum()),
                       reference_run=val.reference.run_id if val else None,
                       excluded_overlap=val.excluded if val else [],
                       headline=reporting.headline_records(headline), notes=res.notes)
    return res
