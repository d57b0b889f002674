"""MONAI dictionary transforms of the segmentation models.

A case is loaded through the cohort (so the cohort's geometry override applies) into a channel-first
``MetaTensor`` whose affine is the image's; then ``Orientationd`` (RAS) -> ``Spacingd`` (the model's
voxel size) -> ``CropForegroundd`` (non-zero voxels: the brain in skull-stripped data, the head
otherwise) -> ``NormalizeIntensityd`` (z-score per channel over non-zero voxels). Every step is
invertible where it changes geometry, so predictions go back to the original voxel grid with
``Invertd``. Training adds padding to the patch, label-balanced random patches, flips, small
rotations/scalings and intensity jitter.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from glioma_nb import io
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.models import ModelSpec


def label_to_classes(label: np.ndarray, scheme: io.LabelScheme, classes: str, case_id: str = "") -> np.ndarray:
    """Map a label map of ``scheme`` to the model's internal class indices.

    ``brats``: necrosis/core 1, oedema 2, enhancing 3 (from 1/2/4 or 1/2/3); ``wt``: tumour 1.
    A binary (whole-tumour) label cannot train a ``brats`` model: that is an error.
    """
    lab = np.asarray(label)
    out = np.zeros(lab.shape, dtype=np.uint8)
    if classes == "wt":
        out[lab > 0] = 1
        return out
    if scheme.name == "binary":
        raise SegmentationError(f"case {case_id}: a whole-tumour (binary) label map cannot train or evaluate "
                                "the BraTS subregions; use a wt model (flair-wt)")
    et = 4 if scheme.name == "brats2018" else 3
    out[lab == 1] = 1
    out[lab == 2] = 2
    out[lab == et] = 3
    return out


def classes_to_label(classes_map: np.ndarray, classes: str, scheme: io.LabelScheme | None) -> tuple[np.ndarray, io.LabelScheme]:
    """Write internal class indices in a label scheme: ``brats`` in the cohort's BraTS scheme
    (brats2018 when the cohort has none or a binary one), ``wt`` as binary. Returns (labels, scheme)."""
    c = np.asarray(classes_map).astype(np.uint8)
    if classes == "wt":
        return (c > 0).astype(np.uint8), io.LABEL_SCHEMES["binary"]
    out_scheme = scheme if scheme is not None and scheme.brats else io.LABEL_SCHEMES["brats2018"]
    et = 4 if out_scheme.name == "brats2018" else 3
    lab = np.zeros_like(c)
    lab[c == 1] = 1
    lab[c == 2] = 2
    lab[c == 3] = et
    return lab, out_scheme


def load_case(cohort: io.Cohort, case_id: str, spec: Any, with_label: bool = False) -> dict[str, Any]:
    """A case as ``{"image": MetaTensor (C, X, Y, Z), ["label": MetaTensor (1, X, Y, Z)], "case_id", "files"}``
    (``files``: the image paths in the model's modality order). ``spec``: anything with the model's
    ``name``, ``modalities`` and ``classes`` (a :class:`ModelSpec` or a :class:`~glioma_nb.segment.kinds.Segmenter`).

    Raises :class:`SegmentationError` naming the case and file when a modality the model needs is
    missing, an image is not 3D, or the modalities do not share one voxel grid.
    """
    import torch
    from monai.data import MetaTensor

    case = cohort.case(case_id)
    missing = [m for m in spec.modalities if m not in case.images]
    if missing:
        raise SegmentationError(f"case {case_id}: model {spec.name} needs {list(spec.modalities)} but the case "
                                f"has no {missing} (has {sorted(case.images)}); choose a model whose modalities "
                                "the cohort has (segment.model, e.g. flair-wt for FLAIR-only cohorts)")
    arrays, ref = [], None
    for m in spec.modalities:
        img = cohort.load_image(case_id, m)
        shape = img.shape
        if len(shape) != 3 or min(shape) < 2:
            raise SegmentationError(f"case {case_id}: {case.images[m].name} has shape {shape}; model {spec.name} "
                                    "needs 3D volumes (X, Y, Z with at least 2 slices); convert the series to a 3D NIfTI")
        if ref is None:
            ref = img
        elif shape != ref.shape or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise SegmentationError(f"case {case_id}: {case.images[m].name} is not on the voxel grid of "
                                    f"{case.images[spec.modalities[0]].name}; co-register the modalities first")
        arrays.append(np.asarray(img.dataobj, dtype=np.float32))
    assert ref is not None
    affine = torch.as_tensor(ref.affine, dtype=torch.float64)
    meta = {"original_affine": affine.clone(), "spatial_shape": np.asarray(ref.shape),
            "filename_or_obj": str(case.images[spec.modalities[0]]), "space": "RAS"}
    out: dict[str, Any] = {"image": MetaTensor(torch.from_numpy(np.stack(arrays)), affine=affine, meta=dict(meta)),
                           "case_id": case_id, "files": [case.images[m] for m in spec.modalities]}
    if with_label:
        lab_img = cohort.load_label(case_id)
        if lab_img is None or cohort.scheme is None:
            raise SegmentationError(f"case {case_id}: no label map; training and evaluation need one")
        if lab_img.shape != ref.shape:
            raise SegmentationError(f"case {case_id}: label {case.label.name if case.label else ''} has shape "
                                    f"{lab_img.shape}, the images {ref.shape}")
        lab = label_to_classes(np.asanyarray(lab_img.dataobj), cohort.scheme, spec.classes, case_id)
        out["label"] = MetaTensor(torch.from_numpy(lab[None].astype(np.float32)), affine=affine, meta=dict(meta))
    return out


NORMALISATIONS = ("zscore-nonzero", "zscore", "none")


def preprocess(spec: Any, with_label: bool = False) -> Any:
    """Orientation (``spec.orientation``, default RAS), resampling to ``spec.spacing``, foreground crop and
    normalisation (``spec.normalise``: z-score per channel over non-zero voxels by default), invertible where
    geometric. ``spec``: a :class:`ModelSpec` or anything with those attributes (a TorchScript model)."""
    from monai.transforms import Compose, CropForegroundd, NormalizeIntensityd, Orientationd, Spacingd

    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    norm = getattr(spec, "normalise", "zscore-nonzero")
    if norm not in NORMALISATIONS:
        raise SegmentationError(f"model {spec.name}: normalise {norm!r} is not one of {list(NORMALISATIONS)}")
    steps = [
        Orientationd(keys=keys, axcodes=getattr(spec, "orientation", "RAS"), labels=None),  # from the MetaTensor's RAS
        Spacingd(keys=keys, pixdim=spec.spacing, mode=modes),
        CropForegroundd(keys=keys, source_key="image", margin=4, allow_smaller=True),
    ]
    if norm != "none":
        steps.append(NormalizeIntensityd(keys="image", nonzero=norm == "zscore-nonzero", channel_wise=True))
    return Compose(steps)


AUGMENTATIONS = ("basic", "nnunet")
CROPS = ("posneg", "classes")


def crop_ready(spec: ModelSpec) -> Any:
    """What the ``classes`` crop needs once per preprocessed training case: padding to the patch and each class's
    voxel indices (``label_cls_indices``; background restricted to non-zero image voxels), so patches are drawn
    without scanning the volume every iteration."""
    from monai.transforms import ClassesToIndicesd, Compose, SpatialPadd

    return Compose([SpatialPadd(keys=["image", "label"], spatial_size=spec.patch),
                    ClassesToIndicesd(keys="label", num_classes=spec.n_classes, image_key="image", image_threshold=0)])


def augment(spec: ModelSpec, samples_per_case: int = 2, pos_fraction: float = 2 / 3, crop: str = "posneg",
            augmentation: str = "basic") -> Any:
    """Training patches and augmentation, applied to a preprocessed case.

    ``crop``: ``posneg`` (``pos_fraction`` of the patches centred on tumour) or ``classes`` (each class present in
    the case, background included, equally likely as the patch centre: enhancing tumour and the core are
    oversampled; needs :func:`crop_ready` first). ``augmentation``: ``basic`` (the v1 recipe) or ``nnunet``, the
    transforms and probabilities of nnU-Net's default training (Isensee et al. 2021, Nat Methods, supplement): rotation
    (+-30 degrees; in-plane for thick slices) and scaling (0.7-1.4) each p 0.2, Gaussian noise p 0.1, Gaussian blur
    (sigma 0.5-1) p 0.2, brightness x(0.75-1.25) p 0.15, contrast x(0.75-1.25) about the mean p 0.15, simulated low
    resolution (zoom 0.5-1) p 0.25, gamma 0.7-1.5 p 0.3, mirroring on each axis p 0.5 (MONAI transforms)."""
    if crop not in CROPS or augmentation not in AUGMENTATIONS:
        raise SegmentationError(f"model {spec.name}: train.crop must be one of {list(CROPS)} and train.augmentation "
                                f"one of {list(AUGMENTATIONS)} (got {crop!r}, {augmentation!r})")
    if augmentation == "nnunet" or crop == "classes":
        return _augment_v2(spec, samples_per_case, pos_fraction, crop, augmentation)
    from monai.transforms import (
        Compose,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    anisotropic = max(spec.spacing) > 1.5 * min(spec.spacing)
    rotate = (0.0, 0.0, 0.26) if anisotropic else (0.26, 0.26, 0.26)  # about 15 degrees; in-plane only for thick slices
    return Compose([
        SpatialPadd(keys=["image", "label"], spatial_size=spec.patch),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=spec.patch,
                               pos=pos_fraction, neg=1 - pos_fraction, num_samples=samples_per_case,
                               image_key="image", image_threshold=0),
        RandAffined(keys=["image", "label"], prob=0.3, rotate_range=rotate, scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        RandGaussianNoised(keys="image", prob=0.15, std=0.05),
    ])


def _augment_v2(spec: ModelSpec, samples_per_case: int, pos_fraction: float, crop: str, augmentation: str) -> Any:
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandCropByLabelClassesd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandScaleIntensityFixedMeand,
        RandShiftIntensityd,
        RandSimulateLowResolutiond,
        SpatialPadd,
    )

    keys = ["image", "label"]
    if crop == "classes":
        steps: list[Any] = [RandCropByLabelClassesd(keys=keys, label_key="label", spatial_size=spec.patch,
                                                    num_classes=spec.n_classes, num_samples=samples_per_case,
                                                    indices_key="label_cls_indices", warn=False)]
    else:
        steps = [SpatialPadd(keys=keys, spatial_size=spec.patch),
                 RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=spec.patch, pos=pos_fraction,
                                        neg=1 - pos_fraction, num_samples=samples_per_case, image_key="image",
                                        image_threshold=0)]
    anisotropic = max(spec.spacing) > 1.5 * min(spec.spacing)
    flips = [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(3)]
    if augmentation == "basic":
        rotate = (0.0, 0.0, 0.26) if anisotropic else (0.26, 0.26, 0.26)
        return Compose([*steps, RandAffined(keys=keys, prob=0.3, rotate_range=rotate, scale_range=(0.1, 0.1, 0.1),
                                            mode=("bilinear", "nearest"), padding_mode="zeros"), *flips,
                        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
                        RandGaussianNoised(keys="image", prob=0.15, std=0.05)])
    rotate = (0.0, 0.0, 0.52) if anisotropic else (0.52, 0.52, 0.52)   # 30 degrees
    sigma = (0.5, 1.0)
    return Compose([
        *steps,
        # rotation and scaling, each p 0.2 as in nnU-Net (both at once p 0.04)
        RandAffined(keys=keys, prob=0.2, rotate_range=rotate, mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandAffined(keys=keys, prob=0.2, scale_range=(0.3, 0.3, 0.3), mode=("bilinear", "nearest"),
                    padding_mode="zeros"),
        RandGaussianNoised(keys="image", prob=0.1, std=0.1),
        RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma),
        RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
        RandScaleIntensityFixedMeand(keys="image", factors=0.25, preserve_range=True, prob=0.15),
        RandSimulateLowResolutiond(keys="image", prob=0.25, zoom_range=(0.5, 1.0)),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
        *flips,
    ])
