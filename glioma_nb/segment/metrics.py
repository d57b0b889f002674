"""Segmentation metrics as BraTS computes them (the official ``brats-evaluation`` package, config ``gli``), per
case and summarised with bootstrap CIs.

Per region (WT, TC, ET) of a case (:func:`case_scores`): global Dice, HD95 and NSD, and lesion-wise Dice and
HD95 with the instance counts TP / FP / FN (see the BraTS section below; fixture-tested against the official
package). Conventions, the official ones: a region empty in both reference and prediction is NaN (left out of
means, counted in ``n_missing``); empty in only one is Dice 0, NSD 0, HD95 infinite. Summaries replace an
infinite HD95 by 373 mm, the diagonal of the BraTS volume, as the official results parser does. Units: on
BraTS's 1 mm grid the global values are the official ones exactly; on any other grid they are given in mm
(the official package gives global HD95 in voxels there) with the NSD tolerance half the smallest voxel side.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from glioma_nb import io, stats
from glioma_nb.segment import postprocess as post


HD95_INF_MM = 373.0   # what the official parser writes for an infinite HD95 (the BraTS volume's diagonal)


def region_scores(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], hd95: bool = True) -> tuple[float, float]:
    """Dice and MONAI's HD95 (mm) of two boolean masks of one region (``hd95=False``: Dice alone, HD95 NaN); the
    quick Dice of post-processing searches. Empty in both: NaN, NaN; in one: 0, inf (the official convention).
    Note: MONAI's HD95 takes the 95th percentile of each direction and the larger of the two, higher than
    BraTS's pooled percentile (:func:`pair_metrics`)."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if not p.any() and not r.any():
        return float("nan"), float("nan")
    if not p.any() or not r.any():
        return 0.0, float("inf")
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



# ------------------------------------------------------------------------------ BraTS 2023+ (brats-evaluation)
# The official evaluation (brats-evaluation on panoptica, config ``gli``): Dice, NSD and HD95 of each region as a
# whole ("global") and per lesion. Lesions are 26-connected components (cc3d), reference and predicted lesions
# are paired by maximum bipartite matching on Dice (pairs with Dice >= 1e-6), and the lesion-wise value is the
# mean over matched pairs; unmatched lesions count as FP / FN. Surface distances: border = mask minus its
# erosion by the 6-neighbourhood, Euclidean distance to the other border (medpy's and MONAI's definition); HD95 is the
# 95th percentile of both directions' distances pooled; NSD is the mean of the two directions' fractions within
# the tolerance. As the official package does, the global values are computed on the voxel grid (HD95 in voxel
# sides, NSD tolerance 0.5 voxel) and the lesion-wise ones with the voxel size (mm, tolerance the smallest
# side); on BraTS's 1 mm grid the two agree in unit. Edge cases: a region empty in both is NaN (global and
# lesion-wise); empty in one of them, or lesions without any match, is Dice 0, NSD 0, HD95 inf.
BRATS_MATCH_THRESHOLD = 1e-6


def pair_metrics(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None,
                 tolerance: float | None = None) -> tuple[float, float, float]:
    """Dice, NSD and HD95 of two non-empty masks (see the section comment above). The surface distances in both
    directions are MONAI's (``get_edge_surface_distance``: erosion-XOR borders on the union's bounding box,
    exact Euclidean distances); only the pooling of the percentile differs from its ``compute_hausdorff_distance``."""
    from monai.metrics.utils import get_edge_surface_distance

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    dice = 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
    with warnings.catch_warnings():  # MONAI 1.6 warns about an argument of its own internal call
        warnings.simplefilter("ignore", FutureWarning)
        _, (d_ab, d_ba), _ = get_edge_surface_distance(a, b, spacing=None if spacing is None else list(spacing),
                                                       symmetric=True, warn_empty=False)
    d_ab, d_ba = np.asarray(d_ab, np.float64), np.asarray(d_ba, np.float64)
    tol = tolerance if tolerance is not None else (min(float(s) for s in spacing) if spacing is not None else 0.5)
    nsd = ((d_ab <= tol).mean() + (d_ba <= tol).mean()) / 2.0
    return float(dice), float(nsd), float(np.percentile(np.hstack((d_ab, d_ba)), 95))


