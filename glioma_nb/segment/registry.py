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
from glioma_nb.segment import external, kinds, models
from glioma_nb.segment.errors import SegmentationError

KINDS = ("glioma-nb", "nnunet-v2", "monai-bundle", "torchscript")
SPEC = "model.yaml"
MODALITY_ALIASES = {
    "t1": ("t1", "t1n", "t1w", "t1-native", "t1 native", "native t1", "t1_pre", "t1pre"),
    "t1c": ("t1c", "t1ce", "t1gd", "t1-gd", "t1-ce", "t1 contrast", "t1post", "t1_post", "t1-post", "t1c+", "t1wce"),
    "t2": ("t2", "t2w", "t2-weighted"),
    "flair": ("flair", "t2f", "t2-flair", "t2 flair", "t2flair"),
}


def models_dir() -> Path:
    """The user models folder: ``$GLIOMA_NB_MODELS``, default ``<project>/models`` (git-ignored)."""
    env = os.environ.get("GLIOMA_NB_MODELS")
    return Path(env).expanduser().resolve() if env else paths.project_root() / "models"


def modality_of(name: str) -> str | None:
    key = str(name).strip().lower().replace("_", "-")
    return next((m for m, names in MODALITY_ALIASES.items() if key in names or key.replace("-", " ") in names), None)


def detect_kind(path: Path) -> str:
    """The kind of a model folder or file (see the module docstring)."""
    p = Path(path)
    if p.is_dir() and (p / "plans.json").exists() and (p / "dataset.json").exists():
        return "nnunet-v2"
    if p.is_dir() and any((p / "configs" / f"inference.{e}").exists() for e in ("json", "yaml", "yml")):
        return "monai-bundle"
    if p.suffix in (".yaml", ".yml") or (p.is_dir() and list(p.glob("*.y*ml"))):
        return "torchscript"
    raise SegmentationError(f"{p}: not a model this can import: an nnU-Net v2 trained-model folder has dataset.json and "
                            "plans.json, a MONAI bundle has configs/inference.json, a TorchScript model a YAML beside "
                            "its module; or give --kind")


def _normalised(mods: list[str] | None) -> list[str] | None:
    """Modality names in the registry's spelling (``T1c``, ``T1ce``, ``FLAIR`` -> t1c, t1c, flair); unknown ones kept."""
    return None if mods is None else [modality_of(m) or m for m in mods]


