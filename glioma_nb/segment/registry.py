"""The models a cohort can name in ``segment.model``: the shipped specs and the user's imported models.

``glioma-nb models import PATH --name NAME`` copies an nnU-Net v2 trained-model folder, a MONAI bundle
folder or a TorchScript module with its YAML into the user models folder (``$GLIOMA_NB_MODELS``,
default ``<project>/models``, git-ignored) as ``<NAME>/files/``, and writes ``<NAME>/model.yaml``
(kind, modalities in channel order, label mapping, signature layers, the kind's settings and the
sha256 of every file) and a model card skeleton ``<NAME>/card.md``. :func:`load` checks every
file's sha256 before a model runs. Nothing is downloaded: the user brings the files.

A TorchScript YAML (``PATH`` itself, or the one YAML in the folder ``PATH``)::

    module: model.ts             # the scripted module, beside the YAML
    modalities: [t1, t1c, t2, flair]
    spacing: [1.0, 1.0, 1.0]
    patch: [128, 128, 128]
    orientation: RAS             # the voxel order the module was trained in
    normalise: zscore-nonzero    # | zscore | none
    activation: softmax          # | sigmoid
    outputs: {labels: brats2021} # or {labels: {1: necrosis, 2: oedema, 3: enhancing}} or {regions: [tc, wt, et]}
    feature_outputs: [enc1, enc2, bottleneck]   # extra outputs of forward() after the logits, if any
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from glioma_nb import paths
from glioma_nb.provenance import sha256_file
from glioma_nb.segment import kinds, models
from glioma_nb.segment.kinds import bundle
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.kinds.base import MODALITY_ALIASES, normalised_modalities, split_list

SPEC = "model.yaml"


def models_dir() -> Path:
    """The user models folder: ``$GLIOMA_NB_MODELS``, default ``<project>/models`` (git-ignored)."""
    env = os.environ.get("GLIOMA_NB_MODELS")
    return Path(env).expanduser().resolve() if env else paths.project_root() / "models"


def detect_kind(path: Path) -> str:
    """The kind of a model folder or file (the first registered kind that recognises it)."""
    return kinds.detect(Path(path))


def import_model(path: str | Path, name: str, kind: str | None = None, modalities: Any = None, labels: Any = None,
                 layers: Any = None, folds: Any = None, checkpoint: str | None = None, spacing: Any = None,
                 trained_on: str | None = None, dest: Path | None = None) -> Path:
    """Register a model (see the module docstring); returns ``<models>/<name>/model.yaml``. An existing name is
    an error (a registered model is never overwritten). The model is loaded once, so a bad folder fails here."""
    src = Path(path).expanduser().resolve()
    if not src.exists():
        raise SegmentationError(f"{src} does not exist; give the model folder (or TorchScript YAML) to import")
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name in models.available_models():
        raise SegmentationError(f"model name {name!r}: use letters, digits, - _ . and not a shipped model's name "
                                f"({models.available_models()})")
    kind = kind or detect_kind(src)
    if kind not in kinds.importable():
        raise SegmentationError(f"--kind {kind!r}: one of {list(kinds.importable())}")
    root = Path(dest or models_dir())
    target = root / name
    if target.exists():
        raise SegmentationError(f"model {name} is already registered in {target}; choose another --name, or delete "
                                "that folder first")
    entry: dict[str, Any] = {"name": name, "kind": kind, "imported_from": str(src),
                             "imported": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    fields, mods, src = kinds.get(kind).import_entry(src, name, normalised_modalities(split_list(modalities)), labels,
                                                     {"folds": folds, "checkpoint": checkpoint, "spacing": spacing})
    entry.update(fields)
    bad = [m for m in mods if m not in MODALITY_ALIASES]
    if bad:
        raise SegmentationError(f"modalities {mods}: {bad} not one of {list(MODALITY_ALIASES)}")
    entry["modalities"] = mods
    entry["layers"] = split_list(layers) or "default"
    if trained_on:
        cohort, _, cases = str(trained_on).partition(":")
        entry["trained_on"] = {"cohort": cohort, "cases": split_list(cases) or []}
    elif (src / "trained_on.json").exists():
        entry["trained_on"] = json.loads((src / "trained_on.json").read_text())
    tmp = root / f".{name}.importing"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        shutil.copytree(src, tmp / "files", symlinks=False)
        entry["files"] = {str(f.relative_to(tmp / "files")): sha256_file(f)
                          for f in sorted((tmp / "files").rglob("*")) if f.is_file()}
        (tmp / SPEC).write_text(yaml.safe_dump(entry, sort_keys=False))
        seg = _build(entry, tmp, "cpu")            # a bad folder fails before it is registered
        seg.check_channels()
        seg.stages()
        (tmp / "card.md").write_text(card_skeleton(entry, seg))
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target / SPEC


def card_skeleton(entry: dict[str, Any], seg: kinds.Segmenter) -> str:
    files = "\n".join(f"| `{f}` | `{h}` |" for f, h in entry["files"].items())
    probe = (entry.get("bundle") or {}).get("probe")
    ran = (f"\n- Test run at import (a synthetic case through its preprocessing, inferer and postprocessing): the network "
           f"returns {probe['network_channels']} channel(s); the postprocessing {bundle.returns_text(probe)}; each "
           f"network channel alone becomes {probe['lit']}" if probe else "")
    return f"""# {entry['name']} ({entry['kind']})

