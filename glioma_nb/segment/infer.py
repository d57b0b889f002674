"""Inference: sliding window with Gaussian blending, masks in the original image space, per-case cache.

:func:`predict_case` runs one case: preprocess -> sliding-window softmax (optionally averaged over
mirrored copies: test-time augmentation) -> ``Invertd`` back to the original voxel grid -> argmax.
:func:`segment_cohort` runs a cohort into ``<out_dir>/<case>.nii.gz`` (written with the image's own
affine and header, labels in the cohort's scheme) plus ``<case>.json`` (seconds, volumes, sanity
flags). A case whose two files exist is not run again, so an interrupted cohort resumes; files are
written to a temporary name and renamed, so nothing half-written is left.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import nibabel as nib
import numpy as np
import pandas as pd

from glioma_nb import io
from glioma_nb.segment import SegmentationError, transforms
from glioma_nb.segment.models import ModelSpec

# Sanity checks of a predicted whole tumour (flags, not errors: the case is kept and listed).
SANITY = {"min_wt_ml": 1.0, "max_wt_ml": 400.0, "min_largest_component": 0.8}


def sliding_window(net: Any, image: Any, spec: ModelSpec, overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False) -> Any:
    """Softmax probabilities (C, X, Y, Z) of a preprocessed image (channels first, no batch)."""
    import torch
    from monai.inferers import sliding_window_inference

    x = image.unsqueeze(0).to(device)
    flips: list[tuple[int, ...]] = [()]
    if tta:
        flips += [(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    total = None
    half = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=half, enabled=amp and device == "cuda"):
        for f in flips:
            xi = torch.flip(x, f) if f else x
            logits = sliding_window_inference(xi, roi_size=spec.patch, sw_batch_size=2 if device == "cuda" else 1,
                                              predictor=net, overlap=overlap, mode="gaussian")
            p = torch.softmax(logits.float(), dim=1)
            p = torch.flip(p, f) if f else p
            total = p if total is None else total + p
    return (total / len(flips))[0].cpu()


def predict_case(net: Any, spec: ModelSpec, data: Mapping[str, Any], overlap: float = 0.5, tta: bool = False,
                 device: str = "cpu", amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class map and probabilities of one loaded case (:func:`transforms.load_case`), both on the
    case's original voxel grid. Returns (classes uint8 (X, Y, Z), probabilities float32 (C, X, Y, Z))."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    pre = transforms.preprocess(spec)
    d = pre({"image": data["image"]})
    probs = sliding_window(net, d["image"], spec, overlap=overlap, tta=tta, device=device, amp=amp)
    d["pred"] = MetaTensor(probs, meta=dict(d["image"].meta))
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)(d)
    p = np.asarray(inv["pred"], dtype=np.float32)
    if p.shape[1:] != tuple(data["image"].shape[1:]):  # pragma: no cover - Invertd restores the grid
        raise SegmentationError(f"case {data.get('case_id')}: inverted prediction has shape {p.shape[1:]}, "
                                f"the image {tuple(data['image'].shape[1:])}")
    return p.argmax(0).astype(np.uint8), p


def sanity_flags(classes: np.ndarray, voxel_ml: float, limits: Mapping[str, float] = SANITY) -> list[str]:
    """Reasons to look at a predicted mask: empty, implausible whole-tumour volume, fragmented."""
    from scipy import ndimage

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
                   device: str = "cpu", amp: bool = False, progress: bool = True) -> pd.DataFrame:
    """Segment cases of ``cohort`` into ``out_dir`` (cached per case); one row per case.

    Columns: case_id, status (predicted | cached), seconds, predicted region volumes (mL), flags.
    Every case is checked for the model's modalities before any is run.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = list(case_ids) if case_ids is not None else cohort.case_ids
    for cid in ids:
        missing = [m for m in spec.modalities if m not in cohort.case(cid).images]
        if missing:
            raise SegmentationError(f"case {cid}: model {spec.name} needs {list(spec.modalities)} but the case has "
                                    f"no {missing}; choose a model whose modalities the cohort has (segment.model)")
    rows = []
    for cid in tqdm(ids, desc=f"segment ({spec.name})", disable=not progress):
        mpath, jpath = mask_path(out_dir, cid), out_dir / f"{cid}.json"
        if mpath.exists() and jpath.exists():
            rows.append({**json.loads(jpath.read_text()), "status": "cached"})
            continue
        t0 = time.perf_counter()
        data = transforms.load_case(cohort, cid, spec)
        # voxel size with the geometry override, from the loaded image's affine
        voxel_ml = float(np.prod(np.linalg.norm(np.asarray(data["image"].affine)[:3, :3], axis=0))) / 1000.0
        classes, _ = predict_case(net, spec, data, overlap=overlap, tta=tta, device=device, amp=amp)
        label, scheme = transforms.classes_to_label(classes, spec.classes, cohort.scheme)
        src = nib.load(cohort.case(cid).images[spec.modalities[0]])   # the file's own affine and header
        hdr = src.header.copy()
        hdr.set_data_dtype(np.uint8)
        _write_atomic_nifti(nib.Nifti1Image(label, src.affine, hdr), mpath)
        rec = {"case_id": cid, "model": spec.name, "scheme": scheme.name, "seconds": round(time.perf_counter() - t0, 2),
               **region_volumes(label, scheme, voxel_ml), "flags": "; ".join(sanity_flags(classes, voxel_ml))}
        tmp = jpath.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        tmp.replace(jpath)
        rows.append({**rec, "status": "predicted"})
    return pd.DataFrame(rows)
