"""What notebook 01 does with a cohort: pick the model, (optionally train it), segment, score.

`step` is the one call of the notebook. Masks go to ``<run>/masks/<case>.nii.gz`` (a
per-case cache that a resumed run keeps), the per-case table to ``tables/segmentation_cases``, the
scores to ``tables/segmentation_scores`` and ``tables/segmentation_summary``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from glioma_nb import compute, flow, plotting, records
from glioma_nb.preprocess import pipeline as pre_pipeline
from glioma_nb.preprocess import qc as pre_qc
from glioma_nb.results import StepContext, StepResult
from glioma_nb.segment import backend as seg_backend
from glioma_nb.segment import infer, kinds, metrics, models, registry
from glioma_nb.segment import postprocess as post
from glioma_nb.segment import regions as seg_regions
from glioma_nb.segment import train as seg_train
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.taps import Request
from glioma_nb.sources import dicomseg

_RULE_WORDS = {"largest": "only the largest connected component of the tumour is kept",
               "min_fraction": "components smaller than that fraction of the largest are removed",
               "et_min": "an enhancing tumour smaller than that many mL becomes necrosis / non-enhancing core"}


def rule_words(rule: str) -> str:
    """A post-processing rule in words (each ``+`` part)."""
    return "; then ".join(w for w in (_RULE_WORDS.get(p.split(":")[0], "") for p in rule.split("+")) if w)


@dataclass(repr=False)  # StepResult.__repr__: what the result holds, not every table
class SegmentResult(StepResult):
    """Outcome of segmenting a cohort, with the tables and figures notebook 01 shows
    (see :class:`glioma_nb.results.StepResult`)."""

    spec: kinds.Segmenter | None = None            # the model, of any kind
    weights: str = ""                              # "shipped (sha256 ...)" or a path / "trained in this run"
    mask_dir: Path | None = None
    cases: pd.DataFrame = field(default_factory=pd.DataFrame)      # per case: seconds, volumes, flags, status
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)     # per case Dice / HD95 (labels present)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)    # per region mean [CI]
    train_log: pd.DataFrame | None = None
    held_out: list[str] = field(default_factory=list)              # cases held out of in-run training
    trained_on: list[str] = field(default_factory=list)            # cases the weights were trained on
    note: str = ""
    postprocess: str = "none"                                      # the rule applied to every mask
    overlap: float = 0.5                                           # sliding-window overlap of this run
    tta: bool = False                                              # mirrored test-time augmentation
    out_of_fold: pd.DataFrame = field(default_factory=pd.DataFrame)  # shipped CV models: this cohort's OOF scores
    regions: dict[str, str] = field(default_factory=dict)          # segment.regions: region -> model, when several

    @property
    def flagged(self) -> pd.DataFrame:
        if self.cases.empty:
            return self.cases
        out = self.cases.loc[self.cases["flags"].fillna("") != "", ["case_id", "flags"]]
        out.attrs["table"] = "flagged"
        return out

    @property
    def worst_case(self) -> str | None:
        """The case with the lowest whole-tumour Dice, among those the weights never saw when there are any (None
        when nothing was scored)."""
        if self.scores.empty or "dice_WT" not in self.scores:
            return None
        scored = self.scores[~self.scores["trained_on"].astype(bool)] if "trained_on" in self.scores else self.scores
        scored = scored if len(scored) else self.scores
        return str(scored.sort_values("dice_WT").iloc[0]["case_id"])

    def _inference_words(self) -> str:
        """How the windows were run, from this run's settings (a bundle or nnU-Net folder runs its own inferer)."""
        sp = self.spec
        if sp is not None and sp.kind in ("monai-bundle", "nnunet-v2"):
            return (f"the {sp.kind} model's own inferer and settings (`segment.overlap` and `segment.tta` do not apply "
                    "to it)")
        tta = self.tta or bool(getattr(getattr(sp, "spec", None), "tta", False))
        return (f"sliding window over the whole image, overlap {self.overlap:g}, Gaussian blending, "
                + ("test-time augmentation over the 8 mirrored copies" if tta else "no test-time augmentation"))

    def describe(self) -> str:
        """A Markdown paragraph saying what was done, with which weights, and what the scores cover."""
        if self.spec is None:
            return f"**{self.note}.**"
        sp = self.spec
        n = len(self.cases)
        cached = int((self.cases["status"] == "cached").sum()) if n else 0
        text = (f"Model **{sp.name}** ({sp.kind} model, {sp.network_name}; inputs {', '.join(sp.modalities)}; "
                f"works at {' x '.join(f'{v:g}' for v in sp.spacing)} mm; weights: {self.weights}) segmented "
                f"**{n} cases**" + (f" ({cached} reused from the run's cache)" if cached else "") +
                (f", median {self.cases['seconds'].median():.1f} s per case" if n else "") +
                f"; {len(self.flagged)} flagged by the sanity checks (of the network's mask). Inference: "
                + self._inference_words() + ". Post-processing: "
                + ("none." if self.postprocess == "none" else
                   f"**{self.postprocess}** ({rule_words(self.postprocess)}" +
                   (", the model's own rule, chosen by cross-validation on its training patients for the shipped "
                    "weights)." if self.postprocess == self.spec.postprocess and (
                        self.spec.postprocess_cv or getattr(getattr(self.spec, "spec", None), "ensemble", 0))
                    else ").")) +
                " Masks: `masks/<case>.nii.gz` in each image's own voxel grid and affine.")
        if self.regions:
            text += (f" **A model per region** (`segment.regions`): {seg_regions.words(self.regions)}, each with its "
                     "own post-processing, nested as BraTS nests them (ET within TC within WT: the whole tumour is "
                     "the union of its model's and the tumour core); each model's own masks are kept in "
                     f"`masks/regions/<model>/`; the signature is {sp.name}'s.")
        if n and "backend" in self.cases:
            used = self.cases["backend"].fillna("").astype(str).replace("", "not recorded (cached before backends)")
            text += " Network forward pass: " + "; ".join(
                f"**{b}** ({k} of {n} cases)" for b, k in used.value_counts().items()) + (
                " (OpenVINO conversions are checked against torch before use: "
                f"outputs within {seg_backend.MAX_RELATIVE:g} of their range, at most {seg_backend.MAX_DISAGREEMENT:g} "
                "of the voxels changing class)." if used.str.startswith("openvino").any() else ".")
        notes = pd.Series([x for v in self.cases.get("notes", pd.Series(dtype=object)).fillna("")
                           for x in str(v).split(" | ") if x], dtype=object).value_counts()
        if len(notes):
            text += " Notes: " + "; ".join(f"{n} ({k} of {len(self.cases)} cases)" for n, k in notes.items()) + "."
        if n and "signature" in self.cases:
            sig = self.cases["signature"].dropna()
            errs = self.cases.get("signature_error", pd.Series(dtype=object)).fillna("")
            if len(sig):
                req = sig.iloc[0]
                text += f" Signature layers: {', '.join(sp.stages())}."
                text += (f" The network image signature (read by 02_signature) was pooled in the same pass, in the "
                         f"{req['mask']} mask" + (f", with the stability perturbations {', '.join(req['perturbations'])}"
                                                 if req["perturbations"] else "") +
                         f"; {int((errs != '').sum())} case(s) have none (listed below).")
        if not self.scores.empty:
            k = int(self.scores["trained_on"].sum())
            m = len(self.scores) - k
            text += (f"\n\nThe BraTS metrics below (global and lesion-wise) are from the **{m} cases the weights were "
                     "not trained on**"
                     + (f"; {k} of this cohort's cases were in the training set and are shown grey, not summarised."
                        if k else "."))
            if m == 0:
                text += " Every labelled case was used in training: the ensemble has no honest score on this cohort."
        if not self.out_of_fold.empty:
            oof = self.out_of_fold
            parts = ", ".join(f"{c.removeprefix('dice_')} {oof[c].mean():.3f}" for c in oof.columns if c.startswith("dice_"))
            text += (f" Its **out-of-fold** Dice on {len(oof)} of these cases, each segmented by the fold model that "
                     f"never saw it (the model card's cross-validation, `{self.spec.name}.oof.csv`): {parts} (mean).")
        return text

    def record(self) -> dict[str, Any]:
        """Headline numbers for ``metrics/01_segment.json``."""
        if self.spec is None:
            return {"segmentation": self.note}
        out: dict[str, Any] = {"model": self.spec.name, "kind": self.spec.kind, "weights": self.weights,
                               "postprocess": self.postprocess,
                               "n_segmented": len(self.cases),
                               "n_flagged": len(self.flagged)}
        if self.regions:
            out["regions"] = dict(self.regions)
        if self.spec.fingerprint:
            out["model_fingerprint"] = self.spec.fingerprint   # a locked validation checks the files are the same
        if not self.cases.empty:
            out["seconds_per_case"] = round(float(self.cases["seconds"].median()), 2)
            if "signature_error" in self.cases:
                out["n_without_signature"] = int((self.cases["signature_error"].fillna("") != "").sum())
        if not self.summary.empty:
            out.update(metrics.summary_record(self.summary))
            out["scored_cases"] = ("cases not used in training" if self.held_out or self.trained_on else "all cases")
            out["n_trained_on"] = len(self.trained_on)
        if not self.out_of_fold.empty:
            out["out_of_fold"] = {"n": len(self.out_of_fold), **{c: round(float(self.out_of_fold[c].mean()), 4)
                                                                  for c in self.out_of_fold.columns
                                                                  if c.startswith(("dice_", "hd95_"))}}
        return out


