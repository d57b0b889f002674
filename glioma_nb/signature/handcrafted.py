"""Handcrafted radiomics through PyRadiomics (``pyradiomics-bhklab``, same ``radiomics`` import).

Per case, per region of the label scheme (WT/TC/ET) and per modality: the feature classes of a
settings file in ``configs/radiomics/`` (first order, GLCM, GLRLM, GLSZM, GLDM, NGTDM), plus the shape
class once per region (shape does not depend on the modality). Images are first rescaled inside the
brain (non-zero voxels) so that their ``percentiles`` map to 0/100, which makes a fixed bin width mean
the same on every scanner. Column names: ``<region>__<modality>__<class>_<feature>`` and
``<region>__shape__<feature>``. A region too small for PyRadiomics gives NaN for that region.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from glioma_nb import compute, io, paths
from glioma_nb import taps
from glioma_nb.signature.volumetric import MaskSource, robust_normalise  # noqa: F401 (MaskSource re-exported)


def settings_path(name: str) -> Path:
    """``configs/radiomics/<name>.yaml`` (or a path to a YAML file)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        return paths.resolve_path(name)
    out = paths.configs_dir() / "radiomics" / f"{name}.yaml"
    if not out.exists():
        known = sorted(f.stem for f in (paths.configs_dir() / "radiomics").glob("*.yaml"))
        raise FileNotFoundError(f"radiomics settings {name!r} not found; known: {known}")
    return out


def load_settings(name: str) -> dict[str, Any]:
    with open(settings_path(name), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def to_sitk(img: Any, data: np.ndarray | None = None) -> Any:
    """A SimpleITK image with the geometry of a nibabel image (RAS affine -> ITK's LPS)."""
    import SimpleITK as sitk

    arr = np.asanyarray(img.dataobj) if data is None else data
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))
    flip = np.diag([-1.0, -1.0, 1.0])
    m = flip @ img.affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    out.SetSpacing([float(s) for s in spacing])
    out.SetDirection([float(v) for v in (m / spacing).ravel()])
    out.SetOrigin([float(v) for v in flip @ img.affine[:3, 3]])
    return out


def _crop(affine: np.ndarray, arrays: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
          margin: int = 4) -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Arrays and masks cropped to the masks' bounding box plus ``margin`` voxels, and an object with
    the cropped grid's affine (for :func:`to_sitk`)."""
    from types import SimpleNamespace

    union = np.zeros(next(iter(masks.values())).shape, bool)
    for m in masks.values():
        union |= m
    if not union.any():
        return SimpleNamespace(affine=affine), dict(arrays), dict(masks)
    idx = np.argwhere(union)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, union.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    aff = np.array(affine, dtype=float)
    aff[:3, 3] = aff[:3, :3] @ lo + aff[:3, 3]
    return (SimpleNamespace(affine=aff), {k: np.ascontiguousarray(v[sl]) for k, v in arrays.items()},
            {k: np.ascontiguousarray(v[sl]) for k, v in masks.items()})


def _extractors(settings: Mapping[str, Any]) -> tuple[Any, Any]:
    """(texture extractor without shape, shape-only extractor) from one settings mapping."""
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    classes = dict(settings.get("featureClass") or {})
    settings = copy.deepcopy(dict(settings))
    # no provenance diagnostics per call (image/mask hashes: most of the time on 1 mm volumes)
    settings["setting"] = {**(settings.get("setting") or {}), "additionalInfo": False}
    tex = copy.deepcopy(dict(settings))
    tex["featureClass"] = {k: v for k, v in classes.items() if k != "shape"}
    shape = copy.deepcopy(dict(settings))
    shape["featureClass"] = {"shape": classes["shape"]} if "shape" in classes else {}
    shape["imageType"] = {"Original": {}}
    return (featureextractor.RadiomicsFeatureExtractor(tex),
            featureextractor.RadiomicsFeatureExtractor(shape) if shape["featureClass"] else None)


def _clean(result: Mapping[str, Any], prefix: str, drop_class: bool = False) -> dict[str, float]:
    out = {}
    for key, val in result.items():
        if key.startswith("diagnostics_"):
            continue
        name = key.removeprefix("original_")
        if drop_class:
            name = name.split("_", 1)[1]
        out[f"{prefix}{name}"] = float(val)
    return out


