"""A trained network scored on the cases its spec holds out: each held-out case segmented in its original space
(sliding window, no TTA) and scored with BraTS's metrics, raw and with the spec's post-processing rule."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from glioma_nb.segment import infer, metrics
from glioma_nb.segment.models import ModelSpec
from glioma_nb.segment.train import TrainSource


def evaluate_held_out(spec: ModelSpec, net: Any, sources: Sequence[TrainSource], out_dir: Path,
                      device: str = "cpu", overlap: float = 0.5, progress: bool = True) -> pd.DataFrame:
    """Segment every held-out case in its original space and score it against its label map: one row
    per case without post-processing (``postprocess`` none) and, when the spec has a rule, one with it."""
    rows = []
    for src in sources:
        if not src.held_out:
            continue
        mask_dir = Path(out_dir) / "held_out_masks" / src.cohort.name
        table = infer.segment_cohort(src.cohort, spec, net, mask_dir, case_ids=src.held_out, overlap=overlap,
                                     device=device, progress=progress, postprocess="none")
        for rule in dict.fromkeys(["none", spec.postprocess]):
            scores = metrics.cohort_scores(src.cohort, mask_dir, src.held_out, postprocess=rule)
            rows.append(table.drop(columns="postprocess", errors="ignore").merge(scores, on="case_id")
                        .assign(cohort=src.cohort.name, postprocess=rule))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
