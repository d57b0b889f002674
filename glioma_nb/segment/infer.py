"""Inference: sliding window with Gaussian blending, masks in the original image space, per-case cache.

:func:`predict_case` runs one case: preprocess -> sliding-window softmax (optionally averaged over
mirrored copies: test-time augmentation) -> ``Invertd`` back to the original voxel grid -> argmax.
:func:`segment_cohort` runs a cohort into ``<out_dir>/<case>.nii.gz`` (written with the image's own
affine and header, labels in the cohort's scheme) plus ``<case>.json`` (seconds, volumes, sanity
flags) and, when asked, ``<case>.signature.parquet`` (the network image signature from the same pass). A case whose two files exist is not run again, so an interrupted cohort resumes; files are
written to a temporary name and renamed, so nothing half-written is left.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from glioma_nb import io
from glioma_nb.segment import postprocess as post
from glioma_nb.segment import transforms
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.models import ModelSpec
from glioma_nb.signature import network
from glioma_nb.signature.network import Tap

# Sanity checks of a predicted whole tumour (flags, not errors: the case is kept and listed).
SANITY = {"min_wt_ml": 1.0, "max_wt_ml": 400.0, "min_largest_component": 0.8}


def sliding_window(net: Any, image: Any, spec: ModelSpec, overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False, stages: Sequence[str] | None = None) -> Any:
    """Softmax probabilities (C, X, Y, Z) of a preprocessed image (channels first, no batch).

    With ``stages`` (names of :func:`glioma_nb.signature.network.stage_modules`), returns
    ``(probabilities, {stage: activation map (C', X', Y', Z')})`` from the same pass: every stage map
    is stitched at its own resolution by the sliding window."""
    import torch
    from monai.inferers import sliding_window_inference

    tap = None
    if stages is not None:

        tap = Tap(net, stages)
    x = torch.as_tensor(image).unsqueeze(0).to(device)
    flips: list[tuple[int, ...]] = [()]
    if tta:
        flips += [(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    total, maps = None, None
    half = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    try:
        with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=half, enabled=amp and device == "cuda"):
            for f in flips:
                xi = torch.flip(x, f) if f else x
                out = sliding_window_inference(xi, roi_size=spec.patch, sw_batch_size=2 if device == "cuda" else 1,
                                               predictor=tap or net, overlap=overlap, mode="gaussian")
                outs = list(out) if isinstance(out, (tuple, list)) else [out]
                outs = [torch.flip(o.float(), f) if f else o.float() for o in outs]
                p = torch.softmax(outs[0], dim=1)
                total = p if total is None else total + p
                if tap is not None:
                    maps = outs[1:] if maps is None else [a + b for a, b in zip(maps, outs[1:])]
    finally:
        if tap is not None:
            tap.close()
    probs = (total / len(flips))[0].cpu()
    if tap is None:
        return probs
    return probs, {s: (m / len(flips))[0].cpu() for s, m in zip(tap.stages, maps)}


def predict_case(net: Any, spec: ModelSpec, data: Mapping[str, Any], overlap: float = 0.5, tta: bool = False,
                 device: str = "cpu", amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class map and probabilities of one loaded case (:func:`transforms.load_case`), both on the
    case's original voxel grid. Returns (classes uint8 (X, Y, Z), probabilities float32 (C, X, Y, Z))."""
    pre = transforms.preprocess(spec)
    d = pre({"image": data["image"]})
    probs = sliding_window(net, d["image"], spec, overlap=overlap, tta=tta, device=device, amp=amp)
    return _to_original(pre, d, probs, data)


def _to_original(pre: Any, d: Mapping[str, Any], probs: Any, data: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities on the model grid -> (classes, probabilities) on the case's own grid (``Invertd``)."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    d = {"image": d["image"], "pred": MetaTensor(probs, meta=dict(d["image"].meta))}
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)(d)
    p = np.asarray(inv["pred"], dtype=np.float32)
    if p.shape[1:] != tuple(data["image"].shape[1:]):  # pragma: no cover - Invertd restores the grid
        raise SegmentationError(f"case {data.get('case_id')}: inverted prediction has shape {p.shape[1:]}, "
                                f"the image {tuple(data['image'].shape[1:])}")
    return p.argmax(0).astype(np.uint8), p


