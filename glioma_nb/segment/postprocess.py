"""Post-processing of predicted masks, chosen by cross-validation on the training patients only.

A rule is applied to the whole tumour (every non-background class) of a predicted class map:

``none``            keep the network's mask as it is
``largest``         keep only the largest 3D connected component (26-connectivity)
``min_fraction:f``  drop connected components smaller than ``f`` x the largest one

The rule a model uses is ``postprocess`` in its spec (``models/<name>.yaml``). It is not picked by
looking at the held-out patients: :func:`postprocess_cv.cross_validate` trains ``k`` fold models on the spec's
*training* patients only (the held-out patients are neither trained on nor predicted), segments each
fold's validation patients without post-processing, and :func:`choose` keeps a rule only when it
raises the mean out-of-fold whole-tumour Dice over ``none`` (nnU-Net's criterion; Isensee et al. 2021).

The cross-validation that chooses a rule is :mod:`postprocess_cv`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from glioma_nb.segment.errors import SegmentationError

RULES = ("none", "largest", "min_fraction:0.1", "min_fraction:0.2")


def parse_rule(rule: str) -> tuple[str, float]:
    """``rule`` as (kind, fraction); raises with the accepted forms for anything else."""
    if rule in ("none", "largest"):
        return rule, 0.0
    kind, _, value = str(rule).partition(":")
    try:
        frac = float(value)
    except ValueError:
        frac = -1.0
    if kind != "min_fraction" or not 0.0 < frac < 1.0:
        raise SegmentationError(f"post-processing rule {rule!r} is not one of: none, largest, min_fraction:F "
                                "with 0 < F < 1 (set postprocess in the model spec)")
    return kind, frac


def apply(classes: np.ndarray, rule: str) -> np.ndarray:
    """``classes`` (integer class map, 0 = background) with the rule applied to the whole tumour."""
    kind, frac = parse_rule(rule)
    if kind == "none":
        return classes
    wt = classes > 0
    comp, k = ndimage.label(wt, structure=np.ones((3, 3, 3), bool))
    if k <= 1:
        return classes
    sizes = np.bincount(comp.ravel())[1:]
    keep_ids = [int(np.argmax(sizes)) + 1] if kind == "largest" else list(np.flatnonzero(sizes >= frac * sizes.max()) + 1)
    out = classes.copy()
    out[wt & ~np.isin(comp, keep_ids)] = 0
    return out


def choose(oof: pd.DataFrame, metric: str = "dice_WT") -> tuple[str, pd.DataFrame]:
    """The rule with the highest mean out-of-fold ``metric`` if it beats ``none``; else ``none``.
    Returns (rule, per-rule summary: mean, median, cases improved / worsened vs none)."""
    wide = oof.pivot(index="case_id", columns="rule", values=metric)
    if "none" not in wide:
        raise SegmentationError("the out-of-fold table has no 'none' rule to compare with")
    summary = pd.DataFrame({"mean": wide.mean(), "median": wide.median(),
                            "improved": (wide.sub(wide["none"], axis=0) > 1e-6).sum(),
                            "worsened": (wide.sub(wide["none"], axis=0) < -1e-6).sum(), "n": wide.count()})
    best = str(summary["mean"].idxmax())
    rule = best if summary.loc[best, "mean"] > summary.loc["none", "mean"] + 1e-9 else "none"
    return rule, summary


def write_choice(out_dir: Path, rule: str, summary: pd.DataFrame, meta: dict[str, Any]) -> Path:
    path = Path(out_dir) / "postprocess_choice.json"
    path.write_text(json.dumps({"rule": rule, **meta, "summary": summary.reset_index(names="rule").to_dict("records")},
                               indent=1))
    return path
