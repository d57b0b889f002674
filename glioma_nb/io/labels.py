"""Label schemes of tumour label maps (BraTS 2018, BraTS 2023+, binary) and their regions WT/TC/ET.

``brats2023`` is the BraTS 2023 challenges' and the BraTS orchestrator's scheme (1 NCR, 2 ED, 3 ET); ``brats2021``
is the same values under the name this project used first (BraTS 2021 itself released 1/2/4 maps: ``brats2018``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")


@dataclass(frozen=True)
class LabelScheme:
    """A label convention: voxel values, their names, and the evaluation regions built from them."""

    name: str
    values: Mapping[int, str]
    regions: Mapping[str, tuple[int, ...]]

    @property
    def allowed(self) -> set[int]:
        return {0, *self.values}

    @property
    def brats(self) -> bool:
        """A BraTS scheme (necrosis, oedema, enhancing: regions WT, TC and ET), whichever value ET has."""
        return "ET" in self.regions


#: BraTS 2023+'s values (ET = 3), under both of its names
_BRATS_123 = ({1: "necrosis / non-enhancing core", 2: "oedema", 3: "enhancing tumour"},
              {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)})


LABEL_SCHEMES: dict[str, LabelScheme] = {
    "brats2018": LabelScheme(
        "brats2018",
        {1: "necrosis / non-enhancing core", 2: "oedema", 4: "enhancing tumour"},
        {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    ),
    "brats2023": LabelScheme("brats2023", *_BRATS_123),
    "brats2021": LabelScheme("brats2021", *_BRATS_123),
    "binary": LabelScheme("binary", {1: "tumour"}, {"WT": (1,)}),
}


DEFAULT_FILES: dict[str, dict[str, str]] = {
    "brats": {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "label": "seg"},
    # BraTS 2023+ and the BraTS orchestrator: <case>/<case>-t1n.nii.gz, -t1c, -t2w, -t2f, -seg
    "brats2023": {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f", "label": "seg"},
    "per_case": {"t1": "t1.nii.gz", "t1c": "t1c.nii.gz", "t2": "t2.nii.gz", "flair": "flair.nii.gz",
                 "label": "seg.nii.gz"},
}


def case_file(layout: str, case_id: str, name: str) -> str:
    """A case's file name in a folder layout: ``<case>_<suffix>.nii.gz`` (brats), ``<case>-<suffix>.nii.gz``
    (brats2023), or ``name`` itself with ``{case}`` filled in (per_case)."""
    if layout == "brats":
        return f"{case_id}_{name}.nii.gz"
    if layout == "brats2023":
        return f"{case_id}-{name}.nii.gz"
    return name.format(case=case_id)


def region_masks(label: np.ndarray, scheme: LabelScheme) -> dict[str, np.ndarray]:
    """Boolean masks of the scheme's evaluation regions (WT/TC/ET for BraTS, WT for binary)."""
    lab = np.asarray(label)
    return {name: np.isin(lab, values) for name, values in scheme.regions.items()}


def mask_scheme(mask_dir: Path, case_id: str, pred: np.ndarray) -> LabelScheme:
    """The scheme of a predicted mask: from its record (``<case>.json``), else from its values."""
    rec = mask_dir / f"{case_id}.json"
    if rec.exists():
        return LABEL_SCHEMES[json.loads(rec.read_text())["scheme"]]
    vals = set(np.unique(pred).tolist()) - {0}
    if vals <= {1}:
        return LABEL_SCHEMES["binary"]
    return LABEL_SCHEMES["brats2021" if 3 in vals else "brats2018"]