def signature_request(config: Mapping[str, Any]) -> Any:
    """What 01_segment pools for 02_signature in the same pass (None when signature.network is off):
    the mask of ``signature.mask`` and, unless a filter is taken from another run, the stability
    perturbations."""
    sig = config.get("signature", {}) or {}
    if not sig.get("network", True):
        return None
    perts = () if sig.get("filter_from") else tuple((sig.get("stability") or {}).get("perturbations", ()))
    return Request(mask=sig.get("mask", "predicted"), perturbations=perts, seed=int(config["project"]["seed"]))


def step(ctx: StepContext, *, model: str = "auto", weights: str = "shipped", train: bool = False,
         train_iterations: int = 300, held_out_fraction: float = 0.25, overlap: float = 0.5,
         tta: bool = False, backend: str = "auto", postprocess: str = "model", n_overlay_cases: int = 4,
         export_dicom_seg: bool = False, regions: Mapping[str, str] | None = None,
         progress: bool = True) -> SegmentResult:
    """Segment the cohort of a notebook step context (see the module docstring). ``postprocess``:
    ``model`` (the rule of the model spec) or a :mod:`~glioma_nb.segment.postprocess` rule. ``export_dicom_seg``:
    a raw DICOM cohort's native-space masks are also written as DICOM SEG referencing the reference series.
    ``backend``: the network's forward pass (:mod:`glioma_nb.segment.backend`: auto, torch, openvino).
    ``regions``: a model per BraTS region (:mod:`glioma_nb.segment.regions`), the rest from ``model``."""
    cohort = ctx.cohort
    if model == "none" or not cohort.modalities:
        why = ("segment.model is none" if model == "none" else "the cohort has no images (layout: table)")
        result = SegmentResult(note=f"no segmentation: {why}")
        return _display(ctx, result, n_overlay_cases)
    name = models.choose_model(cohort.modalities, model)
    if name is None:
        raise SegmentationError(f"cohort {cohort.name} has modalities {list(cohort.modalities)}; no shipped model "
                                f"takes a subset of them ({models.available_models()}); set segment.model")
    device = models.resolve_device(ctx.config["project"]["device"])
    backend_name = seg_backend.resolve(backend, device)
    train_log, held_out, record = None, [], None
    if train:
        if registry.is_registered(name):
            raise SegmentationError(f"segment.train trains glioma-nb model specs (brats-4mod, flair-wt, a spec YAML); {name} "
                                    "is a registered model: train it with its own tools and import the result")
        spec = models.load_spec(name)
        _check_modalities(cohort, spec)
        if cohort.scheme is None:
            raise SegmentationError(f"cohort {cohort.name} has no label maps: segment.train needs them")
        tr, held_out = seg_train.split_by_patient(cohort, held_out_fraction, seed=ctx.seed)
        out = ctx.output_dir / "models" / f"segment__{spec.name}"
        settings = seg_train.TrainSettings.from_spec(spec, iterations=train_iterations,
                                                 seed=ctx.seed)
        settings.val_every = max(train_iterations // 4, 10)
        seg_train.train(spec, [seg_train.TrainSource(cohort, tr, held_out)], out, settings, device=device, progress=progress)
        seg: kinds.Segmenter = kinds.GliomaNbSegmenter(
            spec, models.load_model(spec, out / "weights.pt", device=device),
            f"trained in this run ({train_iterations} iterations on {len(tr)} cases)")
        train_log = pd.read_csv(out / "train_log.csv")
        record = records.make(
            "segmentation", f"segmentation__{spec.name}", spec, X=pd.DataFrame(index=pd.Index(sorted(tr), name="case_id")),
            features=list(spec.modalities), weights=str((out / "weights.pt").relative_to(ctx.output_dir)),
            weights_sha256=models.sha256(out / "weights.pt"), iterations=train_iterations, trained_on=sorted(tr),
            held_out=sorted(held_out), cohort=cohort.name)
    else:
        seg = registry.load(name, device=device, weights=weights)
        _check_modalities(cohort, seg)
    seg.backend = backend_name
    rule = seg.postprocess if postprocess == "model" else postprocess
    try:
        post.parse_rule(rule)
    except SegmentationError as exc:
        raise SegmentationError(f"segment.postprocess: {exc}; or model (the model's own rule)") from None
    mask_dir = ctx.output_dir / "masks"  # a read-only run (a report reopened) segments into a scratch folder
    request = signature_request(ctx.config)
    if request is not None:
        seg.stages()       # an unknown signature layer fails before any case runs
    assign = seg_regions.assignment(regions, seg.name)
    others = _region_models(cohort, seg, assign, device, backend_name)
    if not others and mask_dir.exists():
        seg_regions.restore(mask_dir, seg.name)   # a run resumed without segment.regions: the model's own masks
    executor = getattr(ctx, "executor", compute.SERIAL)
    cases = infer.segment_cohort(cohort, seg, None, mask_dir, overlap=overlap, tta=tta, device=device,
                                 progress=progress, signature=request, postprocess=rule, executor=executor)
    if others:
        folders = {n: mask_dir / "regions" / n for n in others}
        for n, other in others.items():
            infer.segment_cohort(cohort, other, None, folders[n], overlap=overlap, tta=tta, device=device,
                                 progress=progress, postprocess=other.postprocess, executor=executor)
        cases = seg_regions.assemble(cohort, cases, mask_dir, seg.name, folders, assign)
    result = SegmentResult(spec=seg, weights=seg.weights_note, mask_dir=mask_dir, cases=cases, train_log=train_log,
                           held_out=held_out, postprocess=rule, overlap=overlap, tta=tta,
                           regions=dict(assign) if others else {})
    if train:
        result.trained_on = [c for c in cohort.case_ids if c not in held_out]
        result.models[record.name] = record  # the network's spec, input channels, weights file and its sha256
    elif weights == "shipped":
        result.trained_on = _trained_on([seg, *others.values()], cohort, ctx.config["cohort"].get("derived_from"))
        result.out_of_fold = out_of_fold_scores(seg, cohort) if not others else pd.DataFrame()
    if cohort.scheme is not None:
        scores = metrics.cohort_scores(cohort, mask_dir)
        if not scores.empty:
            scores.insert(1, "trained_on", scores["case_id"].isin(result.trained_on))
            result.scores = scores
            scores.attrs["table"] = "segmentation_scores"
            # honest figures: only cases the weights never saw
            result.summary = metrics.summarise(scores[~scores["trained_on"]])
    scored = result.scores.loc[~result.scores["trained_on"], "case_id"] if len(result.scores) else []
    result.tables["flow_01_segment"] = flow.analysis_flow(
        "01 segmentation scored against the reference", cohort.case_ids,
        [("no reference label map", [c.case_id for c in cohort.cases if c.label is None]),
         ("no predicted mask", [c for c in cohort.case_ids if not (mask_dir / f"{c}.nii.gz").exists()]),
         ("in the segmentation model's training data (Dice shown apart, not in the summary)", result.trained_on)],
        scored)
    return _display(ctx, result, n_overlay_cases, export_dicom_seg)


def _trained_on(segs: list[kinds.Segmenter], cohort: Any, derived: Mapping[str, Any] | None) -> list[str]:
    """The cases any of the run's models saw in training; for a cohort derived from another's cases
    (``cohort.derived_from``, e.g. serial scans grown from real ones), the cases whose source case they saw."""
    if derived and derived.get("cohort"):
        source = {c: str(derived.get("cases", {}).get(c, c)) for c in cohort.case_ids}
        sources = sorted(set(source.values()))
        seen = {s for seg in segs for s in registry.trained_on(seg, str(derived["cohort"]), sources)}
        return [c for c in cohort.case_ids if source[c] in seen]
    return sorted({c for seg in segs for c in registry.trained_on(seg, cohort.name, cohort.case_ids, cohort.root)})


def _region_models(cohort: Any, seg: kinds.Segmenter, assign: Mapping[str, str], device: str,
                   backend_name: str) -> dict[str, kinds.Segmenter]:
    """The models ``segment.regions`` names besides ``seg`` (loaded with their shipped weights), each checked
    for the cohort's modalities and for the regions it is asked for."""
    others = {}
    for name in dict.fromkeys(assign.values()):
        if name == seg.name:
            continue
        other = registry.load(name, device=device, weights="shipped")
        _check_modalities(cohort, other)
        other.backend = backend_name
        others[name] = other
    seg_regions.check(assign, {seg.name: seg.classes, **{n: o.classes for n, o in others.items()}})
    return others


def out_of_fold_scores(seg: kinds.Segmenter, cohort: Any) -> pd.DataFrame:
    """The shipped cross-validated model's out-of-fold scores (``<model>.oof.csv``) of this cohort's cases (a
    cohort reading the model's training data counts as it), or an empty table."""
    if not isinstance(seg, kinds.GliomaNbSegmenter) or not seg.spec.ensemble:
        return pd.DataFrame()
    path = seg.spec.folder / f"{seg.spec.name}.oof.csv"
    if not path.exists():
        return pd.DataFrame()
    oof = pd.read_csv(path)
    mine = [co for co in oof["cohort"].unique() if co == cohort.name or models.same_data(co, cohort.root)]
    part = oof[oof["cohort"].isin(mine) & oof["case_id"].isin(cohort.case_ids)]
    return part.drop(columns=[c for c in ("variant", "rule") if c in part]).reset_index(drop=True)


def _check_modalities(cohort: Any, model: Any) -> None:
    missing = [m for m in model.modalities if m not in cohort.modalities]
    if missing:
        raise SegmentationError(f"cohort {cohort.name}: model {model.name} needs {list(model.modalities)}, the cohort "
                                f"declares {list(cohort.modalities)} (no {missing}); choose another segment.model")


def _native_space(ctx: Any, result: SegmentResult, shown: list[str], export: bool = False) -> None:
    """A raw cohort (preprocessed by 00): every predicted mask mapped back onto the reference scan's native grid
    (``masks/<case>_native.nii.gz``, the scanner's own geometry), its volumes there, and a figure of the first
    shown case in native and BraTS space. ``export``: a DICOM case's native mask also as a DICOM SEG referencing
    its reference series (``masks/<case>_seg.dcm``; opens in OHIF or 3D Slicer beside the images)."""
    import nibabel as nib

    names = {1: "NCR", 2: "ED", 4: "ET"}
    seg_names = ({1: "Whole tumour"} if getattr(result.spec, "classes", "") == "wt" else
                 {1: "Necrotic / non-enhancing tumour core", 2: "Peritumoral oedema", 4: "Enhancing tumour"})
    raw = pre_pipeline.RawCohort.load(ctx.run_dir / "qc" / pre_pipeline.RAW_SCAN) \
        if export and (ctx.run_dir / "qc" / pre_pipeline.RAW_SCAN).exists() else None
    rows = []
    exported = 0
    for cid in ctx.cohort.case_ids:
        case_dir = ctx.cohort.root / cid
        pred = nib.load(result.mask_dir / f"{cid}.nii.gz")
        native = pre_pipeline.to_native(pred, case_dir)
        nib.save(native, ctx.path("masks", f"{cid}_native.nii.gz"))
        case = next((c for c in raw.cases if c.case_id == cid), None) if raw is not None else None
        if case is not None and case.series:
            ref = pre_pipeline.read_record(case_dir)["reference"]
            lab = np.asarray(native.dataobj).astype(np.uint8).transpose(2, 1, 0)   # (slices, rows, columns)
            dicomseg.write_seg(lab, case.series[ref].files, ctx.path("masks", f"{cid}_seg.dcm"), seg_names,
                               description=f"glioma-nb {result.spec.name if result.spec else ''}".strip())
            exported += 1
        nat, brats = np.asarray(native.dataobj), np.asarray(pred.dataobj)
        vox_nat = float(np.prod(native.header.get_zooms()[:3])) / 1000
        vox_brats = float(np.prod(pred.header.get_zooms()[:3])) / 1000
        row = {"case_id": cid, "native_grid": "x".join(map(str, nat.shape)),
               "native_voxel_mm": "x".join(f"{z:.2f}" for z in native.header.get_zooms()[:3]),
               "WT_ml_native": round(float((nat > 0).sum()) * vox_nat, 2),
               "WT_ml_brats": round(float((brats > 0).sum()) * vox_brats, 2)}
        row.update({f"{n}_ml_native": round(float((nat == v).sum()) * vox_nat, 2) for v, n in names.items()})
        rows.append(row)
    result.tables["segmentation_native"] = pd.DataFrame(rows)
    if export and not exported:
        result.note = (result.note + "; " if result.note else "") + \
            "segment.export_dicom_seg: no DICOM case (a NIfTI raw cohort has no series to reference)"
    ctx.metrics["dicom_seg_exported"] = exported
    cid = (shown or ctx.cohort.case_ids)[0]
    ref = pre_pipeline.read_record(ctx.cohort.root / cid)["reference"]
    brats_img = ctx.cohort.load_image(cid, ref)
    result.add_figure("native_space", pre_qc.native_figure(
        pre_pipeline.native_image(ctx.cohort.root / cid, ref), nib.load(ctx.output_dir / "masks" / f"{cid}_native.nii.gz"),
        np.asarray(brats_img.dataobj, dtype=np.float32), np.asarray(nib.load(result.mask_dir / f"{cid}.nii.gz").dataobj),
        cid))


def _display(ctx: Any, result: SegmentResult, n_overlay_cases: int, export_dicom_seg: bool = False) -> SegmentResult:
    """The tables, figures and metrics of notebook 01 around a segmentation: cohort QC, reference overlays and
    volumes, the training curve, predicted overlays, per-case table, Dice/HD95."""
    cohort, case_table = ctx.cohort, ctx.case_table
    shown = plotting.select_cases(case_table, n_overlay_cases) if cohort.modalities else []
    if cohort.modalities:
        result.add_figure("overlays", plotting.plot_overlays(cohort, shown))
    volume_cols = [c for c in case_table.columns if c.endswith("_ml")]
    if volume_cols:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        plotting.plot_region_volumes(case_table, ax=ax, hue="who_grade")
        result.add_figure("region_volumes", fig)
        result.frames["volumes"] = case_table[volume_cols].describe().round(2)
    if result.train_log is not None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        plotting.plot_train_log(result.train_log, ax=ax)
        result.add_figure("train_log", fig)
    if result.spec is not None:
        result.add_figure("predicted_overlays", plotting.plot_overlays(cohort, shown, mask_dir=result.mask_dir))
        result.tables["segmentation_cases"] = result.cases.drop(columns=["signature"], errors="ignore")
    if result.spec is not None and ctx.config["cohort"]["source"] == "raw":
        _native_space(ctx, result, shown, export=export_dicom_seg)
    if not result.scores.empty:
        result.tables.update(segmentation_scores=result.scores, segmentation_summary=result.summary)
        if len(result.summary) and result.summary["n"].gt(0).any():
            result.frames["metrics"] = metrics.summary_table(result.summary)
        if not result.out_of_fold.empty:   # the shipped CV's scores of these cases, each by the fold that never saw it
            oof = metrics.summarise(result.out_of_fold.drop(columns=["fold"], errors="ignore"))
            result.tables["segmentation_summary_out_of_fold"] = oof
            result.frames["metrics_out_of_fold"] = metrics.summary_table(oof)
        result.add_figure("scores", plotting.plot_segmentation_scores(result.scores, result.out_of_fold))
    if "flow_01_segment" in result.tables:
        result.add_figure("flow", plotting.plot_flow(result.tables["flow_01_segment"]))
    result.metrics = dict(n_cases=len(cohort.cases), qc_warnings=int((ctx.problems["severity"] == "warning").sum()),
                          **{f"median_{c}": float(case_table[c].median()) for c in volume_cols}, **result.record())
    return result
