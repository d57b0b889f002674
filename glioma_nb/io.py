"""Cohort model: cases with named modalities, optional label maps, and a canonical clinical table.

A cohort is described by the ``cohort`` section of the configuration (see ``configs/base.yaml``).
Three layouts are understood:

``brats``     ``<root>/<case>/<case>_<suffix>.nii.gz`` (suffixes from ``cohort.files``, BraTS defaults)
``per_case``  ``<root>/<case>/<file name>`` (file names from ``cohort.files``)
``manifest``  a CSV with columns ``case, <modality>..., [label]`` (paths relative to the CSV)

:func:`check_cohort` validates everything before any compute and collects *all* problems into one
:class:`QCReport`; :func:`load_cohort` raises :class:`CohortError` when the report has errors.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import nibabel as nib
import numpy as np
import pandas as pd

from glioma_nb import paths

MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")
HEAD_SPACING = "head"
# Reference head of ``estimate_head_spacing``: measured by it on the one TCGA-LGG FLAIR in ../shared/data with
# its true header (tcga-lgg-native/TCGA-FG-6692/raw/fla.nii.gz, 0.898 x 0.898 x 5.5 mm): largest axial
# cross-section of the head 25,312 mm2, head volume / that area 123.6 mm.
HEAD_AXIAL_AREA_MM2 = 25312.0
HEAD_HEIGHT_MM = 123.6
_SPACING_BOUNDS = {"in-plane": (0.3, 2.0), "slice": (0.5, 12.0)}


@dataclass(frozen=True)
class LabelScheme:
    """A label convention: voxel values, their names, and the evaluation regions built from them."""

    name: str
    values: Mapping[int, str]
    regions: Mapping[str, tuple[int, ...]]

    @property
    def allowed(self) -> set[int]:
        return {0, *self.values}


LABEL_SCHEMES: dict[str, LabelScheme] = {
    "brats2018": LabelScheme(
        "brats2018",
        {1: "necrosis / non-enhancing core", 2: "oedema", 4: "enhancing tumour"},
        {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    ),
    "brats2021": LabelScheme(
        "brats2021",
        {1: "necrosis / non-enhancing core", 2: "oedema", 3: "enhancing tumour"},
        {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
    ),
    "binary": LabelScheme("binary", {1: "tumour"}, {"WT": (1,)}),
}

DEFAULT_FILES: dict[str, dict[str, str]] = {
    "brats": {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "label": "seg"},
    "per_case": {"t1": "t1.nii.gz", "t1c": "t1c.nii.gz", "t2": "t2.nii.gz", "flair": "flair.nii.gz",
                 "label": "seg.nii.gz"},
}

TIME_UNITS_DAYS: dict[str, float] = {"days": 1.0, "months": 365.25 / 12.0, "years": 365.25}

# Canonical clinical columns (what the rest of the package relies on) and their kinds.
CLINICAL_COLUMNS: dict[str, str] = {
    "patient_id": "text",        # patient identity for patient-level splits (default: the case id)
    "site": "text",              # institution / scanner site
    "age": "number",             # years at diagnosis
    "sex": "sex",                # M | F
    "kps": "number",             # Karnofsky performance status, 0-100
    "histology": "text",         # e.g. astrocytoma, oligodendroglioma, glioblastoma
    "who_grade": "grade",        # 2 | 3 | 4
    "idh_mutant": "binary",      # 1 mutant, 0 wild-type
    "codel_1p19q": "binary",     # 1 codeleted, 0 retained
    "tertp_mutant": "binary",    # 1 mutant, 0 wild-type
    "mgmt_methylated": "binary", # 1 methylated, 0 unmethylated
    "resection": "resection",    # GTR | STR | biopsy
    "os_time": "number",         # overall survival in cohort.clinical.time_unit; stored as os_days
    "os_event": "binary",        # 1 death observed, 0 censored
}

_BINARY_WORDS = {
    "1": 1, "1.0": 1, "true": 1, "yes": 1, "y": 1, "mutant": 1, "mut": 1, "mutated": 1, "positive": 1,
    "methylated": 1, "codeleted": 1, "codel": 1, "deceased": 1, "dead": 1,
    "0": 0, "0.0": 0, "false": 0, "no": 0, "n": 0, "wildtype": 0, "wild-type": 0, "wt": 0,
    "not_mutated": 0, "negative": 0, "unmethylated": 0, "retained": 0, "intact": 0, "non-codel": 0,
    "noncodel": 0, "alive": 0, "censored": 0,
}
_GRADE_WORDS = {"2": 2, "ii": 2, "g2": 2, "3": 3, "iii": 3, "g3": 3, "4": 4, "iv": 4, "g4": 4}
_SEX_WORDS = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}
_RESECTION_WORDS = {"gtr": "GTR", "gross total": "GTR", "total": "GTR", "str": "STR", "subtotal": "STR",
                    "partial": "STR", "biopsy": "biopsy", "bx": "biopsy"}
_MISSING = {"", "na", "n/a", "nan", "none", "null", "unknown", "not available", "[not available]", "--"}


class CohortError(ValueError):
    """A cohort failed validation. ``report`` holds every problem found, not only the first."""

    def __init__(self, report: "QCReport") -> None:
        self.report = report
        super().__init__(report.format())


@dataclass
class Problem:
    """One QC finding: where it is, what is wrong, and how to fix it."""

    case: str | None
    file: str | None
    message: str
    fix: str
    severity: str = "error"  # error | warning

    def format(self) -> str:
        where = " ".join(x for x in (f"case {self.case}:" if self.case else "",
                                     f"{self.file}:" if self.file else "") if x)
        return f"[{self.severity}] {where} {self.message}; {self.fix}".strip()


@dataclass
class QCReport:
    """All problems of a cohort plus the per-case table built while checking."""

    cohort: str
    problems: list[Problem] = field(default_factory=list)
    case_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    root: Path | None = None

    def show(self, file: Path) -> str:
        """A file as shown in messages: relative to the folder above the cohort root when inside it."""
        if self.root is not None:
            try:
                return str(Path(file).resolve().relative_to(self.root.parent.resolve()))
            except ValueError:
                pass
        return paths.display_path(file)

    def add(self, case: str | None, file: str | Path | None, message: str, fix: str,
            severity: str = "error") -> None:
        shown = self.show(file) if isinstance(file, Path) else file
        self.problems.append(Problem(case, shown, message, fix, severity))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        head = (f"cohort {self.cohort}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join([head, *("  " + p.format() for p in self.problems)])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([p.__dict__ for p in self.problems],
                            columns=["case", "file", "message", "fix", "severity"])

    def __repr__(self) -> str:
        return f"QCReport(cohort={self.cohort!r}, errors={len(self.errors)}, warnings={len(self.warnings)})"


@dataclass
class Case:
    """One case: its id and the files of its modalities and label map."""

    case_id: str
    images: dict[str, Path]
    label: Path | None = None


@dataclass
class Cohort:
    """A validated cohort: cases, canonical clinical table and the settings that describe them."""

    name: str
    root: Path
    cases: list[Case]
    clinical: pd.DataFrame
    modalities: tuple[str, ...]
    scheme: LabelScheme | None
    spacing: tuple[float, float, float] | str | None = None   # or HEAD_SPACING: estimated per case
    orientation: str | None = None
    qc: QCReport | None = None
    head_reference: tuple[float, float] = (HEAD_AXIAL_AREA_MM2, HEAD_HEIGHT_MM)
    _case_spacing: dict[str, tuple[float, float, float]] = field(default_factory=dict, repr=False)
    features: dict[str, pd.DataFrame] = field(default_factory=dict)   # precomputed tables (cohort.features)
    feature_files: list[Path] = field(default_factory=list)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise KeyError(f"cohort {self.name}: no case {case_id!r}")

    def spacing_of(self, case_id: str, data: np.ndarray | None = None) -> tuple[float, float, float] | None:
        """The voxel size (mm) that replaces ``case_id``'s header, or None to keep the header's.

        With ``cohort.geometry.spacing: head`` it is estimated once per case from the head's size in the
        first modality (:func:`estimate_head_spacing`; ``data``: that image's array, if already read).
        """
        if self.spacing != HEAD_SPACING:
            return self.spacing  # type: ignore[return-value]
        if case_id not in self._case_spacing:
            images = self.case(case_id).images
            path = images[next(m for m in self.modalities if m in images)]
            img = nib.load(path)
            orientation = self.orientation or "".join(nib.aff2axcodes(img.affine))
            try:
                self._case_spacing[case_id] = estimate_head_spacing(
                    np.asanyarray(img.dataobj) if data is None else data, orientation, *self.head_reference)
            except ValueError as exc:
                raise ValueError(f"cohort {self.name}, case {case_id}, {paths.display_path(path)}: {exc}; state the "
                                 "voxel size instead (cohort.geometry.spacing: [sx, sy, sz]) or fix the "
                                 "image") from exc
        return self._case_spacing[case_id]

    def override(self, img: nib.Nifti1Image, case_id: str) -> nib.Nifti1Image:
        """``img`` (an image or mask of ``case_id``) with the cohort's geometry override applied."""
        return override_geometry(img, self.spacing_of(case_id), self.orientation)

    def load_image(self, case_id: str, modality: str) -> nib.Nifti1Image:
        """The image of ``modality`` for ``case_id``, with the cohort's geometry override applied."""
        case = self.case(case_id)
        if modality not in case.images:
            raise KeyError(f"cohort {self.name}: case {case_id} has no {modality} (has {sorted(case.images)})")
        return self.override(nib.load(case.images[modality]), case_id)

    def load_label(self, case_id: str) -> nib.Nifti1Image | None:
        case = self.case(case_id)
        if case.label is None:
            return None
        return self.override(nib.load(case.label), case_id)

    def input_files(self) -> list[Path]:
        files: list[Path] = []
        for c in self.cases:
            files.extend(c.images[m] for m in self.modalities if m in c.images)
            if c.label is not None:
                files.append(c.label)
        return files + list(self.feature_files)

    def __repr__(self) -> str:
        return (f"Cohort({self.name!r}, cases={len(self.cases)}, modalities={list(self.modalities)}, "
                f"labels={self.scheme.name if self.scheme else None}, clinical_rows={len(self.clinical)})")


# --------------------------------------------------------------------------------------------- geometry
def orientation_affine(shape: tuple[int, ...], spacing: Iterable[float], orientation: str) -> np.ndarray:
    """Affine for voxel axes pointing to ``orientation`` (e.g. ``"PLS"``) with ``spacing`` mm, centred at 0.

    Each letter gives the world direction (RAS+ convention) of increasing voxel index along that axis.
    """
    codes = orientation.upper()
    if len(codes) != 3 or any(sum(c in pair for c in codes) != 1 for pair in ("LR", "PA", "IS")):
        raise ValueError(f"orientation {orientation!r} must name one of L/R, A/P, I/S per axis, e.g. 'RAS' or 'PLS'")
    sp = [float(s) for s in spacing]
    if len(sp) != 3 or any(not s > 0 for s in sp):
        raise ValueError(f"spacing {list(spacing)} must be three positive numbers (mm)")
    axis = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    aff = np.zeros((4, 4))
    aff[3, 3] = 1.0
    for i, code in enumerate(codes):
        row, sign = axis[code]
        aff[row, i] = sign * sp[i]
    centre = (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0
    aff[:3, 3] = -aff[:3, :3] @ centre
    return aff


def head_mask(data: np.ndarray) -> np.ndarray:
    """The head (scalp included) of a non-skull-stripped MRI: above half the Otsu threshold, largest
    connected component, holes filled slice by slice along the last axis."""
    import SimpleITK as sitk
    from scipy import ndimage

    data = np.asarray(data, dtype=np.float32)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(sitk.GetImageFromArray(data))
    labels, n = ndimage.label(data > 0.5 * otsu.GetThreshold())
    if n == 0:
        return np.zeros(data.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == sizes.argmax()
    return np.stack([ndimage.binary_fill_holes(mask[..., k]) for k in range(mask.shape[-1])], axis=-1)


def estimate_head_spacing(data: np.ndarray, orientation: str, axial_area_mm2: float = HEAD_AXIAL_AREA_MM2,
                          height_mm: float = HEAD_HEIGHT_MM) -> tuple[float, float, float]:
    """Voxel size (mm, in voxel-axis order) of an axial head MRI whose header does not record it.

    For stacks exported without geometry (e.g. TCGA-LGG's TIFF slices), from the size of the head: square
    in-plane voxels scaled so the largest axial cross-section of the head is ``axial_area_mm2``, and slices
    so that head volume / that cross-section is ``height_mm`` (a head's extent in voxels does not depend on
    how many slices cover it). ``orientation`` (e.g. "PLS") says which voxel axis is inferior-superior.
    The defaults are measured on a TCGA-LGG FLAIR with its true header (see ``HEAD_AXIAL_AREA_MM2``); a head
    differs from them by some 5-10 % in each direction, and so does the estimate.
    """
    codes = orientation.upper()
    axial = next((i for i, c in enumerate(codes) if c in "SI"), None)
    if data.ndim != 3 or axial is None:
        raise ValueError(f"needs a 3D axial stack with an inferior-superior axis (shape {data.shape}, "
                         f"orientation {orientation!r})")
    mask = head_mask(np.moveaxis(data, axial, -1))
    area = mask.sum(axis=(0, 1))
    if (area > 0).sum() < 3 or area.max() < 100:
        raise ValueError("no head found to estimate the voxel size from (fewer than 3 slices or 100 voxels)")
    inplane = math.sqrt(axial_area_mm2 / float(area.max()))
    thick = height_mm / (float(mask.sum()) / float(area.max()))
    for what, value in (("in-plane", inplane), ("slice", thick)):
        lo, hi = _SPACING_BOUNDS[what]
        if not lo <= value <= hi:
            raise ValueError(f"estimated {what} spacing {value:.2f} mm is outside {lo}-{hi} mm (is it a head "
                             "MRI, not skull-stripped, whole head in the field of view?)")
    out = [inplane] * 3
    out[axial] = thick
    return (round(out[0], 3), round(out[1], 3), round(out[2], 3))


def override_geometry(img: nib.Nifti1Image, spacing: Iterable[float] | None,
                      orientation: str | None) -> nib.Nifti1Image:
    """Replace a header's voxel size and/or orientation (for files whose header is known to be wrong)."""
    if spacing is None and orientation is None:
        return img
    if orientation is None:
        orientation = "".join(nib.aff2axcodes(img.affine))
    if spacing is None:
        spacing = img.header.get_zooms()[:3]
    aff = orientation_affine(img.shape, spacing, orientation)
    out = nib.Nifti1Image(img.dataobj, aff, header=img.header.copy())
    out.set_qform(aff, code=1)
    out.set_sform(aff, code=1)
    return out


# -------------------------------------------------------------------------------------------- discovery
def synthetic_root(cfg: Mapping[str, Any]) -> Path:
    """Default folder of a generated cohort: ``<data>/synthetic/n<N>_seed<S>_<R>mm``."""
    s = cfg["cohort"]["synthetic"]
    return paths.data_dir() / "synthetic" / f"n{s['n_cases']}_seed{s['seed']}_{s['resolution_mm']}mm"


def cohort_root(cfg: Mapping[str, Any]) -> Path:
    """The cohort folder: ``cohort.root`` resolved, or the default folder of a generated cohort."""
    c = cfg["cohort"]
    if c.get("root") is None and c.get("source") == "synthetic":
        return synthetic_root(cfg)
    if c.get("root") is None:
        raise CohortError(QCReport(c["name"], [Problem(None, None, "cohort.root is not set",
                                                       f"set root: in configs/cohorts/{c['name']}.yaml")]))
    return paths.resolve_path(c["root"])


def _file_names(c: Mapping[str, Any]) -> dict[str, str]:
    names = dict(DEFAULT_FILES.get(c["layout"], {}))
    names.update(c.get("files") or {})
    return names


def discover_cases(cfg: Mapping[str, Any], report: QCReport) -> tuple[Path, list[Case]]:
    """Find the cases of a cohort; missing files and duplicates are added to ``report``."""
    c = cfg["cohort"]
    root = cohort_root(cfg)
    mods = list(c["modalities"])
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown:
        report.add(None, None, f"unknown modalities {unknown}", f"use a subset of {list(MODALITIES)}")
        mods = [m for m in mods if m in MODALITIES]
    if not root.is_dir():
        report.add(None, root, "cohort root folder does not exist",
                   f"check cohort.root in configs/cohorts/{c['name']}.yaml (or set GLIOMA_NB_SHARED)")
        return root, []
    layout = c["layout"]
    want_label = bool(c["label"]["present"])
    names = _file_names(c)
    cases: list[Case] = []
    exclude = set(c.get("exclude") or [])
    if layout in ("brats", "per_case"):
        folders = sorted(p for p in root.glob(c["case_glob"]) if p.is_dir() and not p.name.startswith("."))
        if not folders:
            report.add(None, root, f"no case folders match '{c['case_glob']}'",
                       "check cohort.root and cohort.case_glob")
        for folder in folders:
            cid = folder.name
            if cid in exclude:
                continue
            entries = {m: names[m] for m in mods}
            if want_label:
                entries["label"] = names["label"]
            files: dict[str, Path] = {}
            for key, name in entries.items():
                fname = f"{cid}_{name}.nii.gz" if layout == "brats" else name.format(case=cid)
                path = folder / fname
                if not path.exists():
                    alts = sorted(p.name for p in folder.glob(f"*{name.split('.')[0]}*"))
                    hint = f" (found {alts})" if alts else ""
                    report.add(cid, path, f"missing {key} file{hint}",
                               f"add the file or set cohort.files.{key} to the real "
                               f"{'suffix' if layout == 'brats' else 'file name'}")
                    continue
                files[key] = path
            label = files.pop("label", None)
            cases.append(Case(cid, files, label))
    elif layout == "manifest":
        if not c.get("manifest"):
            report.add(None, None, "layout 'manifest' needs cohort.manifest", "set cohort.manifest to a CSV path")
            return root, []
        mpath = paths.resolve_path(c["manifest"], base=root)
        try:
            table = pd.read_csv(mpath, dtype=str)
        except (OSError, pd.errors.ParserError) as exc:
            report.add(None, mpath, f"manifest unreadable ({exc})", "check the CSV")
            return root, []
        needed = ["case", *mods] + (["label"] if want_label else [])
        missing_cols = [k for k in needed if k not in table.columns]
        if missing_cols:
            report.add(None, mpath, f"manifest lacks columns {missing_cols}",
                       f"the manifest needs columns {needed}")
            return root, []
        dup = table["case"][table["case"].duplicated()].unique().tolist()
        for cid in dup:
            report.add(str(cid), mpath, "duplicate case id in the manifest", "give each case one row")
        for _, row in table.drop_duplicates("case").iterrows():
            cid = str(row["case"])
            if cid in exclude:
                continue
            files = {}
            for key in needed[1:]:
                if pd.isna(row[key]) or not str(row[key]).strip():
                    report.add(cid, mpath, f"no {key} path given", f"fill the {key} column")
                    continue
                p = paths.resolve_path(str(row[key]), base=mpath.parent)
                if not p.exists():
                    report.add(cid, p, f"missing {key} file", "fix the path in the manifest")
                    continue
                files[key] = p
            label = files.pop("label", None)
            cases.append(Case(cid, files, label))
    elif layout == "table":
        if mods or want_label:
            report.add(None, None, "layout 'table' has no images or label maps",
                       "set cohort.modalities: [] and cohort.label.present: false")
        if not c.get("features") and not (c.get("clinical") or {}).get("file"):
            report.add(None, None, "layout 'table' needs cohort.features or a clinical table",
                       "add cohort.features: {name: {file: features.csv, id_column: ID}} or cohort.clinical.file")
    else:
        report.add(None, None, f"unknown layout {layout!r}", "use brats, per_case, manifest or table")
    return root, cases


_FEATURE_KEYS = {"file", "id_column", "drop"}


def load_feature_tables(c: Mapping[str, Any], root: Path, report: QCReport) -> tuple[dict[str, pd.DataFrame], list[Path]]:
    """Read the precomputed feature tables of ``cohort.features``: numeric columns, indexed by case id.

    Problems (missing file or id column, duplicate ids, non-numeric columns) go to ``report``.
    """
    tables: dict[str, pd.DataFrame] = {}
    files: list[Path] = []
    for name, spec in (c.get("features") or {}).items():
        if not isinstance(spec, Mapping) or "file" not in spec or set(spec) - _FEATURE_KEYS:
            report.add(None, None, f"cohort.features.{name} must be a mapping with keys {sorted(_FEATURE_KEYS)}",
                       f"write it as {name}: {{file: table.csv, id_column: ID, drop: []}}")
            continue
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", str(name)) or name in ("clinical", "all"):
            report.add(None, None, f"feature table name {name!r} is not allowed",
                       "use letters, digits and _ (not 'clinical' or 'all')")
            continue
        path = paths.resolve_path(str(spec["file"]), base=root)
        label = report.show(path)
        try:
            raw = pd.read_csv(path)
        except FileNotFoundError:
            report.add(None, path, f"feature table '{name}' not found", f"fix cohort.features.{name}.file")
            continue
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            report.add(None, path, f"feature table '{name}' unreadable ({exc})", "save it as a UTF-8 CSV")
            continue
        files.append(path)
        id_col = str(spec.get("id_column", "case_id"))
        if id_col not in raw.columns:
            report.add(None, label, f"id column '{id_col}' not found in feature table '{name}'",
                       f"set cohort.features.{name}.id_column")
            continue
        ids = raw[id_col].astype(str).str.strip()
        for cid in ids[ids.duplicated()].unique():
            report.add(cid, label, f"duplicate id in feature table '{name}'", "give each case one row")
        drop = [str(d) for d in spec.get("drop") or []]
        unknown = [d for d in drop if d not in raw.columns]
        if unknown:
            report.add(None, label, f"cohort.features.{name}.drop names unknown columns {unknown}", "fix the list")
        table = raw.drop(columns=[id_col, *[d for d in drop if d in raw.columns]])
        text = [col for col in table.columns if not pd.api.types.is_numeric_dtype(table[col])]
        if text:
            report.add(None, label, f"feature table '{name}' has non-numeric columns {text[:8]}"
                       + (f" and {len(text) - 8} more" if len(text) > 8 else ""),
                       f"add them to cohort.features.{name}.drop (labels must never be features)")
            continue
        table.index = pd.Index(ids, name="case_id")
        tables[str(name)] = table[~table.index.duplicated()].astype(float)
    return tables, files


# ----------------------------------------------------------------------------------------- image checks
def region_masks(label: np.ndarray, scheme: LabelScheme) -> dict[str, np.ndarray]:
    """Boolean masks of the scheme's evaluation regions (WT/TC/ET for BraTS, WT for binary)."""
    lab = np.asarray(label)
    return {name: np.isin(lab, values) for name, values in scheme.regions.items()}


def _read(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    img = nib.load(path)
    return img, np.asanyarray(img.dataobj)


def _check_case(case: Case, cohort: Cohort, cfg: Mapping[str, Any], report: QCReport) -> dict[str, Any]:
    qc = cfg["qc"]
    row: dict[str, Any] = {"case_id": case.case_id}
    ref_shape = ref_aff = None
    ref_mod = None
    for mod in cohort.modalities:
        path = case.images.get(mod)
        if path is None:
            continue
        try:
            img, data = _read(path)
        except Exception as exc:  # nibabel/gzip raise many types for a corrupt file
            report.add(case.case_id, path, f"unreadable {mod} image ({type(exc).__name__}: {exc})",
                       "re-export or re-download the file; it is truncated or not NIfTI")
            continue
        if data.ndim != 3:
            report.add(case.case_id, path, f"{mod} image has {data.ndim} dimensions {data.shape}",
                       "give one 3D volume per modality")
            continue
        try:  # the first image read gives spacing: head its data; later ones find the estimate cached
            img = override_geometry(img, cohort.spacing_of(case.case_id, data), cohort.orientation)
        except ValueError as exc:
            report.add(case.case_id, path, f"cannot estimate the voxel size: {exc.__cause__ or exc}",
                       "state the voxel size (cohort.geometry.spacing: [sx, sy, sz]) or fix the image")
            return row
        if ref_shape is None:
            ref_shape, ref_aff, ref_mod = data.shape, img.affine, mod
            row.update(shape="x".join(map(str, data.shape)),
                       spacing_mm="x".join(f"{z:.2f}" for z in img.header.get_zooms()[:3]),
                       orientation="".join(nib.aff2axcodes(img.affine)))
        elif data.shape != ref_shape:
            report.add(case.case_id, path, f"{mod} shape {data.shape} != {ref_mod} shape {ref_shape}",
                       "co-register / resample the modalities to one grid first")
            continue
        elif not np.allclose(img.affine, ref_aff, atol=qc["affine_atol"]):
            report.add(case.case_id, path, f"{mod} affine differs from {ref_mod} affine",
                       "co-register the modalities, or fix the header (cohort.geometry overrides all files)")
        finite = np.isfinite(data)
        if not finite.all():
            report.add(case.case_id, path, f"{mod} has {int((~finite).sum())} NaN/inf voxels",
                       "replace NaN/inf (e.g. by 0) when exporting the image")
            data = np.where(finite, data, 0)
        nonzero = float(np.count_nonzero(data)) / data.size
        if nonzero < qc["min_nonzero_fraction"] or float(np.ptp(data)) == 0.0:
            report.add(case.case_id, path, f"{mod} image is empty (non-zero fraction {nonzero:.4f})",
                       "check the export; an all-zero or constant image cannot be analysed")
        row[f"{mod}_p99"] = float(np.percentile(data[data != 0], 99)) if nonzero > 0 else 0.0
    if cohort.scheme is not None:
        if case.label is None:
            return row
        try:
            limg, lab = _read(case.label)
        except Exception as exc:
            report.add(case.case_id, case.label, f"unreadable label map ({type(exc).__name__}: {exc})",
                       "re-export the label map")
            return row
        limg = cohort.override(limg, case.case_id)
        if ref_shape is not None and lab.shape != ref_shape:
            report.add(case.case_id, case.label, f"label shape {lab.shape} != image shape {ref_shape}",
                       "the label map must be on the image grid")
            return row
        if ref_aff is not None and not np.allclose(limg.affine, ref_aff, atol=qc["affine_atol"]):
            report.add(case.case_id, case.label, "label affine differs from the image affine",
                       "resample the label map to the image grid (nearest neighbour)")
        if not np.all(np.isfinite(lab)):
            report.add(case.case_id, case.label, "label map has NaN/inf", "labels must be integers")
            return row
        values = set(np.unique(lab).astype(int).tolist())
        if not np.allclose(lab, np.round(lab)):
            report.add(case.case_id, case.label, "label map has non-integer values", "labels must be integers")
        extra = values - cohort.scheme.allowed
        if extra:
            hint = next((f"the values look like scheme '{s.name}'" for s in LABEL_SCHEMES.values()
                         if values <= s.allowed), "relabel the map")
            report.add(case.case_id, case.label,
                       f"label values {sorted(extra)} are not in scheme {cohort.scheme.name} "
                       f"{sorted(cohort.scheme.allowed)}",
                       f"{hint}: set cohort.label.scheme accordingly" if "scheme" in hint else hint)
        voxel_ml = float(np.prod(limg.header.get_zooms()[:3])) / 1000.0
        for region, mask in region_masks(lab, cohort.scheme).items():
            row[f"{region}_ml"] = float(mask.sum()) * voxel_ml
        if not np.any(lab != 0):
            report.add(case.case_id, case.label, "label map is empty (no tumour voxel)",
                       "check the export, or set qc.allow_empty_mask: true",
                       severity="warning" if qc["allow_empty_mask"] else "error")
    return row


# -------------------------------------------------------------------------------------------- clinical
def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return str(v).strip().lower() in _MISSING


def _parse(kind: str, v: Any) -> Any:
    """Canonical value of ``v`` for a column kind; raises ValueError when it cannot be understood."""
    if _is_missing(v):
        return np.nan
    s = str(v).strip()
    low = s.lower()
    if kind == "text":
        return s
    if kind == "number":
        return float(s)
    if kind == "binary":
        if low in _BINARY_WORDS:
            return _BINARY_WORDS[low]
        raise ValueError(f"{s!r} is not a binary value (1/0, yes/no, mutant/wildtype, ...)")
    if kind == "grade":
        key = re.sub(r"^(who\s*)?(grade\s*)?", "", low).replace(".0", "")
        if key in _GRADE_WORDS:
            return _GRADE_WORDS[key]
        raise ValueError(f"{s!r} is not a WHO grade (2/3/4, II/III/IV)")
    if kind == "sex":
        if low in _SEX_WORDS:
            return _SEX_WORDS[low]
        raise ValueError(f"{s!r} is not a sex (M/F, male/female)")
    if kind == "resection":
        if low in _RESECTION_WORDS:
            return _RESECTION_WORDS[low]
        raise ValueError(f"{s!r} is not an extent of resection (GTR/STR/biopsy)")
    raise ValueError(f"unknown column kind {kind}")


def molecular_subtype(idh_mutant: Any, codel: Any) -> str | float:
    """WHO-style molecular group from IDH and 1p/19q: IDHmut-codel, IDHmut-noncodel, IDHwt (or NaN)."""
    if _is_missing(idh_mutant):
        return np.nan
    if int(idh_mutant) == 0:
        return "IDHwt"
    if _is_missing(codel):
        return "IDHmut"
    return "IDHmut-codel" if int(codel) == 1 else "IDHmut-noncodel"


def standardise_clinical(raw: pd.DataFrame, c: Mapping[str, Any], report: QCReport,
                         file_label: str) -> pd.DataFrame:
    """Map a raw clinical table onto the canonical columns (see ``CLINICAL_COLUMNS``).

    Problems (unknown canonical names, missing source columns, unparseable values, duplicate ids,
    negative or missing survival times) are added to ``report``.
    """
    spec = c["clinical"]
    id_col = spec["id_column"]
    if id_col not in raw.columns:
        report.add(None, file_label, f"id column '{id_col}' not found (columns: {list(raw.columns)[:12]}...)",
                   "set cohort.clinical.id_column")
        return pd.DataFrame(columns=["case_id"])
    out = pd.DataFrame({"case_id": raw[id_col].astype(str).str.strip()})
    dups = out["case_id"][out["case_id"].duplicated()].unique().tolist()
    for d in dups:
        report.add(d, file_label, "duplicate clinical row for this id", "keep one row per case")
    for canon, src in (spec.get("columns") or {}).items():
        if canon not in CLINICAL_COLUMNS:
            report.add(None, file_label, f"unknown clinical column '{canon}' in cohort.clinical.columns",
                       f"use one of {sorted(CLINICAL_COLUMNS)}")
            continue
        values_map: Mapping[Any, Any] = {}
        if isinstance(src, Mapping):
            values_map = src.get("values") or {}
            src = src.get("source")
        if src not in raw.columns:
            report.add(None, file_label, f"source column '{src}' (for {canon}) not found",
                       "fix cohort.clinical.columns to name an existing column")
            continue
        kind = CLINICAL_COLUMNS[canon]
        parsed = []
        for cid, v in zip(out["case_id"], raw[src]):
            if values_map and not _is_missing(v):
                key = str(v).strip()
                v = values_map.get(key, values_map.get(_num_key(key), v))
            try:
                parsed.append(_parse(kind, v))
            except ValueError as exc:
                report.add(cid, file_label, f"column '{src}' ({canon}): {exc}",
                           f"fix the value or map it with cohort.clinical.columns.{canon}.values")
                parsed.append(np.nan)
        out[canon] = parsed
    for col in spec.get("keep") or []:
        if col not in raw.columns:
            report.add(None, file_label, f"kept column '{col}' not found", "fix cohort.clinical.keep")
        else:
            out[col] = raw[col].values
    for canon in CLINICAL_COLUMNS:
        if canon not in out:
            out[canon] = np.nan
    out["patient_id"] = out["patient_id"].where(out["patient_id"].notna(), out["case_id"])
    if spec.get("site_from_id"):
        site = out["case_id"].str.extract(spec["site_from_id"], expand=False)
        out["site"] = out["site"].where(out["site"].notna(), site)
    unit = spec["time_unit"]
    if unit not in TIME_UNITS_DAYS:
        report.add(None, file_label, f"unknown time unit {unit!r}", f"use one of {sorted(TIME_UNITS_DAYS)}")
        unit = "days"
    out["os_days"] = pd.to_numeric(out.pop("os_time"), errors="coerce") * TIME_UNITS_DAYS[unit]
    for _, r in out.iterrows():
        t, e = r["os_days"], r["os_event"]
        if pd.notna(t) and t < 0:
            report.add(r["case_id"], file_label, f"negative survival time {t:g} days",
                       "survival time must be >= 0 (check the date arithmetic)")
        if pd.isna(t) and pd.notna(e):
            report.add(r["case_id"], file_label, "survival event given but survival time missing",
                       "fill the survival time or clear the event")
        if pd.notna(t) and pd.isna(e):
            report.add(r["case_id"], file_label, "survival time given but event (death/censored) missing",
                       "fill the event column (1 death, 0 censored)")
    out["molecular_subtype"] = [molecular_subtype(i, c_) for i, c_ in zip(out["idh_mutant"], out["codel_1p19q"])]
    for col in ("who_grade", "idh_mutant", "codel_1p19q", "tertp_mutant", "mgmt_methylated", "os_event"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    return out.drop_duplicates("case_id").reset_index(drop=True)


def _num_key(key: str) -> Any:
    try:
        f = float(key)
    except ValueError:
        return key
    return int(f) if f.is_integer() else f


# ---------------------------------------------------------------------------------------------- entry
def check_cohort(cfg: Mapping[str, Any], progress: bool = True,
                 images: bool = True) -> tuple[Cohort, QCReport]:
    """Validate a cohort before any compute: every file, every clinical row, all problems collected.

    Returns the cohort (possibly incomplete) and its QC report; see :func:`load_cohort` to raise.
    ``images=False`` skips reading the image data (files must still exist): for re-opening a cohort
    that a run has already checked.
    """
    from tqdm import tqdm

    c = cfg["cohort"]
    report = QCReport(c["name"])
    report.root = cohort_root(cfg)
    root, cases = discover_cases(cfg, report)
    scheme = None
    if c["label"]["present"]:
        if c["label"]["scheme"] not in LABEL_SCHEMES:
            report.add(None, None, f"unknown label scheme {c['label']['scheme']!r}",
                       f"use one of {sorted(LABEL_SCHEMES)}")
        else:
            scheme = LABEL_SCHEMES[c["label"]["scheme"]]
    geom = c["geometry"]
    spacing: tuple[float, float, float] | str | None = None
    if geom.get("spacing") == HEAD_SPACING:
        spacing = HEAD_SPACING
    elif geom.get("spacing"):
        try:
            spacing = tuple(float(s) for s in geom["spacing"])  # type: ignore[assignment]
        except (TypeError, ValueError):
            report.add(None, None, f"cohort.geometry.spacing {geom['spacing']!r} is neither [sx, sy, sz] nor "
                       f"'{HEAD_SPACING}'", "fix cohort.geometry.spacing")
    head = geom.get("head_reference") or {}
    cohort = Cohort(c["name"], root, cases, pd.DataFrame(), tuple(m for m in c["modalities"] if m in MODALITIES),
                    scheme, spacing, geom.get("orientation"), report,
                    head_reference=(float(head.get("axial_area_mm2", HEAD_AXIAL_AREA_MM2)),
                                    float(head.get("height_mm", HEAD_HEIGHT_MM))))
    if spacing is not None or cohort.orientation is not None:
        try:
            orientation_affine((2, 2, 2), spacing if isinstance(spacing, tuple) else (1, 1, 1),
                               cohort.orientation or "RAS")
        except ValueError as exc:
            report.add(None, None, f"cohort.geometry: {exc}", "fix cohort.geometry")
            cohort.spacing = cohort.orientation = None
    cohort.features, cohort.feature_files = load_feature_tables(c, root, report)
    spec = c["clinical"]
    raw, cpath, label = None, None, None
    if spec.get("file"):
        cpath = paths.resolve_path(spec["file"], base=root)
        label = report.show(cpath)
        try:
            raw = pd.read_csv(cpath, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            report.add(None, cpath, "clinical table not found", "fix cohort.clinical.file")
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            report.add(None, cpath, f"clinical table unreadable ({exc})", "save it as a UTF-8 CSV")
    if c["layout"] == "table":
        if cohort.features:
            ids = sorted(set().union(*(t.index for t in cohort.features.values())))
        elif raw is not None and spec["id_column"] in raw.columns:
            # clinical-only cohort (e.g. a registry table): its rows are the cases
            ids = sorted(set(raw[spec["id_column"]].astype(str).str.strip()) - {""})
        else:
            ids = []
        cohort.cases = [Case(cid, {}, None) for cid in ids if cid not in set(c.get("exclude") or [])]
    else:
        have = set(cohort.case_ids)
        for name, t in cohort.features.items():
            extra = sorted(set(t.index) - have)
            if extra:
                report.add(None, report.show(cohort.feature_files[list(cohort.features).index(name)]),
                           f"feature table '{name}' has {len(extra)} rows without images (e.g. {extra[:3]}); "
                           "they are ignored", "check the ids match the case folders", "warning")
            lacking = sorted(have - set(t.index))
            if lacking:
                report.add(None, report.show(cohort.feature_files[list(cohort.features).index(name)]),
                           f"feature table '{name}' has no row for {len(lacking)} cases (e.g. {lacking[:3]}); "
                           "their features are missing (imputed inside the folds)", "add the rows", "warning")
            cohort.features[name] = t.loc[t.index.isin(have)]
    rows = [_check_case(case, cohort, cfg, report)
            for case in tqdm(cases, desc=f"QC {c['name']}", disable=not progress, leave=False)] if images else []
    table = pd.DataFrame(rows)
    # clinical table (read above, before the cases of a table layout were known)
    if raw is not None:
        have = set(cohort.case_ids)
        id_col = spec["id_column"]
        if not spec["require_all_cases"] and id_col in raw.columns:
            # rows of other patients are not this cohort's business: count them, do not parse them
            raw_ids = raw[id_col].astype(str).str.strip()
            orphan_rows = raw[~raw_ids.isin(have)]
            raw = raw[raw_ids.isin(have)]
        else:
            orphan_rows = raw.iloc[:0]
        clinical = standardise_clinical(raw, c, report, label)
        rows_ids = set(clinical["case_id"]) | set(orphan_rows[id_col].astype(str).str.strip())
        sev = "error" if spec["require_all_cases"] else "warning"
        what = "features" if c["layout"] == "table" else "images"
        for cid in sorted(have - rows_ids):
            report.add(cid, label, f"case has {what} but no clinical row",
                       "add the row, or set cohort.clinical.require_all_cases: false", sev)
        orphans = sorted(rows_ids - have)
        if len(orphans) > 10 and sev == "warning":  # e.g. a registry table covering a larger cohort
            report.add(None, label, f"{len(orphans)} clinical rows have no {what} (e.g. {orphans[:3]}); "
                       "they are left out", "nothing to do if the table covers a larger cohort", sev)
        else:
            for cid in orphans:
                report.add(cid, label, f"clinical row has no {what}",
                           f"remove the row, add the {what}, or set cohort.clinical.require_all_cases: false",
                           sev)
        cohort.clinical = clinical[clinical["case_id"].isin(have)].reset_index(drop=True)
    if cohort.clinical.empty:
        cohort.clinical = pd.DataFrame({"case_id": cohort.case_ids})
    if table.empty:  # no image checks (layout table, or images=False): one row per case all the same
        table = pd.DataFrame({"case_id": cohort.case_ids})
    table = table.merge(cohort.clinical, on="case_id", how="left")
    report.case_table = table
    return cohort, report


def load_cohort(cfg: Mapping[str, Any], progress: bool = True) -> Cohort:
    """Check and load a cohort; raise :class:`CohortError` listing every problem when any is an error."""
    cohort, report = check_cohort(cfg, progress=progress)
    if not report.ok:
        raise CohortError(report)
    return cohort
