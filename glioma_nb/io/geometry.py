"""Image geometry: orientation affines, the head mask and the per-case voxel size estimated from the head's size
(``cohort.geometry.spacing: head``), and header overrides."""
from __future__ import annotations

import math
from typing import Iterable

import nibabel as nib
import numpy as np

HEAD_SPACING = "head"


# Reference head of ``estimate_head_spacing``: measured by it on the one TCGA-LGG FLAIR in ../shared/data with
# its true header (tcga-lgg-native/TCGA-FG-6692/raw/fla.nii.gz, 0.898 x 0.898 x 5.5 mm): largest axial
# cross-section of the head 25,312 mm2, head volume / that area 123.6 mm.
HEAD_AXIAL_AREA_MM2 = 25312.0


HEAD_HEIGHT_MM = 123.6


_SPACING_BOUNDS = {"in-plane": (0.3, 2.0), "slice": (0.5, 12.0)}


# --------------------------------------------------------------------------------------------- geometry
def orientation_affine(shape: tuple[int, ...], spacing: Iterable[float], orientation: str) -> np.ndarray:
    """Affine for voxel axes pointing to ``orientation`` (e.g. ``"PLS"``) with ``spacing`` mm, centred at 0.

    Each letter gives the world direction (RAS+ convention) of increasing voxel index along that axis.
    """
    codes = orientation.upper()
    if len(codes) != 3 or any(sum(c in pair for c in codes) != 1 for pair in ("LR", "PA", "IS")):
        raise ValueError(f"orientation {orientation!r} must name one of L/R, A/P, I/S per axis, e.g. 'RAS' or 'PLS'")
    sp = [float(s) for s in spacing]
    if len(sp) != 3 or any(not s > 0 for s in sp):
        raise ValueError(f"spacing {list(spacing)} must be three positive numbers (mm)")
    axis = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    aff = np.zeros((4, 4))
    aff[3, 3] = 1.0
    for i, code in enumerate(codes):
        row, sign = axis[code]
        aff[row, i] = sign * sp[i]
    centre = (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0
    aff[:3, 3] = -aff[:3, :3] @ centre
    return aff


def head_mask(data: np.ndarray) -> np.ndarray:
    """The head (scalp included) of a non-skull-stripped MRI: above half the Otsu threshold, largest
    connected component, holes filled slice by slice along the last axis."""
    import SimpleITK as sitk
    from scipy import ndimage

    data = np.asarray(data, dtype=np.float32)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(sitk.GetImageFromArray(data))
    labels, n = ndimage.label(data > 0.5 * otsu.GetThreshold())
    if n == 0:
        return np.zeros(data.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == sizes.argmax()
    return np.stack([ndimage.binary_fill_holes(mask[..., k]) for k in range(mask.shape[-1])], axis=-1)


def estimate_head_spacing(data: np.ndarray, orientation: str, axial_area_mm2: float = HEAD_AXIAL_AREA_MM2,
                          height_mm: float = HEAD_HEIGHT_MM) -> tuple[float, float, float]:
    """Voxel size (mm, in voxel-axis order) of an axial head MRI whose header does not record it.

    For stacks exported without geometry (e.g. TCGA-LGG's TIFF slices), from the size of the head: square
    in-plane voxels scaled so the largest axial cross-section of the head is ``axial_area_mm2``, and slices
    so that head volume / that cross-section is ``height_mm`` (a head's extent in voxels does not depend on
    how many slices cover it). ``orientation`` (e.g. "PLS") says which voxel axis is inferior-superior.
    The defaults are measured on a TCGA-LGG FLAIR with its true header (see ``HEAD_AXIAL_AREA_MM2``); a head
    differs from them by some 5-10 % in each direction, and so does the estimate.
    """
    codes = orientation.upper()
    axial = next((i for i, c in enumerate(codes) if c in "SI"), None)
    if data.ndim != 3 or axial is None:
        raise ValueError(f"needs a 3D axial stack with an inferior-superior axis (shape {data.shape}, "
                         f"orientation {orientation!r})")
    mask = head_mask(np.moveaxis(data, axial, -1))
    area = mask.sum(axis=(0, 1))
    if (area > 0).sum() < 3 or area.max() < 100:
        raise ValueError("no head found to estimate the voxel size from (fewer than 3 slices or 100 voxels)")
    inplane = math.sqrt(axial_area_mm2 / float(area.max()))
    thick = height_mm / (float(mask.sum()) / float(area.max()))
    for what, value in (("in-plane", inplane), ("slice", thick)):
        lo, hi = _SPACING_BOUNDS[what]
        if not lo <= value <= hi:
            raise ValueError(f"estimated {what} spacing {value:.2f} mm is outside {lo}-{hi} mm (is it a head "
                             "MRI, not skull-stripped, whole head in the field of view?)")
    out = [inplane] * 3
    out[axial] = thick
    return (round(out[0], 3), round(out[1], 3), round(out[2], 3))


def override_geometry(img: nib.Nifti1Image, spacing: Iterable[float] | None,
                      orientation: str | None) -> nib.Nifti1Image:
    """Replace a header's voxel size and/or orientation (for files whose header is known to be wrong)."""
    if spacing is None and orientation is None:
        return img
    if orientation is None:
        orientation = "".join(nib.aff2axcodes(img.affine))
    if spacing is None:
        spacing = img.header.get_zooms()[:3]
    aff = orientation_affine(img.shape, spacing, orientation)
    out = nib.Nifti1Image(img.dataobj, aff, header=img.header.copy())
    out.set_qform(aff, code=1)
    out.set_sform(aff, code=1)
    return out
