"""Locked models of a reference run applied unchanged to a validation cohort: classifiers, the CNS5 diagnosis
built from them, consensus clusters (nearest training centroid) and Cox risk models (risk groups cut at the
training median). Models are found by their record's kind (:mod:`glioma_nb.records`), never by file name."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve

from glioma_nb import io, stats
from glioma_nb.classify import cns5, cv, nodes
from glioma_nb.io import features
from glioma_nb.runs import Reference, ValidationError
from glioma_nb.segment import metrics as seg_metrics
from glioma_nb.stratify import clustering, subgroups, survival
from glioma_nb.stratify import risk as risk_models


def validation_sources(clinical: pd.DataFrame, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The classification sources of 03_classify for the validation cohort (clinical + image tables)."""
    return {"clinical": features.clinical_features(clinical, tables.get("volumetric")), **tables}


def _auc_ok(y: np.ndarray) -> bool:
    return len(y) >= 2 and 0 < int(np.sum(y)) < len(y)


def lacking_sources(rec: Any, sources: Mapping[str, pd.DataFrame]) -> list[str]:
    """Sources a locked model's features come from (``<source>:<feature>``) that the validation cohort does
    not have, e.g. a released feature table of the training cohort inside its ``all`` set."""
    needed = {str(f).split(":", 1)[0] for f in rec.features if ":" in str(f)}
    return sorted(needed - set(sources))


def fill_clinical(X: pd.DataFrame, rec: Any, what: str, notes: list[str]) -> pd.DataFrame:
    """``X`` with the clinical covariates of a locked model that the validation cohort does not record added
    as missing values, which the model's own imputer fills with the training median (said in ``notes``);
    image features stay required."""
    absent = [f for f in rec.features
              if str(f).split(":", 1)[0] in risk_models.CLINICAL_SOURCES and f not in X.columns]
    if absent:
        notes.append(f"{what}: the validation cohort does not record {absent}; imputed with the training median")
        X = X.assign(**{f: np.nan for f in absent})
    return X


