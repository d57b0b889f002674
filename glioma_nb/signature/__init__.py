"""Image signature and radiomics features.

``volumetric``: region volumes and robust intensity statistics from label maps (the baseline
available before the network signature exists). ``handcrafted``: PyRadiomics features per region and
modality. :func:`feature_sources` gathers every source a cohort has, by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd


def feature_sources(cohort: Any, percentiles: Sequence[float] = (1, 99), radiomics: str | None = None,
                    n_jobs: int = 1, settings_copy: Path | None = None,
                    progress: bool = True) -> dict[str, pd.DataFrame]:
    """Every feature table of a cohort, by source name (index ``case_id``).

    ``volumetric`` and (with ``radiomics`` settings) ``radiomics`` need label maps; the tables of
    ``cohort.features`` are passed on unchanged. The radiomics settings file is copied to
    ``settings_copy`` when given, so the run records what was extracted.
    """
    from glioma_nb.signature import volumetric

    tables: dict[str, pd.DataFrame] = {}
    has_masks = cohort.scheme is not None and bool(cohort.modalities)
    if has_masks:
        tables["volumetric"] = volumetric.cohort_features(cohort, percentiles, progress=progress)
    if radiomics and has_masks:
        from glioma_nb.signature import handcrafted

        settings = handcrafted.load_settings(radiomics)
        if settings_copy is not None:
            settings_copy.write_text(handcrafted.settings_path(radiomics).read_text())
        tables["radiomics"] = handcrafted.cohort_features(cohort, settings, percentiles, n_jobs=n_jobs,
                                                          progress=progress)
    for name, table in cohort.features.items():
        if name in tables:
            raise ValueError(f"cohort {cohort.name}: cohort.features.{name} clashes with the {name} features "
                             "extracted from the images; rename the table")
        tables[name] = table
    if not tables:
        raise ValueError(f"cohort {cohort.name}: no feature source - it has neither label maps nor "
                         "cohort.features tables; add label maps (cohort.label) or a feature table")
    return tables
