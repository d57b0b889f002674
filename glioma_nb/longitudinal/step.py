"""Notebook 06's one call: growth of each patient's tumour over its serial scans, malignant transformation, and
Cox models of time to transformation and of overall survival, as a :class:`LongitudinalResult` the notebook only
displays.

Per scan: region volumes from notebook 01's predicted masks (``tables/segmentation_cases``) or the cohort's
reference label maps (the QC case table), and the mean tumour diameter. Per patient: the velocity of diametric
expansion (VDE) fitted on the scans up to transformation (or all scans when it never comes), its CI, the volume
doubling time; transformation as ``longitudinal.transformation`` defines it. Analyses: Kaplan-Meier of
transformation-free survival by VDE group with the log-rank test; Cox models of time to transformation and of
OS on VDE and IDH status; cross-validated penalised Cox models (as notebook 04's) of both outcomes on baseline
feature sets, refitted on every patient as locked models; on the synthetic serial cohort, the recovery of the
planted VDE and hazard ratios from predicted and from reference masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from glioma_nb import compute, flow, plotting, records, reporting, runs
from glioma_nb.io import TIME_UNITS_DAYS, features
from glioma_nb.longitudinal import growth, locked, truth
from glioma_nb.longitudinal import transformation as transformation_mod
from glioma_nb.results import StepContext, StepResult
from glioma_nb.segment import models as seg_models
from glioma_nb.stratify import cox, risk, survival

#: Rauch et al. (Sci Rep 2023) report these on 349 serial-MRI LGG patients we do not have
RAUCH_2023 = {"OS C-index post-operative (train / test)": "0.82 / 0.74",
              "OS C-index pre-operative (train / test)": "0.77 / 0.67"}


@dataclass(repr=False)
class LongitudinalResult(StepResult):
    """Tables, figures and model records of notebook 06 (see :class:`glioma_nb.results.StepResult`)."""

    scans: pd.DataFrame = field(default_factory=pd.DataFrame)
    patients: pd.DataFrame = field(default_factory=pd.DataFrame)
    risk_results: dict[str, risk.RiskResult] = field(default_factory=dict)


def scan_volumes(ctx: Any) -> dict[str, pd.DataFrame]:
    """Region volumes per scan (index case_id; WT_ml, TC_ml, ET_ml) by source: ``predicted`` (notebook 01's
    ``segmentation_cases`` in the run or its upstream) and ``reference`` (the label maps, from the QC table)."""
    out = {}
    seg = runs.read_table(ctx.inputs, "segmentation_cases")
    if seg is not None and "WT_ml" in seg:
        out["predicted"] = seg.assign(case_id=seg["case_id"].astype(str)).set_index("case_id")
    table = ctx.case_table
    if "WT_ml" in table and table["WT_ml"].notna().any():
        out["reference"] = table.assign(case_id=table["case_id"].astype(str)).set_index("case_id")
    return out


def _per_scan_labels(timepoints: pd.DataFrame, clinical: pd.DataFrame, grade_column: str) -> pd.DataFrame:
    """The timepoints with the per-scan grade taken from the clinical table when the timepoints lack it."""
    if grade_column in timepoints or grade_column not in clinical:
        return timepoints
    return timepoints.merge(clinical[["case_id", grade_column]], on="case_id", how="left")


def _baseline(frame: pd.DataFrame, base_case: pd.Series) -> pd.DataFrame:
    """Rows of ``frame`` (index case_id) for each patient's first scan, re-indexed by patient."""
    rows = frame.reindex(base_case.to_numpy())
    rows.index = base_case.index
    return rows


