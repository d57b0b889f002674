"""The error of the segmentation stage."""
from __future__ import annotations


class SegmentationError(ValueError):
    """A case or a model cannot be used for segmentation; the message names the case, file and fix."""