def _torchscript_yaml(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(path.glob("*.y*ml"))
    if len(found) != 1:
        raise SegmentationError(f"{path}: a TorchScript model folder needs exactly one YAML (found {[f.name for f in found]})")
    return found[0]


def _split(text: Any) -> list[str] | None:
    if text is None or text == "":
        return None
    return [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t) for t in text]


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
    if kind not in KINDS[1:]:
        raise SegmentationError(f"--kind {kind!r}: one of {list(KINDS[1:])}")
    root = Path(dest or models_dir())
    target = root / name
    if target.exists():
        raise SegmentationError(f"model {name} is already registered in {target}; choose another --name, or delete "
                                "that folder first")
    entry: dict[str, Any] = {"name": name, "kind": kind, "imported_from": str(src),
                             "imported": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    mods = _normalised(_split(modalities))
    if kind == "nnunet-v2":
        ds = json.loads((src / "dataset.json").read_text())
        channels = ds.get("channel_names") or ds.get("modality") or {}
        if mods is None:
            guessed = [modality_of(channels[k]) for k in sorted(channels, key=int)]
            if None in guessed:
                raise SegmentationError(f"{src / 'dataset.json'}: channel names {channels} are not all recognised "
                                        "modalities; give --modalities in channel order (e.g. t1,t1c,t2,flair)")
            mods = guessed
        entry["outputs"] = external.nnunet_outputs(ds, labels).to_dict()
        entry["nnunet"] = {"folds": _split(folds), "checkpoint": checkpoint or "checkpoint_final.pth",
                           "mirroring": True, "tile_step_size": 0.5}   # nnUNetPredictor's defaults
    elif kind == "monai-bundle":
        mods, entry["outputs"], entry["bundle"] = _bundle_entry(src, name, mods, labels, spacing)
    else:
        yml = _torchscript_yaml(src)
        raw = yaml.safe_load(yml.read_text()) or {}
        missing = [k for k in ("module", "spacing", "patch") if k not in raw]
        if missing or ("modalities" not in raw and mods is None) or ("outputs" not in raw and labels is None):
            raise SegmentationError(f"{yml}: a TorchScript model's YAML needs module, spacing, patch, modalities and "
                                    f"outputs (missing {missing + [k for k in ('modalities', 'outputs') if k not in raw]}); "
                                    "see `glioma-nb models --help`")
        mods = mods or _normalised(list(raw["modalities"]))
        entry["outputs"] = kinds.Outputs.parse(labels if labels is not None else raw["outputs"]).to_dict()
        entry["torchscript"] = {k: raw[k] for k in ("module", "spacing", "patch", "orientation", "normalise",
                                                    "activation", "feature_outputs") if k in raw}
        src = yml.parent
    bad = [m for m in mods if m not in MODALITY_ALIASES]
    if bad:
        raise SegmentationError(f"modalities {mods}: {bad} not one of {list(MODALITY_ALIASES)}")
    entry["modalities"] = mods
    entry["layers"] = _split(layers) or "default"
    if trained_on:
        cohort, _, cases = str(trained_on).partition(":")
        entry["trained_on"] = {"cohort": cohort, "cases": _split(cases) or []}
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


def bundle_metadata(folder: Path) -> tuple[list[str] | None, list[str] | None]:
    """The input and output channel names of a MONAI bundle (``network_data_format`` of
    ``configs/metadata.json``, ``channel_def`` in channel order); None where it does not say."""
    meta = Path(folder) / "configs" / "metadata.json"
    fmt = (json.loads(meta.read_text()) if meta.exists() else {}).get("network_data_format") or {}

    def names(part: str) -> list[str] | None:
        first = next(iter((fmt.get(part) or {}).values()), {}) or {}
        ch = first.get("channel_def") or {}
        return [str(ch[k]) for k in sorted(ch, key=int)] if ch else None
    return names("inputs"), names("outputs")


def _bundle_entry(src: Path, name: str, mods: list[str] | None, labels: Any,
                  spacing: Any) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """A MONAI bundle's modalities, label mapping and settings: the input channels from its ``metadata.json``
    (or ``--modalities``, which must agree with it), and the mapping from a test run of the bundle
    (:meth:`external.BundleSegmenter.probe`) with its output channel names: chosen when ``labels`` is not
    given, else checked (a mapping that cannot fit is refused, naming the one that fits)."""
    import tempfile

    inputs, outputs = bundle_metadata(src)
    meta = src / "configs" / "metadata.json"
    read = [modality_of(n) for n in inputs or []]
    if mods is None:
        if not inputs or None in read:
            raise SegmentationError(f"{meta}: " + (f"input channel names {inputs} are not all recognised modalities"
                                                   if inputs else "no input channel_def under network_data_format")
                                    + "; give --modalities in channel order (e.g. t1c,t1,t2,flair)")
        mods = [str(m) for m in read]
    elif inputs and None not in read and mods != read:
        raise SegmentationError(f"--modalities {','.join(mods)} disagrees with {meta}, whose input channels are "
                                f"{', '.join(inputs)}; leave --modalities out to use them, or correct metadata.json")
    settings = {"config": None, "weights": "models/model.pt",
                "spacing": [float(s) for s in _split(spacing)] if spacing else None}
    given = kinds.Outputs.parse(labels) if labels is not None else None
    seg = external.BundleSegmenter(name, src, mods,
                                   given or kinds.Outputs(labels=kinds.LABEL_PRESETS["brats2021"]),
                                   config=None, weights=settings["weights"], spacing=settings["spacing"])
    seg.check_channels()
    with tempfile.TemporaryDirectory(prefix="glioma-nb-probe-") as work:
        probe = seg.probe(len(mods), Path(work))
    fitting = external.bundle_outputs(probe, outputs)
    if given is None:
        if fitting is None:
            raise SegmentationError(f"model {name}: bundle {src} returns {external.returns_text(probe)} after its "
                                    f"postprocessing, and the output channel names in {meta} "
                                    f"({outputs or 'none: no channel_def'}) do not say what they mean; give --labels "
                                    "(a preset: brats2018, brats2021, "
                                    "wt; value=meaning pairs such as 1=necrosis,2=oedema,4=enhancing; or "
                                    "regions:tc,wt,et)")
        given = fitting
    else:
        external.check_bundle_outputs(name, src, given, probe, fitting)
    settings["probe"] = probe
    return mods, given.to_dict(), settings


def card_skeleton(entry: dict[str, Any], seg: kinds.Segmenter) -> str:
    files = "\n".join(f"| `{f}` | `{h}` |" for f, h in entry["files"].items())
    probe = (entry.get("bundle") or {}).get("probe")
    ran = (f"\n- Test run at import (a synthetic case through its preprocessing, inferer and postprocessing): the network "
           f"returns {probe['network_channels']} channel(s); the postprocessing {external.returns_text(probe)}; each "
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
    files = folder / "files"
    outputs = kinds.Outputs.parse(entry.get("outputs"))
    common = dict(layers=entry.get("layers", "default"), device=device)
    kind = entry["kind"]
    if kind == "nnunet-v2":
        nn = entry.get("nnunet") or {}
        seg: kinds.Segmenter = external.NnUNetSegmenter(entry["name"], files, entry["modalities"], outputs,
                                                        folds=nn.get("folds"), checkpoint=nn.get("checkpoint",
                                                        "checkpoint_final.pth"), mirroring=nn.get("mirroring", True),
                                                        tile_step_size=nn.get("tile_step_size", 0.5), **common)
    elif kind == "monai-bundle":
        b = entry.get("bundle") or {}
        seg = external.BundleSegmenter(entry["name"], files, entry["modalities"], outputs, config=b.get("config"),
                                       weights=b.get("weights", "models/model.pt"), spacing=b.get("spacing"), **common)
    elif kind == "torchscript":
        t = dict(entry.get("torchscript") or {})
        seg = external.TorchScriptSegmenter(entry["name"], files / t.pop("module"), entry["modalities"], outputs,
                                            **t, **common)
    else:
        raise SegmentationError(f"{folder / SPEC}: kind {kind!r} is not one of {list(KINDS[1:])}")
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
        return sorted(models.trained_on(seg.spec, cohort_name, case_ids, root))
    t = seg.trained_on or {}
    if not t:
        return []
    fake = models.ModelSpec(name=seg.name, network={}, modalities=seg.modalities, classes=seg.classes,
                            spacing=(1.0, 1.0, 1.0), patch=(1, 1, 1), train={"sources": [t]})
    return sorted(models.trained_on(fake, cohort_name, case_ids, root))


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