def step(ctx: StepContext, *, masks: str = "predicted", vde_cut_mm_per_year: float = 8.0,
         transformation: Mapping[str, Any] | None = None, time_unit_report: str = "years",
         risk_sets: Sequence[str] = (), l1_ratio: float = 0.5, outer_splits: int = 3, inner_splits: int = 3,
         repeats: int = 3, min_events: int = 10, min_events_per_variable: float = 5, n_bootstrap: int = 500,
         reference_run: str = "", n_jobs: int = -1) -> LongitudinalResult:
    """Everything notebook 06 shows (parameters: ``longitudinal`` in ``configs/base.yaml``)."""
    seed = ctx.seed
    unit = time_unit_report
    per_day = 1.0 / TIME_UNITS_DAYS[unit]
    if ctx.cohort.timepoints is None:
        raise ValueError(f"cohort {ctx.cohort.name} has no serial scans: set cohort.timepoints.file (a table of "
                         "patient_id, case_id, days) to run 06_longitudinal")
    if masks not in ("predicted", "reference"):
        raise ValueError(f"longitudinal.masks must be predicted or reference, got {masks!r}")
    res = LongitudinalResult()   # res.notes: every analysis that could not be done, with its reason
    tsettings = transformation_mod.settings(transformation or {})
    g = _growth(ctx, res, masks, tsettings, vde_cut_mm_per_year, unit)
    at, km_data, lr = _transformation_km(res, g.pts, per_day, unit)
    surv_os, hazards = _cox(res, g, at, unit, min_events_per_variable)
    cv = dict(l1_ratio=l1_ratio, outer_splits=outer_splits, inner_splits=inner_splits, repeats=repeats,
              random_state=seed, n_bootstrap=n_bootstrap, min_events=min_events, n_jobs=n_jobs)
    sources, outcomes, metrics_table = _risk_models(ctx, res, g, at, surv_os, risk_sets, unit=unit, **cv)
    _locked(ctx, res, reference_run, sources, outcomes, n_bootstrap=n_bootstrap, random_state=seed)
    res.text["rauch"] = RAUCH_NOTE
    planted = _truth(ctx, res, g, tsettings, per_day, min_events_per_variable=min_events_per_variable, cv=cv)
    _flow(res, g.pts, at, km_data, surv_os)
    pts, main = g.pts, g.main
    res.metrics = dict(
        n_scans=int(len(main)), n_patients=len(pts), masks=g.masks,
        n_with_vde=int(pts["vde_mm_per_year"].notna().sum()),
        vde_median_mm_per_year=float(pts["vde_mm_per_year"].median()),
        n_at_risk=int(len(at)), n_transformations=int(at["event"].sum()),
        **({"validation": res.tables["longitudinal_validation"].round(6).to_dict(orient="records")}
           if "longitudinal_validation" in res.tables else {}),
        logrank_p_vde_group=lr["p_value"] if lr else None,
        cox=hazards.round(6).to_dict(orient="records"),
        risk_models=reporting.risk_metrics_record(metrics_table.assign(
            feature_set=metrics_table["outcome"] + ":" + metrics_table["feature_set"])) if len(metrics_table) else {},
        **({"vde_recovery": res.tables["vde_recovery"].round(6).to_dict(orient="records"),
            "hazard_recovery": res.tables["hazard_recovery"].round(6).to_dict(orient="records"),
            "transformation_cindex_by_source": res.tables["transformation_cindex_by_source"].round(6).to_dict(
                orient="records")}
           if planted is not None else {}),
        notes=res.notes)
    return res


RAUCH_NOTE = (
    "Rauch et al. (Sci Rep 2023) report, on serial MRI of **349 lower-grade glioma patients that we do not have**, "
    "OS C-index 0.82 (training) / 0.74 (test) post-operative and 0.77 / 0.67 pre-operative, with the likelihood "
    "of malignant transformation and the growth velocity. The figures above are this cohort's, not theirs. To "
    "reproduce theirs one needs their cohort (or one like it): serial pre- and post-operative MRI per patient "
    "with the scan dates, the dates and grades of re-operations, overall survival, and the clinical covariates "
    "(age, KPS, extent of resection, IDH and 1p/19q), laid out as a serial cohort (`cohort.timepoints`).")


# ----------------------------------------------------------------------------------- the sections of 06
@dataclass
class _Growth:
    """What the growth section found and the later sections use."""

    masks: str                              # the volumes' source used (predicted or reference)
    scans: dict[str, pd.DataFrame]          # per scan, by source of volumes
    main: pd.DataFrame                      # the scans of ``masks``
    events: pd.DataFrame                    # transformation per patient (from ``main``)
    growths: dict[str, pd.DataFrame]        # per patient growth, by source of volumes
    pts: pd.DataFrame                       # per patient: growth of ``masks``, events, VDE group, baseline clinical
    clin_base: pd.DataFrame                 # the clinical row of each patient's first scan