def brats_region_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                         global_mm: bool = False) -> dict[str, float]:
    """The official BraTS metrics of one region's boolean masks (see the section comment above): ``dice``,
    ``nsd``, ``hd95`` (global), ``lesion_dice``, ``lesion_nsd``, ``lesion_hd95``, ``lesion_tp``, ``lesion_fp``,
    ``lesion_fn``. ``global_mm``: the global values with the voxel size (HD95 in mm, NSD tolerance half the
    smallest side), equal to the official ones on a 1 mm grid and in mm on any other."""
    import cc3d
    from scipy.optimize import linear_sum_assignment

    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    nan, inf = float("nan"), float("inf")
    if not p.any() and not r.any():
        out = dict(zip(("dice", "nsd", "hd95"), (nan, nan, nan)))
    elif not p.any() or not r.any():
        out = dict(zip(("dice", "nsd", "hd95"), (0.0, 0.0, inf)))
    else:
        out = dict(zip(("dice", "nsd", "hd95"), pair_metrics(p, r, spacing, 0.5 * min(map(float, spacing)))
                       if global_mm else pair_metrics(p, r, None)))
    pl, n_p = cc3d.connected_components(p.astype(np.uint8), connectivity=26, return_N=True)
    rl, n_r = cc3d.connected_components(r.astype(np.uint8), connectivity=26, return_N=True)
    pairs: list[tuple[int, int]] = []
    if n_p and n_r:
        both = (pl > 0) & (rl > 0)
        overlap = np.bincount(rl[both].astype(np.int64) * (n_p + 1) + pl[both], minlength=(n_r + 1) * (n_p + 1))
        overlap = overlap.reshape(n_r + 1, n_p + 1)[1:, 1:].astype(float)
        size_r, size_p = np.bincount(rl.ravel(), minlength=n_r + 1)[1:], np.bincount(pl.ravel(), minlength=n_p + 1)[1:]
        dsc = 2.0 * overlap / (size_r[:, None] + size_p[None, :])
        rows, cols = linear_sum_assignment(-dsc)
        pairs = [(i + 1, j + 1) for i, j in zip(rows, cols) if dsc[i, j] >= BRATS_MATCH_THRESHOLD]
    if pairs:
        vals = np.array([pair_metrics(rl == i, pl == j, spacing) for i, j in pairs])
        lesion = vals.mean(axis=0)
    elif n_p == 0 and n_r == 0:
        lesion = (nan, nan, nan)
    else:
        lesion = (0.0, 0.0, inf)
    out.update({"lesion_dice": float(lesion[0]), "lesion_nsd": float(lesion[1]), "lesion_hd95": float(lesion[2]),
                "lesion_tp": float(len(pairs)), "lesion_fp": float(n_p - len(pairs)),
                "lesion_fn": float(n_r - len(pairs))})
    return out

BRATS_COLUMNS = ("dice", "hd95", "nsd", "lesion_dice", "lesion_hd95", "lesion_tp", "lesion_fp", "lesion_fn")
REGIONS = ("WT", "TC", "ET")
CARD_METRICS = ("dice", "hd95", "lesion_dice", "lesion_hd95")   # the per-case columns a model card shows


def score_columns(columns: Iterable[str], kinds: Sequence[str] = BRATS_COLUMNS) -> list[str]:
    """The per-region metric columns (``<kind>_<R>``, R one of WT/TC/ET) among ``columns``, in their order."""
    wanted = {f"{k}_{r}" for k in kinds for r in REGIONS}
    return [c for c in columns if c in wanted]