def predict_with_signature(net: Any, spec: ModelSpec, data: Mapping[str, Any], request: Any,
                           cohort_scheme: io.LabelScheme | None, overlap: float = 0.5, tta: bool = False,
                           device: str = "cpu", amp: bool = False,
                           postprocess: str = "none") -> tuple[np.ndarray, pd.DataFrame | None, str]:
    """:func:`predict_case` plus the network image signature from the same pass
    (:mod:`glioma_nb.signature.network`), pooled in the predicted mask with the ``postprocess`` rule
    applied (on the model grid) or in the reference label map. Returns (classes on the original grid,
    without the rule; signature rows indexed by perturbation or None, the error that prevented the signature or "")."""
    import torch

    reference = request.mask == "reference"
    pre = transforms.preprocess(spec, with_label=reference)
    d = pre({k: data[k] for k in (("image", "label") if reference else ("image",))})
    stages = list(network.stage_modules(net))
    probs, maps = sliding_window(net, d["image"], spec, overlap=overlap, tta=tta, device=device, amp=amp, stages=stages)
    classes, _ = _to_original(pre, d, probs, data)

    model_classes = (np.asarray(d["label"][0], dtype=np.uint8) if reference
                     else post.apply(np.asarray(probs.argmax(0), dtype=np.uint8), postprocess))
    lab, scheme = transforms.classes_to_label(model_classes, spec.classes, cohort_scheme)
    masks = io.region_masks(lab, scheme)
    voxel_ml = float(np.prod(spec.spacing)) / 1000.0
    desc = f"{'reference label map' if reference else 'predicted mask'} ({spec.name} grid)"
    cid = str(data.get("case_id", ""))
    rows: dict[str, dict[str, float]] = {}
    try:
        rows["none"] = network.case_row(maps, masks, voxel_ml, cid, desc)
        for kind in request.perturbations:
            if kind in ("erode", "dilate"):
                thick = max(spec.spacing) > 1.5 * min(spec.spacing)
                pmasks = {r: network.erode_dilate(m, kind, in_plane=thick) for r, m in masks.items()}
                rows[kind] = network.case_row(maps, pmasks, voxel_ml, cid, f"{kind}d {desc}")
                continue
            img = np.asarray(d["image"], dtype=np.float32)
            if kind == "noise":
                img, pmasks = network.add_noise(img, request.seed), masks
            else:
                img = network.rotate(img, order=1)
                pmasks = {r: network.rotate(m.astype(np.uint8), order=0).astype(bool) for r, m in masks.items()}
            _, pmaps = sliding_window(net, torch.from_numpy(np.ascontiguousarray(img)), spec, overlap=overlap,
                                      tta=tta, device=device, amp=amp, stages=stages)   # as the signature's own pass
            rows[kind] = network.case_row(pmaps, pmasks, voxel_ml, cid, f"{desc}, {kind}")
    except network.SignatureError as exc:
        return classes, None, str(exc)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "perturbation"
    return classes, table, ""


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


def segment_cohort(cohort: io.Cohort, spec: ModelSpec, net: Any, out_dir: Path, *,
                   case_ids: Iterable[str] | None = None, overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False, progress: bool = True,
                   signature: Any = None, postprocess: str | None = None) -> pd.DataFrame:
    """Segment cases of ``cohort`` into ``out_dir`` (cached per case); one row per case.

    Columns: case_id, status (predicted | cached), seconds, predicted region volumes (mL), flags.
    Every case is checked for the model's modalities before any is run. With ``signature`` (a
    :class:`glioma_nb.signature.network.Request`), the network image signature is pooled in the same
    pass and cached as ``<case>.signature.parquet`` (rows by perturbation); a case whose cached
    signature was made with another request is run again. A case whose signature fails (empty
    tumour) keeps its mask and gets ``signature_error``. ``postprocess`` (default: the spec's) is the
    :mod:`~glioma_nb.segment.postprocess` rule applied to the mask; a case cached with another rule
    is run again. The sanity flags describe the network's mask before the rule.
    """
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
    rows = []
    for cid in tqdm(ids, desc=f"segment ({spec.name})", disable=not progress):
        mpath, jpath = mask_path(out_dir, cid), out_dir / f"{cid}.json"
        if mpath.exists() and jpath.exists():
            rec = json.loads(jpath.read_text())
            same_rule = rec.get("postprocess", "none") == rule
            if same_rule and (signature is None or (rec.get("signature") == signature.key() and
                                                    (signature_path(out_dir, cid).exists() or rec.get("signature_error")))):
                rows.append({**rec, "postprocess": rule, "status": "cached"})   # records before rules: none
                continue
        t0 = time.perf_counter()
        data = transforms.load_case(cohort, cid, spec, with_label=signature is not None and signature.mask == "reference")
        # voxel size with the geometry override, from the loaded image's affine
        voxel_ml = float(np.prod(np.linalg.norm(np.asarray(data["image"].affine)[:3, :3], axis=0))) / 1000.0
        extra: dict[str, Any] = {}
        if signature is None:
            classes, _ = predict_case(net, spec, data, overlap=overlap, tta=tta, device=device, amp=amp)
        else:
            classes, table, err = predict_with_signature(net, spec, data, signature, cohort.scheme, overlap=overlap,
                                                         tta=tta, device=device, amp=amp, postprocess=rule)
            extra = {"signature": signature.key(), "signature_error": err}
            spath = signature_path(out_dir, cid)
            if table is not None:
                tmp = spath.with_name(spath.name + ".tmp")
                table.to_parquet(tmp)
                tmp.replace(spath)
            elif spath.exists():
                spath.unlink()
        flags = sanity_flags(classes, voxel_ml)
        label, scheme = transforms.classes_to_label(post.apply(classes, rule), spec.classes, cohort.scheme)
        src = nib.load(cohort.case(cid).images[spec.modalities[0]])   # the file's own affine and header
        hdr = src.header.copy()
        hdr.set_data_dtype(np.uint8)
        _write_atomic_nifti(nib.Nifti1Image(label, src.affine, hdr), mpath)
        rec = {"case_id": cid, "model": spec.name, "scheme": scheme.name, "seconds": round(time.perf_counter() - t0, 2),
               "postprocess": rule, **region_volumes(label, scheme, voxel_ml), "flags": "; ".join(flags), **extra}
        tmp = jpath.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        tmp.replace(jpath)
        rows.append({**rec, "status": "predicted"})
    return pd.DataFrame(rows)


def signature_path(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / f"{case_id}.signature.parquet"


def load_signature(out_dir: Path, case_ids: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cached network signatures of ``case_ids``: (the signature, one row per case, index case_id;
    every row of every case in long form with a ``perturbation`` level). Cases without one are left out."""
    parts = {cid: pd.read_parquet(signature_path(out_dir, cid)) for cid in case_ids
             if signature_path(out_dir, cid).exists()}
    if not parts:
        return pd.DataFrame(), pd.DataFrame()
    long = pd.concat(parts, names=["case_id", "perturbation"])
    main = long.xs("none", level="perturbation")
    return main, long
