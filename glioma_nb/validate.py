"""Validation: models locked in a training run, applied unchanged to an independent cohort.

A validation run names a *reference run* (``validate.reference_run``): a completed training run whose
``models/`` hold the stability filters (02), classifiers (03), consensus clusters and Cox risk models
(04). The validation cohort is segmented and its signature extracted with the reference run's models
and settings (:func:`lock_config`), the reference run's filters are applied (``signature.filter_from``),
and notebook 05 applies every locked model (:func:`apply_classifiers`, :func:`apply_clusters`,
:func:`apply_risk_models`). The reference run is only read: its model files are hashed when the runner
writes them, checked before use (:func:`load_reference`) and again after (:func:`verify_unchanged`).

Around the locked models: the patient-overlap guard (:func:`patient_overlap`: same patient id, or the
same image by a fingerprint of a downsampled, normalised image), the site-shift report
(:func:`shift_table`: standardised mean difference and Kolmogorov-Smirnov per feature) and ComBat
harmonisation to the training cohort (:class:`ReferenceComBat`, fitted on training features only).
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from glioma_nb import config as config_mod, io, paths, provenance, runner

#: steps of a validation run: nothing is refitted, so 03_classify and 04_stratify do not run
VALIDATION_STEPS = ("01_segment", "02_signature", "05_validate")
#: settings a validation run takes from its reference run (the models only make sense with them)
LOCKED_KEYS = ("segment.model", "segment.weights", "segment.overlap", "segment.tta",
               "signature.intensity_percentiles", "signature.mask", "signature.network", "signature.radiomics",
               "classify.diagnosis_features", "stratify.time_unit_report", "stratify.risk_split",
               "stratify.calibration_years", "stratify.horizons_years", "stratify.adjust_for")
#: steps whose models a reference run must hold
REFERENCE_STEPS = ("02_signature", "03_classify", "04_stratify")
PAPER_ACCURACY = {"histology": {"cross-validation": 0.898, "independent test": 0.839},
                  "molecular": {"cross-validation": 0.861, "independent test": 0.804}}


class ValidationError(RuntimeError):
    """A validation run cannot use its reference run; the message says what is wrong and the fix."""


# ----------------------------------------------------------------------------------------- reference runs
def model_hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of every file under a run's ``models/`` (relative path -> hash), sorted."""
    root = Path(run_dir) / "models"
    return {str(p.relative_to(run_dir)): provenance.sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".part")}


@dataclass
class Reference:
    """A completed training run, read-only: its folder, manifest, frozen config and model hashes."""

    run_dir: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    models: dict[str, str]
    notes: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def cohort(self) -> str:
        return self.manifest["cohort"]

    def metrics(self, step: str) -> dict[str, Any]:
        return m_step(self.run_dir, step)

    def table(self, name: str) -> pd.DataFrame | None:
        for ext, read in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
            f = self.run_dir / "tables" / f"{name}{ext}"
            if f.exists():
                return read(f)
        return None

    def feature_tables(self) -> dict[str, pd.DataFrame]:
        return runner.read_feature_tables(self.run_dir)

    def load(self, rel: str) -> dict[str, Any]:
        """A model bundle of the reference run, after checking its hash against the recorded one."""
        import joblib

        path = self.run_dir / rel
        if not path.exists():
            raise ValidationError(f"reference run {self.run_id}: {rel} is missing; the reference run's models must "
                                  "be complete: rerun its training cohort")
        if rel in self.models and provenance.sha256_file(path) != self.models[rel]:
            raise ValidationError(f"reference run {self.run_id}: {rel} changed after it was checked "
                                  f"(sha256 {self.models[rel][:12]}); a locked model must not change")
        return joblib.load(path)


def load_reference(run: str | Path, reports: Path | None = None) -> Reference:
    """Open a reference run and check it: completed training steps, models present and unmodified.

    Refuses (:class:`ValidationError`) a run whose 02-04 did not complete, that has no models, that is
    itself a validation run, or whose model files differ from the sha256 the runner recorded when the
    step wrote them.
    """
    try:
        rd = runner.find_run(str(run), reports=reports)
    except runner.RunError as exc:
        raise ValidationError(f"validate.reference_run: {exc}") from None
    manifest = runner.load_manifest(rd)
    cfg = config_mod.load_yaml(rd / "params.yaml")
    where = f"reference run {manifest['run_id']} ({paths.display_path(rd)})"
    if (cfg.get("validate") or {}).get("reference_run"):
        raise ValidationError(f"{where} is itself a validation run; give the training run it was validated against")
    status = {s["name"]: s["status"] for s in manifest["steps"]}
    bad = [s for s in REFERENCE_STEPS if status.get(s) != "completed"]
    if bad:
        raise ValidationError(f"{where}: steps {bad} are not completed ({', '.join(status.get(s, 'absent') for s in bad)}); "
                              "a reference run must have fitted its filters, classifiers and survival models: "
                              f"resume it (glioma-nb run --cohort {manifest['cohort']} --resume {manifest['run_id']}) "
                              "or run the training cohort with all steps")
    now = model_hashes(rd)
    if not any(k.endswith(".joblib") for k in now):
        raise ValidationError(f"{where} has no models/*.joblib; rerun its training cohort")
    recorded = manifest.get("models_sha256") or {}
    notes = []
    if not recorded:
        notes.append(f"{where} predates model hashing: its {len(now)} model files were hashed now, not when written")
        recorded = now
    missing = sorted(set(recorded) - set(now))
    changed = sorted(k for k in recorded if k in now and now[k] != recorded[k])
    if missing or changed:
        raise ValidationError(f"{where}: model files {'missing: ' + str(missing) if missing else ''}"
                              f"{' changed since the run wrote them: ' + str(changed) if changed else ''}; "
                              "locked models must be exactly those the training run fitted: rerun the training cohort")
    return Reference(rd, manifest, cfg, recorded, notes)


