"""Notebook 03's one call: every classification node on every feature set, the CNS5 diagnosis end to end,
and the seed paper's summary, as a :class:`ClassifyResult` the notebook only displays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from glioma_nb import compute, config, flow, plotting, reporting, stats
from glioma_nb.classify import cns5, cv
from glioma_nb.classify.pipelines import CLASSIFIERS
from glioma_nb.io import features
from glioma_nb.classify import nodes as nodes_mod
from glioma_nb.results import StepContext, StepResult


@dataclass(repr=False)  # StepResult.__repr__: what the result holds, not every table
class ClassifyResult(StepResult):
    """Tables, figures and model records of notebook 03 (see :class:`glioma_nb.results.StepResult`).

    ``grid`` is the node x feature set evaluation (:class:`cv.NodeGrid`); ``sets`` the feature sets it used.
    """

    grid: cv.NodeGrid | None = None
    sets: dict[str, pd.DataFrame] = field(default_factory=dict)
    cns5_accuracy: float | None = None
    cns5_accuracy_ci: tuple[float, float] = (float("nan"), float("nan"))

    def set_sizes(self) -> pd.DataFrame:
        """Cases and features per feature set."""
        out = pd.DataFrame({"cases": {k: v.shape[0] for k, v in self.sets.items()},
                            "features": {k: v.shape[1] for k, v in self.sets.items()}}).rename_axis("feature set")
        out.attrs["table"] = "feature_sets"
        return out


_CLASSIFIER_WORDS = {"logreg_l1": "L1-penalised logistic regression", "logreg_l2": "L2-penalised logistic regression",
                     "svm_linear": "linear SVM (Platt-scaled)", "svm_rbf": "RBF-kernel SVM (Platt-scaled)",
                     "random_forest": "random forest"}
_SELECTION_WORDS = {"univariate": "ANOVA F", "l1": "L1-logistic", "none": "no"}


def method_sentence(*, classifier: str, selection: str, k_features: int, outer_splits: int, inner_splits: int,
                    repeats: int, n_permutations: int, permutation: str, n_bootstrap: int, baseline: str,
                    min_class_size: int, diagnosis_features: str, grid_params: dict[str, list] | None = None,
                    perm_methods: Sequence[str] = ()) -> str:
    """This run's method in words, from its own parameters (the notebook's introduction describes it in general)."""
    grid = "; ".join(f"{k.split('__')[-1]} in {v}" for k, v in (grid_params or {}).items())
    text = (f"**This run.** {_CLASSIFIER_WORDS.get(classifier, classifier)} with balanced class weights"
            + (f" ({grid}, tuned by inner AUC)" if grid else "") + "; "
            + (f"{_SELECTION_WORDS.get(selection, selection)} selection of at most {k_features} features"
               if selection != "none" else "every feature (no selection)")
            + f", fitted inside the folds. Nested CV by patient: {outer_splits} outer x {inner_splits} inner "
              f"stratified folds, the outer loop repeated with {repeats} seed(s) and the out-of-fold probabilities "
              f"averaged. 95% CIs from {n_bootstrap:,} stratified bootstrap resamples; DeLong's test against "
              f"`{baseline}`. A node needs {min_class_size} patients in its smaller class. ")
    if n_permutations:
        used = sorted(set(perm_methods)) or [permutation]
        text += (f"Permutation test: up to {n_permutations} label permutations (statistic: "
                 + " / ".join(f"{m}, {cv.PERMUTATION_METHODS.get(m, m)}" for m in used)
                 + ")" + (f", stopped early once {cv.STOP_AFTER} permuted AUCs reach the observed one"
                          if n_permutations > cv.STOP_AFTER else "")
                 + f"; the smallest possible P is 1/{n_permutations + 1}. ")
    else:
        text += "No permutation test (`classify.n_permutations: 0`). "
    return text + f"The CNS5 diagnosis uses the `{diagnosis_features}` feature set for every node."


def step(ctx: StepContext, *, min_class_size: int = 5, nodes: Sequence[str] = (), feature_sets: Sequence[str] = (),
         baseline: str = "clinical", classifier: str = "logreg_l2", selection: str = "univariate",
         k_features: int = 10, outer_splits: int = 5, inner_splits: int = 3, repeats: int = 3,
         n_permutations: int = 100, permutation: str = "auto", n_bootstrap: int = 1000,
         compare: Sequence[str] = (), diagnosis_features: str = "all", n_jobs: int = -1,
         progress: bool = True) -> ClassifyResult:
    """Nested CV of every node x feature set (with permutation and DeLong tests), final models refitted on all
    cases, figures, the end-to-end CNS5 diagnosis and the average accuracies (parameters: ``classify`` in
    ``configs/base.yaml``)."""
    seed = ctx.seed
    pairs = config.parse_pairs(list(compare), "classify.compare")  # a malformed comparison fails before any fitting
    res = ClassifyResult()
    node_table = nodes_mod.node_label_table(ctx.clinical, min_class_size=min_class_size)
    res.tables["classification_nodes"] = node_table
    fig, ax = plt.subplots(figsize=(7, 3.8))
    plotting.plot_node_counts(node_table, ax=ax)
    res.add_figure("node_counts", fig)

    sources = ctx.feature_tables()
    sources = {"clinical": features.clinical_features(ctx.clinical, sources.get("volumetric")), **sources}
    set_aliases: dict[str, str] = {}  # a requested set identical to an earlier one -> the name it is shown under
    res.sets, set_notes = features.assemble_feature_sets(sources, list(feature_sets), set_aliases)
    res.text["feature_sets"] = "\n".join(f"- {n}" for n in set_notes)

    with getattr(ctx, "executor", compute.SERIAL).joblib():   # compute.executor: the grid on its Dask workers
        grid = res.grid = cv.evaluate(
            res.sets, ctx.clinical, nodes=list(nodes), baseline=baseline, classifier=classifier, selection=selection,
            k_features=k_features, outer_splits=outer_splits, inner_splits=inner_splits, repeats=repeats,
            n_permutations=n_permutations, permutation=permutation, n_bootstrap=n_bootstrap,
            min_class_size=min_class_size, n_jobs=n_jobs, random_state=seed, refit=True, progress=progress,
            cache_dir=ctx.output_dir / "cache" / "03_classify")
    res.tables.update(classification_results=grid.results, oof_predictions=grid.oof,
                      classification_skipped=grid.skipped,
                      classification_summary=reporting.summary_table(grid.results))
    res.models = {rec.name: rec for rec in grid.models.values()}
    if pairs:
        res.tables["classification_comparisons"] = cv.compare_sets(grid.oof, pairs, n_bootstrap=n_bootstrap,
                                                                   random_state=seed)
    res.text["feature_sets"] += "".join(f"\n- {n}" for n in grid.notes)
    res.text["method"] = method_sentence(
        classifier=classifier, selection=selection, k_features=k_features, outer_splits=outer_splits,
        inner_splits=inner_splits, repeats=repeats, n_permutations=n_permutations, permutation=permutation,
        n_bootstrap=n_bootstrap, baseline=baseline, min_class_size=min_class_size,
        diagnosis_features=diagnosis_features, grid_params=CLASSIFIERS.get(classifier, (None, {}))[1],
        perm_methods=grid.results["perm_method"].dropna().tolist() if "perm_method" in grid.results else ())
    statements = reporting.chance_statements(grid.results)
    res.text["chance"] = ("\n".join(f"- {s}" for s in statements) if statements else
                          "Every evaluated node x feature set differs from chance (permutation P < 0.05)."
                          if "perm_p" in grid.results else "Permutation test off (`n_permutations = 0`).")
    best = grid.best()
    if len(best):
        res.add_figure("roc", plotting.plot_roc_panels(cv.roc_bands(grid.oof, grid.results), grid.results))
        res.add_figure("calibration", plotting.plot_calibration_panels(cv.calibration_curves(grid.oof, best), best))
        res.add_figure("decision_curves", plotting.plot_decision_panels(
            cv.decision_curves(grid.oof, best, baseline=baseline), best))
        res.add_figure("confusion", plotting.plot_confusion_panels(best))
    tops = {f"{r.node} ({r.feature_set})": cv.top_features(grid.models[(r.node, r.feature_set)])
            for r in best.itertuples()}
    if tops:
        res.add_figure("top_features", plotting.plot_top_features(tops))
        res.tables["classification_top_features"] = pd.concat(tops, names=["model"]).reset_index(level=0)

    # the WHO CNS5 diagnosis end to end: every node cross-validated together on one feature set
    diag_nodes = grid.results["node"].unique().tolist() if len(grid.results) else []
    diag_set = set_aliases.get(diagnosis_features, diagnosis_features)
    diag_X = res.sets.get(diag_set)
    if diag_X is None:  # not among the compared sets: build it from the same sources
        diag_X = features.assemble_feature_sets(sources, [diag_set])[0].get(diag_set)
    if diag_X is not None and "idh" in diag_nodes:
        cascade = cns5.cascade_cv(diag_X, ctx.clinical, diag_nodes, outer_splits=outer_splits, random_state=seed,
                                  classifier=classifier, selection=selection, k=k_features, inner_splits=inner_splits)
        res.tables["cns5_predictions"] = cascade.reset_index()
        known = cascade[~cascade["true_diagnosis"].str.startswith("Unclassified")]
        hits = int((known["true_diagnosis"] == known["pred_diagnosis"]).sum())
        res.cns5_accuracy = hits / len(known) if len(known) else float("nan")
        res.cns5_accuracy_ci = stats.wilson_ci(hits, len(known))
        fig, ax = plt.subplots(figsize=(8, 6))
        plotting.plot_diagnosis_confusion(known, ax=ax)
        res.add_figure("cns5_confusion", fig)
        lo, hi = res.cns5_accuracy_ci
        res.text["cns5"] = (f"End-to-end CNS5 accuracy: **{res.cns5_accuracy:.2f}** [95% CI {lo:.2f}-{hi:.2f}, Wilson] "
                            f"on {len(known)} cases with a reference diagnosis (feature set `{diag_set}`, nodes "
                            f"{diag_nodes}).")
    else:
        res.text["cns5"] = (f"No end-to-end diagnosis: needs a trained IDH node and the feature set "
                            f"`{diagnosis_features}` (sources: {list(sources)}).")

    res.tables["flow_03_classify"] = node_flows(ctx.clinical, grid, res.sets, list(nodes))
    res.add_figure("flow", plotting.plot_flow(res.tables["flow_03_classify"]))

    avg = cv.average_accuracy(grid.results, oof=grid.oof, n_boot=n_bootstrap, random_state=seed)
    res.tables["classification_average_accuracy"] = avg
    res.metrics = dict(
        trainable_nodes=node_table.loc[node_table["trainable"], "node"].tolist(),
        labelled_per_node=dict(zip(node_table["node"], node_table["labelled"].astype(int))),
        results=grid.headline(), skipped=grid.skipped.to_dict("records"), cns5_accuracy=res.cns5_accuracy,
        cns5_accuracy_ci=list(res.cns5_accuracy_ci) if res.cns5_accuracy is not None else None,
        average_accuracy=avg.set_index("kind")["average_accuracy"].round(4).to_dict() if len(avg) else {})
    return res


def node_flows(clinical: pd.DataFrame, grid: cv.NodeGrid, sets: dict[str, pd.DataFrame], nodes: list[str]) -> pd.DataFrame:
    """Each node's participant flow for its headline feature set (highest AUC): every case in, each left out with
    its reason (not eligible, label missing, no features of the set, node not evaluated), the analysed ones."""
    best = grid.best()
    parts = []
    for node in nodes:
        row = best[best["node"] == node] if len(best) else best
        if len(row):
            fs = str(row["feature_set"].iloc[0])
            analysed = grid.oof.loc[(grid.oof["node"] == node) & (grid.oof["feature_set"] == fs), "case_id"]
            parts.append(nodes_mod.node_flow(f"03 {node} ({fs})", clinical, node, fs, sets[fs].index, analysed))
        else:
            why = "; ".join(grid.skipped.loc[grid.skipped["node"] == node, "reason"].astype(str).unique()) or "skipped"
            parts.append(nodes_mod.node_flow(f"03 {node}", clinical, node, None, [], [], why_not=why))
    return flow.combine(*parts)
