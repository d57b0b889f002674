"""Reporting checklists filled from a run: CLEAR (radiomics; Kocak et al., Insights Imaging 2023;14:75) and
TRIPOD+AI (prediction models using AI; Collins et al., BMJ 2024;385:e078378).

Each item is answered from what the run knows (its config, manifest, tables and figures) with a link to where it
is shown, or marked as the author's to answer (the title, the ethics statement, the discussion, ...). The item
texts here are short paraphrases for orientation; the published checklists hold the exact wording.

An answer function takes the run's :class:`Facts` and returns ``(answer, link)`` or None (the author's item).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from glioma_nb import runs

AUTHOR = "author"
AUTO = "from the run"


@dataclass
class Facts:
    """What a checklist can read from one run folder; ``prefix`` is the run's folder inside the supplement."""

    run_dir: Path
    prefix: str
    manifest: dict[str, Any]
    params: dict[str, Any]
    _tables: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    def table(self, name: str, folder: str = "tables") -> pd.DataFrame | None:
        key = f"{folder}/{name}"
        if key not in self._tables:
            self._tables[key] = runs.read_table(self.run_dir, name, folder)
        return self._tables[key]

    def metrics(self, step: str) -> dict[str, Any]:
        return runs.m_step(self.run_dir, step)

    def link(self, rel: str) -> str | None:
        """The supplement path of a run file, or None when the run has no such file."""
        return f"{self.prefix}/{rel}" if (self.run_dir / rel).exists() else None

    def done(self, step: str) -> bool:
        return runs.step_status(self.manifest, step) == "completed"

    @property
    def n_cases(self) -> int:
        return int(self.manifest.get("cohort_summary", {}).get("n_cases", 0))

    @property
    def validation(self) -> bool:
        return bool(self.manifest.get("reference"))


Answer = tuple[str, "str | None"] | None


def _flow_text(f: Facts) -> Answer:
    parts = [f.table(f"flow_{s}") for s in ("01_segment", "03_classify", "04_stratify", "05_validate",
                                             "06_longitudinal")]
    parts = [p for p in parts if p is not None and len(p)]
    if not parts:
        return None
    t = pd.concat(parts)
    ins = t[t["stage"] == "in"].groupby("analysis", sort=False)["n"].sum()
    out = t[t["stage"] == "analysed"].groupby("analysis", sort=False)["n"].sum()
    text = "; ".join(f"{a}: {int(ins[a])} in, {int(out.get(a, 0))} analysed" for a in ins.index)
    return f"Participant flow per analysis (in, excluded by reason, analysed): {text}.", f"{f.prefix}/flow.csv"


def _cohort(f: Facts) -> Answer:
    c = f.params.get("cohort", {})
    cit = c.get("citation") or {}
    src = cit.get("source") or c.get("description") or c.get("name")
    doi = f" (DOI {cit['doi']})" if cit.get("doi") else ""
    return f"{src}{doi}; {f.n_cases} cases.", "index.html#cohorts"


def _overlap(f: Facts) -> Answer:
    if f.validation:
        ov = f.manifest["reference"].get("overlap_cases") or []
        return (f"Validation cohort checked against the training run {f.manifest['reference'].get('run_id')}: "
                f"{len(ov)} overlapping patients, left out of every validation metric.", f.link("qc/overlap.csv"))
    return ("One cohort, cross-validated by patient (two scans of one patient never fall on both sides of a split); "
            "no external data overlap to check in a training run.", f.link("03_classify.html"))


def _split(f: Facts) -> Answer:
    c = f.params.get("classify", {})
    s = f.params.get("stratify", {})
    return (f"Nested cross-validation split by patient: classification {c.get('outer_splits')} outer x "
            f"{c.get('inner_splits')} inner folds, repeated {c.get('repeats')} times; risk models "
            f"{s.get('outer_splits')} x {s.get('inner_splits')} folds, {s.get('repeats')} repeats"
            + ("; plus an independent validation cohort with the locked models." if f.validation else "."),
            f.link("03_classify.html"))


def _imaging(f: Facts) -> Answer:
    c = f.params.get("cohort", {})
    return (f"Modalities {', '.join(f.manifest.get('cohort_summary', {}).get('modalities', [])) or 'none (feature table)'}; "
            f"layout {c.get('layout')}, source {c.get('source')}; voxel geometry per case in the QC case table "
            "(acquisition protocols are the source collection's).", f.link("qc/case_table.csv"))


