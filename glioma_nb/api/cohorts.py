"""A cohort's checks as plain functions (``glioma-nb validate | overlap``)."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from glioma_nb import config, io, synthetic
from glioma_nb.preprocess import pipeline as pre_pipeline
from glioma_nb.validate import overlap as val_overlap


def check(cohort: str, overrides: Sequence[str] = ()) -> tuple[io.QCReport, str]:
    """Every problem of a cohort's files and clinical table (the raw scans of a raw cohort: its BraTS-space
    cohort is 00_preprocess's output): the report, and a text of what was found."""
    cfg = config.resolve_config(cohort, overrides)
    synthetic.ensure_cohort_data(cfg)
    if cfg["cohort"]["source"] == "raw":
        raw, report = pre_pipeline.check_raw(cfg)
        return report, (report.case_table.to_string(index=False)
                        + f"\nraw cohort {raw.name}: {len(raw.cases)} case(s) ready for 00_preprocess")
    checked, report = io.check_cohort(cfg)
    return report, repr(checked)


def overlap(cohort: str, against: str, images: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """The patients of ``cohort`` that are also in ``against`` (by id, and by image unless ``images`` is
    false): one row per pair (``validation_case``, ``training_case``, how matched), and notes."""
    cohorts = []
    for name in (cohort, against):
        cfg = config.resolve_config(name)
        synthetic.ensure_cohort_data(cfg, progress=False)
        cohorts.append(io.load_cohort(cfg, progress=False))
    return val_overlap.patient_overlap(cohorts[1], cohorts[0], fingerprints=images)
