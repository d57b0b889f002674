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

from glioma_nb import io, paths
from glioma_nb.signature.volumetric import robust_normalise


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


def _extractors(settings: Mapping[str, Any]) -> tuple[Any, Any]:
    """(texture extractor without shape, shape-only extractor) from one settings mapping."""
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    classes = dict(settings.get("featureClass") or {})
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
                  percentiles: Sequence[float] = (1, 99), regions: Sequence[str] | None = None) -> dict[str, float]:
    """Handcrafted features of one case (needs a label map)."""
    label_img = cohort.load_label(case_id)
    if label_img is None or cohort.scheme is None:
        raise ValueError(f"cohort {cohort.name}: case {case_id} has no label map; radiomics needs a mask")
    masks = io.region_masks(np.asanyarray(label_img.dataobj), cohort.scheme)
    tex_ex, shape_ex = _extractors(settings)
    min_size = int((settings.get("setting") or {}).get("minimumROISize") or 1)
    images = {m: to_sitk(cohort.load_image(case_id, m),
                         100.0 * robust_normalise(np.asanyarray(cohort.load_image(case_id, m).dataobj), percentiles))
              for m in cohort.modalities}
    row: dict[str, float] = {}
    for region, mask in masks.items():
        if regions and region not in regions:
            continue
        if mask.sum() < min_size:  # empty or tiny region (e.g. no enhancement): features undefined
            continue
        m_img = to_sitk(label_img, mask.astype(np.uint8))
        first = next(iter(images.values()))
        m_img.CopyInformation(first)
        if shape_ex is not None:
            row.update(_clean(shape_ex.execute(first, m_img, label=1), f"{region}__shape__", drop_class=True))
        for mod, img in images.items():
            row.update(_clean(tex_ex.execute(img, m_img, label=1), f"{region}__{mod}__"))
    return row


def cohort_features(cohort: io.Cohort, settings: Mapping[str, Any], percentiles: Sequence[float] = (1, 99),
                    n_jobs: int = 1, progress: bool = True) -> pd.DataFrame:
    """One row per case (index ``case_id``) of :func:`case_features`, cases in parallel with joblib."""
    from joblib import Parallel, delayed
    from tqdm import tqdm

    ids = cohort.case_ids
    rows = Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(case_features)(cohort, cid, settings, percentiles) for cid in ids)
    data = dict(zip(ids, tqdm(rows, total=len(ids), desc="PyRadiomics", disable=not progress)))
    df = pd.DataFrame.from_dict(data, orient="index")
    df.index.name = "case_id"
    return df
