"""Inference of any model kind: masks in the original image space, the network signature, per-case cache.

A model is a :class:`~glioma_nb.segment.kinds.Segmenter` (a shipped glioma-nb spec, an nnU-Net v2 folder, a
MONAI bundle, a TorchScript module): its ``run`` preprocesses a case, runs the network (its own sliding
window, mirroring, fold ensemble) and returns the class map on the case's own voxel grid, with the tapped
layers on the model grid. :func:`predict_case` runs one case. :func:`segment_cohort` runs a cohort into
``<out_dir>/<case>.nii.gz`` (written with the image's own affine and header, labels in the cohort's scheme)
plus ``<case>.json`` (model, kind, seconds, volumes, sanity flags, notes) and, when asked,
``<case>.signature.parquet`` (the network image signature from the same pass). A case whose two files
exist is not run again, so an interrupted cohort resumes; files are written to a temporary name and
renamed, so nothing half-written is left.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from glioma_nb import compute, io
from glioma_nb.segment import kinds, transforms, window
from glioma_nb.segment import postprocess as post
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.models import ModelSpec
from glioma_nb import taps

# Sanity checks of a predicted whole tumour (flags, not errors: the case is kept and listed).
SANITY = {"min_wt_ml": 1.0, "max_wt_ml": 400.0, "min_largest_component": 0.8}


def as_segmenter(model: Any, net: Any = None) -> kinds.Segmenter:
    """A :class:`~glioma_nb.segment.kinds.Segmenter`: ``model`` itself, or a glioma-nb spec with its network."""
    if isinstance(model, kinds.Segmenter):
        return model
    if isinstance(model, ModelSpec):
        return kinds.GliomaNbSegmenter(model, net)
    raise TypeError(f"not a segmentation model: {type(model).__name__}")


def sliding_window(net: Any, image: Any, spec: ModelSpec, overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False) -> Any:
    """Softmax probabilities (C, X, Y, Z) of a preprocessed image of a glioma-nb model (training's validation)."""
    return window.sliding_window(net, image, spec.patch, overlap=overlap, tta=tta, device=device, amp=amp)


def predict_case(model: Any, spec_or_none: Any, data: Mapping[str, Any], overlap: float = 0.5, tta: bool = False,
                 device: str = "cpu", amp: bool = False) -> np.ndarray:
    """Internal class map (uint8, X, Y, Z) of one loaded case (:func:`transforms.load_case`) on the case's
    original voxel grid. ``model``: a Segmenter (``spec_or_none`` None), or a network with its ModelSpec."""
    seg = as_segmenter(spec_or_none, model) if spec_or_none is not None else as_segmenter(model)
    return seg.run(data, None, overlap=overlap, tta=tta, device=device, amp=amp).classes


def predict_with_signature(model: kinds.Segmenter, data: Mapping[str, Any], request: Any,
                           cohort_scheme: io.LabelScheme | None, overlap: float = 0.5, tta: bool = False,
                           device: str = "cpu", amp: bool = False,
                           postprocess: str = "none") -> tuple[np.ndarray, pd.DataFrame | None, str, list[str]]:
    """One pass of ``model`` with the network image signature (:mod:`glioma_nb.taps`) pooled in the
    predicted mask with the ``postprocess`` rule applied (on the model grid) or in the reference label map.
    Returns (classes on the original grid, without the rule; signature rows indexed by perturbation or None;
    the error that prevented the signature or ""; notes)."""
    reference = request.mask == "reference"
    stages = list(model.stages())
    p = model.run(data, stages, overlap=overlap, tta=tta, device=device, amp=amp)
    voxel_ml = float(np.prod(p.spacing)) / 1000.0
    model_classes = p.reference if reference else post.apply(p.model_classes, postprocess, voxel_ml)
    lab, scheme = transforms.classes_to_label(model_classes, model.classes, cohort_scheme)
    masks = io.region_masks(lab, scheme)
    desc = f"{'reference label map' if reference else 'predicted mask'} ({model.name} grid)"
    cid = str(data.get("case_id", ""))
    rows: dict[str, dict[str, float]] = {}
    kw = dict(overlap=overlap, tta=tta, device=device, amp=amp)
    try:
        rows["none"] = taps.case_row(p.maps, masks, voxel_ml, cid, desc)
        for kind in request.perturbations:
            if kind in ("erode", "dilate"):
                through = [a for a in range(len(p.spacing)) if a not in p.axial][0]
                thick = p.spacing[through] > 1.5 * min(p.spacing[a] for a in p.axial)
                pmasks = {r: taps.erode_dilate(m, kind, in_plane_axes=p.axial if thick else None)
                          for r, m in masks.items()}
                rows[kind] = taps.case_row(p.maps, pmasks, voxel_ml, cid, f"{kind}d {desc}")
                continue
            img = np.asarray(p.image, dtype=np.float32)
            if kind == "noise":
                img, pmasks = taps.add_noise(img, request.seed), masks
            else:
                img = taps.rotate(img, order=1, axes=p.axial)
                pmasks = {r: taps.rotate(m.astype(np.uint8), order=0, axes=p.axial).astype(bool)
                          for r, m in masks.items()}
            pmaps = model.stage_maps(img, stages, **kw)   # as the signature's own pass
            rows[kind] = taps.case_row(pmaps, pmasks, voxel_ml, cid, f"{desc}, {kind}")
    except taps.SignatureError as exc:
        return p.classes, None, str(exc), p.notes
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "perturbation"
    return p.classes, table, "", p.notes


def sanity_flags(classes: np.ndarray, voxel_ml: float, limits: Mapping[str, float] = SANITY) -> list[str]:
    """Reasons to look at a predicted mask: empty, implausible whole-tumour volume, fragmented."""
    wt = classes > 0
    n = int(wt.sum())
    if n == 0:
        return ["empty: no tumour predicted"]
    flags = []
    ml = n * voxel_ml
    if ml < limits["min_wt_ml"]:
        flags.append(f"small: whole tumour {ml:.1f} mL < {limits['min_wt_ml']} mL")
    if ml > limits["max_wt_ml"]:
        flags.append(f"large: whole tumour {ml:.0f} mL > {limits['max_wt_ml']} mL")
    comp, k = ndimage.label(wt)
    if k > 1:
        largest = np.bincount(comp.ravel())[1:].max() / n
        if largest < limits["min_largest_component"]:
            flags.append(f"fragmented: largest component holds {largest:.0%} of the tumour ({k} components)")
    return flags


def region_volumes(label: np.ndarray, scheme: io.LabelScheme, voxel_ml: float) -> dict[str, float]:
    return {f"{r}_ml": float(m.sum()) * voxel_ml for r, m in io.region_masks(label, scheme).items()}


def _write_atomic_nifti(img: nib.Nifti1Image, path: Path) -> None:
    tmp = path.with_name(path.name.replace(".nii.gz", ".tmp.nii.gz"))
    nib.save(img, tmp)
    tmp.replace(path)


def mask_path(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / f"{case_id}.nii.gz"


def segment_cohort(cohort: io.Cohort, spec: Any, net: Any, out_dir: Path, *,
                   case_ids: Iterable[str] | None = None, overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False, progress: bool = True,
                   signature: Any = None, postprocess: str | None = None,
                   executor: compute.Executor = compute.SERIAL) -> pd.DataFrame:
    """Segment cases of ``cohort`` into ``out_dir`` (cached per case); one row per case.

    ``spec``: a :class:`~glioma_nb.segment.kinds.Segmenter` of any kind (``net`` None), or a glioma-nb
    :class:`ModelSpec` with its loaded network ``net``.

    Columns: case_id, status (predicted | cached), seconds, predicted region volumes (mL), flags.
    Every case is checked for the model's modalities before any is run. With ``signature`` (a
    :class:`glioma_nb.signature.taps.Request`), the network image signature is pooled in the same
    pass and cached as ``<case>.signature.parquet`` (rows by perturbation); a case whose cached
    signature was made with another request is run again. A case whose signature fails (empty
    tumour) keeps its mask and gets ``signature_error``. ``postprocess`` (default: the spec's) is the
    :mod:`~glioma_nb.segment.postprocess` rule applied to the mask; a case cached with another rule
    is run again. The sanity flags describe the network's mask before the rule.

    The cases that are not cached run on ``executor`` (:mod:`glioma_nb.compute`; the model is sent to each
    worker once). A case that fails (or whose worker dies) does not stop the others: they are written, and a
    :class:`SegmentationError` naming the failed cases is raised at the end; running again (``--resume``)
    redoes only those.
    """
    spec = as_segmenter(spec, net)
    rule = spec.postprocess if postprocess is None else postprocess
    post.parse_rule(rule)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = list(case_ids) if case_ids is not None else cohort.case_ids
    for cid in ids:
        missing = [m for m in spec.modalities if m not in cohort.case(cid).images]
        if missing:
            raise SegmentationError(f"case {cid}: model {spec.name} needs {list(spec.modalities)} but the case has "
                                    f"no {missing}; choose a model whose modalities the cohort has (segment.model)")
    if signature is not None and signature.mask == "reference" and cohort.scheme is None:
        raise SegmentationError(f"cohort {cohort.name} has no label maps; signature.mask: reference needs them "
                                "(use signature.mask: predicted)")
    rows: dict[str, dict[str, Any]] = {}
    for cid in ids:
        mpath, jpath = mask_path(out_dir, cid), out_dir / f"{cid}.json"
        if mpath.exists() and jpath.exists():
            rec = json.loads(jpath.read_text())
            same_rule = rec.get("postprocess", "none") == rule and rec.get("model", spec.name) == spec.name
            if same_rule and (signature is None or (rec.get("signature") == signature.key() and
                                                    (taps.signature_path(out_dir, cid).exists() or rec.get("signature_error")))):
                rows[cid] = {**rec, "postprocess": rule, "status": "cached"}   # records before rules: none
    todo = [c for c in ids if c not in rows]
    done = executor.map(segment_case, todo, desc=f"segment ({spec.name})", progress=progress, gpu=device != "cpu",
                        cohort=cohort, spec=spec, out_dir=out_dir,
                        overlap=overlap, tta=tta, device=device, amp=amp, signature=signature, rule=rule)
    rows.update(done.values)
    done.raise_errors(f"cohort {cohort.name}, model {spec.name}", error=SegmentationError,
                      fix="the finished masks are kept: resume the run (glioma-nb run --resume <run id>) to redo "
                          "only these cases once the cause is fixed")
    return pd.DataFrame([rows[c] for c in ids])


def segment_case(cid: str, *, cohort: io.Cohort, spec: kinds.Segmenter, out_dir: Path, overlap: float, tta: bool,
                 device: str, amp: bool, signature: Any, rule: str) -> dict[str, Any]:
    """Segment one case into ``out_dir`` (mask, record, signature; each written whole) and return its record
    (what :func:`segment_cohort` maps over the cases, in this process or on a worker)."""
    out_dir = Path(out_dir)
    mpath, jpath = mask_path(out_dir, cid), out_dir / f"{cid}.json"
    t0 = time.perf_counter()
    data = transforms.load_case(cohort, cid, spec, with_label=signature is not None and signature.mask == "reference")
    # voxel size with the geometry override, from the loaded image's affine
    voxel_ml = float(np.prod(np.linalg.norm(np.asarray(data["image"].affine)[:3, :3], axis=0))) / 1000.0
    extra: dict[str, Any] = {}
    if signature is None:
        p = spec.run(data, None, overlap=overlap, tta=tta, device=device, amp=amp)
        classes, notes = p.classes, p.notes
    else:
        classes, table, err, notes = predict_with_signature(spec, data, signature, cohort.scheme, overlap=overlap,
                                                            tta=tta, device=device, amp=amp, postprocess=rule)
        extra = {"signature": signature.key(), "signature_error": err}
        spath = taps.signature_path(out_dir, cid)
        if table is not None:
            taps.write_signature(table, spath)
        elif spath.exists():
            spath.unlink()
    flags = sanity_flags(classes, voxel_ml)
    label, scheme = transforms.classes_to_label(post.apply(classes, rule, voxel_ml), spec.classes, cohort.scheme)
    src = nib.load(cohort.case(cid).images[spec.modalities[0]])   # the file's own affine and header
    hdr = src.header.copy()
    hdr.set_data_dtype(np.uint8)
    _write_atomic_nifti(nib.Nifti1Image(label, src.affine, hdr), mpath)
    rec = {"case_id": cid, "model": spec.name, "kind": spec.kind, "scheme": scheme.name,
           "seconds": round(time.perf_counter() - t0, 2), "backend": spec.backend_used(), "postprocess": rule,
           **region_volumes(label, scheme, voxel_ml), "flags": "; ".join(flags), "notes": " | ".join(notes), **extra}
    tmp = jpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(jpath)
    return {**rec, "status": "predicted"}
