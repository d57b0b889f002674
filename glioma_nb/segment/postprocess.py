"""Post-processing of predicted masks, chosen by cross-validation on the training patients only.

A rule is applied to the whole tumour (every non-background class) of a predicted class map:

``none``            keep the network's mask as it is
``largest``         keep only the largest 3D connected component (26-connectivity)
``min_fraction:f``  drop connected components smaller than ``f`` x the largest one

The rule a model uses is ``postprocess`` in its spec (``models/<name>.yaml``). It is not picked by
looking at the held-out patients: :func:`cross_validate` trains ``k`` fold models on the spec's
*training* patients only (the held-out patients are neither trained on nor predicted), segments each
fold's validation patients without post-processing, and :func:`choose` keeps a rule only when it
raises the mean out-of-fold whole-tumour Dice over ``none`` (nnU-Net's criterion; Isensee et al. 2021).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from glioma_nb.segment import SegmentationError

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
    from scipy import ndimage

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


def fold_split(case_ids: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` disjoint validation folds of ``case_ids`` (sorted, shuffled with ``seed``)."""
    from sklearn.model_selection import KFold

    ids = np.asarray(sorted(case_ids))
    if k < 2 or k > len(ids):
        raise SegmentationError(f"cross-validation needs 2 <= folds <= {len(ids)} training cases, got {k}")
    return [sorted(ids[te].tolist()) for _, te in KFold(k, shuffle=True, random_state=seed).split(ids)]


def cross_validate(spec: Any, out_dir: Path, folds: int = 2, cohort: str | None = None, iterations: int | None = None,
                   device: str = "auto", progress: bool = True) -> pd.DataFrame:
    """Train ``folds`` models on the training patients of ``cohort`` (default: the spec's last
    source) minus one fold each, segment that fold without post-processing and score every rule.

    The other sources' training cases stay in every fold's training set; every source's held-out
    cases are dropped (never trained on, never predicted). Each fold lives in ``out_dir/fold<i>``
    and resumes (training checkpoint, per-case mask cache). Returns one row per validation case and
    rule (``case_id, fold, rule, dice_WT, hd95_WT``), also written to ``out_dir/oof_scores.csv``.
    """
    from glioma_nb.segment import infer, metrics, models, train

    out_dir = Path(out_dir)
    sources = train.sources_from_spec(spec, progress=progress)
    by_name = {s.cohort.name: s for s in sources}
    target = by_name.get(cohort) if cohort else sources[-1]
    if target is None:
        raise SegmentationError(f"model {spec.name} has no training source {cohort!r}; it has {sorted(by_name)}")
    split = fold_split(target.train, folds)
    settings = train.TrainSettings.from_spec(spec, iterations=iterations)
    settings.val_every = settings.iterations  # monitor the fold once, at the end
    dev = models.resolve_device(device)
    rows = []
    for f, val in enumerate(split):
        fsources = [train.TrainSource(s.cohort, [c for c in s.train if c not in val] if s is target else list(s.train),
                                      list(val) if s is target else []) for s in sources]
        fdir = out_dir / f"fold{f}"
        if not (fdir / "weights.pt").exists():
            train.train(spec, fsources, fdir, settings, device=dev, progress=progress)
        net = models.load_model(spec, fdir / "weights.pt", device=dev)
        mask_dir = fdir / "oof_masks"
        infer.segment_cohort(target.cohort, spec, net, mask_dir, case_ids=val, device=dev, progress=progress,
                             postprocess="none")
        for rule in RULES:
            rows.append(metrics.cohort_scores(target.cohort, mask_dir, val, postprocess=rule).assign(fold=f, rule=rule))
    table = pd.concat(rows, ignore_index=True)
    table.to_csv(out_dir / "oof_scores.csv", index=False)
    return table


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