Imported from `{entry['imported_from']}` on {entry['imported']} with `glioma-nb models import`.

## Fill in: what this model is
- **Training data:** (cohort, number of cases, label scheme, preprocessing: BraTS / SRI24 space?)
- **Training parameters:** (trainer, configuration, epochs, folds)
- **Metrics:** (Dice WT / TC / ET on which held-out cases, with CIs)
- **Licence and source:** (where the weights come from)
- **Reproduce:** (the command that trains these weights)

## What glioma-nb read
- Inputs (channel order): {', '.join(entry['modalities'])}
- Outputs: {entry['outputs']} (classes: {seg.classes}){ran}
- Network: {seg.network_name}; works at {' x '.join(f'{v:g}' for v in seg.spacing)} mm; patch {list(seg.patch)}
- Signature layers: {seg.stages()}

## Files (sha256, checked before every run)
| file | sha256 |
|---|---|
{files}
"""


def fingerprint(entry: dict[str, Any]) -> str:
    """One sha256 over a registered model's files and their hashes (what a locked validation compares)."""
    return hashlib.sha256(json.dumps(entry.get("files", {}), sort_keys=True).encode()).hexdigest()


def is_registered(name: str, root: Path | None = None) -> bool:
    return bool(name) and (Path(root or models_dir()) / str(name) / SPEC).exists()


def read_entry(name: str, root: Path | None = None) -> tuple[dict[str, Any], Path]:
    folder = Path(root or models_dir()) / name
    spec = folder / SPEC
    if not spec.exists():
        raise SegmentationError(f"no model {name!r}: shipped {models.available_models()}, registered "
                                f"{registered(root)} (in {paths.display_path(folder.parent)}); import it with "
                                "`glioma-nb models import PATH --name NAME`")
    return yaml.safe_load(spec.read_text()), folder


def registered(root: Path | None = None) -> list[str]:
    r = Path(root or models_dir())
    return sorted(p.parent.name for p in r.glob(f"*/{SPEC}")) if r.exists() else []


def verify(entry: dict[str, Any], folder: Path) -> None:
    """Every file of a registered model has the sha256 recorded at import (an error names the file and the fix)."""
    for rel, expected in entry.get("files", {}).items():
        f = folder / "files" / rel
        if not f.exists():
            raise SegmentationError(f"model {entry['name']}: {f} is missing (it was imported with sha256 "
                                    f"{expected[:12]}...); restore it or import the model again under a new name")
        if sha256_file(f) != expected:
            raise SegmentationError(f"model {entry['name']}: {f} has changed since it was imported (sha256 differs "
                                    f"from {folder / SPEC}); restore the file or import the model again")


