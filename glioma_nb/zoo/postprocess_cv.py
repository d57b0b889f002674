"""The k-fold cross-validation that chooses a model's post-processing rule on its training patients only: fold
models are trained on k-1 folds, the held-out fold is segmented without post-processing and every rule of
:data:`postprocess.RULES` is scored on it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from glioma_nb.segment import infer, metrics, models, train
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.postprocess import RULES


def fold_split(case_ids: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` disjoint validation folds of ``case_ids`` (sorted, shuffled with ``seed``)."""
    ids = np.asarray(sorted(case_ids))
    if k < 2 or k > len(ids):
        raise SegmentationError(f"cross-validation needs 2 <= folds <= {len(ids)} training cases, got {k}")
    return [sorted(ids[te].tolist()) for _, te in KFold(k, shuffle=True, random_state=seed).split(ids)]


def cross_validate_rules(spec: Any, out_dir: Path, folds: int = 2, cohort: str | None = None, iterations: int | None = None,
                   device: str = "auto", progress: bool = True) -> pd.DataFrame:
    """Train ``folds`` models on the training patients of ``cohort`` (default: the spec's last
    source) minus one fold each, segment that fold without post-processing and score every rule.

    The other sources' training cases stay in every fold's training set; every source's held-out
    cases are dropped (never trained on, never predicted). Each fold lives in ``out_dir/fold<i>``
    and resumes (training checkpoint, per-case mask cache). Returns one row per validation case and
    rule (``case_id, fold, rule, dice_WT, hd95_WT``), also written to ``out_dir/oof_scores.csv``.
    """
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