def verify_unchanged(ref: Reference) -> pd.DataFrame:
    """Re-hash the reference run's models: one row per file with the recorded and current sha256."""
    now = model_hashes(ref.run_dir)
    rows = [{"file": k, "sha256_recorded": v, "sha256_now": now.get(k), "unchanged": now.get(k) == v}
            for k, v in ref.models.items()]
    table = pd.DataFrame(rows, columns=["file", "sha256_recorded", "sha256_now", "unchanged"])
    if not table["unchanged"].all():
        raise ValidationError(f"reference run {ref.run_id}: {list(table.loc[~table['unchanged'], 'file'])} changed "
                              "during validation; nothing may write into a reference run")
    return table


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    sec, key = dotted.split(".", 1)
    return cfg[sec][key]


def lock_config(cfg: dict[str, Any], ref: Reference) -> tuple[dict[str, Any], pd.DataFrame]:
    """The validation run's config with the reference run's locked settings; and a table of them.

    ``segment.model`` becomes the model the reference actually used (``auto`` resolved); a model the
    reference trained in its own run is used from its ``models/``. The stability filters come from the
    reference (``signature.filter_from``). Differences from what the validation cohort's own config
    said are listed (``overridden`` True): the reference run's value wins.
    """
    import copy

    out = copy.deepcopy(cfg)
    seg = ref.metrics("01_segment")
    values = {k: _get(ref.config, k) for k in LOCKED_KEYS}
    if seg.get("model"):
        values["segment.model"] = seg["model"]
    if ref.config["segment"].get("train"):
        w = ref.run_dir / "models" / f"segment__{seg.get('model')}" / "weights.pt"
        if not w.exists():
            raise ValidationError(f"reference run {ref.run_id} trained its segmentation model but {paths.display_path(w)} "
                                  "is missing; rerun the training cohort")
        values["segment.weights"] = str(w)
        values["segment.train"] = False
    values["signature.filter_from"] = str(ref.run_dir)
    rows = []
    for k, v in values.items():
        before = _get(cfg, k)
        sec, key = k.split(".", 1)
        out[sec][key] = v
        rows.append({"setting": k, "value": json.dumps(v, default=str), "validation_cohort_config": json.dumps(before, default=str),
                     "overridden": before != v and k != "signature.filter_from"})
    out["validate"]["reference_run"] = str(ref.run_dir)
    table = pd.DataFrame(rows)
    table["value"] = table["value"].map(lambda s: runner.scrub_text(s))
    table["validation_cohort_config"] = table["validation_cohort_config"].map(lambda s: runner.scrub_text(s))
    return out, table


def check_compatible(cfg: Mapping[str, Any], ref: Reference) -> None:
    """Refuse a validation cohort that cannot take the reference run's models: a modality the
    segmentation model needs is absent, or the reference extracted features the cohort cannot give."""
    from glioma_nb.segment import models as seg_models

    name = cfg["segment"]["model"]
    have = list(cfg["cohort"]["modalities"])
    who = f"validation cohort {cfg['cohort']['name']}"
    if name not in (None, "none", "auto", ""):
        spec = seg_models.load_spec(name)
        lacking = [m for m in spec.modalities if m not in have]
        if lacking:
            raise ValidationError(
                f"{who} lacks {', '.join(lacking)}, which the reference run's segmentation model {spec.name} needs "
                f"(it reads {', '.join(spec.modalities)}; the cohort has {', '.join(have) or 'no images'}). "
                f"Validate against a reference run whose model this cohort can feed (e.g. a training run with "
                f"--set segment.model=flair-wt), or add the missing modalities to the cohort")


# ------------------------------------------------------------------------------------ patient-overlap guard
def normalise_patient_id(value: Any) -> str | None:
    """A patient id comparable across sources: upper case, ``_`` -> ``-``, TCGA ids cut to TCGA-XX-XXXX."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    s = re.sub(r"[_\s]+", "-", str(value).strip().upper())
    m = re.match(r"(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", s)
    return m.group(1) if m else s


def patient_ids(cohort: io.Cohort) -> pd.Series:
    """case_id -> normalised patient id (the clinical ``patient_id`` where recorded, else the case id)."""
    c = cohort.clinical.set_index("case_id")
    pid = c["patient_id"] if "patient_id" in c else pd.Series(np.nan, index=c.index)
    ids = {case: normalise_patient_id(pid.get(case)) or normalise_patient_id(case) for case in cohort.case_ids}
    return pd.Series(ids, name="patient_id", dtype=object)


FINGERPRINT_MODALITIES = ("flair", "t2", "t1c", "t1")


def image_fingerprint(img: Any, shape: Sequence[int] = (32, 32, 16)) -> np.ndarray:
    """A fingerprint of an image that survives re-saving, rescaling and re-orienting the same scan:
    reoriented to RAS, cropped to the voxels above 5 % of the 1st-99th percentile range, resampled to
    ``shape``, rank-normalised. Copies of one scan correlate above 0.999; different patients at most 0.89
    in the shared data (BraTS, all in one atlas space) and 0.98 among the synthetic phantoms (one template)."""
    import nibabel as nib
    from scipy import ndimage, stats as sstats

    img = nib.as_closest_canonical(img)
    a = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))
    p1, p99 = np.percentile(a, [1, 99])
    nz = np.argwhere(a > p1 + 0.05 * (p99 - p1))  # invariant to intensity scale and offset
    if len(nz):
        lo_, hi_ = nz.min(axis=0), nz.max(axis=0) + 1
        a = a[lo_[0]:hi_[0], lo_[1]:hi_[1], lo_[2]:hi_[2]]
    small = ndimage.zoom(a, [s / d for s, d in zip(shape, a.shape)], order=1, grid_mode=True, mode="nearest")
    v = small.ravel()
    return ((sstats.rankdata(v) - 0.5) / v.size).astype(np.float32)


def cohort_fingerprints(cohort: io.Cohort) -> tuple[str | None, dict[str, np.ndarray]]:
    """Fingerprints of every case's first available modality of :data:`FINGERPRINT_MODALITIES`."""
    modality = next((m for m in FINGERPRINT_MODALITIES if m in cohort.modalities), None)
    if modality is None:
        return None, {}
    out = {}
    for case in cohort.cases:
        if modality in case.images and case.images[modality].exists():
            out[case.case_id] = image_fingerprint(cohort.load_image(case.case_id, modality))
    return modality, out