def _build(entry: dict[str, Any], folder: Path, device: str) -> kinds.Segmenter:
    kind = entry["kind"]
    if kind not in kinds.importable():
        raise SegmentationError(f"{folder / SPEC}: kind {kind!r} is not one of {list(kinds.importable())}")
    seg = kinds.get(kind).from_entry(entry, folder / "files", kinds.Outputs.parse(entry.get("outputs")),
                                     layers=entry.get("layers", "default"), device=device)
    seg.path = folder / SPEC
    seg.trained_on = entry.get("trained_on")
    seg.fingerprint = fingerprint(entry)
    seg.weights_note = f"imported {kind} model `{entry['name']}` ({len(entry.get('files', {}))} files, sha256 checked)"
    return seg


def load(name: str, device: str = "cpu", weights: str = "shipped", root: Path | None = None) -> kinds.Segmenter:
    """A model by name, ready to run: a shipped spec (with ``weights``: shipped, sha256 checked against its card,
    or a path) or a registered model (every file's sha256 checked). A YAML path loads a glioma-nb spec."""
    if name in models.available_models() or str(name).endswith((".yaml", ".yml")):
        spec = models.load_spec(name)
        if weights == "shipped":
            net = models.load_model(spec, None, device=device)
            note = models.weights_note(spec)
        else:
            net = models.load_model(spec, weights, device=device)
            note = models.weights_note(spec, weights)
        return kinds.GliomaNbSegmenter(spec, net, note)
    entry, folder = read_entry(name, root)
    if weights != "shipped":
        raise SegmentationError(f"segment.weights is {weights!r}, but {name} is a registered {entry['kind']} model whose "
                                "weights are its imported files; import the other weights under a new name instead")
    verify(entry, folder)
    seg = _build(entry, folder, device)
    seg.check_channels()
    return seg


def trained_on(seg: kinds.Segmenter, cohort_name: str, case_ids: list[str], root: Path | None = None) -> list[str]:
    """The cases of a cohort a model's weights saw: a shipped model's spec, or a registered model's ``trained_on``
    (a cohort reading the same data folder counts as the same cohort)."""
    if isinstance(seg, kinds.GliomaNbSegmenter):
        sources = seg.spec.train.get("sources", [])
    else:
        sources = [seg.trained_on] if seg.trained_on else []
    return sorted(models.training_cases(sources, cohort_name, case_ids, root))


def available(modalities: Sequence[str] | None = None, root: Path | None = None) -> list[str]:
    """Shipped and registered model names (those whose modalities ``modalities`` has, when given)."""
    names = models.available_models() + registered(root)
    if modalities is None:
        return names
    return [n for n in names if set(describe(n, root)["modalities"]) <= set(modalities)]


def describe(name: str, root: Path | None = None) -> dict[str, Any]:
    """What ``glioma-nb models list`` shows of one model (no network is loaded)."""
    if name in models.available_models() or str(name).endswith((".yaml", ".yml")):
        s = models.load_spec(name)
        return {"name": s.name, "kind": "glioma-nb", "where": "shipped" if s.path and s.path.parent == models.MODELS_DIR
                else paths.display_path(s.path or name), "modalities": list(s.modalities),
                "classes": s.classes, "spacing": list(s.spacing), "files": 1}
    entry, folder = read_entry(name, root)
    outputs = kinds.Outputs.parse(entry.get("outputs"))
    return {"name": name, "kind": entry["kind"], "where": paths.display_path(folder), "modalities": entry["modalities"],
            "classes": outputs.classes, "spacing": (entry.get("torchscript") or {}).get("spacing", "from the model"),
            "files": len(entry.get("files", {}))}


def list_models(root: Path | None = None) -> pd.DataFrame:
    return pd.DataFrame([describe(n, root) for n in available(None, root)])
