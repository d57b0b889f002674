"""Cohort model: cases with named modalities, optional label maps, and a canonical clinical table.

A cohort is described by the ``cohort`` section of the configuration (see ``configs/base.yaml``).
The image layouts (``labels`` and ``table`` below: label maps only, feature tables only):

``brats``     ``<root>/<case>/<case>_<suffix>.nii.gz`` (suffixes from ``cohort.files``, BraTS 2018-2021 defaults)
``brats2023`` ``<root>/<case>/<case>-<suffix>.nii.gz`` (BraTS 2023+ / orchestrator: t1n, t1c, t2w, t2f, seg)
``per_case``  ``<root>/<case>/<file name>`` (file names from ``cohort.files``)
``manifest``  a CSV with columns ``case, <modality>..., [label]`` (paths relative to the CSV)

:func:`check_cohort` validates everything before any compute and collects *all* problems into one
:class:`QCReport`; :func:`load_cohort` raises :class:`CohortError` when the report has errors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np
import pandas as pd

from glioma_nb import paths
from glioma_nb.config import config_hash
from glioma_nb.io.clinical import standardise_clinical
from glioma_nb.io.geometry import (
    HEAD_AXIAL_AREA_MM2,
    HEAD_HEIGHT_MM,
    HEAD_SPACING,
    estimate_head_spacing,
    orientation_affine,
    override_geometry,
)
from glioma_nb.io.labels import (
    DEFAULT_FILES,
    LABEL_SCHEMES,
    MODALITIES,
    LabelScheme,
    case_file,
    region_masks,
)
from glioma_nb.io.qc import CohortError, Problem, QCReport
from glioma_nb.io.timeline import read_timepoints


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
    timepoints: pd.DataFrame | None = None   # serial scans (cohort.timepoints): one row per scan, None without

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


# -------------------------------------------------------------------------------------------- discovery
def synthetic_root(cfg: Mapping[str, Any]) -> Path:
    """Default folder of a generated cohort: ``<data>/synthetic/n<N>_seed<S>_<R>mm``."""
    s = cfg["cohort"]["synthetic"]
    serial = "_serial" if s.get("longitudinal") else ""
    return paths.data_dir() / "synthetic" / f"n{s['n_cases']}_seed{s['seed']}_{s['resolution_mm']}mm{serial}"


def preprocess_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What decides a raw cohort's preprocessed files: cohort.raw, the modalities and the preprocess section
    (less its display-only n_qc_cases)."""
    c = cfg["cohort"]
    return {"raw": c["raw"], "modalities": list(c["modalities"]),
            "preprocess": {k: v for k, v in cfg["preprocess"].items() if k != "n_qc_cases"}}


def preprocessed_root(cfg: Mapping[str, Any]) -> Path:
    """Where 00_preprocess writes a raw cohort in BraTS layout: ``<data>/preprocessed/<cohort>/<settings hash>``
    (the hash of :func:`preprocess_settings`, so other settings never overwrite it)."""
    return paths.data_dir() / "preprocessed" / cfg["cohort"]["name"] / config_hash(preprocess_settings(cfg))[:12]


def source_root(cfg: Mapping[str, Any]) -> Path:
    """The folder the cohort's own files are under (clinical and feature tables are relative to it): the
    cohort folder, or the raw data folder of a raw cohort."""
    c = cfg["cohort"]
    if c.get("source") == "raw" and c.get("root") is not None:
        return paths.resolve_path(c["root"])
    return cohort_root(cfg)


def cohort_root(cfg: Mapping[str, Any]) -> Path:
    """The cohort folder: ``cohort.root`` resolved, the default folder of a generated cohort, or the BraTS-layout
    folder 00_preprocess writes a raw cohort into."""
    c = cfg["cohort"]
    if c.get("root") is None and c.get("source") == "synthetic":
        return synthetic_root(cfg)
    if c.get("source") == "raw":
        return preprocessed_root(cfg)
    if c.get("root") is None:
        raise CohortError(QCReport(c["name"], [Problem(None, None, "cohort.root is not set",
                                                       f"set root: in configs/cohorts/{c['name']}.yaml")]))
    return paths.resolve_path(c["root"])


def _file_names(c: Mapping[str, Any]) -> dict[str, str]:
    names = dict(DEFAULT_FILES.get(c["layout"], {}))
    names.update(c.get("files") or {})
    return names


