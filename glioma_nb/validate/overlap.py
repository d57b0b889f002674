"""The patient-overlap guard: validation cases that are also training cases, by patient id (TCGA ids cut to
TCGA-XX-XXXX) or by image (a fingerprint of the downsampled, rank-normalised image)."""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy import stats as sstats

from glioma_nb import io


# ------------------------------------------------------------------------------------ patient-overlap guard
def normalise_patient_id(value: Any) -> str | None:
    """A patient id comparable across sources: upper case, ``_`` -> ``-``, TCGA ids cut to TCGA-XX-XXXX."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    s = re.sub(r"[_\s]+", "-", str(value).strip().upper())
    m = re.match(r"(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", s)
    return m.group(1) if m else s


def patient_ids(cohort: io.Cohort) -> pd.Series:
    """case_id -> normalised patient id (the clinical ``patient_id`` where recorded, else the case id)."""
    c = cohort.clinical.set_index("case_id")
    pid = c["patient_id"] if "patient_id" in c else pd.Series(np.nan, index=c.index)
    ids = {case: normalise_patient_id(pid.get(case)) or normalise_patient_id(case) for case in cohort.case_ids}
    return pd.Series(ids, name="patient_id", dtype=object)


FINGERPRINT_MODALITIES = ("flair", "t2", "t1c", "t1")


def image_fingerprint(img: Any, shape: Sequence[int] = (32, 32, 16)) -> np.ndarray:
    """A fingerprint of an image that survives re-saving, rescaling and re-orienting the same scan:
    reoriented to RAS, cropped to the voxels above 5 % of the 1st-99th percentile range, resampled to
    ``shape``, rank-normalised. Copies of one scan correlate above 0.999; different patients at most 0.89
    in the shared data (BraTS, all in one atlas space) and 0.98 among the synthetic phantoms (one template)."""
    import nibabel as nib

    img = nib.as_closest_canonical(img)
    a = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))
    p1, p99 = np.percentile(a, [1, 99])
    nz = np.argwhere(a > p1 + 0.05 * (p99 - p1))  # invariant to intensity scale and offset
    if len(nz):
        lo_, hi_ = nz.min(axis=0), nz.max(axis=0) + 1
        a = a[lo_[0]:hi_[0], lo_[1]:hi_[1], lo_[2]:hi_[2]]
    small = ndimage.zoom(a, [s / d for s, d in zip(shape, a.shape)], order=1, grid_mode=True, mode="nearest")
    v = small.ravel()
    return ((sstats.rankdata(v) - 0.5) / v.size).astype(np.float32)


def cohort_fingerprints(cohort: io.Cohort) -> tuple[str | None, dict[str, np.ndarray]]:
    """Fingerprints of every case's first available modality of :data:`FINGERPRINT_MODALITIES`."""
    modality = next((m for m in FINGERPRINT_MODALITIES if m in cohort.modalities), None)
    if modality is None:
        return None, {}
    out = {}
    for case in cohort.cases:
        if modality in case.images and case.images[modality].exists():
            out[case.case_id] = image_fingerprint(cohort.load_image(case.case_id, modality))
    return modality, out


def patient_overlap(training: io.Cohort, validation: io.Cohort, *, fingerprints: bool = True,
                    min_correlation: float = 0.995) -> tuple[pd.DataFrame, list[str]]:
    """Patients of ``validation`` that are also in ``training``: by patient id and by image fingerprint.

    Returns one row per matching pair (``validation_case``, ``training_case``, ``by``: id | image |
    id+image, the fingerprint correlation) and notes on what could not be compared. Matching by image
    finds the same scan under another id; it cannot match a patient whose two copies were processed
    differently (e.g. registered to an atlas in one source, native in the other): the id does that.
    """
    notes: list[str] = []
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    pv, pt = patient_ids(validation), patient_ids(training)
    by_pid = pt.reset_index().groupby("patient_id")["index"].apply(list).to_dict()
    for vcase, pid in pv.items():
        for tcase in by_pid.get(pid, []):
            rows[(vcase, tcase)] = {"validation_case": vcase, "training_case": tcase, "patient_id": pid,
                                    "by_id": True, "by_image": False, "image_correlation": np.nan}
    if fingerprints:
        mv, fv = cohort_fingerprints(validation)
        mt, ft = cohort_fingerprints(training)
        if not fv or not ft:
            notes.append("image fingerprints not compared: one cohort has no readable image")
        else:
            if mv != mt:
                notes.append(f"image fingerprints compare {mv} (validation) with {mt} (training)")
            vk, tk = list(fv), list(ft)
            V, T = np.vstack([fv[k] for k in vk]), np.vstack([ft[k] for k in tk])
            V = (V - V.mean(1, keepdims=True)) / V.std(1, keepdims=True)
            T = (T - T.mean(1, keepdims=True)) / T.std(1, keepdims=True)
            corr = V @ T.T / V.shape[1]
            for i, j in zip(*np.nonzero(corr >= min_correlation)):
                key = (vk[i], tk[j])
                row = rows.setdefault(key, {"validation_case": vk[i], "training_case": tk[j],
                                            "patient_id": pv.get(vk[i]), "by_id": False})
                row.update(by_image=True, image_correlation=float(corr[i, j]))
            for key, row in rows.items():
                if row["by_id"] and np.isnan(row["image_correlation"]) and key[0] in fv and key[1] in ft:
                    row["image_correlation"] = float(corr[vk.index(key[0]), tk.index(key[1])])
    table = pd.DataFrame(list(rows.values()), columns=["validation_case", "training_case", "patient_id", "by_id",
                                                       "by_image", "image_correlation"])
    table.insert(3, "by", ["+".join(b for b, f in (("id", r.by_id), ("image", r.by_image)) if f)
                           for r in table.itertuples()])
    return table.drop(columns=["by_id", "by_image"]), notes
