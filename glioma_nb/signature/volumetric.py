"""Volumetric and intensity baseline features from a label map.

Per case: the volume (mL) of every region of the label scheme, and per modality and region the mean
and standard deviation of the image intensity after robust normalisation inside the brain (non-zero
voxels scaled so that their ``lo``/``hi`` percentiles map to 0/1). Column names follow the signature
convention ``<region>__<source>__<stat>``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from glioma_nb import io, paths


class MaskSource:
    """Where a case's tumour mask comes from: the cohort's reference label maps, or the masks
    01_segment predicted (``<run>/masks/<case>.nii.gz`` in the scheme its ``<case>.json`` names)."""

    def __init__(self, kind: str, cohort: io.Cohort, mask_dir: Path | None = None) -> None:
        self.kind, self.cohort, self.mask_dir = kind, cohort, Path(mask_dir) if mask_dir else None

    @classmethod
    def reference(cls, cohort: io.Cohort) -> "MaskSource":
        return cls("reference", cohort)

    @classmethod
    def predicted(cls, cohort: io.Cohort, mask_dir: Path) -> "MaskSource":
        return cls("predicted", cohort, mask_dir)

    def load(self, case_id: str) -> tuple[Any, io.LabelScheme]:
        """(label image, its scheme); an error naming the case, the file and the fix when absent."""
        import nibabel as nib

        if self.kind == "reference":
            img = self.cohort.load_label(case_id)
            if img is None or self.cohort.scheme is None:
                raise ValueError(f"cohort {self.cohort.name}: case {case_id} has no reference label map; "
                                 "use signature.mask: predicted (masks from 01_segment)")
            return img, self.cohort.scheme
        assert self.mask_dir is not None
        path, meta = self.mask_dir / f"{case_id}.nii.gz", self.mask_dir / f"{case_id}.json"
        if not path.exists() or not meta.exists():
            raise ValueError(f"case {case_id}: no predicted mask {paths.display_path(path)}; run 01_segment in this "
                             "run first, or use signature.mask: reference (the cohort's label maps)")
        img = self.cohort.override(nib.load(path), case_id)
        return img, io.LABEL_SCHEMES[json.loads(meta.read_text())["scheme"]]


def robust_normalise(data: np.ndarray, percentiles: Sequence[float] = (1, 99)) -> np.ndarray:
    """Scale non-zero voxels so their ``percentiles`` map to 0 and 1 (zero stays background)."""
    data = np.asarray(data, dtype=np.float32)
    fg = data[data != 0]
    if fg.size == 0:
        return np.zeros_like(data)
    lo, hi = np.percentile(fg, percentiles)
    scale = hi - lo if hi > lo else 1.0
    return np.where(data != 0, (data - lo) / scale, 0.0).astype(np.float32)


def case_features(cohort: io.Cohort, case_id: str, percentiles: Sequence[float] = (1, 99),
                  masks_from: MaskSource | None = None) -> dict[str, float]:
    """Volumes and normalised intensity mean/SD per region for one case, in the reference label map or
    the masks of ``masks_from`` (a :class:`MaskSource`)."""
    label_img, scheme = (masks_from or MaskSource.reference(cohort)).load(case_id)
    lab = np.asanyarray(label_img.dataobj)
    voxel_ml = float(np.prod(np.linalg.norm(np.asarray(label_img.affine)[:3, :3], axis=0))) / 1000.0
    masks = io.region_masks(lab, scheme)
    row: dict[str, float] = {}
    for region, m in masks.items():
        row[f"{region}__volume__ml"] = float(m.sum()) * voxel_ml
    for mod in cohort.modalities:
        img = robust_normalise(np.asanyarray(cohort.load_image(case_id, mod).dataobj), percentiles)
        for region, m in masks.items():
            vals = img[m]
            row[f"{region}__{mod}__mean"] = float(vals.mean()) if vals.size else np.nan
            row[f"{region}__{mod}__sd"] = float(vals.std()) if vals.size else np.nan
    return row


def cohort_features(cohort: io.Cohort, percentiles: Sequence[float] = (1, 99),
                    progress: bool = True, masks_from: MaskSource | None = None) -> pd.DataFrame:
    """One row per case (index ``case_id``) of :func:`case_features`."""
    rows = {cid: case_features(cohort, cid, percentiles, masks_from)
            for cid in tqdm(cohort.case_ids, desc="volumetric features", disable=not progress)}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "case_id"
    return df