def patient_overlap(training: io.Cohort, validation: io.Cohort, *, fingerprints: bool = True,
                    min_correlation: float = 0.995) -> tuple[pd.DataFrame, list[str]]:
    """Patients of ``validation`` that are also in ``training``: by patient id and by image fingerprint.

    Returns one row per matching pair (``validation_case``, ``training_case``, ``by``: id | image |
    id+image, the fingerprint correlation) and notes on what could not be compared. Matching by image
    finds the same scan under another id; it cannot match a patient whose two copies were processed
    differently (e.g. registered to an atlas in one source, native in the other): the id does that.
    """
    notes: list[str] = []
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    pv, pt = patient_ids(validation), patient_ids(training)
    by_pid = pt.reset_index().groupby("patient_id")["index"].apply(list).to_dict()
    for vcase, pid in pv.items():
        for tcase in by_pid.get(pid, []):
            rows[(vcase, tcase)] = {"validation_case": vcase, "training_case": tcase, "patient_id": pid,
                                    "by_id": True, "by_image": False, "image_correlation": np.nan}
    if fingerprints:
        mv, fv = cohort_fingerprints(validation)
        mt, ft = cohort_fingerprints(training)
        if not fv or not ft:
            notes.append("image fingerprints not compared: one cohort has no readable image")
        else:
            if mv != mt:
                notes.append(f"image fingerprints compare {mv} (validation) with {mt} (training)")
            vk, tk = list(fv), list(ft)
            V, T = np.vstack([fv[k] for k in vk]), np.vstack([ft[k] for k in tk])
            V = (V - V.mean(1, keepdims=True)) / V.std(1, keepdims=True)
            T = (T - T.mean(1, keepdims=True)) / T.std(1, keepdims=True)
            corr = V @ T.T / V.shape[1]
            for i, j in zip(*np.nonzero(corr >= min_correlation)):
                key = (vk[i], tk[j])
                row = rows.setdefault(key, {"validation_case": vk[i], "training_case": tk[j],
                                            "patient_id": pv.get(vk[i]), "by_id": False})
                row.update(by_image=True, image_correlation=float(corr[i, j]))
            for key, row in rows.items():
                if row["by_id"] and np.isnan(row["image_correlation"]) and key[0] in fv and key[1] in ft:
                    row["image_correlation"] = float(corr[vk.index(key[0]), tk.index(key[1])])
    table = pd.DataFrame(list(rows.values()), columns=["validation_case", "training_case", "patient_id", "by_id",
                                                       "by_image", "image_correlation"])
    table.insert(3, "by", ["+".join(b for b, f in (("id", r.by_id), ("image", r.by_image)) if f)
                           for r in table.itertuples()])
    return table.drop(columns=["by_id", "by_image"]), notes


