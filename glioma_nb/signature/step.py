"""Notebook 02: every feature table of a cohort, the stability filters, and what to show.

Sources (index ``case_id``):
- ``volumetric``: region volumes and robust intensity mean/SD (:mod:`volumetric`);
- ``signature``: the network image signature pooled during 01_segment's pass
  (:mod:`network`, read from ``<run>/masks/<case>.signature.parquet``);
- ``radiomics``: PyRadiomics features (:mod:`handcrafted`) when ``radiomics`` names settings;
- the cohort's precomputed ``cohort.features`` tables, passed on unchanged.
Image features use the predicted masks of 01_segment (default) or the reference label maps
(``mask: reference``). ``signature`` and ``radiomics`` go through a :class:`StabilityFilter` fitted
here on perturbed re-extractions (or loaded from ``filter_from``, another run, and applied unchanged);
the filtered tables are what 03_classify and 04_stratify read, the unfiltered ones are kept too.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from glioma_nb import compute, io, paths, plotting, records, taps
from glioma_nb.results import StepContext, StepResult
from glioma_nb.signature import handcrafted, location, volumetric
from glioma_nb.signature.handcrafted import to_sitk
from glioma_nb.taps import SignatureError
from glioma_nb.signature.stability import MIN_CASES, StabilityFilter
from glioma_nb.signature.volumetric import robust_normalise

FILTERED_SOURCES = ("signature", "radiomics")


@dataclass(repr=False)  # StepResult.__repr__: what the result holds, not every table
class SignatureResult(StepResult):
    """The feature tables of a cohort, their stability filters, and what notebook 02 shows
    (see :class:`glioma_nb.results.StepResult`)."""

    features: dict[str, pd.DataFrame] = field(default_factory=dict)   # what later steps read (filtered where filtered)
    unfiltered: dict[str, pd.DataFrame] = field(default_factory=dict)
    filters: dict[str, StabilityFilter] = field(default_factory=dict)
    errors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["case_id", "source", "error"]))
    seconds: dict[str, float] = field(default_factory=dict)
    mask: str = "predicted"
    filter_origin: str = ""
    replicates: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)   # source -> perturbation -> table
    masks_from: Any = None                              # the MaskSource of the image features (None: no images)
    main_source: str = ""                               # the source the heatmap and PCA show

    def save(self, ctx: Any) -> None:
        """Write ``tables/features_<source>`` (filtered) and, per filtered source, ``unfiltered_<source>``
        and ``stability_<source>`` (ICC, mode fraction, missing fraction, reason removed)."""
        ctx.save_feature_tables(self.features)
        for name, filt in self.filters.items():
            ctx.save_table(self.unfiltered[name].rename_axis("case_id").reset_index(), f"unfiltered_{name}")
            ctx.save_table(filt.report_.reset_index(), f"stability_{name}")
        super().save(ctx)

    def counts(self) -> pd.DataFrame:
        """Features per source before and after filtering, with the reasons for removal."""
        rows = {}
        for name, table in self.features.items():
            raw = self.unfiltered.get(name, table)
            row = {"cases": table.shape[0], "features (unfiltered)": raw.shape[1], "features (kept)": table.shape[1]}
            if name in self.filters:
                row.update({f"removed: {k}": int(v) for k, v in self.filters[name].counts().drop("kept").items()})
            rows[name] = row
        out = pd.DataFrame.from_dict(rows, orient="index").rename_axis("source").fillna(0).astype(int)
        out.attrs["table"] = "counts"
        return out

    def family_counts(self) -> pd.DataFrame:
        """Features per family (network stage, or PyRadiomics class / image type) before and after filtering."""
        out = []
        for name in FILTERED_SOURCES:
            if name not in self.unfiltered:
                continue
            fam = pd.Series([feature_family(c) for c in self.unfiltered[name].columns],
                            index=self.unfiltered[name].columns)
            kept = fam[fam.index.isin(self.features[name].columns)]
            order = list(dict.fromkeys(fam))        # network order (volume, enc1 .. dec2) / settings order
            out.append(pd.DataFrame({"source": name, "unfiltered": fam.value_counts(),
                                     "kept": kept.value_counts()}).reindex(order).fillna(0)
                       .astype({"unfiltered": int, "kept": int}))
        return pd.concat(out).rename_axis("family").reset_index() if out else pd.DataFrame()


def feature_families(tables: Mapping[str, pd.DataFrame], families: Mapping[str, str],
                     cohort: str = "") -> dict[str, pd.DataFrame]:
    """The column families of ``cohort.feature_families`` (``<table>.<family>: <regex>``, e.g.
    ``captk.flair: "^FLAIR_"``): each the columns of a feature table whose name matches the regex, saved as a
    table of its own (``features_captk.flair``) that feature sets can name; ``all`` leaves them out."""
    out = {}
    for fam, pattern in families.items():
        source, dot, rest = str(fam).partition(".")
        if not dot or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", rest):
            raise ValueError(f"cohort {cohort}: feature family {fam!r} must be named <table>.<family> "
                             "(letters, digits, _), e.g. captk.flair")
        if source not in tables:
            raise ValueError(f"cohort {cohort}: feature family {fam!r} is a family of table {source!r}, which "
                             f"this run does not have (tables: {sorted(tables)}); fix cohort.feature_families")
        try:
            cols = [c for c in tables[source].columns if re.search(str(pattern), str(c))]
        except re.error as exc:
            raise ValueError(f"cohort {cohort}: feature family {fam!r}: bad regex {pattern!r} ({exc})") from None
        if not cols:
            raise ValueError(f"cohort {cohort}: feature family {fam!r}: no column of {source!r} matches "
                             f"{pattern!r} (e.g. {list(tables[source].columns[:3])}); fix cohort.feature_families")
        out[str(fam)] = tables[source][cols]
    return out


def feature_family(column: str) -> str:
    """``WT__enc2__c003__mean`` -> ``enc2``; ``WT__flair__glcm_Contrast`` -> ``glcm``;
    ``WT__t1__log-sigma-2-0-mm-3D_glcm_Idm`` -> ``log-sigma-2-0-mm-3D glcm``; ``WT__shape__X`` -> ``shape``."""
    parts = column.split("__")
    if len(parts) >= 4:
        return parts[1]
    if len(parts) == 3:
        if parts[1] in ("shape", "volume"):
            return parts[1]
        bits = parts[2].split("_")
        return " ".join(bits[:-1]) if len(bits) > 1 else parts[1]
    return "other"


_PERTURBATION_WORDS = {"erode": "the mask eroded by one voxel", "dilate": "the mask dilated by one voxel",
                       "noise": "Gaussian noise added to the image", "rotate": "the image and mask rotated"}


def method_sentence(*, mask: str, network: bool, radiomics: str | None, location_features: bool,
                    perturbations: Sequence[str], stability: Mapping[str, Any], filter_from: Any,
                    percentiles: Sequence[float], fitted: bool = True) -> str:
    """This run's method in words, from its own parameters (what the notebook's introduction describes in
    general)."""
    sources = ["volumetric and intensity features (volumes of WT, TC and ET; mean and SD of each modality, "
               f"intensities scaled between the brain's {percentiles[0]:g}th and {percentiles[1]:g}th percentiles)"]
    if network:
        sources.append("the network image signature (01_segment's own pass, pooled in each region)")
    sources.append(f"PyRadiomics with the `{radiomics}` settings" if radiomics else
                   "no handcrafted radiomics (`signature.radiomics: null`)")
    if location_features:
        sources.append("location features (SRI24 lobes, ventricles, midline)")
    text = (f"**This run.** Masks: **{mask}** ({'01_segment' if mask == 'predicted' else 'the expert label maps'}). "
            f"Features: {'; '.join(sources)}. ")
    if filter_from:
        text += f"Stability filters: fitted in `{filter_from}`, applied unchanged."
    elif not fitted:
        text += f"No stability filter: too few cases to fit one (it needs {MIN_CASES}; see the notes)."
    elif perturbations:
        words = ", ".join(_PERTURBATION_WORDS.get(p, p) for p in perturbations)
        text += (f"Stability filter fitted here: {len(perturbations)} re-extraction(s) ({words}); features missing in "
                 f"more than {stability.get('max_missing_fraction', 0.2):.0%} of cases or near-constant (one value "
                 f"in >= {stability.get('max_mode_fraction', 0.95):.0%}) dropped, then those with ICC(3,1) < "
                 f"{stability.get('icc_threshold', 0.75)}, then one of each pair with |r| > "
                 f"{stability.get('max_correlation', 0.95)}.")
    else:
        text += ("No ICC filter (`signature.stability.perturbations: []`): only features missing in many cases, "
                 "near-constant or highly correlated ones are dropped.")
    return text


def step(ctx: StepContext, *, intensity_percentiles: Sequence[float] = (1, 99), mask: str = "predicted",
         network: bool = True, radiomics: str | None = None, location_features: bool = False, n_jobs: int = 1,
         stability: Mapping[str, Any] | None = None, filter_from: str | None = None, feature_map: bool = True,
         progress: bool = True) -> SignatureResult:
    """Extract, filter and return the feature tables of a notebook step context's cohort."""
    cohort = ctx.cohort
    stab = dict(stability or {})
    perturbations = list(stab.pop("perturbations", []))
    if mask not in ("predicted", "reference"):
        raise ValueError(f"signature.mask must be predicted or reference, not {mask!r}")
    res = SignatureResult(mask=mask)
    executor = getattr(ctx, "executor", compute.SERIAL)   # where the per-case extractions run (compute.executor)
    errors: list[dict[str, str]] = []
    has_images = bool(cohort.modalities) and any(c.images for c in cohort.cases)
    mask_dir = ctx.inputs / "masks"  # 01_segment's masks: this run's, or its upstream's
    if has_images:
        if mask == "predicted":
            if not list(mask_dir.glob("*.nii.gz")):
                raise SignatureError(f"signature.mask is predicted but this run has no masks in "
                                     f"{paths.display_path(mask_dir)}; run 01_segment first, or set "
                                     "signature.mask: reference (the cohort's label maps)")
            masks_from = res.masks_from = handcrafted.MaskSource.predicted(cohort, mask_dir)
        else:
            if cohort.scheme is None:
                raise SignatureError(f"cohort {cohort.name} has no label maps; signature.mask: reference needs them")
            masks_from = res.masks_from = handcrafted.MaskSource.reference(cohort)
        t0 = time.perf_counter()
        res.unfiltered["volumetric"] = volumetric.cohort_features(cohort, intensity_percentiles, progress=progress,
                                                                  masks_from=masks_from)
        res.seconds["volumetric"] = time.perf_counter() - t0
        if network:
            main, long, errs, note = _network_tables(cohort.case_ids, mask_dir, mask)
            errors.extend({"case_id": c, "source": "signature", "error": e} for c, e in errs.items())
            if note:
                res.notes.append(note)
            if not main.empty:
                res.unfiltered["signature"] = main
                res.replicates["signature"] = {p: long.xs(p, level="perturbation") for p in perturbations
                                               if p in long.index.get_level_values("perturbation")}
        if radiomics:
            settings = handcrafted.load_settings(radiomics)
            ctx.path("logs", "radiomics_settings.yaml").write_text(handcrafted.settings_path(radiomics).read_text())
            t0 = time.perf_counter()
            perts = [] if filter_from else perturbations   # a filter taken from another run needs no re-extraction
            seed = ctx.seed
            sets = handcrafted.cohort_feature_sets(cohort, settings, [None, *perts], intensity_percentiles,
                                                   n_jobs=n_jobs, progress=progress, masks_from=masks_from,
                                                   seeds=[seed, *(seed + i for i in range(len(perts)))],
                                                   executor=executor)
            res.unfiltered["radiomics"] = sets[None]
            if not filter_from:
                res.replicates["radiomics"] = {p: sets[p] for p in perts}
            res.seconds["radiomics" + (" + perturbations" if perts else "")] = time.perf_counter() - t0
    if location_features:
        if res.masks_from is None:   # a cohort of label maps only (no images): its reference masks
            if cohort.scheme is None:
                raise SignatureError(f"cohort {cohort.name}: signature.location_features needs tumour masks "
                                     "(images with 01_segment's masks, or reference label maps)")
            res.masks_from = handcrafted.MaskSource.reference(cohort)
        t0 = time.perf_counter()
        table, errs = location.cohort_features(cohort, res.masks_from, n_jobs=n_jobs, progress=progress,
                                               executor=executor)
        errors.extend({"case_id": c, "source": "location", "error": e} for c, e in errs.items())
        if not table.empty:
            res.unfiltered["location"] = table
        res.seconds["location + shape"] = time.perf_counter() - t0
    for name, table in cohort.features.items():
        if name in res.unfiltered:
            raise ValueError(f"cohort {cohort.name}: cohort.features.{name} clashes with the {name} features "
                             "extracted from the images; rename the table")
        res.unfiltered[name] = table
    if not res.unfiltered:
        raise ValueError(f"cohort {cohort.name}: no feature source - it has neither images nor "
                         "cohort.features tables; add images or a feature table")
    res.features = dict(res.unfiltered)

    for name in FILTERED_SOURCES:
        if name not in res.unfiltered:
            continue
        if filter_from:
            src = paths.resolve_path(filter_from) / "models" / f"signature_filter__{name}.joblib"
            if not src.exists():
                raise SignatureError(f"signature.filter_from: {paths.display_path(src)} does not exist; point it at "
                                     f"the run folder whose 02_signature fitted the {name} filter")
            filt = records.load(src).payload
            res.filter_origin = str(paths.display_path(src.parent.parent))
        elif len(res.unfiltered[name]) < MIN_CASES:
            res.notes.append(f"{name}: the stability filter is not fitted on {len(res.unfiltered[name])} case(s) (it "
                             f"needs {MIN_CASES}); the features are kept unfiltered. Apply a larger cohort's "
                             "filter with signature.filter_from: <its run folder>")
            continue
        else:
            reps = res.replicates.get(name) or None
            filt = StabilityFilter(**stab).fit(res.unfiltered[name], replicates=reps)
            rec = records.make("stability_filter", f"signature_filter__{name}", filt, X=res.unfiltered[name],
                               source=name, perturbations=list(reps or {}), settings=stab)
            res.models[rec.name] = rec
        res.filters[name] = filt
        res.features[name] = filt.transform(res.unfiltered[name])
    res.features.update(feature_families(res.features, ctx.config["cohort"].get("feature_families") or {},
                                         cohort.name))
    res.errors = pd.DataFrame(errors, columns=["case_id", "source", "error"])
    res.errors.attrs["table"] = "errors"
    res.text["method"] = method_sentence(mask=mask, network=network, radiomics=radiomics,
                                         location_features=location_features, perturbations=perturbations,
                                         stability=stab, filter_from=res.filter_origin,
                                         percentiles=intensity_percentiles, fitted=bool(res.filters))
    return _display(ctx, res, (stability or {}).get("icc_threshold"), feature_map, intensity_percentiles)


