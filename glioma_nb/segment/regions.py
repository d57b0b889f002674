"""A model per region: ``segment.regions`` (e.g. ``{WT: flair-wt}``) takes the named BraTS regions from other
models than ``segment.model``, which gives the rest (and the signature).

Each model segments the cohort into its own folder (``masks/regions/<model>/``, cached per case like every mask);
the run's mask of a case is then assembled region by region and nested as the BraTS regions are: ET, TC = TC | ET,
WT = WT | TC, written in the cohort's BraTS scheme (1 necrosis / non-enhancing core, 2 oedema, enhancing 4 or 3).
So with WT from a FLAIR model and TC/ET from a four-modality one, the whole tumour is the FLAIR model's united with
the other's tumour core. Assembling is idempotent: a resumed run that finds an assembled mask assembles the same.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np
import pandas as pd

from glioma_nb import io
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.infer import _write_atomic_nifti, region_volumes

REGIONS = ("WT", "TC", "ET")


def provided(classes: str) -> tuple[str, ...]:
    """The regions a model of ``classes`` (brats, wt) segments."""
    return ("WT",) if classes == "wt" else REGIONS


def assignment(regions: Mapping[str, str] | None, primary: str) -> dict[str, str]:
    """Region -> model for every region, ``primary`` where ``regions`` names none. An unknown region is an
    error naming the known ones."""
    regions = dict(regions or {})
    bad = sorted(set(regions) - set(REGIONS))
    if bad:
        raise SegmentationError(f"segment.regions: {bad} are not regions; use WT, TC and ET (e.g. "
                                "segment.regions: {WT: flair-wt})")
    return {r: str(regions.get(r) or primary) for r in REGIONS}


def check(assign: Mapping[str, str], classes: Mapping[str, str]) -> None:
    """Each region's model segments it (``classes``: model name -> its classes)."""
    for region, name in assign.items():
        if region not in provided(classes[name]):
            if name == assign["WT"] and region != "WT" and all(assign[r] == name for r in REGIONS):
                continue   # a whole-tumour model alone: its run has WT only
            raise SegmentationError(f"segment.regions: model {name} segments {list(provided(classes[name]))}, not "
                                    f"{region}; take {region} from a BraTS-region model")


def combine(labels: Mapping[str, tuple[np.ndarray, io.LabelScheme]], assign: Mapping[str, str],
            scheme: io.LabelScheme | None) -> tuple[np.ndarray, io.LabelScheme]:
    """The label map with each region from its model (``labels``: model -> (label map, its scheme)), nested
    ET <= TC <= WT, in ``scheme`` (the cohort's BraTS scheme; brats2018 when it has none or a binary one)."""
    masks = {r: io.region_masks(*labels[name]).get(r) for r, name in assign.items()}
    shape = next(iter(labels.values()))[0].shape
    et = masks["ET"] if masks["ET"] is not None else np.zeros(shape, bool)
    tc = (masks["TC"] if masks["TC"] is not None else np.zeros(shape, bool)) | et
    wt = masks["WT"] | tc
    out = scheme if scheme is not None and scheme.brats else io.LABEL_SCHEMES["brats2018"]
    lab = np.where(wt, 2, 0).astype(np.uint8)
    lab[tc] = 1
    lab[et] = 4 if out.name == "brats2018" else 3
    return lab, out


def words(assign: Mapping[str, str]) -> str:
    """``WT: flair-wt; TC, ET: brats-4mod``."""
    by: dict[str, list[str]] = {}
    for r, name in assign.items():
        by.setdefault(name, []).append(r)
    return "; ".join(f"{', '.join(rs)}: {name}" for name, rs in by.items())


def assemble(cohort: Any, cases: pd.DataFrame, mask_dir: Path, primary: str, folders: Mapping[str, Path],
             assign: Mapping[str, str]) -> pd.DataFrame:
    """Each case's mask in ``mask_dir`` (the primary model's, which is kept first in ``masks/regions/<primary>/``)
    rewritten with each region from its model (the other models' masks in ``folders``: model -> folder); returns
    ``cases`` with the assembled volumes and a ``regions`` column. Each case's record (``<case>.json``) says it is
    assembled, so a resumed run assembles again from the kept masks, never from an assembled one."""
    own = mask_dir / "regions" / primary
    own.mkdir(parents=True, exist_ok=True)
    rows = []
    for rec in cases.to_dict(orient="records"):
        cid = rec["case_id"]
        path, jpath = mask_dir / f"{cid}.nii.gz", mask_dir / f"{cid}.json"
        saved = json.loads(jpath.read_text())
        if "regions" not in saved:   # the primary's own mask and record, kept before the first assembly
            for src in (path, jpath):
                tmp = own / f".{src.name}.tmp"
                shutil.copyfile(src, tmp)
                tmp.replace(own / src.name)
        labels = {name: _read(Path(folder) / f"{cid}.nii.gz") for name, folder in {primary: own, **folders}.items()}
        lab, scheme = combine(labels, assign, cohort.scheme)
        img = nib.load(path)
        hdr = img.header.copy()
        hdr.set_data_dtype(np.uint8)
        _write_atomic_nifti(nib.Nifti1Image(lab, img.affine, hdr), path)
        voxel_ml = float(np.prod(np.linalg.norm(cohort.override(img, cid).affine[:3, :3], axis=0))) / 1000.0
        rec = {**rec, **region_volumes(lab, scheme, voxel_ml), "scheme": scheme.name, "regions": words(assign)}
        saved.update({k: rec[k] for k in ("scheme", "regions", *[f"{r}_ml" for r in REGIONS]) if k in rec})
        tmp = jpath.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(saved, indent=1))
        tmp.replace(jpath)
        rows.append(rec)
    return pd.DataFrame(rows)


def _read(path: Path) -> tuple[np.ndarray, io.LabelScheme]:
    """A predicted mask and the scheme its record (``<case>.json`` beside it) says it is written in."""
    lab = np.asarray(nib.load(path).dataobj).astype(np.uint8)
    record = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    return lab, io.LABEL_SCHEMES[record["scheme"]]


def restore(mask_dir: Path, primary: str) -> None:
    """Undo assembled masks (a run resumed without ``segment.regions``): each assembled case's mask and record
    back to the primary model's own, kept in ``masks/regions/<primary>/``; a case without them is removed so that
    it is segmented again."""
    own = mask_dir / "regions" / primary
    for jpath in sorted(mask_dir.glob("*.json")):
        if "regions" not in json.loads(jpath.read_text()):
            continue
        mask = jpath.with_name(jpath.name.replace(".json", ".nii.gz"))
        for src in (mask, jpath):
            kept = own / src.name
            if kept.exists():
                tmp = src.with_name(f".{src.name}.tmp")
                tmp.write_bytes(kept.read_bytes())
                tmp.replace(src)
            else:
                src.unlink(missing_ok=True)