def _predictors(f: Facts) -> Answer:
    nodes = f.table("classification_nodes")
    return ("Clinical baseline: age, sex and (with label maps) whole-tumour volume; image feature sets as listed in "
            "notebook 03; labels per node in its node table.", f.link("tables/classification_nodes.csv")) \
        if nodes is not None else None


def _reference_standard(f: Facts) -> Answer:
    nodes = f.table("classification_nodes")
    if nodes is None:
        return None
    text = "; ".join(f"{r.node}: {r.question} ({r.positive}+/{r.negative}-)" for r in nodes.itertuples())
    return f"Outcomes: {text}; overall survival from the clinical table (days).", f.link("tables/classification_nodes.csv")


def _segmentation(f: Facts) -> Answer:
    m = f.metrics("01_segment")
    seg = f.params.get("segment", {})
    model = m.get("model") or seg.get("model")
    summ = f.table("segmentation_summary")
    dice = ""
    if summ is not None and len(summ):
        d = summ[(summ.get("metric", pd.Series("Dice", index=summ.index)) == "Dice")]
        if "level" in d:
            d = d[d["level"] == "global"]
        dice = "; held-out Dice " + ", ".join(
            f"{r.region} {r.mean:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] (n={int(r.n)})" for r in d.itertuples()
            if pd.notna(r.mean))
    mask = f.params.get("signature", {}).get("mask")
    return (f"Automatic: network {model}, features from the {mask} masks{dice}.", f.link("01_segment.html"))


def _operators(f: Facts) -> Answer:
    return ("Masks drawn by a network (no human operator); reference labels are the source collection's expert "
            "labels (see its citation).", f.link("01_segment.html"))


def _preprocessing(f: Facts) -> Answer:
    sig = f.params.get("signature", {})
    pre = "; raw scans taken to SRI24/BraTS space by notebook 00 (N4, registration, skull stripping)" \
        if f.params.get("cohort", {}).get("source") == "raw" else ""
    return (f"Intensities scaled between the brain's {sig.get('intensity_percentiles')} percentiles{pre}.",
            f.link("02_signature.html"))


def _radiomics_setting(key: str, label: str) -> Callable[[Facts], Answer]:
    def answer(f: Facts) -> Answer:
        name = f.params.get("signature", {}).get("radiomics")
        if not name:
            return ("Handcrafted radiomics off in this run (signature.radiomics: null); network signature features "
                    "only.", f.link("02_signature.html"))
        link = f.link("logs/radiomics_settings.yaml")
        if link is None:
            return None
        settings = yaml.safe_load((f.run_dir / "logs" / "radiomics_settings.yaml").read_text()) or {}
        shown = _find_key(settings, key)
        if isinstance(shown, dict):
            shown = ", ".join(shown)
        return (f"PyRadiomics settings `{name}` as the run used them ({label}"
                + (f": {key} = {'null' if shown is None else shown}" if shown is not _ABSENT else "") + ").", link)
    return answer


_ABSENT = object()


