"""Which MR sequence a series is, from its name: the modality patterns shared by raw DICOM cohorts
(:mod:`glioma_nb.preprocess.dicom`, searched in SeriesDescription and ProtocolName) and public-collection
indexes (:mod:`glioma_nb.sources.idc`, searched in the index's SeriesDescription)."""
from __future__ import annotations

import re

# Default modality patterns (case-insensitive). T1c is tried on its own words (post-contrast, gadolinium,
# MPRAGE+C...); T1 must not match them.
SERIES_PATTERNS: dict[str, str] = {
    "t1c": r"(t1|mprage|spgr|bravo|vibe).*(\+ ?c\b|post|gd|gado|contrast|\bce\b|t1ce|\bc\+)|t1c\b|t1ce|post.?contrast",
    "t1": r"^(?!.*(\+ ?c\b|post|gd|gado|contrast|\bce\b|t1ce|\bc\+|t1c\b)).*(\bt1\b|t1w|t1_|t1-|mprage|spgr)",
    "t2": r"^(?!.*(flair|\bir\b|tirm)).*(\bt2\b|t2w|t2_|t2-|tse|fse)",
    "flair": r"flair|tirm|dark.?fluid|\bir_fse\b",
}
LOCALISER = re.compile(r"locali[sz]er|\bscout\b|survey|\bloc\b|3.?plane", re.IGNORECASE)