def _growth(ctx: StepContext, res: LongitudinalResult, masks: str, tsettings: dict[str, Any], vde_cut: float,
            unit: str) -> _Growth:
    """Volumes per scan, transformation events, growth (VDE) per patient up to transformation; the overview text
    and the growth figure."""
    notes = res.notes
    volumes = scan_volumes(ctx)
    if masks not in volumes:
        have = sorted(volumes)
        if not have:
            raise ValueError(f"cohort {ctx.cohort.name}: no volumes per scan: run 01_segment first (predicted masks) "
                             "or give the cohort reference label maps (longitudinal.masks: reference)")
        notes.append(f"no {masks} masks in this run (01_segment did not run or wrote none): the volumes come from "
                     f"the {have[0]} masks")
        masks = have[0]
    labelled = _per_scan_labels(ctx.cohort.timepoints, ctx.clinical, tsettings["grade_column"])
    scans = {src: growth.scan_table(labelled, v, src) for src, v in volumes.items()}
    main = res.scans = scans[masks]
    lacking = main.loc[main["WT_ml"].isna(), "case_id"].tolist()
    if lacking:
        notes.append(f"{len(lacking)} scans have no {masks} volume and are left out of the growth fits "
                     f"(e.g. {lacking[:3]})")
    events, tnotes = transformation_mod.transformation_events(main.dropna(subset=["WT_ml"]), **tsettings)
    notes += tnotes
    until = events["scan_days"].fillna(events["last_scan_days"])   # growth up to transformation, or all follow-up
    growths = {src: growth.patient_growth(s.dropna(subset=["WT_ml"]), until) for src, s in scans.items()}
    pts = growths[masks].join(events.rename(columns={"days": "transformation_days", "event": "event"}), how="left")
    pts["vde_group"] = growth.vde_group(pts["vde_mm_per_year"], vde_cut)
    pts, res.text["segmentation_error"] = _segmentation_error(volumes, main, pts, masks, vde_cut)
    clin_base = _baseline(ctx.clinical.assign(case_id=ctx.clinical["case_id"].astype(str)).set_index("case_id"),
                          pts["baseline_case"])
    for col in ("idh_mutant", "codel_1p19q", "age"):
        if col in clin_base:
            pts[col] = pd.to_numeric(clin_base[col], errors="coerce")
    res.patients = pts
    res.tables["longitudinal_scans"] = main
    res.tables["longitudinal_patients"] = pts.reset_index()
    with_vde = pts["vde_mm_per_year"].notna()
    res.text["overview"] = (
        f"{len(main)} scans of {len(pts)} patients ({main.groupby('patient_id').size().median():.0f} scans per "
        f"patient in the median; growth followed over {pts['follow_up_years'].median():.1f} years in the median, up "
        f"to transformation); volumes from the **{masks}** masks. VDE fitted for {int(with_vde.sum())} patients (two "
        f"or more scans up to transformation): median {pts['vde_mm_per_year'].median():.1f} mm/year, "
        f"{int((pts['vde_mm_per_year'] >= vde_cut).sum())} at or above {vde_cut:g} mm/year. Transformation "
        f"({tsettings['rule']}): {int(pts.loc[pts['at_risk'], 'event'].sum())} of {int(pts['at_risk'].sum())} "
        "patients at risk.")
    fig, ax = plt.subplots(figsize=(8, 5))
    plotting.plot_growth(main.dropna(subset=["WT_ml"]), pts, cut=vde_cut, ax=ax, time_unit=unit)
    res.add_figure("growth", fig)
    return _Growth(masks, scans, main, events, growths, pts, clin_base)