# ------------------------------------------------------------------------------------ shift and harmonisation
def shift_table(train: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Per feature: means, standardised mean difference (other - train, pooled SD), Kolmogorov-Smirnov
    statistic and P (two-sample), and the Benjamini-Hochberg q over the features of the table."""
    from scipy import stats as sstats

    cols = [c for c in train.columns if c in other.columns]
    rows = []
    for c in cols:
        a = pd.to_numeric(train[c], errors="coerce").dropna().to_numpy(float)
        b = pd.to_numeric(other[c], errors="coerce").dropna().to_numpy(float)
        if len(a) < 2 or len(b) < 2:
            continue
        sd = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        ks = sstats.ks_2samp(a, b)
        rows.append({"feature": c, "mean_train": a.mean(), "mean_other": b.mean(),
                     "smd": (b.mean() - a.mean()) / sd if sd > 0 else 0.0, "ks": float(ks.statistic),
                     "ks_p": float(ks.pvalue)})
    out = pd.DataFrame(rows, columns=["feature", "mean_train", "mean_other", "smd", "ks", "ks_p"])
    out["ks_q"] = sstats.false_discovery_control(out["ks_p"]) if len(out) else []
    return out


def shift_summary(tables: Mapping[tuple[str, str], pd.DataFrame], smd_threshold: float = 0.5,
                  alpha: float = 0.05) -> pd.DataFrame:
    """One row per (source, harmonisation): features, median |SMD|, share with |SMD| > threshold, share
    with a KS difference at FDR ``alpha``."""
    rows = []
    for (source, harm), t in tables.items():
        rows.append({"source": source, "harmonisation": harm, "features": len(t),
                     "median_abs_smd": float(t["smd"].abs().median()) if len(t) else np.nan,
                     f"share_abs_smd_gt_{smd_threshold:g}": float((t["smd"].abs() > smd_threshold).mean()) if len(t) else np.nan,
                     f"share_ks_q_lt_{alpha:g}": float((t["ks_q"] < alpha).mean()) if len(t) else np.nan})
    return pd.DataFrame(rows)


class ReferenceComBat:
    """ComBat (Johnson et al. 2007, parametric empirical Bayes) towards a reference (training) cohort.

    ``fit`` reads the training features only: per feature its mean and SD. ``transform`` moves each
    batch (site) of new cases onto the training distribution: the batch's location and scale per
    feature, shrunk towards the batch's mean over features (empirical Bayes), are removed and the
    training mean and SD put back. Training cases pass through unchanged (the reference batch of
    Zhang et al. 2018). Labels never enter: no outcome is used, and nothing estimated on new cases
    changes the fitted training statistics. No biological covariates are preserved (that would need
    the validation labels); constant training features are left as they are.
    """

    def __init__(self, min_batch: int = 3, max_iter: int = 1000, tol: float = 1e-4) -> None:
        self.min_batch = min_batch
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: pd.DataFrame) -> "ReferenceComBat":
        X = X.apply(pd.to_numeric, errors="coerce")
        self.features_ = list(X.columns)
        self.mean_ = X.mean()
        self.sd_ = X.std(ddof=0)
        self.usable_ = list(self.sd_.index[(self.sd_ > 0) & X.notna().sum().ge(self.min_batch)])
        self.n_train_ = int(len(X))
        return self

    def _batch(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Empirical Bayes location and scale of one batch of standardised data (cases x features)."""
        n = np.sum(np.isfinite(Z), axis=0).astype(float)
        g_hat = np.nanmean(Z, axis=0)
        d_hat = np.nanvar(Z, axis=0, ddof=1)
        d_hat[~np.isfinite(d_hat) | (d_hat <= 0)] = np.nanmedian(d_hat[d_hat > 0]) if (d_hat > 0).any() else 1.0
        g_bar, t2 = float(np.mean(g_hat)), float(np.var(g_hat, ddof=1)) if len(g_hat) > 1 else 0.0
        m, s2 = float(np.mean(d_hat)), float(np.var(d_hat, ddof=1)) if len(d_hat) > 1 else 0.0
        if t2 <= 0 or s2 <= 0:  # one feature, or no spread to shrink with: plain location/scale
            return g_hat, d_hat
        a, b = (2 * s2 + m ** 2) / s2, (m * s2 + m ** 3) / s2
        g_new, d_new = g_hat.copy(), d_hat.copy()
        for _ in range(self.max_iter):
            g_star = (n * t2 * g_hat + d_new * g_bar) / (n * t2 + d_new)
            ss = np.nansum((Z - g_star) ** 2, axis=0)
            d_star = (b + 0.5 * ss) / (n / 2 + a - 1)
            change = max(np.max(np.abs(g_star - g_new) / (np.abs(g_new) + 1e-12)),
                         np.max(np.abs(d_star - d_new) / d_new))
            g_new, d_new = g_star, d_star
            if change < self.tol:
                break
        return g_new, d_new

    def transform(self, X: pd.DataFrame, batch: pd.Series | None = None) -> pd.DataFrame:
        """Harmonise new cases; ``batch`` (case -> site) gives the batches, one batch when ``None``."""
        X = X.apply(pd.to_numeric, errors="coerce")
        missing = [c for c in self.features_ if c not in X.columns]
        if missing:
            raise KeyError(f"ComBat: {len(missing)} training features are missing, e.g. {missing[:5]}")
        out = X.copy()
        cols = self.usable_
        batch = pd.Series("new", index=X.index) if batch is None else batch.reindex(X.index).fillna("unknown")
        self.batches_ = {}
        mu, sd = self.mean_[cols].to_numpy(), self.sd_[cols].to_numpy()
        for b, idx in batch.groupby(batch).groups.items():
            if len(idx) < self.min_batch:
                raise ValueError(f"ComBat: batch {b!r} has {len(idx)} cases; at least {self.min_batch} are needed "
                                 "to estimate its location and scale")
            Z = (X.loc[idx, cols].to_numpy(float) - mu) / sd
            g, d = self._batch(Z)
            out.loc[idx, cols] = (Z - g) / np.sqrt(d) * sd + mu
            self.batches_[b] = len(idx)
        return out


# ------------------------------------------------------------------------------------ applying locked models
IMAGE_SOURCES = ("volumetric", "signature", "radiomics")


def harmonised_sources(ref: Reference, sources: Mapping[str, pd.DataFrame], batch: pd.Series | None = None,
                       ) -> tuple[dict[str, pd.DataFrame], dict[str, ReferenceComBat], list[str]]:
    """The validation image tables harmonised to the reference run's (training) tables by ComBat."""
    train = ref.feature_tables()
    out, fitted, notes = dict(sources), {}, []
    for name, X in sources.items():
        if name not in train or name not in IMAGE_SOURCES:
            continue
        cb = ReferenceComBat().fit(train[name])
        Xc = X[[c for c in X.columns if c in cb.features_]]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                try:
                    out[name] = cb.transform(Xc, batch)
                except ValueError as exc:
                    if batch is None:
                        raise
                    notes.append(f"{name}: one batch for the whole cohort ({exc})")
                    out[name] = cb.transform(Xc, None)
                fitted[name] = cb
            except (ValueError, KeyError) as exc:
                notes.append(f"{name}: not harmonised ({exc})")
    return out, fitted, notes


def validation_sources(clinical: pd.DataFrame, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The classification sources of 03_classify for the validation cohort (clinical + image tables)."""
    from glioma_nb import classify

    return {"clinical": classify.clinical_features(clinical, tables.get("volumetric")), **tables}


def _model_files(ref: Reference, prefix: str | None = None) -> list[str]:
    skip = ("signature_filter__", "clusters__", "risk__", "segment__")
    files = [k for k in ref.models if k.startswith("models/") and k.endswith(".joblib")]
    if prefix:
        return [k for k in files if Path(k).name.startswith(prefix)]
    return [k for k in files if not Path(k).name.startswith(skip)]


def _auc_ok(y: np.ndarray) -> bool:
    return len(y) >= 2 and 0 < int(np.sum(y)) < len(y)


def apply_classifiers(ref: Reference, sources: Mapping[str, pd.DataFrame], clinical: pd.DataFrame, *,
                      exclude: Iterable[str] = (), n_bootstrap: int = 1000, random_state: int = 0,
                      harmonisation: str = "none") -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Every locked classifier of the reference run on the validation cohort.

    Returns (results: one row per node x feature set with validation metrics and CIs beside the
    training cross-validation ones; predictions: case_id, node, feature_set, y, prob; notes).
    Cases in ``exclude`` (the overlap guard's) are predicted but not scored.
    """
    from glioma_nb import classify

    exclude = set(exclude)
    cv = ref.table("classification_results")
    cv = cv.set_index(["node", "feature_set"]) if cv is not None and len(cv) else None
    clin = clinical.reindex(columns=list(dict.fromkeys(["case_id", *clinical.columns, "who_grade", "idh_mutant",
                                                         "codel_1p19q", "tertp_mutant", "mgmt_methylated"])))
    rows, preds, notes = [], [], []
    for rel in sorted(_model_files(ref)):
        bundle = ref.load(rel)
        node_name, fs = bundle["node"], bundle["feature_set"]
        node = classify.NODES[node_name]
        sets, set_notes = classify.assemble_feature_sets(dict(sources), [fs])
        if fs not in sets:
            notes.append(f"{node_name}/{fs}: the validation cohort cannot build this feature set ({'; '.join(set_notes)})")
            continue
        X = sets[fs]
        try:
            prob = classify.predict_model(bundle, X)
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
            st = classify.node_statistics(yy, pp, n_boot=n_bootstrap, random_state=random_state)
            row.update({k: st[k] for k in ("auc", "auc_lo", "auc_hi", "accuracy", "accuracy_lo", "accuracy_hi",
                                           "balanced_accuracy", "balanced_accuracy_lo", "balanced_accuracy_hi",
                                           "calibration_slope", "calibration_intercept")})
            row["brier"] = float(np.mean((pp - yy) ** 2))
        elif len(yy):
            row.update(accuracy=classify.threshold_metrics(yy, pp)["accuracy"], brier=float(np.mean((pp - yy) ** 2)))
            notes.append(f"{node_name}/{fs}: one class only among the {len(yy)} labelled validation cases; "
                         "AUC undefined, accuracy reported")
        elif len(y):
            notes.append(f"{node_name}/{fs}: all {len(y)} labelled validation cases are also in the training cohort; "
                         "nothing left to score")
        else:
            notes.append(f"{node_name}/{fs}: no labelled validation case (the cohort lacks {node_name} labels)")
        if cv is not None and (node_name, fs) in cv.index:
            r = cv.loc[(node_name, fs)]
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
    from glioma_nb import classify
    from glioma_nb.segment.metrics import bootstrap_mean

    p = predictions[predictions["feature_set"] == feature_set]
    truth = classify.true_markers(clinical)
    pred = pd.DataFrame(np.nan, index=truth.index, columns=list(classify.MARKER_NODES))
    for marker, node in classify.MARKER_NODES.items():
        d = p[p["node"] == node].set_index("case_id")["prob"]
        pred.loc[d.index.intersection(pred.index), marker] = (d >= 0.5).astype(float)
    truth["diagnosis"] = [classify.cns5_diagnosis(**r) for r in truth[list(classify.MARKER_NODES)].to_dict("records")]
    pred["diagnosis"] = [classify.cns5_diagnosis(**r) for r in pred[list(classify.MARKER_NODES)].to_dict("records")]
    table = pd.concat([truth.add_prefix("true_"), pred.add_prefix("pred_")], axis=1)
    table = table[p["case_id"].drop_duplicates().pipe(lambda s: table.index.isin(s))] if len(p) else table.iloc[0:0]
    known = scored_diagnoses(table, exclude)
    correct = (known["true_diagnosis"] == known["pred_diagnosis"]).astype(float)
    acc, lo, hi, n = bootstrap_mean(correct, n_boot=n_bootstrap, seed=random_state)
    return table, {"feature_set": feature_set, "accuracy": acc, "accuracy_lo": lo, "accuracy_hi": hi, "n": n,
                   "nodes": sorted(set(p["node"]) & set(classify.MARKER_NODES.values()))}


def apply_clusters(ref: Reference, tables: Mapping[str, pd.DataFrame], clinical: pd.DataFrame, *,
                   exclude: Iterable[str] = (), time_unit: str = "months", horizon: float = 24.0
                   ) -> tuple[dict[str, Any], list[str]]:
    """Assign validation cases to the reference run's consensus clusters (nearest training centroid in
    the training PCA space), per subgroup, and test survival by assigned cluster (KM, log-rank, Cox).
    Returns :class:`stratify.SubgroupClusters` per subgroup (the training model, the assigned labels)."""
    from glioma_nb import classify, stratify

    exclude = set(exclude)
    out, notes = {}, []
    feature_set = ref.config["stratify"]["cluster_features"]
    sets, set_notes = classify.assemble_feature_sets(dict(tables), [feature_set])
    surv_all = stratify.survival_frame(clinical, time_unit).set_index("case_id")
    for rel in sorted(_model_files(ref, "clusters__")):
        b = ref.load(rel)
        name = b["subgroup"]
        sg = stratify.select_subgroup(clinical, name if name in stratify.SUBGROUPS else b["query"])
        sg.case_ids = [c for c in sg.case_ids if c not in exclude]  # overlap cases are not assigned
        sg.n = len(sg.case_ids)
        res = stratify.SubgroupClusters(sg, model=b["model"], notes=list(sg.problems))
        out[name] = res
        if feature_set not in sets:
            res.notes.append(f"features {feature_set!r} unavailable: {'; '.join(set_notes)}")
            continue
        ids = [c for c in sg.case_ids if c in sets[feature_set].index]
        if not ids:
            res.notes.append("no validation case in this subgroup")
            continue
        res.labels = pd.Series(b["model"].predict(sets[feature_set].loc[ids]), index=pd.Index(ids, name="case_id"),
                               name="cluster")
        surv = surv_all.join(res.labels, how="inner").reset_index()
        if surv.empty or surv["event"].sum() == 0:
            res.notes.append(f"no survival data with events among the {len(ids)} assigned cases")
            continue
        res.survival = stratify.cluster_survival(surv, "cluster", [], horizon=horizon)
        res.notes.extend(res.survival["notes"])
    notes += [f"{n}: {x}" for n, r in out.items() for x in r.notes]
    return out, notes


def cluster_comparison(ref: Reference, assigned: Mapping[str, Any]) -> pd.DataFrame:
    """Per subgroup: training clusters' median OS and log-rank P beside the assigned validation ones."""
    from glioma_nb import stratify

    train = ref.table("clusters_summary")
    val = stratify.cluster_table(dict(assigned)) if assigned else pd.DataFrame()
    cols = ["subgroup", "n_cases", "events", "k", "median_os_by_cluster", "logrank_p"]
    t = train.reindex(columns=cols) if train is not None else pd.DataFrame(columns=cols)
    v = val.reindex(columns=cols).drop(columns=["k"]) if len(val) else pd.DataFrame(columns=[c for c in cols if c != "k"])
    m = t.merge(v, on="subgroup", how="outer", suffixes=("_train", "_validation"))
    return stratify.PAPER_SPLITS.merge(m, on="subgroup", how="right")


def apply_risk_models(ref: Reference, tables: Mapping[str, pd.DataFrame], clinical: pd.DataFrame, *,
                      exclude: Iterable[str] = (), time_unit: str = "months", n_bootstrap: int = 500,
                      random_state: int = 0, harmonisation: str = "none") -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Every locked Cox risk model on the validation cohort: Harrell and Uno C-index with bootstrap CIs
    and the log-rank P of the risk groups cut at the *training* median risk. Returns (metrics, per-case
    risks, notes)."""
    from glioma_nb import classify, stratify

    exclude = set(exclude)
    surv = stratify.survival_frame(clinical, time_unit).set_index("case_id")
    surv = surv[~surv.index.isin(exclude)]
    sources = stratify.survival_sources(clinical, dict(tables))
    ref_clin = None
    rows, risks, notes = [], [], []
    for rel in sorted(_model_files(ref, "risk__")):
        b = ref.load(rel)
        fs = b["feature_set"]
        sets, set_notes = classify.assemble_feature_sets(sources, [fs])
        if fs not in sets:
            notes.append(f"risk model {fs}: the validation cohort cannot build it ({'; '.join(set_notes)})")
            continue
        try:
            risk = stratify.predict_risk(b, sets[fs])
        except KeyError as exc:  # the validation features do not match the locked model's columns
            raise ValidationError(f"locked {rel} of reference run {ref.run_id}: {exc.args[0]}") from None
        # risk groups cut at the training cohort's median risk (locked), not the validation cohort's
        cut = b.get("training_risk_median")
        if cut is None:  # bundles written before the median was stored: recompute from the training tables
            if ref_clin is None:
                ref_clin = _reference_clinical(ref)
            tr_sets, _ = classify.assemble_feature_sets(stratify.survival_sources(ref_clin, ref.feature_tables()), [fs])
            cut = float(stratify.predict_risk(b, tr_sets[fs]).median())
        d = surv.join(risk, how="inner").dropna(subset=["risk"])
        row: dict[str, Any] = {"feature_set": fs, "harmonisation": harmonisation, "n": int(len(d)),
                               "events": int(d["event"].sum()) if len(d) else 0, "training_median_risk": cut}
        cvm = b.get("cv_metrics") or {}
        row.update({f"train_cv_{k}": cvm.get(k) for k in ("c_harrell", "c_harrell_low", "c_harrell_high")})
        if len(d) >= 5 and d["event"].sum() >= 2:
            m = stratify.survival_metrics(d, n_bootstrap=n_bootstrap, random_state=random_state, notes=notes)
            row.update({k: m[k] for k in ("c_harrell", "c_harrell_low", "c_harrell_high", "c_uno", "c_uno_low", "c_uno_high")})
            d = d.assign(risk_group=(d["risk"] > cut).astype(int))
            lr = stratify.logrank(d, "risk_group")
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
    from glioma_nb.segment import metrics

    train = ref.table("segmentation_summary")
    cols = ["region", "metric", "mean", "ci_low", "ci_high", "n"]
    t = train.reindex(columns=cols) if train is not None and len(train) else pd.DataFrame(columns=cols)
    if scores is not None and len(scores):
        s = scores[~scores["case_id"].astype(str).isin(set(exclude))]
        v = metrics.summarise(s, n_boot=n_bootstrap, seed=random_state).reindex(columns=cols)
    else:
        v = pd.DataFrame(columns=cols)
    return t.merge(v, on=["region", "metric"], how="outer", suffixes=("_train", "_validation"))


def _row(metric: str, harm: str, train: Sequence[Any] = (np.nan,) * 3, val: Sequence[Any] = (np.nan,) * 3,
         n: Any = np.nan, paper_cv: Any = np.nan, paper_test: Any = np.nan, train_n: Any = np.nan) -> dict[str, Any]:
    f = lambda v: float(v) if v is not None and pd.notna(v) else np.nan  # noqa: E731
    return {"metric": metric, "harmonisation": harm, "train_cv": f(train[0]), "train_cv_lo": f(train[1]),
            "train_cv_hi": f(train[2]), "train_n": f(train_n), "validation": f(val[0]), "validation_lo": f(val[1]),
            "validation_hi": f(val[2]), "validation_n": f(n), "paper_cv": f(paper_cv), "paper_test": f(paper_test)}


def headline_table(*, segmentation: pd.DataFrame | None = None, chosen: pd.DataFrame | None = None,
                   accuracy: pd.DataFrame | None = None, cns5: Mapping[str, Mapping[str, Any]] | None = None,
                   cns5_train: Any = None, clusters: pd.DataFrame | None = None, risk: pd.DataFrame | None = None
                   ) -> pd.DataFrame:
    """Every headline metric of a validation: training CV (reference run) beside the validation cohort,
    with 95% CIs, and the seed paper's figure where it has one (different cohorts: context only)."""
    rows = []
    if segmentation is not None:
        for r in segmentation[segmentation["metric"] == "Dice"].itertuples():
            rows.append(_row(f"Dice {r.region}", "none", (r.mean_train, r.ci_low_train, r.ci_high_train),
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
    return _drop_empty(pd.DataFrame(rows, columns=list(_row("", "").keys())))


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


# ---------------------------------------------------------------------------------------------- studies
def study_table(study_dir: Path) -> pd.DataFrame:
    """The study summary, regenerated from the run folders' manifests and metrics: every headline
    metric of every validation run (training CV beside validation), and each run's identity."""
    study = json.loads((Path(study_dir) / "study.json").read_text())
    rows = []
    for v in study.get("validation", []):
        rd = paths.reports_dir() / v["run"] if v.get("run") else None
        if rd is None or not (rd / "manifest.json").exists():
            continue
        m = runner.load_manifest(rd)
        met = m_step(rd, "05_validate")
        for r in met.get("headline", []):
            rows.append({"training_cohort": study["training"]["cohort"], "training_run": study["training"].get("run_id"),
                         "validation_cohort": m["cohort"], "validation_run": m["run_id"], **r})
    cols = ["training_cohort", "training_run", "validation_cohort", "validation_run", *_row("", "").keys()]
    return pd.DataFrame(rows, columns=cols)


def save_study_output(study_dir: Path, table: pd.DataFrame | None = None, fig: Any = None, name: str = "study_summary") -> Path:
    """Write a study table (CSV) or figure (PNG) into the study folder; never overwrites."""
    kind, ext = ("tables", "csv") if table is not None else ("figures", "png")
    out = Path(study_dir) / kind / f"{name}.{ext}"
    if out.exists():
        raise FileExistsError(f"{paths.display_path(out)} exists; outputs of a study are never overwritten")
    out.parent.mkdir(exist_ok=True)
    if table is not None:
        table.to_csv(out, index=False)
    else:
        fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def m_step(run_dir: Path, step: str) -> dict[str, Any]:
    """A step's recorded metrics: from the manifest entry, else metrics/<step>.json, else {}."""
    entry = next((e for e in runner.load_manifest(run_dir)["steps"] if e["name"] == step), {"name": step})
    return _entry_metrics(run_dir, entry)


def _entry_metrics(run_dir: Path, entry: Mapping[str, Any]) -> dict[str, Any]:
    if entry.get("metrics"):
        return entry["metrics"]
    f = Path(run_dir) / "metrics" / f"{entry['name']}.json"
    return json.loads(f.read_text()) if f.exists() else {}


def study_runs(study_dir: Path) -> pd.DataFrame:
    """One row per run of a study: role, cohort, run id, status, cases, seconds."""
    study = json.loads((Path(study_dir) / "study.json").read_text())
    rows = []
    for role, entries in (("training", [study["training"]]), ("validation", study.get("validation", []))):
        for e in entries:
            row = {"role": role, "cohort": e["cohort"], "run": e.get("run_id"), "status": "not started",
                   "cases": None, "seconds": None}
            rd = paths.reports_dir() / e["run"] if e.get("run") else None
            if rd is not None and (rd / "manifest.json").exists():
                m = runner.load_manifest(rd)
                row.update(status=m["status"], cases=m["cohort_summary"]["n_cases"], seconds=m.get("seconds_total"))
            rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- one run
def run_summary(run_dir: Path) -> pd.DataFrame:
    """One row per step of a run: status, seconds, and the scalar metrics the step recorded."""
    manifest = runner.load_manifest(Path(run_dir))
    rows = []
    for entry in manifest["steps"]:
        metrics = _entry_metrics(run_dir, entry)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and k != "step"}
        rows.append({"step": entry["name"], "status": entry["status"], "seconds": entry.get("seconds"), **scalars})
    return pd.DataFrame(rows)


def provenance_table(run_dir: Path) -> pd.DataFrame:
    """Key provenance facts of a run as a two-column table (what a reviewer checks first)."""
    m = runner.load_manifest(Path(run_dir))
    env = m.get("environment", {})
    pk = env.get("packages", {})
    rows = [
        ("run id", m["run_id"]), ("cohort", m["cohort"]), ("mode", m.get("mode")),
        ("git commit", f"{m['git']['commit']}{' (uncommitted changes)' if m['git']['dirty'] else ''}"),
        ("parameters sha256", m["params_sha256"]), ("input files hashed", len(m.get("inputs", {}))),
        ("python", env.get("python")), ("platform", env.get("platform")),
        ("CUDA available", env.get("torch_cuda_available")), ("GPU", env.get("gpu") or "none"),
        *((f"package {k}", v) for k, v in pk.items() if v),
    ]
    return pd.DataFrame(rows, columns=["item", "value"]).astype({"value": str})


# ------------------------------------------------------------------------------------------- the 05 step
@dataclass
class ValidationResult:
    """Everything notebook 05 shows for a validation run (see :func:`validate_step`)."""

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


def validate_step(ctx: Any, reference_run: str, harmonisation: Sequence[str] = ("none", "combat"),
                  n_bootstrap: int = 1000, progress: bool = True) -> ValidationResult:
    """Apply the reference run's locked models to this run's cohort (notebook 05 of a validation run)."""
    from glioma_nb import stratify

    bad = [h for h in harmonisation if h not in ("none", "combat")]
    if bad or "none" not in harmonisation:
        raise ValueError(f"validate.harmonisation must list none (always reported) and optionally combat, got {list(harmonisation)}")
    ref = load_reference(reference_run)
    seed = int(ctx.config["project"]["seed"])
    notes = list(ref.notes)
    qc = ctx.run_dir / "qc"
    overlap = pd.read_csv(qc / "overlap.csv", dtype={"validation_case": str, "training_case": str}) \
        if (qc / "overlap.csv").exists() else pd.DataFrame(columns=["validation_case", "training_case", "patient_id", "by"])
    locked = pd.read_csv(qc / "locked_settings.csv") if (qc / "locked_settings.csv").exists() else pd.DataFrame()
    notes += (runner.load_manifest(ctx.run_dir).get("reference") or {}).get("overlap_notes", [])
    exclude = set(overlap["validation_case"].astype(str))
    unit = ctx.config["stratify"]["time_unit_report"]
    years = io.TIME_UNITS_DAYS["years"] / io.TIME_UNITS_DAYS[unit]
    horizon = float(ctx.config["stratify"]["calibration_years"]) * years

    scores = None
    f = ctx.run_dir / "tables" / "segmentation_scores.parquet"
    if f.exists():  # per case; cases the segmentation weights were trained on are not scored
        scores = pd.read_parquet(f)
        if "trained_on" in scores:
            n_tr = int(scores["trained_on"].sum())
            if n_tr:
                notes.append(f"segmentation: {n_tr} validation cases were in the segmentation model's training "
                             "data; their Dice is left out")
            scores = scores[~scores["trained_on"].astype(bool)]
        scores = scores[[c for c in scores.columns if c == "case_id" or c.startswith(("dice_", "hd95_"))]]
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
    results, preds, accs, cns5, cns5_cases, clusters, comps, risks, risk_rows = [], [], [], {}, [], {}, [], [], []
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
    head = headline_table(segmentation=segmentation, chosen=chosen, accuracy=accuracy, cns5=cns5,
                          cns5_train=cns5_train, clusters=comparison, risk=risk)
    return ValidationResult(ref, overlap, locked, segmentation, shift, shift_summary(shift), sources, classifiers,
                            predictions, chosen, accuracy, cns5,
                            pd.concat(cns5_cases, ignore_index=True) if cns5_cases else pd.DataFrame(),
                            clusters, comparison, risk, pd.concat(risks, ignore_index=True), head, notes)


def describe(val: ValidationResult) -> str:
    """The paragraph that opens the validation section: what was applied to whom, what was left out."""
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
    """What 05 says in a training run: how to validate its locked models elsewhere."""
    return (f"This is a training run (no `validate.reference_run`): its models in `models/` are the ones a "
            f"validation run locks. To apply them to an independent cohort:\n\n"
            f"    glioma-nb run --cohort <other cohort> --set validate.reference_run={ctx.run_dir.name}\n\n"
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


def shift_long(val: ValidationResult) -> pd.DataFrame:
    """Every shift table in one (source, harmonisation, feature, ...) table."""
    parts = [t.assign(source=s, harmonisation=h) for (s, h), t in val.shift.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def most_shifted_source(val: ValidationResult) -> str | None:
    """The image table with the largest median |SMD| before harmonisation."""
    s = val.shift_summary[val.shift_summary["harmonisation"] == "none"].dropna(subset=["median_abs_smd"])
    return None if s.empty else str(s.sort_values("median_abs_smd").iloc[-1]["source"])


def risk_groups_frame(val: ValidationResult, harmonisation: str = "none") -> tuple[pd.DataFrame, str | None]:
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