def case_features(cohort: io.Cohort, case_id: str, settings: Mapping[str, Any],
                  percentiles: Sequence[float] = (1, 99), regions: Sequence[str] | None = None,
                  masks_from: MaskSource | None = None, perturbation: str | None = None, seed: int = 0) -> dict[str, float]:
    """Handcrafted features of one case, in the reference label map or the ``masks`` given.

    ``perturbation`` (stability re-extraction): ``erode`` / ``dilate`` the mask by one voxel (in-plane
    only with ``force2D``), ``noise`` (Gaussian, SD 0.05 of the 1st-99th percentile range, brain
    voxels) or ``rotate`` (image and mask by 5 degrees in the plane of voxel axes 0 and 1)."""
    label_img, scheme = (masks_from or MaskSource.reference(cohort)).load(case_id)
    lab = np.asanyarray(label_img.dataobj)
    two_d = bool((settings.get("setting") or {}).get("force2D"))
    arrays = {m: robust_normalise(np.asanyarray(cohort.load_image(case_id, m).dataobj), percentiles)
              for m in cohort.modalities}
    region_masks = io.region_masks(lab, scheme)
    if perturbation in ("erode", "dilate"):
        region_masks = {r: taps.erode_dilate(m, perturbation, in_plane_axes=(0, 1) if two_d else None) for r, m in region_masks.items()}
    elif perturbation == "noise":
        rng = np.random.default_rng(seed)     # one stream across the modalities
        arrays = {m: taps.add_noise(a, rng, sd=0.05) for m, a in arrays.items()}
    elif perturbation == "rotate":
        arrays = {m: taps.rotate(a, order=1) for m, a in arrays.items()}
        region_masks = {r: taps.rotate(m.astype(np.uint8), order=0).astype(bool) for r, m in region_masks.items()}
    elif perturbation is not None:
        raise ValueError(f"unknown perturbation {perturbation!r}; known: {list(taps.PERTURBATIONS)}")
    tex_ex, shape_ex = _extractors(settings)
    # PyRadiomics refuses a mask of at most minimumROISize voxels (imageoperations.checkMask: roiSize <= minSize)
    min_size = int((settings.get("setting") or {}).get("minimumROISize") or 0)
    # crop to the tumour's bounding box (+ margin): features only see mask voxels and their neighbours,
    # and PyRadiomics' per-call checks scale with the whole volume
    geom, arrays, region_masks = _crop(label_img.affine, arrays, region_masks, margin=4)
    images = {m: to_sitk(geom, 100.0 * a) for m, a in arrays.items()}
    row: dict[str, float] = {}
    for region, mask in region_masks.items():
        if regions and region not in regions:
            continue
        if mask.sum() <= min_size:  # empty or tiny region (e.g. no enhancement): features undefined
            continue
        m_img = to_sitk(geom, mask.astype(np.uint8))
        first = next(iter(images.values()))
        m_img.CopyInformation(first)
        if shape_ex is not None:
            row.update(_clean(shape_ex.execute(first, m_img, label=1), f"{region}__shape__", drop_class=True))
        for mod, img in images.items():
            row.update(_clean(tex_ex.execute(img, m_img, label=1), f"{region}__{mod}__"))
    return row


def cohort_features(cohort: io.Cohort, settings: Mapping[str, Any], percentiles: Sequence[float] = (1, 99),
                    n_jobs: int = 1, progress: bool = True, masks_from: MaskSource | None = None,
                    perturbation: str | None = None, seed: int = 0, case_ids: Sequence[str] | None = None,
                    executor: compute.Executor = compute.SERIAL) -> pd.DataFrame:
    """One row per case (index ``case_id``) of :func:`case_features`."""
    return cohort_feature_sets(cohort, settings, [perturbation], percentiles, n_jobs=n_jobs, progress=progress,
                               masks_from=masks_from, seeds=[seed], case_ids=case_ids, executor=executor)[perturbation]


def _case_task(task: tuple[str | None, int, str], *, cohort: io.Cohort, settings: Mapping[str, Any],
               percentiles: Sequence[float], masks_from: MaskSource | None) -> dict[str, float]:
    perturbation, seed, case_id = task
    return case_features(cohort, case_id, settings, percentiles, masks_from=masks_from, perturbation=perturbation,
                         seed=seed)


def cohort_feature_sets(cohort: io.Cohort, settings: Mapping[str, Any], perturbations: Sequence[str | None],
                        percentiles: Sequence[float] = (1, 99), n_jobs: int = 1, progress: bool = True,
                        masks_from: MaskSource | None = None, seeds: Sequence[int] | None = None,
                        case_ids: Sequence[str] | None = None, executor: compute.Executor = compute.SERIAL
                        ) -> dict[str | None, pd.DataFrame]:
    """:func:`case_features` of every case under each of ``perturbations`` (None: the features themselves), with
    ``seeds`` (one per perturbation; the noise of a case depends on its seed only, not on where it runs): one
    table per perturbation, rows by case. The (perturbation, case) tasks run on ``executor`` (serially in
    ``n_jobs`` joblib processes); a case that fails is named, after the others have finished."""
    ids = list(case_ids) if case_ids is not None else cohort.case_ids
    seeds = list(seeds) if seeds is not None else [0] * len(perturbations)
    tasks = [(p, int(s), cid) for p, s in zip(perturbations, seeds) for cid in ids]
    names = [p for p in perturbations if p]
    desc = "PyRadiomics" + (f" (+ {', '.join(names)})" if names else "")
    shared = dict(cohort=cohort, settings=settings, percentiles=percentiles, masks_from=masks_from)
    done = executor.map(_case_task, tasks, desc=desc, progress=progress, n_jobs=n_jobs, **shared)
    done.raise_errors(f"cohort {cohort.name}: PyRadiomics")
    values = done.values
    out = {}
    for p, s in zip(perturbations, seeds):
        df = pd.DataFrame.from_dict({cid: values[(p, int(s), cid)] for cid in ids}, orient="index")
        df.index.name = "case_id"
        out[p] = df
    return out