def _segmentation_error(volumes: Mapping[str, pd.DataFrame], main: pd.DataFrame, pts: pd.DataFrame, masks: str,
                        cut: float) -> tuple[pd.DataFrame, str]:
    """Each patient's VDE CI with the segmentation's measured volume error carried in (the scans with reference
    masks give it), and the patients whose VDE group that error could change; the sentence that says so."""
    if masks != "predicted":
        return pts, "Volumes from the reference masks: no segmentation error to carry into the VDE CIs."
    source = "scans that have reference masks"
    if "reference" in volumes:
        sigma, n = growth.volume_error_sd(volumes["predicted"]["WT_ml"], volumes["reference"]["WT_ml"])
    else:
        name = wt_model(volumes["predicted"])
        card = seg_models.card_volumes(name) if name else None
        if card is None:
            return pts, ("**No measured segmentation error is carried into the VDE CIs**: this cohort has no reference "
                         f"masks to measure the network's volume error on, and the model{f' {name}' if name else ''} "
                         "has no held-out per-case volumes on its card (`<model>.volumes.csv`, written by "
                         "`glioma-nb segment-rescore`). Each VDE CI above is the fit's alone.")
        key = card["cohort"] + "/" + card["case_id"]
        sigma, n = growth.volume_error_sd(pd.Series(card["WT_ml_predicted"].to_numpy(), index=key),
                                          pd.Series(card["WT_ml_reference"].to_numpy(), index=key))
        source = (f"held-out cases of {name}'s model card ({', '.join(card['cohort'].unique())}; this cohort has no "
                  "reference masks)")
    if not np.isfinite(sigma):
        return pts, f"Only {n} scans have both predicted and reference volumes: too few to measure the volume error."
    seg = growth.vde_with_segmentation_error(main.dropna(subset=["WT_ml"]), pts, sigma, cut)
    pts = pts.join(seg)
    uncertain = seg.index[seg["vde_group_uncertain"]].tolist()
    text = (f"Segmentation volume error, measured on the {n} {source}: SD of log(predicted / "
            f"reference) whole-tumour volume {sigma:.3f} (about {np.expm1(sigma):.0%} per scan), i.e. {sigma / 3:.1%} "
            f"of each MTD. Carried into each patient's VDE CI (`vde_seg_low`, `vde_seg_high` in "
            f"`tables/longitudinal_patients.csv`): the VDE group ({cut:g} mm/year) of **{len(uncertain)} of "
            f"{len(seg)}** patients could change within it")
    return pts, text + (f": {', '.join(map(str, uncertain[:20]))}{' ...' if len(uncertain) > 20 else ''}." if uncertain
                        else ".")


def wt_model(predicted: pd.DataFrame) -> str | None:
    """The model whose whole tumour 01 wrote (``segment.regions``' WT model, else the run's model), from its table."""
    if "regions" in predicted and predicted["regions"].notna().any():
        for part in str(predicted["regions"].dropna().iloc[0]).split(";"):
            regions, _, name = part.partition(":")
            if "WT" in [r.strip() for r in regions.split(",")]:
                return name.strip()
    if "model" in predicted and predicted["model"].notna().any():
        return str(predicted["model"].dropna().iloc[0])
    return None


def _transformation_km(res: LongitudinalResult, pts: pd.DataFrame, per_day: float, unit: str
                       ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any] | None]:
    """Time to transformation: Kaplan-Meier by VDE group, log-rank. Returns (patients at risk, KM data, log-rank)."""
    at = pts[pts["at_risk"]].copy()
    at["time"] = at["transformation_days"] * per_day
    km_data = at.dropna(subset=["vde_group"])
    fig, ax = plt.subplots(figsize=(7, 5))
    if len(km_data) >= 2 and km_data["event"].sum() > 0:
        plotting.plot_km(km_data, "vde_group", ax=ax, time_unit=unit, ylabel="transformation-free probability",
                         title="Malignant transformation by velocity of diametric expansion")
    else:
        ax.text(0.5, 0.5, "no transformation observed in the patients at risk", ha="center", va="center")
        ax.set_axis_off()
    res.add_figure("transformation_km", fig)
    res.tables["transformation_km"] = survival.km_overview(km_data, ["vde_group"]) if len(km_data) else pd.DataFrame()
    lr = survival.logrank(km_data, "vde_group") if len(km_data) else None
    res.text["transformation_km"] = (f"Log-rank P between the VDE groups: {lr['p_value']:.3g}." if lr else
                                     "Log-rank test not possible (a VDE group is empty or has fewer than 2 patients).")
    return at, km_data, lr