def _missing_fix(layout: str, key: str, folder: Path, cid: str) -> str:
    """The fix for a missing file: the other BraTS naming when the folder holds it, else the file setting."""
    if layout == "brats" and (folder / case_file("brats2023", cid, DEFAULT_FILES["brats2023"]["t2"])).exists():
        return ("these are BraTS 2023+ names (<case>-t1n/-t1c/-t2w/-t2f/-seg.nii.gz): set cohort.layout: brats2023 "
                "(and cohort.label.scheme: brats2023, labels 1 NCR, 2 ED, 3 ET)")
    if layout == "brats2023" and (folder / case_file("brats", cid, DEFAULT_FILES["brats"]["t2"])).exists():
        return "these are BraTS 2018-2021 names (<case>_t1/_t1ce/_t2/_flair/_seg.nii.gz): set cohort.layout: brats"
    return (f"add the file or set cohort.files.{key} to the real "
            f"{'file name' if layout == 'per_case' else 'suffix'}")


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
        if c.get("source") == "raw":
            report.add(None, root, "this raw cohort has not been preprocessed with these settings",
                       "run its 00_preprocess step first (glioma-nb run runs it before 01; for a validation run: "
                       f"glioma-nb run --cohort {c['name']} --steps 00_preprocess --set validate.reference_run='')")
        else:
            report.add(None, root, "cohort root folder does not exist",
                       f"check cohort.root in configs/cohorts/{c['name']}.yaml (or set GLIOMA_NB_SHARED)")
        return root, []
    layout = c["layout"]
    want_label = bool(c["label"]["present"])
    names = _file_names(c)
    cases: list[Case] = []
    exclude = set(c.get("exclude") or [])
    if layout in ("brats", "brats2023", "per_case"):
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
                path = folder / case_file(layout, cid, name)
                if not path.exists():
                    alts = sorted(p.name for p in folder.glob(f"*{name.split('.')[0]}*"))
                    hint = f" (found {alts})" if alts else ""
                    report.add(cid, path, f"missing {key} file{hint}", _missing_fix(layout, key, folder, cid))
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
    elif layout == "labels":  # label maps only, no images (e.g. released expert masks): one file per case
        if mods or not want_label:
            report.add(None, None, "layout 'labels' is label maps without images",
                       "set cohort.modalities: [] and cohort.label.present: true")
        rx = c.get("case_id_regex") or r"^(.+?)\.nii(?:\.gz)?$"
        seen: dict[str, Path] = {}
        found = sorted(p for p in root.glob(c["case_glob"]) if p.is_file() and ".nii" in p.name)
        if not found:
            report.add(None, root, f"no label maps match '{c['case_glob']}'", "check cohort.root and cohort.case_glob")
        for path in found:
            m = re.match(rx, path.name)
            if not m:
                report.add(None, path, f"file name does not match cohort.case_id_regex {rx!r}",
                           "fix the regex (its first group is the case id) or cohort.case_glob")
                continue
            cid = m.group(1)
            if cid in seen:
                report.add(cid, path, f"a second label map for this case (first: {seen[cid].name})",
                           "keep one file per case, or make cohort.case_id_regex tell them apart")
                continue
            seen[cid] = path
            if cid not in exclude:
                cases.append(Case(cid, {}, path))
    elif layout == "table":
        if mods or want_label:
            report.add(None, None, "layout 'table' has no images or label maps",
                       "set cohort.modalities: [] and cohort.label.present: false")
        if not c.get("features") and not (c.get("clinical") or {}).get("file"):
            report.add(None, None, "layout 'table' needs cohort.features or a clinical table",
                       "add cohort.features: {name: {file: features.csv, id_column: ID}} or cohort.clinical.file")
    else:
        report.add(None, None, f"unknown layout {layout!r}", "use brats, brats2023, per_case, manifest, labels or table")
    return root, cases


_FEATURE_KEYS = {"file", "id_column", "drop"}