def _display(ctx: Any, res: SignatureResult, icc_threshold: float | None, feature_map: bool,
             intensity_percentiles: Sequence[float]) -> SignatureResult:
    """The figures and metrics of notebook 02: feature families, ICC, a clustered heatmap and PCA of the main
    source, and a voxel-wise texture map of the median case."""
    res.text["masks"] = (f"Masks: **{res.mask}**" + (f"; stability filters taken from `{res.filter_origin}`"
                                                     if res.filter_origin else "; stability filters fitted on this cohort")
                         + "".join(f"\n\n{n}" for n in res.notes))
    res.add_figure("families", plotting.plot_family_counts(res.family_counts()))
    res.add_figure("icc", plotting.plot_icc(res.filters, threshold=icc_threshold))
    main = res.main_source = next((s for s in ("signature", "radiomics", "volumetric") if s in res.features),
                                  next(iter(res.features)))
    features = res.features[main]
    if features.shape[0] >= MIN_CASES:   # a heatmap / PCA of one or two cases shows nothing
        grid = plotting.plot_feature_heatmap(features)
        grid.figure.suptitle(f"{main} features after filtering: {features.shape[0]} cases x {features.shape[1]} features",
                             y=1.02)
        res.add_figure("feature_heatmap", grid.figure)
        labels = ctx.clinical.set_index("case_id").reindex(features.index)
        absent = pd.Series(np.nan, index=features.index)   # a cohort without the column (or no clinical table)
        idh = labels.get("idh_mutant", absent).map({1: "IDH-mutant", 0: "IDH-wildtype"}).rename("IDH")
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        plotting.plot_pca(features, labels.get("who_grade", absent).astype("string").rename("WHO grade"), ax=axes[0],
                          title=f"{main}: WHO grade" + ("" if "who_grade" in labels else " (not recorded)"))
        plotting.plot_pca(features, idh, ax=axes[1], title=f"{main}: IDH" + ("" if "idh_mutant" in labels else
                                                                             " (not recorded)"))
        res.add_figure("pca", fig)
    else:
        res.notes.append(f"{features.shape[0]} case(s): no feature heatmap or PCA (they need {MIN_CASES})")
    if feature_map and res.masks_from is not None and "volumetric" in res.features:  # images with masks
        case = feature_map_case(res.features["volumetric"])
        modality = "flair" if "flair" in ctx.cohort.modalities else ctx.cohort.modalities[0]
        img, wt, fmap = texture_map(ctx.cohort, case, res.masks_from, modality, intensity_percentiles)
        res.add_figure("feature_map", plotting.plot_feature_map(
            img, wt, fmap, label="LongRunHighGrayLevelEmphasis",
            title=f"{case}, {modality}: GLRLM long-run high-grey-level emphasis ({res.mask} mask)"))
    else:
        res.text["feature_map"] = "No feature map (feature_map is off, or the cohort has no images)."
    res.metrics = dict(n_cases=int(features.shape[0]), mask=res.mask, filter_origin=res.filter_origin or "fitted here",
                       feature_tables={n: list(t.shape) for n, t in res.features.items()},
                       unfiltered={n: list(t.shape) for n, t in res.unfiltered.items()},
                       n_feature_errors=len(res.errors),
                       extraction_seconds={k: round(v, 1) for k, v in res.seconds.items()})
    return res