def _cox(res: LongitudinalResult, g: _Growth, at: pd.DataFrame, unit: str, min_events_per_variable: float
         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cox models on VDE and IDH status, of time to transformation and of OS. Returns (OS frame, hazard table)."""
    pts = g.pts
    design = pd.DataFrame(index=pts.index)
    design["vde_mm_per_year"] = pts["vde_mm_per_year"]
    if "idh_mutant" in pts and pts["idh_mutant"].nunique() > 1:
        design["idh_wildtype"] = 1 - pts["idh_mutant"]
    surv_os = survival.survival_frame(g.clin_base.rename_axis("patient").reset_index(), unit=unit)
    surv_os = surv_os.set_index("patient")[["time", "event"]] if len(surv_os) else pd.DataFrame(columns=["time", "event"])
    fits = {"time to transformation": cox.fit_cox(at[["time", "event"]], design.loc[at.index],
                                                  min_events_per_variable=min_events_per_variable),
            "overall survival": cox.fit_cox(surv_os, design.reindex(surv_os.index),
                                            min_events_per_variable=min_events_per_variable)}
    hazards = cox.hazard_table(fits)
    res.tables["longitudinal_cox"] = hazards
    for name, f in fits.items():
        res.notes += [f"Cox model of {name}: {n}" for n in f.notes]
    res.text["cox"] = "\n\n".join(f"**{name}**: " + reporting.fit_sentence(f) for name, f in fits.items())
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(hazards), 2) + 1.6))
    plotting.plot_forest(hazards, ax=ax, title="Cox models on VDE (per mm/year) and IDH status: HR (95% CI)")
    res.add_figure("forest", fig)
    return surv_os, hazards


def _risk_models(ctx: StepContext, res: LongitudinalResult, g: _Growth, at: pd.DataFrame, surv_os: pd.DataFrame,
                 risk_sets: Sequence[str], unit: str = "", **cv: Any
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], pd.DataFrame]:
    """Cross-validated penalised Cox models of transformation and OS on baseline feature sets (and the growth set),
    each refitted on every patient as a locked model. Returns (sources, outcomes, metrics table)."""
    pts, notes = g.pts, res.notes
    base_case = pts["baseline_case"]
    image = {n: _baseline(t, base_case) for n, t in ctx.feature_tables().items()}
    sources = risk.survival_sources(g.clin_base.rename_axis("case_id").reset_index(), image)
    vol_cols = [c for c in pts.columns if c.startswith("baseline_") and c.endswith(("_ml", "_mm"))]
    sources["baseline_volume"] = pts[vol_cols].astype(float)
    sources["growth"] = pts[["vde_mm_per_year"]].astype(float)
    sets, set_notes = features.assemble_feature_sets(sources, list(risk_sets))
    notes += set_notes
    outcomes = {"transformation": at[["time", "event"]], "os": surv_os}
    metrics_tables, saved = [], []
    for outcome, surv in outcomes.items():
        if surv.empty:
            notes.append(f"{outcome}: no patient with this outcome; no risk model")
            continue
        with getattr(ctx, "executor", compute.SERIAL).joblib():
            results, table, fit_notes = risk.evaluate_risk_models(sets, surv, **cv)
        notes += [f"{outcome}: {n}" for n in fit_notes]
        res.risk_results.update({f"{outcome}:{k}": v for k, v in results.items()})
        if len(table):
            metrics_tables.append(table.assign(outcome=outcome))
        for name in results:
            X = sets[name].loc[lambda d: d.index.isin(surv.index)]
            rec = risk.final_risk_record(X, surv, name=f"{outcome}__{records.safe_name(name)}", feature_set=name,
                                         outcome=outcome, cohort=ctx.cohort.name, cv_metrics=results[name].metrics,
                                         l1_ratio=cv["l1_ratio"], inner_splits=cv["inner_splits"],
                                         random_state=cv["random_state"])
            res.models[rec.name] = rec
            saved.append({"model": f"{rec.name}.joblib", "outcome": outcome, "feature_set": name,
                          "features": len(rec.features)})
    metrics_table = pd.concat(metrics_tables, ignore_index=True) if metrics_tables else pd.DataFrame()
    if len(metrics_table):
        metrics_table = metrics_table[["outcome", *[c for c in metrics_table.columns if c != "outcome"]]]
    res.tables["longitudinal_risk_models"] = metrics_table
    res.frames["risk_table"] = (pd.concat([reporting.risk_table(t.drop(columns="outcome"), unit).pipe(
        lambda d, o=o: d.insert(0, "outcome", o) or d) for o, t in metrics_table.groupby("outcome", sort=False)],
        ignore_index=True) if len(metrics_table) else metrics_table)
    res.frames["saved"] = pd.DataFrame(saved)
    return sources, outcomes, metrics_table


def _locked(ctx: StepContext, res: LongitudinalResult, reference_run: str, sources: dict[str, pd.DataFrame],
            outcomes: dict[str, pd.DataFrame], *, n_bootstrap: int, random_state: int) -> None:
    """The locked models of a training run (``longitudinal.reference_run``) applied unchanged to this cohort."""
    if not reference_run:
        res.text["validation"] = ("No training run named (`longitudinal.reference_run`): these patients are the "
                                  "training cohort; its locked models above are what another cohort's run applies.")
        return
    ref_dir = runs.find_run(reference_run, ctx.config["cohort"]["name"])
    found = locked.locked_models(ref_dir)
    if not found:
        res.notes.append(f"reference run {ref_dir.name} holds no locked transformation or OS model of notebook 06")
    table, lnotes = locked.apply_locked(found, sources, outcomes, n_bootstrap=n_bootstrap, random_state=random_state)
    res.notes += lnotes
    res.tables["longitudinal_validation"] = table.assign(reference_run=ref_dir.name)
    res.text["validation"] = (f"The locked models of run **{ref_dir.name}** (cohort "
                              f"{runs.load_manifest(ref_dir)['cohort']}) applied unchanged to these patients: "
                              f"{len(table)} models.")


def _truth(ctx: StepContext, res: LongitudinalResult, g: _Growth, tsettings: dict[str, Any], per_day: float, *,
           min_events_per_variable: float, cv: dict[str, Any]) -> pd.DataFrame | None:
    """On the synthetic serial cohort, the planted VDE and hazard ratios recovered from each source of volumes
    (and from the planted VDE itself). Returns the planted truth (None for a real cohort)."""
    planted, log_hr = truth.serial_truth(ctx.cohort.root)
    if planted is None:
        res.text["truth"] = "Not a synthetic serial cohort: there is no planted truth to compare with."
        return None
    n_bootstrap, seed = cv["n_bootstrap"], cv["random_state"]
    measured = {src: gr["vde_mm_per_year"] for src, gr in g.growths.items()}
    res.tables["vde_recovery"] = truth.vde_recovery(measured, planted["vde_mm_per_year"], n_bootstrap=n_bootstrap,
                                                    random_state=seed)
    res.add_figure("vde_recovery", plotting.plot_vde_recovery(
        {src: pd.concat([v.rename("measured"), planted["vde_mm_per_year"].rename("planted")], axis=1).dropna()
         for src, v in measured.items()}))
    rec_fits, c_rows = {}, []
    designs = {}
    for src, gr in g.growths.items():   # the same Cox model of transformation from each source of volumes
        ev = g.events if src == g.masks else transformation_mod.transformation_events(
            g.scans[src].dropna(subset=["WT_ml"]), **tsettings)[0]   # the analysis' own events are reused
        ev = ev[ev["at_risk"]]
        d = pd.DataFrame({"vde_mm_per_year": gr["vde_mm_per_year"]}).reindex(ev.index)
        d["idh_wildtype"] = 1 - planted["idh_mutant"].reindex(ev.index)
        designs[f"{src} masks"] = (d, pd.DataFrame({"time": ev["days"] * per_day, "event": ev["event"]}))
    d0, s0 = designs[f"{g.masks} masks"]   # the analysis' own events, with the planted VDE: no measurement error
    designs["planted VDE (no measurement error)"] = (
        d0.assign(vde_mm_per_year=planted["vde_mm_per_year"].reindex(d0.index)), s0)
    for name, (d, s) in designs.items():
        fit = cox.fit_cox(s, d, min_events_per_variable=min_events_per_variable)
        if not len(fit.table) and fit.events >= min_events_per_variable:
            # too few events for VDE and IDH (a serial cohort of a dozen real patients): VDE alone, said so
            # (its HR then also carries IDH's effect: IDH-wild-type tumours grow faster)
            alone = cox.fit_cox(s, d[["vde_mm_per_year"]], min_events_per_variable=min_events_per_variable)
            if len(alone.table):
                res.notes.append(f"hazard recovery from {name}: {fit.notes[-1]}; VDE alone fitted")
                rec_fits[f"{name} (VDE alone, unadjusted for IDH)"] = alone
        else:
            rec_fits[name] = fit
        X = d.dropna()
        try:   # the growth model's cross-validated C-index from each source (Coxnet, as the risk models)
            r = risk.cv_risk_model(X, s.loc[X.index], name=name, **cv)
            c_rows.append({"volumes_from": name, **{k: r.metrics.get(k) for k in (
                "n", "events", "c_harrell", "c_harrell_low", "c_harrell_high", "c_uno", "c_uno_low", "c_uno_high")}})
        except ValueError as exc:
            c_rows.append({"volumes_from": name, "n": len(X), "note": str(exc)})
    res.tables["hazard_recovery"] = truth.hazard_recovery(cox.hazard_table(rec_fits), log_hr)
    res.tables["transformation_cindex_by_source"] = pd.DataFrame(c_rows)
    rec = res.tables["vde_recovery"]
    res.text["truth"] = "\n".join(
        f"- VDE from **{r.volumes_from}** masks: Pearson r {r.pearson_r:.3f} [{r.r_low:.3f}, {r.r_high:.3f}], bias "
        f"{r.bias_mm_per_year:+.2f} mm/year [{r.bias_low:+.2f}, {r.bias_high:+.2f}] over {r.n} patients"
        for r in rec.itertuples() if pd.notna(getattr(r, "pearson_r", np.nan)))
    hz = res.tables["hazard_recovery"]
    res.text["truth"] += "".join(
        f"\n- HR of transformation, {r.covariate}, from {r.model}: {r.hr:.2f} [{r.hr_low:.2f}, {r.hr_high:.2f}] "
        f"against the planted {r.planted_hr:.2f} ({'covered' if r.covered else 'not covered'})"
        for r in hz.itertuples())
    return planted


def _flow(res: LongitudinalResult, pts: pd.DataFrame, at: pd.DataFrame, km_data: pd.DataFrame,
          surv_os: pd.DataFrame) -> None:
    """The participant flow of 06 (patients)."""
    patients = list(pts.index.astype(str))
    single = list(pts.index[pts["n_scans"] < 2].astype(str))
    with_vde = pts["vde_mm_per_year"].notna()
    flows = [flow.analysis_flow("06 growth (VDE)", patients, [("fewer than two scans with a volume", single)],
                                pts.index[with_vde].astype(str))]
    reasons = [(why, list(pts.index[pts["why_not"] == why].astype(str)))
               for why in dict.fromkeys(pts.loc[~pts["at_risk"], "why_not"])]
    flows.append(flow.analysis_flow("06 time to transformation", patients, reasons, at.index.astype(str)))
    flows.append(flow.analysis_flow("06 transformation by VDE group", patients,
                                    reasons + [("no VDE (one scan before transformation)",
                                                list(at.index[at["vde_group"].isna()].astype(str)))],
                                    km_data.index.astype(str)))
    no_os = [p for p in patients if p not in set(surv_os.index.astype(str))]
    flows.append(flow.analysis_flow("06 overall survival", patients, [("no overall survival", no_os)],
                                    surv_os.index.astype(str)))
    res.tables["flow_06_longitudinal"] = flow.combine(*flows)
    res.add_figure("flow", plotting.plot_flow(res.tables["flow_06_longitudinal"]))
