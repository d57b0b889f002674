"""glioma-nb: reproducible glioma MRI notebooks backed by a thin tested package.

Stages: (preprocess, for raw scans ->) segment -> signature -> classify -> stratify -> validate (-> longitudinal,
for serial scans). The notebooks in ``notebooks/``
call this package; ``glioma_nb.runner`` executes them with papermill into immutable run folders.
"""
from __future__ import annotations

__version__ = "0.1.0"

STEPS: tuple[str, ...] = ("00_preprocess", "01_segment", "02_signature", "03_classify", "04_stratify", "05_validate",
                          "06_longitudinal")
"""Notebook steps in execution order; each maps to the config section named after its suffix."""


def step_section(step: str) -> str:
    """Config section holding a step's notebook parameters (``"01_segment"`` -> ``"segment"``)."""
    return step.split("_", 1)[1]
