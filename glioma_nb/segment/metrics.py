"""Overlap metrics: Dice and HD95 per region (MONAI), per case and summarised with bootstrap CIs.

Conventions (those of the BraTS challenge): a region absent from both the reference and the
prediction scores Dice 1 and HD95 0; a region present in only one of them scores Dice 0 and an
undefined HD95 (NaN, counted in ``n_missing_hd95``). HD95 is in millimetres (voxel size passed).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from glioma_nb import io, stats
from glioma_nb.segment import postprocess as post


def region_scores(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], hd95: bool = True) -> tuple[float, float]:
    """Dice and HD95 (mm) of two boolean masks of one region (``hd95=False``: Dice alone, HD95 NaN)."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if not p.any() and not r.any():
        return 1.0, 0.0
    if not p.any() or not r.any():
        return 0.0, float("nan")
    if not hd95:
        return float(2.0 * np.logical_and(p, r).sum() / (p.sum() + r.sum())), float("nan")
    pt = torch.from_numpy(p[None, None].astype(np.float32))
    rt = torch.from_numpy(r[None, None].astype(np.float32))
    dice = float(compute_dice(pt, rt, include_background=True)[0, 0])
    with warnings.catch_warnings():  # MONAI 1.6 warns about an argument of its own internal call
        warnings.simplefilter("ignore", FutureWarning)
        hd = float(compute_hausdorff_distance(pt, rt, include_background=True, percentile=95,
                                              spacing=[float(s) for s in spacing])[0, 0])
    return dice, hd


def case_scores(pred: np.ndarray, ref: np.ndarray, pred_scheme: io.LabelScheme, ref_scheme: io.LabelScheme,
                spacing: Sequence[float], hd95: bool = True) -> dict[str, float]:
    """Dice and HD95 of every region the two schemes share (WT always; TC/ET for BraTS schemes)."""
    pm, rm = io.region_masks(pred, pred_scheme), io.region_masks(ref, ref_scheme)
    out: dict[str, float] = {}
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for region in [r for r in ("WT", "TC", "ET") if r in pm and r in rm]:
        d, h = region_scores(pm[region], rm[region], spacing, hd95)
        out[f"dice_{region}"] = d
        if hd95:
            out[f"hd95_{region}"] = h
        out[f"ref_{region}_ml"] = float(rm[region].sum()) * voxel_ml
        out[f"pred_{region}_ml"] = float(pm[region].sum()) * voxel_ml
    return out


def summarise(per_case: pd.DataFrame, n_boot: int = 2000, random_state: int = 0) -> pd.DataFrame:
    """One row per region and metric: mean, 95% bootstrap CI, median, n cases (and HD95 NaNs)."""
    rows = []
    for col in [c for c in per_case.columns if c.startswith(("dice_", "hd95_"))]:
        metric, region = col.split("_", 1)
        mean, lo, hi, n = stats.bootstrap_mean(per_case[col], n_boot=n_boot, random_state=random_state)
        rows.append({"region": region, "metric": "Dice" if metric == "dice" else "HD95 (mm)", "mean": mean,
                     "ci_low": lo, "ci_high": hi, "median": float(per_case[col].median()), "n": n,
                     "n_missing": int(per_case[col].isna().sum())})
    return pd.DataFrame(rows, columns=["region", "metric", "mean", "ci_low", "ci_high", "median", "n", "n_missing"])


def summary_record(summary: pd.DataFrame) -> Mapping[str, float]:
    """Flat metrics for a manifest: dice_WT, dice_WT_ci, hd95_WT, ..."""
    out: dict[str, object] = {}
    for r in summary.itertuples():
        key = f"{'dice' if r.metric == 'Dice' else 'hd95'}_{r.region}"
        out[key] = round(r.mean, 4)
        out[f"{key}_ci"] = [round(r.ci_low, 4), round(r.ci_high, 4)]
        out[f"{key}_n"] = r.n
    return out  # type: ignore[return-value]


def cohort_scores(cohort: io.Cohort, mask_dir: "Path | str", case_ids: Iterable[str] | None = None,
                  postprocess: str = "none") -> pd.DataFrame:
    """Dice/HD95 of the predicted masks in ``mask_dir`` against the cohort's label maps, per case
    (with a :mod:`~glioma_nb.segment.postprocess` rule applied to the masks first)."""
    return rule_scores(cohort, mask_dir, case_ids, {postprocess: True}).drop(columns="rule")


def rule_scores(cohort: io.Cohort, mask_dir: "Path | str", case_ids: Iterable[str] | None,
                rules: Mapping[str, bool]) -> pd.DataFrame:
    """One row per case and post-processing rule (``rules``: rule -> with HD95, which is slow; Dice is always
    computed), each mask and label map read once."""
    import nibabel as nib

    if cohort.scheme is None:
        raise ValueError(f"cohort {cohort.name} has no label maps: nothing to score")
    rows = []
    for cid in (list(case_ids) if case_ids is not None else cohort.case_ids):
        ref_img = cohort.load_label(cid)
        pred_path = Path(mask_dir) / f"{cid}.nii.gz"
        if ref_img is None or not pred_path.exists():
            continue
        raw = np.asanyarray(nib.load(pred_path).dataobj)
        ref = np.asanyarray(ref_img.dataobj)
        pred_scheme = io.mask_scheme(Path(mask_dir), cid, raw)
        spacing = ref_img.header.get_zooms()[:3]
        et = 4 if pred_scheme.name == "brats2018" else 3
        for rule, hd in rules.items():
            pred = post.apply(raw, rule, float(np.prod(spacing)) / 1000.0, et=et)
            rows.append({"case_id": cid, "rule": rule, **case_scores(pred, ref, pred_scheme, cohort.scheme, spacing, hd)})
    return pd.DataFrame(rows)
