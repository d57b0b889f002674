"""Cohorts in: files, label schemes, geometry, the canonical clinical table and QC.

``labels``    label schemes (BraTS 2018/2021, binary) and the WT/TC/ET region masks
``geometry``  orientation affines, the head-size voxel-size estimate, header overrides
``clinical``  the canonical clinical table and the parsing of free-text clinical values
``qc``        :class:`QCReport`: every problem of a cohort, naming the case, the file and the fix
``timeline``  serial scans: the ``cohort.timepoints`` table and its QC (dates, duplicates, single scans)
``cohort``    :class:`Cohort`: cases, modalities, label maps, clinical table; :func:`check_cohort`

The names below are re-exported so that callers write ``io.check_cohort``; the submodules import one
another directly, never this package.
"""
from __future__ import annotations

from glioma_nb.io.clinical import CLINICAL_COLUMNS, TIME_UNITS_DAYS, molecular_subtype, standardise_clinical
from glioma_nb.io.cohort import (Case, Cohort, check_cohort, cohort_root, discover_cases, load_cohort,
                                 load_feature_tables, preprocess_settings, preprocessed_root, source_root,
                                 synthetic_root)
from glioma_nb.io.geometry import (HEAD_AXIAL_AREA_MM2, HEAD_HEIGHT_MM, HEAD_SPACING, estimate_head_spacing,
                                   head_mask, orientation_affine, override_geometry)
from glioma_nb.io.labels import DEFAULT_FILES, LABEL_SCHEMES, MODALITIES, LabelScheme, mask_scheme, region_masks
from glioma_nb.io.qc import CohortError, Problem, QCReport
from glioma_nb.io.timeline import TIMEPOINT_COLUMNS, has_timepoints, read_timepoints

__all__ = ["CLINICAL_COLUMNS", "TIME_UNITS_DAYS", "molecular_subtype", "standardise_clinical", "Case", "Cohort",
           "check_cohort", "cohort_root", "discover_cases", "load_cohort", "load_feature_tables", "synthetic_root",
           "preprocess_settings", "preprocessed_root", "source_root",
           "HEAD_AXIAL_AREA_MM2", "HEAD_HEIGHT_MM", "HEAD_SPACING", "estimate_head_spacing", "head_mask",
           "orientation_affine", "override_geometry", "DEFAULT_FILES", "LABEL_SCHEMES", "MODALITIES", "LabelScheme",
           "mask_scheme", "region_masks", "CohortError", "Problem", "QCReport", "TIMEPOINT_COLUMNS", "has_timepoints",
           "read_timepoints"]