def _find_key(tree: Any, key: str) -> Any:
    """The value of ``key`` anywhere in a nested settings mapping (the first found), or ``_ABSENT``."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for v in tree.values():
            got = _find_key(v, key)
            if got is not _ABSENT:
                return got
    return _ABSENT


def _features(f: Facts) -> Answer:
    radiomics = f.params.get("signature", {}).get("radiomics")
    return ("Network image signature (the segmentation network's encoder, pooled per tumour region)"
            + (f" and PyRadiomics (`{radiomics}`; tested against the IBSI-1 digital phantom, deviations listed in "
               "glioma_nb.signature.ibsi)" if radiomics else "") + "; volumetric region volumes.",
            f.link("02_signature.html"))


def _n_features(f: Facts) -> Answer:
    m = f.metrics("02_signature")
    before, after = m.get("unfiltered") or {}, m.get("feature_tables") or {}
    if not after:
        return None
    text = "; ".join(f"{k}: {before.get(k, [None, '?'])[1]} extracted, {v[1]} after the stability filter"
                     for k, v in after.items())
    return f"Features per case: {text}.", f.link("02_signature.html")


def _stability(f: Facts) -> Answer:
    st = f.params.get("signature", {}).get("stability", {})
    return (f"Stability filter: ICC(3,1) >= {st.get('icc_threshold')} over perturbations {st.get('perturbations')}, "
            f"|r| > {st.get('max_correlation')} pruned, near-constant and > {st.get('max_missing_fraction')} missing "
            "dropped; then univariate / L1 selection inside the CV folds.", f.link("02_signature.html"))


def _missing(f: Facts) -> Answer:
    return ("Cases without a label for a node, without survival or without features are excluded from that "
            "analysis only (counted in the flow); feature values missing in a case are imputed inside the CV "
            "folds (median).", f"{f.prefix}/flow.csv")


def _imbalance(f: Facts) -> Answer:
    nodes = f.table("classification_nodes")
    if nodes is None:
        return None
    text = ", ".join(f"{r.node} {r.positive}:{r.negative}" for r in nodes.itertuples() if r.labelled)
    return (f"Class counts per node ({text}); folds stratified by class, class-balanced weights, AUC and balanced "
            "accuracy reported.", f.link("tables/classification_nodes.csv"))


def _algorithm(f: Facts) -> Answer:
    c = f.params.get("classify", {})
    s = f.params.get("stratify", {})
    return (f"Classification: {c.get('classifier')} after {c.get('selection')} selection of at most "
            f"{c.get('k_features')} features (scikit-learn); survival: penalised Cox (Coxnet, l1_ratio "
            f"{s.get('l1_ratio')}, scikit-survival) and consensus clustering.", f.link("params.yaml"))


def _tuning(f: Facts) -> Answer:
    c = f.params.get("classify", {})
    return (f"Hyper-parameters tuned in the inner {c.get('inner_splits')}-fold CV of the nested cross-validation; "
            "final models refitted on all cases and saved as locked records.", f.link("03_classify.html"))


def _metrics(f: Facts) -> Answer:
    return ("AUC, balanced accuracy, sensitivity/specificity, Brier and calibration (03); Harrell's and Uno's "
            "C-index, time-dependent AUC, calibration (04); Dice, HD95, NSD global and lesion-wise as BraTS computes "
            "them (01).", "index.html#headline")


def _uncertainty(f: Facts) -> Answer:
    c = f.params.get("classify", {})
    return (f"95% bootstrap confidence intervals ({c.get('n_bootstrap')} resamples) on every headline metric; "
            f"permutation tests against chance ({c.get('n_permutations')} permutations).", "index.html#headline")


def _comparison(f: Facts) -> Answer:
    c = f.params.get("classify", {})
    return (f"DeLong tests of every feature set against the `{c.get('baseline')}` baseline (03); paired bootstrap "
            "comparisons of the pairs in classify.compare / stratify.compare.", f.link("tables/classification_results.csv"))


def _non_radiomic(f: Facts) -> Answer:
    res = f.table("classification_summary")
    return ("The clinical baseline and clinical+image feature sets are evaluated beside the image-only sets on the "
            "same folds.", f.link("tables/classification_summary.csv")) if res is not None else None


def _explain(f: Facts) -> Answer:
    return ("Top features (coefficients / importances) of each node's final model; a voxel-wise feature map of one "
            "case.", f.link("figures/03_classify__top_features.png"))


def _baseline_chars(f: Facts) -> Answer:
    return ("Per case: geometry, region volumes and the canonical clinical columns.", f.link("qc/case_table.csv"))


def _performance(f: Facts) -> Answer:
    return "Every metric with its 95% CI in the headline table and the notebooks.", "index.html#headline"


def _share_features(f: Facts) -> Answer:
    return ("Feature tables (CSV) in the supplement.", f.link("tables/features_signature.csv")
            or f"{f.prefix}/tables/")


def _share_code(f: Facts) -> Answer:
    g = f.manifest.get("git", {})
    return (f"glioma-nb at git commit {g.get('commit', g.get('short'))} ({'with uncommitted changes' if g.get('dirty') else 'clean'}); "
            "the command and environment under How to reproduce.", "index.html#reproduce")


def _share_model(f: Facts) -> Answer:
    models = sorted(p.name for p in (f.run_dir / "models").glob("*.joblib"))
    return (f"{len(models)} locked model records (sha256 in manifest.json); in the supplement with "
            "`glioma-nb publish --include-models`.", f.link("manifest.json")) if models else None


def _share_images(f: Facts) -> Answer:
    c = f.params.get("cohort", {}).get("citation") or {}
    if c.get("doi") or c.get("url"):
        return f"Images are public: {c.get('source')} ({c.get('doi') or c.get('url')}).", "index.html#cohorts"
    return None


def _pipeline_chart(f: Facts) -> Answer:
    return "The notebooks 00-05 and their order; the run's steps and status in manifest.json.", "index.html#notebooks"


def _data_dates(f: Facts) -> Answer:
    return None


def _sample_size(f: Facts) -> Answer:
    return None


def _events(f: Facts) -> Answer:
    m = f.metrics("04_stratify")
    if not m:
        return None
    return (f"{m.get('n_with_survival')} cases with survival, {m.get('n_events')} deaths; per analysis counts in the "
            "flow.", f"{f.prefix}/flow.csv")


def _calibration(f: Facts) -> Answer:
    return ("Calibration curves (03: observed vs predicted by bin; 04: survival calibration by risk tertile) and "
            "decision curves.", f.link("figures/03_classify__calibration.png"))


def _model_output(f: Facts) -> Answer:
    return ("Probabilities per node (threshold 0.5 for the confusion matrices and accuracy); continuous risk scores "
            "for survival, grouped at the training median.", f.link("tables/oof_predictions.csv"))


def _full_model(f: Facts) -> Answer:
    return ("Each fitted model is a record (features, library versions, training-data sha256, the fitted object), "
            "loadable with glioma_nb.records.", f.link("manifest.json"))


def _dev_vs_val(f: Facts) -> Answer:
    if not f.validation:
        return None
    return ("Feature shift between training and validation cohorts (SMD per feature, with and without ComBat).",
            f.link("tables/validation_shift_summary.csv"))


def _heterogeneity(f: Facts) -> Answer:
    return None


def _subgroups(f: Facts) -> Answer:
    return ("Survival by subgroup (WHO grade, IDH, 1p/19q) and consensus clusters within each subgroup.",
            f.link("04_stratify.html"))


# (id, section, short paraphrase, answer function; None = the author's)
CLEAR: list[tuple[str, str, str, Callable[[Facts], Answer] | None]] = [
    ("1", "Title", "Title names the radiomic methodology", None),
    ("2", "Abstract", "Structured summary", None),
    ("3", "Keywords", "Relevant keywords", None),
    ("4", "Introduction", "Scientific or clinical background", None),
    ("5", "Introduction", "Rationale for a radiomic approach", None),
    ("6", "Introduction", "Study objective(s)", None),
    ("7", "Study design", "Adherence to guidelines or checklists", lambda f: (
        "CLEAR and TRIPOD+AI items filled from the run in this supplement.", "checklist_clear.csv")),
    ("8", "Study design", "Ethical details (approval, consent, data protection)", None),
    ("9", "Study design", "Sample size calculation", _sample_size),
    ("10", "Study design", "Study nature (retrospective, prospective)", None),
    ("11", "Study design", "Eligibility criteria", None),
    ("12", "Study design", "Flowchart of the technical pipeline", _pipeline_chart),
    ("13", "Data", "Data source (private, public)", _cohort),
    ("14", "Data", "Data overlap", _overlap),
    ("15", "Data", "Data split methodology", _split),
    ("16", "Data", "Imaging protocol (acquisition and processing)", _imaging),
    ("17", "Data", "Definition of non-radiomic predictor variables", _predictors),
    ("18", "Data", "Definition of the reference standard (outcome)", _reference_standard),
    ("19", "Segmentation", "Segmentation strategy", _segmentation),
    ("20", "Segmentation", "Details of the operators performing segmentation", _operators),
    ("21", "Pre-processing", "Image pre-processing details", _preprocessing),
    ("22", "Pre-processing", "Resampling method and parameters", _radiomics_setting("resampledPixelSpacing", "resampling")),
    ("23", "Pre-processing", "Discretisation method and parameters", _radiomics_setting("binWidth", "bin width")),
    ("24", "Pre-processing", "Image types (original, filtered, transformed)", _radiomics_setting("imageType", "image types")),
    ("25", "Feature extraction", "Feature extraction method", _features),
    ("26", "Feature extraction", "Feature classes", _radiomics_setting("featureClass", "feature classes")),
    ("27", "Feature extraction", "Number of features", _n_features),
    ("28", "Feature extraction", "Default configuration statement for the remaining parameters",
     _radiomics_setting("(every parameter)", "every setting stated in the file; PyRadiomics defaults for the rest")),
    ("29", "Data preparation", "Handling of missing data", _missing),
    ("30", "Data preparation", "Details of class imbalance", _imbalance),
    ("31", "Data preparation", "Segmentation reliability analysis", _stability),
    ("32", "Data preparation", "Feature scaling details", lambda f: (
        "Features standardised (z-score) inside each CV fold, fitted on the training folds only.", f.link("params.yaml"))),
    ("33", "Data preparation", "Dimension reduction details", _stability),
    ("34", "Modelling", "Algorithm details", _algorithm),
    ("35", "Modelling", "Training and tuning details", _tuning),
    ("36", "Modelling", "Handling of confounders", None),
    ("37", "Modelling", "Model selection strategy", _tuning),
    ("38", "Evaluation", "Testing technique (internal, external)", _split),
    ("39", "Evaluation", "Performance metrics and rationale", _metrics),
    ("40", "Evaluation", "Uncertainty evaluation (e.g. confidence intervals)", _uncertainty),
    ("41", "Evaluation", "Statistical comparison of performance", _comparison),
    ("42", "Evaluation", "Comparison with non-radiomic and combined methods", _non_radiomic),
    ("43", "Evaluation", "Interpretability and explainability", _explain),
    ("44", "Results", "Baseline demographic and clinical characteristics", _baseline_chars),
    ("45", "Results", "Flowchart of eligibility", _flow_text),
    ("46", "Results", "Feature statistics (reproducibility, selection)", _stability),
    ("47", "Results", "Model performance evaluation", _performance),
    ("48", "Results", "Comparison with non-radiomic and combined approaches", _non_radiomic),
    ("49", "Discussion", "Overview of important findings", None),
    ("50", "Discussion", "Previous works and differences", None),
    ("51", "Discussion", "Practical implications", None),
    ("52", "Discussion", "Strengths and limitations", None),
    ("53", "Open science", "Sharing images with segmentation data", _share_images),
    ("54", "Open science", "Sharing radiomic feature data", _share_features),
    ("55", "Open science", "Sharing pre-processing scripts or settings", _share_code),
    ("56", "Open science", "Sharing source code for modelling", _share_code),
    ("57", "Open science", "Sharing final model files", _share_model),
    ("58", "Open science", "Sharing a ready-to-use system", None),
]

TRIPOD_AI: list[tuple[str, str, str, Callable[[Facts], Answer] | None]] = [
    ("1", "Title", "Identifies a prediction model study, the population and outcome", None),
    ("2", "Abstract", "Structured abstract (TRIPOD+AI for Abstracts)", None),
    ("3a", "Introduction", "Healthcare context and rationale", None),
    ("3b", "Introduction", "Target population and intended use", None),
    ("3c", "Introduction", "Known health inequalities between groups", None),
    ("4", "Objectives", "Study objectives, development and/or validation", None),
    ("5a", "Data", "Sources of data", _cohort),
    ("5b", "Data", "Dates of the collected participant data", _data_dates),
    ("6a", "Participants", "Study setting", None),
    ("6b", "Participants", "Eligibility criteria", None),
    ("6c", "Participants", "Treatments received", None),
    ("7", "Data preparation", "Pre-processing and quality checking", lambda f: (
        "QC of every case before a run (geometry, intensity, labels; errors refuse the run); "
        + (_preprocessing(f) or ("", None))[0], f.link("qc/problems.csv"))),
    ("8a", "Outcome", "Outcome definition and time of assessment", _reference_standard),
    ("8b", "Outcome", "Qualifications of outcome assessors, blinding", None),
    ("8c", "Outcome", "Outcome assessment consistency across groups", None),
    ("9a", "Predictors", "Choice of initial predictors", _predictors),
    ("9b", "Predictors", "Definition and measurement of predictors", _features),
    ("9c", "Predictors", "Qualifications of predictor assessors, blinding", _operators),
    ("10", "Sample size", "How the study size was arrived at", _sample_size),
    ("11", "Missing data", "Handling of missing data", _missing),
    ("12a", "Analytical methods", "How the data were used (development, evaluation)", _split),
    ("12b", "Analytical methods", "Handling of predictors (functional form, scaling)", _stability),
    ("12c", "Analytical methods", "Model type, building steps, tuning, internal validation", _algorithm),
    ("12d", "Analytical methods", "Heterogeneity across clusters (e.g. sites)", _heterogeneity),
    ("12e", "Analytical methods", "Performance measures and model comparisons", _metrics),
    ("12f", "Analytical methods", "Model updating from the evaluation", lambda f: (
        "No updating: a validation run applies the locked training models unchanged (ComBat harmonisation "
        "reported beside, never replacing).", f.link("05_validate.html")) if f.validation else None),
    ("12g", "Analytical methods", "How predictions were calculated for external validation", lambda f: (
        "Locked model records of the training run, verified unchanged by sha256.", f.link("qc/locked_settings.csv"))
        if f.validation else None),
    ("13", "Class imbalance", "Methods for class imbalance", _imbalance),
    ("14", "Fairness", "Approaches to address model fairness", None),
    ("15", "Model output", "Model output and thresholds", _model_output),
    ("16", "Training vs evaluation", "Differences between development and evaluation data", _dev_vs_val),
    ("17", "Ethical approval", "Ethics committee and consent", None),
    ("18a", "Open science", "Funding", None),
    ("18b", "Open science", "Conflicts of interest", None),
    ("18c", "Open science", "Protocol", None),
    ("18d", "Open science", "Registration", None),
    ("18e", "Open science", "Data sharing", _share_images),
    ("18f", "Open science", "Analytical code sharing", _share_code),
    ("19", "Patient and public involvement", "Patient and public involvement", None),
    ("20a", "Participants", "Participant flow, with and without the outcome", _flow_text),
    ("20b", "Participants", "Participant characteristics, missing data", _baseline_chars),
    ("20c", "Participants", "Distribution of predictors in development vs evaluation data", _dev_vs_val),
    ("21", "Model development", "Participants and outcome events in each analysis", _events),
    ("22", "Model specification", "Full model details (formula, code, object)", _full_model),
    ("23a", "Model performance", "Performance estimates with confidence intervals, and subgroups", _performance),
    ("23b", "Model performance", "Heterogeneity across clusters", _heterogeneity),
    ("24", "Model updating", "Results of any model updating", None),
    ("25", "Discussion", "Interpretation, including fairness", None),
    ("26", "Discussion", "Limitations (sample, overfitting, missing data, biases)", None),
    ("27a", "Discussion", "Handling of poor-quality or unavailable input data", lambda f: (
        "QC warnings per case, segmentation flags (empty, implausible volumes) and the flow's exclusions.",
        f.link("qc/problems.csv"))),
    ("27b", "Discussion", "User interaction and expertise needed", None),
    ("27c", "Discussion", "Implications for practice and future research", None),
]
# calibration is part of 12e / 23a in TRIPOD+AI; shown with the evaluation items of CLEAR (39)
CALIBRATION = _calibration
CHECKLISTS = {"clear": ("CLEAR (Kocak et al., Insights Imaging 2023)", CLEAR),
              "tripod_ai": ("TRIPOD+AI (Collins et al., BMJ 2024)", TRIPOD_AI)}


def fill(items: list[tuple[str, str, str, Callable[[Facts], Answer] | None]], facts: Facts) -> pd.DataFrame:
    """One row per item: item, section, topic, answered_by (from the run | author), answer, where (a link)."""
    rows = []
    for item, section, topic, fn in items:
        got = fn(facts) if fn is not None else None
        if got is None or not got[0]:
            rows.append({"item": item, "section": section, "topic": topic, "answered_by": AUTHOR,
                         "answer": "for the author to answer", "where": ""})
        else:
            rows.append({"item": item, "section": section, "topic": topic, "answered_by": AUTO,
                         "answer": got[0], "where": got[1] or ""})
    return pd.DataFrame(rows)