def _read_feature_files(name: str, spec: Mapping[str, Any], root: Path, report: QCReport,
                        files: list[Path]) -> tuple[pd.DataFrame | None, str]:
    """The CSV(s) of one ``cohort.features`` table: ``file`` is a path, a glob pattern or a list of them;
    files with the same columns are stacked (rows of other cases, e.g. one file per grade); otherwise they are
    joined on the id column (each a family of columns, e.g. one per modality x region).
    Appends the files read to ``files``; returns (table or None, label for messages)."""
    patterns = spec["file"] if isinstance(spec["file"], list) else [spec["file"]]
    id_col = str(spec.get("id_column", "case_id"))
    found: list[Path] = []
    for pat in patterns:
        path = paths.resolve_path(str(pat), base=root)
        hits = sorted(path.parent.glob(path.name)) if any(ch in str(pat) for ch in "*?[") else [path]
        if not hits or not hits[0].exists():
            report.add(None, path, f"feature table '{name}' not found", f"fix cohort.features.{name}.file")
            return None, ""
        found.extend(hits)
    parts: list[pd.DataFrame] = []
    for path in found:
        label = report.show(path)
        try:
            raw = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            report.add(None, path, f"feature table '{name}' unreadable ({exc})", "save it as a UTF-8 CSV")
            return None, ""
        files.append(path)
        if id_col not in raw.columns:
            report.add(None, label, f"id column '{id_col}' not found in feature table '{name}'",
                       f"set cohort.features.{name}.id_column")
            return None, ""
        raw[id_col] = raw[id_col].astype(str).str.strip()
        if len(found) > 1:
            for cid in raw[id_col][raw[id_col].duplicated()].unique():
                report.add(cid, label, f"duplicate id in feature table '{name}'", "give each case one row")
            raw = raw.drop_duplicates(id_col).set_index(id_col)
        parts.append(raw)
    if len(parts) == 1:
        return parts[0], report.show(found[0])
    label = report.show(found[0].parent) + f" ({len(found)} files)"
    if all(list(p.columns) == list(parts[0].columns) for p in parts):  # same columns: rows of other cases
        stacked = pd.concat(parts)
        for cid in stacked.index[stacked.index.duplicated()].unique():
            report.add(cid, label, f"case in more than one file of feature table '{name}'", "keep one row per case")
        return stacked[~stacked.index.duplicated()].rename_axis(id_col).reset_index(), label
    dup = pd.Index([c for p in parts for c in p.columns])
    dup = sorted(set(dup[dup.duplicated()]))
    if dup:
        report.add(None, report.show(found[0].parent), f"the files of feature table '{name}' share columns "
                   f"{dup[:5]}{' ...' if len(dup) > 5 else ''}", "give each file its own column names")
        return None, ""
    joined = pd.concat(parts, axis=1, join="outer").rename_axis(id_col).reset_index()
    return joined, label


def _join_clinical(raw: pd.DataFrame, spec: Mapping[str, Any], root: Path, report: QCReport,
                   files: list[Path]) -> pd.DataFrame:
    """``cohort.clinical.join``: more tables of the same cases (e.g. the acquisition table) left-joined on the
    id onto the clinical table, so that ``cohort.clinical.columns`` can map their columns too."""
    for j, extra in enumerate(spec["join"]):
        if not isinstance(extra, Mapping) or "file" not in extra or set(extra) - {"file", "id_column"}:
            report.add(None, None, f"cohort.clinical.join[{j}] must be a mapping with keys file, id_column",
                       "write it as {file: acquisition.csv, id_column: ID}")
            continue
        path = paths.resolve_path(str(extra["file"]), base=root)
        try:
            other = pd.read_csv(path, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            report.add(None, path, "joined clinical table not found", f"fix cohort.clinical.join[{j}].file")
            continue
        files.append(path)
        id_col = str(extra.get("id_column", spec["id_column"]))
        if id_col not in other.columns:
            report.add(None, report.show(path), f"id column '{id_col}' not found",
                       f"set cohort.clinical.join[{j}].id_column")
            continue
        other = other.drop_duplicates(id_col).set_index(id_col)
        other = other[[col for col in other.columns if col not in raw.columns]]
        raw = raw.join(other, on=spec["id_column"]).fillna("")
    return raw


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
        raw, label = _read_feature_files(name, spec, root, report, files)
        if raw is None:
            continue
        id_col = str(spec.get("id_column", "case_id"))
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
        tables[str(name)].attrs["label"] = label
    return tables, files


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
    croot = source_root(cfg)
    cohort.features, cohort.feature_files = load_feature_tables(c, croot, report)
    spec = c["clinical"]
    raw, cpath, label = None, None, None
    if spec.get("file"):
        cpath = paths.resolve_path(spec["file"], base=croot)
        label = report.show(cpath)
        raw = report.read_csv(cpath, "clinical table", "cohort.clinical.file (or --set cohort.clinical.file=null: no "
                              "clinical table, notebooks 03-05 then have no labels; docs/shared-data.md names the "
                              "public sources of the shipped cohorts' tables)")
    if raw is not None and spec.get("join"):
        raw = _join_clinical(raw, spec, croot, report, cohort.feature_files)
    if c["layout"] == "table":
        if c.get("cases_from"):  # the cases are one table's rows; the others give their rows for them
            if c["cases_from"] not in cohort.features:
                report.add(None, None, f"cohort.cases_from names {c['cases_from']!r}, not a feature table "
                           f"(tables: {sorted(cohort.features)})", "name one of cohort.features")
                ids = []
            else:
                ids = sorted(cohort.features[c["cases_from"]].index)
                cohort.features = {n: t.loc[t.index.isin(set(ids))] for n, t in cohort.features.items()}
        elif cohort.features:
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
                report.add(None, t.attrs.get("label"),
                           f"feature table '{name}' has {len(extra)} rows without images (e.g. {extra[:3]}); "
                           "they are ignored", "check the ids match the case folders", "warning")
            lacking = sorted(have - set(t.index))
            if lacking:
                report.add(None, t.attrs.get("label"),
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
    cohort.timepoints = read_timepoints(c, croot, cohort.case_ids, report, cohort.clinical)
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