def _network_tables(case_ids: Sequence[str], mask_dir: Path, mask: str
                    ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str], str]:
    """The network signature cached by 01_segment: (main, long by perturbation, errors by case, note)."""
    errs, pooled_in = {}, set()
    for cid in case_ids:
        meta = mask_dir / f"{cid}.json"
        if not meta.exists():
            continue
        rec = json.loads(meta.read_text())
        if rec.get("signature_error"):
            errs[cid] = rec["signature_error"]
        if rec.get("signature"):
            pooled_in.add(rec["signature"]["mask"])
    if pooled_in and pooled_in != {mask}:
        raise SignatureError(f"01_segment pooled the network signature in the {sorted(pooled_in)} mask, but "
                             f"signature.mask is {mask}; run 01_segment again with the same signature.mask")
    main, long = taps.load_signature(mask_dir, case_ids)
    note = "" if not main.empty else ("no network signature: 01_segment pooled none in this run "
                                      "(segment.model none, or signature.network was false when it ran)")
    return main, long, errs, note


def feature_map_case(table: pd.DataFrame) -> str:
    """The case whose whole-tumour volume is the median of the cohort (for the example feature map)."""
    vol = table["WT__volume__ml"]
    return str((vol - vol.median()).abs().idxmin())


def texture_map(cohort: Any, case_id: str, masks_from: Any, modality: str, percentiles: Sequence[float] = (1, 99),
                feature: str = "LongRunHighGrayLevelEmphasis", kernel_radius: int = 2, bin_width: float = 5.0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A voxel-wise GLRLM map (PyRadiomics voxel-based extraction, in-plane kernel) on the axial slice
    with the most whole tumour: (image slice, mask slice, feature map slice; NaN outside the tumour),
    slices of the RAS-reoriented volume."""
    import logging

    import nibabel as nib
    import SimpleITK as sitk
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    label_img, scheme = masks_from.load(case_id)
    label_img = nib.as_closest_canonical(label_img)      # RAS: voxel axis 2 is axial
    wt = next(iter(io.region_masks(np.asanyarray(label_img.dataobj), scheme).values()))
    k = int(np.argmax(wt.sum(axis=(0, 1))))
    image = nib.as_closest_canonical(cohort.load_image(case_id, modality))
    img = 100.0 * robust_normalise(np.asanyarray(image.dataobj), percentiles)
    m3 = np.zeros_like(wt, dtype=np.uint8)
    m3[:, :, k] = wt[:, :, k]
    settings = {"imageType": {"Original": {}}, "featureClass": {"glrlm": [feature]},
                "setting": {"binWidth": bin_width, "force2D": True, "force2Ddimension": 0, "normalize": False, "label": 1},
                "voxelSetting": {"kernelRadius": kernel_radius, "maskedKernel": True, "voxelBatch": 5000,
                                 "initValue": float("nan")}}
    ex = featureextractor.RadiomicsFeatureExtractor(settings)
    s_img = to_sitk(label_img, img.astype(np.float32))
    s_mask = to_sitk(label_img, m3)
    s_mask.CopyInformation(s_img)
    out = ex.execute(s_img, s_mask, label=1, voxelBased=True)
    fmap_img = next(v for key, v in out.items() if key.endswith(feature) and isinstance(v, sitk.Image))
    # back onto the full grid: the result covers the mask's bounding box
    full = sitk.Resample(fmap_img, s_img, sitk.Transform(), sitk.sitkNearestNeighbor, float("nan"))
    fmap = np.transpose(sitk.GetArrayFromImage(full), (2, 1, 0))
    fmap = np.where(m3 > 0, fmap, np.nan)
    return img[:, :, k], wt[:, :, k], fmap[:, :, k]