def case_scores(pred: np.ndarray, ref: np.ndarray, pred_scheme: io.LabelScheme, ref_scheme: io.LabelScheme,
                spacing: Sequence[float], hd95: bool = True) -> dict[str, float]:
    """BraTS's metrics of every region the two schemes share (WT always; TC/ET for BraTS schemes):
    ``<metric>_<R>`` for each of :data:`BRATS_COLUMNS`, and the volumes ``ref_<R>_ml``, ``pred_<R>_ml``.
    ``hd95=False``: global Dice and volumes only (the quick score of post-processing searches)."""
    pm, rm = io.region_masks(pred, pred_scheme), io.region_masks(ref, ref_scheme)
    out: dict[str, float] = {}
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for region in [r for r in ("WT", "TC", "ET") if r in pm and r in rm]:
        if hd95:
            m = brats_region_metrics(pm[region], rm[region], spacing, global_mm=True)
            out.update({f"{k}_{region}": m[k] for k in BRATS_COLUMNS})
        else:
            out[f"dice_{region}"] = region_scores(pm[region], rm[region], spacing, hd95=False)[0]
        out[f"ref_{region}_ml"] = float(rm[region].sum()) * voxel_ml
        out[f"pred_{region}_ml"] = float(pm[region].sum()) * voxel_ml
    return out


# summary rows: column prefix -> (level, metric label); HD95s are summarised with inf -> HD95_INF_MM
SUMMARY_METRICS = {"dice": ("global", "Dice"), "hd95": ("global", "HD95 (mm)"), "nsd": ("global", "NSD"),
                   "lesion_dice": ("lesion-wise", "Dice"), "lesion_hd95": ("lesion-wise", "HD95 (mm)")}


def summarise(per_case: pd.DataFrame, n_boot: int = 2000, random_state: int = 0) -> pd.DataFrame:
    """One row per region, level (global / lesion-wise) and metric: mean, 95% bootstrap CI over cases, median,
    n cases, n_missing (NaN: the region empty in both), n_inf (infinite HD95, counted as 373 mm)."""
    rows = []
    for prefix, (level, label) in SUMMARY_METRICS.items():
        for col in score_columns(per_case.columns, [prefix]):
            region = col[len(prefix) + 1:]
            values = pd.to_numeric(per_case[col], errors="coerce")
            n_inf = int(np.isinf(values).sum())
            values = values.replace([np.inf, -np.inf], HD95_INF_MM)
            mean, lo, hi, n = stats.bootstrap_mean(values, n_boot=n_boot, random_state=random_state)
            rows.append({"region": region, "level": level, "metric": label, "mean": mean, "ci_low": lo,
                         "ci_high": hi, "median": float(values.median()), "n": n,
                         "n_missing": int(values.isna().sum()), "n_inf": n_inf})
    return pd.DataFrame(rows, columns=["region", "level", "metric", "mean", "ci_low", "ci_high", "median", "n",
                                       "n_missing", "n_inf"])


def summary_record(summary: pd.DataFrame) -> Mapping[str, float]:
    """Flat metrics for a manifest: dice_WT, dice_WT_ci, hd95_WT, nsd_WT, lesion_dice_WT, ..."""
    out: dict[str, object] = {}
    names = {v: k for k, v in SUMMARY_METRICS.items()}
    for r in summary.itertuples():
        key = f"{names[(getattr(r, 'level', 'global'), r.metric)]}_{r.region}"
        out[key] = round(r.mean, 4)
        out[f"{key}_ci"] = [round(r.ci_low, 4), round(r.ci_high, 4)]
        out[f"{key}_n"] = r.n
    return out  # type: ignore[return-value]

def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as notebook 01 shows it: one row per region and metric, global and lesion-wise side by side,
    each ``mean [CI low, CI high]``."""
    if summary.empty:
        return pd.DataFrame()
    s = summary.copy()
    digits = s["metric"].map(lambda m: 1 if m.startswith("HD95") else 3)
    s["value"] = [f"{m:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]" if np.isfinite(m) else "n/a"
                  for m, lo, hi, d in zip(s["mean"], s["ci_low"], s["ci_high"], digits)]
    wide = s.pivot_table(index=["region", "metric"], columns="level", values="value", aggfunc="first", sort=False)
    n = s[s["level"] == "global"].set_index(["region", "metric"])["n"]
    wide["n"] = n.reindex(wide.index)
    order = {"WT": 0, "TC": 1, "ET": 2}
    wide = wide.reset_index().sort_values(["region", "metric"], key=lambda c: c.map(order) if c.name == "region" else c)
    return wide.reset_index(drop=True).rename_axis(None, axis=1).fillna({"lesion-wise": ""})   # NSD: global only


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