def apply_classifiers(ref: Reference, sources: Mapping[str, pd.DataFrame], clinical: pd.DataFrame, *,
                      exclude: Iterable[str] = (), n_bootstrap: int = 1000, random_state: int = 0,
                      harmonisation: str = "none") -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Every locked classifier of the reference run on the validation cohort.

    Returns (results: one row per node x feature set with validation metrics and CIs beside the
    training cross-validation ones; predictions: case_id, node, feature_set, y, prob; notes).
    Cases in ``exclude`` (the overlap guard's) are predicted but not scored.
    """
    exclude = set(exclude)
    train_cv = ref.table("classification_results")
    train_cv = train_cv.set_index(["node", "feature_set"]) if train_cv is not None and len(train_cv) else None
    clin = nodes.with_node_columns(clinical)
    rows, preds, notes = [], [], []
    for rel, rec in ref.models_of("classifier"):
        node_name, fs = rec.meta["node"], rec.meta["feature_set"]
        node = nodes.NODES[node_name]
        sets, set_notes = features.assemble_feature_sets(dict(sources), [fs])
        if fs not in sets:
            notes.append(f"{node_name}/{fs}: the validation cohort cannot build this feature set ({'; '.join(set_notes)})")
            continue
        X = sets[fs]
        lacking = lacking_sources(rec, sources)
        if lacking:
            notes.append(f"{node_name}/{fs}: the locked model uses {lacking} features, which the validation "
                         "cohort does not have")
            continue
        X = fill_clinical(X, rec, f"{node_name}/{fs}", notes)
        try:
            prob = rec.predict(X)
        except KeyError as exc:  # the validation features do not match the locked model's columns
            raise ValidationError(f"locked {rel} of reference run {ref.run_id}: {exc.args[0]}") from None
        c = clin.set_index("case_id").reindex(X.index).rename_axis("case_id").reset_index()
        elig = node.eligible(c).fillna(False).to_numpy(dtype=bool)
        y = node.target(c).set_axis(X.index)[elig].dropna()
        scored = y.index[~y.index.isin(exclude)]
        preds.append(pd.DataFrame({"case_id": X.index, "node": node_name, "feature_set": fs, "harmonisation": harmonisation,
                                   "y": node.target(c).set_axis(X.index).where(elig).to_numpy(dtype=float),
                                   "prob": prob.to_numpy(), "scored": X.index.isin(scored)}))
        row: dict[str, Any] = {"node": node_name, "kind": node.kind, "feature_set": fs, "harmonisation": harmonisation,
                               "n": int(len(scored)), "n_pos": int((y[scored] == 1).sum()),
                               "n_neg": int((y[scored] == 0).sum())}
        yy, pp = y[scored].to_numpy(dtype=int), prob[scored].to_numpy()
        if _auc_ok(yy):
            st = cv.node_statistics(yy, pp, n_boot=n_bootstrap, random_state=random_state)
            row.update({k: st[k] for k in ("auc", "auc_lo", "auc_hi", "accuracy", "accuracy_lo", "accuracy_hi",
                                           "balanced_accuracy", "balanced_accuracy_lo", "balanced_accuracy_hi",
                                           "calibration_slope", "calibration_intercept")})
            row["brier"] = float(np.mean((pp - yy) ** 2))
        elif len(yy):
            row.update(accuracy=cv.threshold_metrics(yy, pp)["accuracy"], brier=float(np.mean((pp - yy) ** 2)))
            notes.append(f"{node_name}/{fs}: one class only among the {len(yy)} labelled validation cases; "
                         "AUC undefined, accuracy reported")
        elif len(y):
            notes.append(f"{node_name}/{fs}: all {len(y)} labelled validation cases are also in the training cohort; "
                         "nothing left to score")
        else:
            notes.append(f"{node_name}/{fs}: no labelled validation case (the cohort lacks {node_name} labels)")
        if train_cv is not None and (node_name, fs) in train_cv.index:
            r = train_cv.loc[(node_name, fs)]
            row.update(train_cv_auc=r["auc"], train_cv_auc_lo=r["auc_lo"], train_cv_auc_hi=r["auc_hi"],
                       train_cv_accuracy=r["accuracy"], train_cv_n=int(r["n"]))
        rows.append(row)
    pred = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(
        columns=["case_id", "node", "feature_set", "harmonisation", "y", "prob", "scored"])
    return pd.DataFrame(rows), pred, notes


def training_choice(results: pd.DataFrame) -> pd.DataFrame:
    """Per node, the feature set with the best *training* cross-validated AUC (chosen before looking
    at the validation cohort), with its validation row."""
    r = results.dropna(subset=["train_cv_auc"]) if "train_cv_auc" in results else results.iloc[0:0]
    if r.empty:
        return r
    return r.loc[r.groupby(["node", "harmonisation"], sort=False)["train_cv_auc"].idxmax()].reset_index(drop=True)


def average_accuracy(chosen: pd.DataFrame) -> pd.DataFrame:
    """The paper's summary on the validation cohort: mean accuracy over histology and molecular nodes
    (each node's training-chosen feature set), beside the same nodes' training CV accuracy."""
    if chosen.empty or "accuracy" not in chosen:
        return pd.DataFrame(columns=["harmonisation", "kind", "nodes", "validation_accuracy", "train_cv_accuracy"])
    c = chosen.dropna(subset=["accuracy"])
    return (c.groupby(["harmonisation", "kind"]).agg(nodes=("node", ", ".join), validation_accuracy=("accuracy", "mean"),
                                                      train_cv_accuracy=("train_cv_accuracy", "mean")).reset_index())


def scored_diagnoses(table: pd.DataFrame, exclude: Iterable[str] = ()) -> pd.DataFrame:
    """The cases (index case_id) a CNS5 accuracy is scored on: a reference diagnosis, not excluded."""
    return table[~table["true_diagnosis"].str.startswith("Unclassified") & ~table.index.isin(set(exclude))]


def cns5_validation(ref: Reference, predictions: pd.DataFrame, clinical: pd.DataFrame, feature_set: str, *,
                    exclude: Iterable[str] = (), n_bootstrap: int = 1000, random_state: int = 0
                    ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """CNS5 integrated diagnosis from the locked node models of ``feature_set`` (threshold 0.5): the
    1p/19q model's call is used for whoever the IDH model calls mutant, as in use. Accuracy with a
    bootstrap CI over cases with a reference diagnosis."""
    p = predictions[predictions["feature_set"] == feature_set]
    truth = cns5.true_markers(clinical)
    pred = pd.DataFrame(np.nan, index=truth.index, columns=list(cns5.MARKER_NODES))
    for marker, node in cns5.MARKER_NODES.items():
        d = p[p["node"] == node].set_index("case_id")["prob"]
        pred.loc[d.index.intersection(pred.index), marker] = (d >= 0.5).astype(float)
    truth["diagnosis"] = [cns5.cns5_diagnosis(**r) for r in truth[list(cns5.MARKER_NODES)].to_dict("records")]
    pred["diagnosis"] = [cns5.cns5_diagnosis(**r) for r in pred[list(cns5.MARKER_NODES)].to_dict("records")]
    table = pd.concat([truth.add_prefix("true_"), pred.add_prefix("pred_")], axis=1)
    table = table[p["case_id"].drop_duplicates().pipe(lambda s: table.index.isin(s))] if len(p) else table.iloc[0:0]
    known = scored_diagnoses(table, exclude)
    correct = (known["true_diagnosis"] == known["pred_diagnosis"]).astype(float)
    acc, lo, hi, n = stats.bootstrap_mean(correct, n_boot=n_bootstrap, random_state=random_state)
    return table, {"feature_set": feature_set, "accuracy": acc, "accuracy_lo": lo, "accuracy_hi": hi, "n": n,
                   "nodes": sorted(set(p["node"]) & set(cns5.MARKER_NODES.values()))}


def apply_clusters(ref: Reference, tables: Mapping[str, pd.DataFrame], clinical: pd.DataFrame, *,
                   exclude: Iterable[str] = (), time_unit: str = "months", horizon: float = 24.0
                   ) -> tuple[dict[str, Any], list[str]]:
    """Assign validation cases to the reference run's consensus clusters (nearest training centroid in
    the training PCA space), per subgroup, and test survival by assigned cluster (KM, log-rank, Cox).
    Returns :class:`clustering.SubgroupClusters` per subgroup (the training model, the assigned labels)."""
    exclude = set(exclude)
    out, notes = {}, []
    feature_set = ref.config["stratify"]["cluster_features"]
    sets, set_notes = features.assemble_feature_sets(dict(tables), [feature_set])
    surv_all = survival.survival_frame(clinical, time_unit).set_index("case_id")
    for rel, rec in ref.models_of("clusters"):
        name = rec.meta["subgroup"]
        sg = subgroups.select_subgroup(clinical, name if name in subgroups.SUBGROUPS else rec.meta["query"])
        sg.case_ids = [c for c in sg.case_ids if c not in exclude]  # overlap cases are not assigned
        sg.n = len(sg.case_ids)
        res = clustering.SubgroupClusters(sg, model=rec.payload, notes=list(sg.problems))
        out[name] = res
        if feature_set not in sets:
            res.notes.append(f"features {feature_set!r} unavailable: {'; '.join(set_notes)}")
            continue
        ids = [c for c in sg.case_ids if c in sets[feature_set].index]
        if not ids:
            res.notes.append("no validation case in this subgroup")
            continue
        res.labels = pd.Series(rec.predict(sets[feature_set].loc[ids]).to_numpy(), index=pd.Index(ids, name="case_id"),
                               name="cluster")
        surv = surv_all.join(res.labels, how="inner").reset_index()
        if surv.empty or surv["event"].sum() == 0:
            res.notes.append(f"no survival data with events among the {len(ids)} assigned cases")
            continue
        res.survival = clustering.cluster_survival(surv, "cluster", [], horizon=horizon)
        res.notes.extend(res.survival["notes"])
    notes += [f"{n}: {x}" for n, r in out.items() for x in r.notes]
    return out, notes


def cluster_comparison(ref: Reference, assigned: Mapping[str, Any]) -> pd.DataFrame:
    """Per subgroup: training clusters' median OS and log-rank P beside the assigned validation ones."""
    train = ref.table("clusters_summary")
    val = clustering.cluster_table(dict(assigned)) if assigned else pd.DataFrame()
    cols = ["subgroup", "n_cases", "events", "k", "median_os_by_cluster", "logrank_p"]
    t = train.reindex(columns=cols) if train is not None else pd.DataFrame(columns=cols)
    v = val.reindex(columns=cols).drop(columns=["k"]) if len(val) else pd.DataFrame(columns=[c for c in cols if c != "k"])
    m = t.merge(v, on="subgroup", how="outer", suffixes=("_train", "_validation"))
    return clustering.PAPER_SPLITS.merge(m, on="subgroup", how="right")


def apply_risk_models(ref: Reference, tables: Mapping[str, pd.DataFrame], clinical: pd.DataFrame, *,
                      exclude: Iterable[str] = (), time_unit: str = "months", n_bootstrap: int = 500,
                      random_state: int = 0, harmonisation: str = "none") -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Every locked Cox risk model on the validation cohort: Harrell and Uno C-index with bootstrap CIs
    and the log-rank P of the risk groups cut at the *training* median risk. Returns (metrics, per-case
    risks, notes)."""
    exclude = set(exclude)
    surv = survival.survival_frame(clinical, time_unit).set_index("case_id")
    surv = surv[~surv.index.isin(exclude)]
    sources = risk_models.survival_sources(clinical, dict(tables))
    ref_clin = None
    rows, risks, notes = [], [], []
    for rel, rec in ref.models_of("risk"):
        if "outcome" in rec.meta:   # notebook 06's per-patient transformation / OS models: 06 applies them
            continue
        fs = rec.meta["feature_set"]
        sets, set_notes = features.assemble_feature_sets(sources, [fs])
        if fs not in sets:
            notes.append(f"risk model {fs}: the validation cohort cannot build it ({'; '.join(set_notes)})")
            continue
        lacking = lacking_sources(rec, sources)
        if lacking:
            notes.append(f"risk model {fs}: the locked model uses {lacking} features, which the validation "
                         "cohort does not have")
            continue
        try:
            risk = rec.predict(fill_clinical(sets[fs], rec, f"risk model {fs}", notes))
        except KeyError as exc:  # the validation features do not match the locked model's columns
            raise ValidationError(f"locked {rel} of reference run {ref.run_id}: {exc.args[0]}") from None
        # risk groups cut at the training cohort's median risk (locked), not the validation cohort's
        cut = rec.meta.get("training_risk_median")
        if cut is None:  # bundles written before the median was stored: recompute from the training tables
            if ref_clin is None:
                ref_clin = _reference_clinical(ref)
            tr_sets, _ = features.assemble_feature_sets(risk_models.survival_sources(ref_clin, ref.feature_tables()), [fs])
            cut = float(rec.predict(tr_sets[fs]).median())
        d = surv.join(risk, how="inner").dropna(subset=["risk"])
        row: dict[str, Any] = {"feature_set": fs, "harmonisation": harmonisation, "n": int(len(d)),
                               "events": int(d["event"].sum()) if len(d) else 0, "training_median_risk": cut}
        cvm = rec.meta.get("cv_metrics") or {}
        row.update({f"train_cv_{k}": cvm.get(k) for k in ("c_harrell", "c_harrell_low", "c_harrell_high")})
        if len(d) >= 5 and d["event"].sum() >= 2:
            m = survival.survival_metrics(d, n_bootstrap=n_bootstrap, random_state=random_state, notes=notes)
            row.update({k: m[k] for k in ("c_harrell", "c_harrell_low", "c_harrell_high", "c_uno", "c_uno_low", "c_uno_high")})
            d = d.assign(risk_group=(d["risk"] > cut).astype(int))
            lr = survival.logrank(d, "risk_group")
            row["risk_groups"] = "/".join(str(int((d["risk_group"] == g).sum())) for g in (0, 1))
            row["logrank_p"] = lr["p_value"] if lr else np.nan
        else:
            notes.append(f"risk model {fs}: {len(d)} validation cases with survival, {row['events']} events: "
                         "too few for a C-index")
        rows.append(row)
        risks.append(d.reset_index()[["case_id", "time", "event", "risk"]].assign(feature_set=fs, harmonisation=harmonisation,
                                                                              training_median_risk=cut))
    risk_table = pd.concat(risks, ignore_index=True) if risks else pd.DataFrame(
        columns=["case_id", "time", "event", "risk", "feature_set", "harmonisation", "training_median_risk"])
    return pd.DataFrame(rows), risk_table, notes


def _reference_clinical(ref: Reference) -> pd.DataFrame:
    """The reference run's canonical clinical table (its cohort files must still be readable)."""
    cohort, report = io.check_cohort(ref.config, progress=False, images=False)
    return cohort.clinical


# ------------------------------------------------------------------------------------------- headline
def segmentation_comparison(ref: Reference, scores: pd.DataFrame | None, *, exclude: Iterable[str] = (),
                            n_bootstrap: int = 2000, random_state: int = 0) -> pd.DataFrame:
    """Dice/HD95 per region: the reference run's (its scored cases) beside this cohort's, the overlap
    guard's cases left out of the latter."""
    train = ref.table("segmentation_summary")
    cols = ["region", "level", "metric", "mean", "ci_low", "ci_high", "n"]
    t = train.reindex(columns=cols) if train is not None and len(train) else pd.DataFrame(columns=cols)
    t["level"] = t["level"].fillna("global")    # a reference run from before lesion-wise metrics
    if scores is not None and len(scores):
        s = scores[~scores["case_id"].astype(str).isin(set(exclude))]
        v = seg_metrics.summarise(s, n_boot=n_bootstrap, random_state=random_state).reindex(columns=cols)
    else:
        v = pd.DataFrame(columns=cols)
    return t.merge(v, on=["region", "level", "metric"], how="outer", suffixes=("_train", "_validation"))


def _scored(predictions: pd.DataFrame, node: str, feature_set: str, harmonisation: str) -> pd.DataFrame:
    """The scored, labelled validation predictions of one locked model and harmonisation."""
    p = predictions
    return p[(p["node"] == node) & (p["feature_set"] == feature_set) & (p["harmonisation"] == harmonisation)
             & p["scored"].astype(bool)].dropna(subset=["y"])


def validation_roc_curves(train_oof: pd.DataFrame | None, predictions: pd.DataFrame, chosen: pd.DataFrame
                          ) -> pd.DataFrame:
    """ROC curves of each node's training-chosen feature set: the training cross-validation (out-of-fold) and
    the locked model on the validation cohort per harmonisation (long frame: node, source, n, auc, fpr, tpr)."""
    parts = []
    for node in dict.fromkeys(chosen["node"]) if len(chosen) else []:
        c = chosen[chosen["node"] == node]
        fs = c["feature_set"].iloc[0]
        sources = []
        if train_oof is not None:
            sources.append(("training CV", train_oof[(train_oof["node"] == node) & (train_oof["feature_set"] == fs)]))
        sources += [(harm, _scored(predictions, node, fs, harm)) for harm in c["harmonisation"]]
        for source, d in sources:
            if d["y"].nunique() == 2:
                fpr, tpr, _ = roc_curve(d["y"], d["prob"])
                parts.append(pd.DataFrame({"node": node, "source": source, "n": len(d),
                                           "auc": roc_auc_score(d["y"], d["prob"]), "fpr": fpr, "tpr": tpr}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["node", "source", "n", "auc", "fpr", "tpr"])


def validation_calibration_curves(predictions: pd.DataFrame, chosen: pd.DataFrame, n_bins: int = 4) -> pd.DataFrame:
    """Reliability curves (quantile bins) of the locked models on the validation cohort, per node's
    training-chosen feature set and harmonisation (long frame: node, harmonisation, mean_predicted,
    fraction_positive)."""
    parts = []
    for r in chosen.itertuples() if len(chosen) else []:
        d = _scored(predictions, r.node, r.feature_set, r.harmonisation)
        if d["y"].nunique() < 2:
            continue
        frac, mean_pred = calibration_curve(d["y"], d["prob"], n_bins=n_bins, strategy="quantile")
        parts.append(pd.DataFrame({"node": r.node, "harmonisation": r.harmonisation, "mean_predicted": mean_pred,
                                   "fraction_positive": frac}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["node", "harmonisation", "mean_predicted", "fraction_positive"])
