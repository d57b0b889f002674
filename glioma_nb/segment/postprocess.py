"""Post-processing of predicted masks, chosen by cross-validation on the training patients only.

A rule is applied to the whole tumour (every non-background class) of a predicted class map:

``none``            keep the network's mask as it is
``largest``         keep only the largest 3D connected component (26-connectivity)
``min_fraction:f``  drop connected components smaller than ``f`` x the largest one
``et_min:v``        a predicted enhancing tumour smaller than ``v`` mL in all becomes necrosis / non-enhancing
                    core (TC and WT unchanged): the ET post-processing of nnU-Net's BraTS entries (Isensee et
                    al. 2018, 2021), which fixes the ET Dice of 0 a few false-positive voxels give a case
                    without enhancement (BraTS scores an empty prediction of an empty ET as 1)

Rules combine with ``+`` (``largest+et_min:0.5``): the whole-tumour rule first, then ET.

The rule a model uses is ``postprocess`` in its spec (``models/<name>.yaml``). It is not picked by
looking at the held-out patients: :func:`glioma_nb.zoo.postprocess_cv.cross_validate_rules` trains ``k`` fold models on the spec's
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
# ET volume thresholds (mL) tried for brats models (et_min:v), alone and after each whole-tumour rule
ET_THRESHOLDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def brats_rules() -> tuple[str, ...]:
    """Every rule tried for a BraTS-subregion model: the whole-tumour rules, each with and without an ET threshold."""
    return RULES + tuple(f"{r}+et_min:{v:g}" if r != "none" else f"et_min:{v:g}" for r in RULES for v in ET_THRESHOLDS)


def parse_rule(rule: str) -> list[tuple[str, float]]:
    """``rule`` as [(kind, value), ...] (one per ``+`` part); raises with the accepted forms for anything else."""
    out = []
    for part in str(rule).split("+"):
        if part in ("none", "largest"):
            out.append((part, 0.0))
            continue
        kind, _, value = part.partition(":")
        try:
            v = float(value)
        except ValueError:
            v = -1.0
        if not ((kind == "min_fraction" and 0.0 < v < 1.0) or (kind == "et_min" and v > 0)):
            raise SegmentationError(f"post-processing rule {rule!r} is not one of: none, largest, min_fraction:F "
                                    "with 0 < F < 1, et_min:V with V > 0 mL, or such rules joined by + "
                                    "(set postprocess in the model spec)")
        out.append((kind, v))
    return out


def apply(classes: np.ndarray, rule: str, voxel_ml: float = 0.001, et: int = 3, necrosis: int = 1) -> np.ndarray:
    """``classes`` (integer label map, 0 = background) with the rule applied: whole-tumour rules to every
    non-background voxel, ``et_min`` to the value ``et`` (relabelled ``necrosis``; ``voxel_ml``: one voxel's mL)."""
    for kind, value in parse_rule(rule):
        if kind == "et_min":
            if 0 < int((classes == et).sum()) * voxel_ml < value:
                classes = np.where(classes == et, np.asarray(necrosis, classes.dtype), classes)
        elif kind != "none":
            classes = _components(classes, kind, value)
    return classes


def _components(classes: np.ndarray, kind: str, frac: float) -> np.ndarray:
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
