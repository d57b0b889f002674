"""``glioma-nb predict INPUT_DIR OUTPUT_DIR``: a folder of scans in, masks, volumes, the network signature and
feature tables out, without a cohort YAML (what ``nnUNetv2_predict -i in -o out`` gives, plus the signature).

It is the run of notebooks 01 (and 02) on a cohort written for the folder: the same code path, the same
records. ``OUTPUT_DIR`` holds

- ``cohort.yaml``: the cohort found in ``INPUT_DIR`` (layout, modalities, labels), reusable with ``glioma-nb run``;
- ``run/``: the run folder (executed notebooks and their HTML, ``params.yaml``, ``manifest.json``, every table);
- ``masks/<case>.nii.gz``, ``volumes.csv`` (WT/TC/ET ml, flags per case), ``features_<source>.csv`` and
  ``signature.csv`` (the network signature, every column), ``summary.html``, ``predict.json``.

A second call with the same folders resumes an interrupted run and otherwise says it is done; another input or
setting in the same ``OUTPUT_DIR`` is refused: an earlier result is never overwritten.
"""
from __future__ import annotations

import html
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import yaml

from glioma_nb import config, provenance, reporting, runner, runs
from glioma_nb.io.labels import DEFAULT_FILES, MODALITIES, case_file

#: the layouts ``predict`` recognises by their file names, in the order they are tried
LAYOUTS = ("brats", "brats2023")
RECORD = "predict.json"


class PredictError(config.ConfigError):
    """The input folder or the output folder cannot be used; the message names the folder and the fix."""


def _names(layout: str, case_id: str) -> dict[str, str]:
    return {k: case_file(layout, case_id, v) for k, v in DEFAULT_FILES[layout].items()}


def detect(input_dir: Path) -> dict[str, Any]:
    """The cohort in ``input_dir``: case folders named by the BraTS 2018-2021 (``<case>_t1ce.nii.gz``) or the
    BraTS 2023+ (``<case>-t1c.nii.gz``) convention; the modalities every case has; whether every case has a label
    map. Raises :class:`PredictError` naming what was found and what is expected."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise PredictError(f"{input_dir}: no such folder; give the folder that holds one folder per case")
    cases = sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        example = _names("brats2023", "<case>")["t1"]
        raise PredictError(f"{input_dir} holds no case folders: put each case's scans in a folder of its own "
                           f"(<case>/{example}, ...)")
    best: dict[str, Any] = {}
    for layout in LAYOUTS:
        found = {c.name: [m for m, f in _names(layout, c.name).items() if (c / f).exists()] for c in cases}
        n = sum(bool(set(v) - {"label"}) for v in found.values())
        if n > best.get("n", 0):
            best = {"layout": layout, "n": n, "found": found}
    if not best:
        e18, e23 = _names("brats", "<case>"), _names("brats2023", "<case>")
        raise PredictError(
            f"no scans named as BraTS names them in the case folders of {input_dir} (e.g. {cases[0].name}/): expected "
            f"<case>/{e18['t1c']} (BraTS 2018-2021: _t1, _t1ce, _t2, _flair) or <case>/{e23['t1c']} (BraTS 2023+: "
            f"-t1n, -t1c, -t2w, -t2f); for other names write a cohort YAML (layout per_case or manifest, see "
            f"docs/tutorials/own-cohort.md) and use glioma-nb run --cohort <yaml>")
    found = best["found"]
    missing = sorted(c for c, v in found.items() if not set(v) - {"label"})
    if missing:
        raise PredictError(f"{len(missing)} of {len(found)} case folder(s) of {input_dir} have no scan named as in the "
                           f"others ({best['layout']} names): {', '.join(missing[:5])}; move them out or rename their "
                           f"files")
    modalities = [m for m in MODALITIES if all(m in v for v in found.values())]
    return {"input_dir": str(input_dir), "layout": best["layout"], "cases": list(found), "modalities": modalities,
            "labels": all("label" in v for v in found.values())}


def cohort_config(input_dir: Path, found: dict[str, Any], name: str) -> dict[str, Any]:
    """A cohort YAML's content for what :func:`detect` found (no clinical table)."""
    scheme = "brats2023" if found["layout"] == "brats2023" else "brats2018"
    return {"cohort": {
        "description": f"scans of {input_dir} (glioma-nb predict)", "source": "files", "root": str(input_dir),
        "name": name, "layout": found["layout"], "modalities": found["modalities"],
        "label": {"present": bool(found["labels"]), "scheme": scheme}, "clinical": {"file": None}}}


@contextmanager
def _reports_in(folder: Path) -> Iterator[None]:
    old = os.environ.get("GLIOMA_NB_REPORTS")
    os.environ["GLIOMA_NB_REPORTS"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GLIOMA_NB_REPORTS", None)
        else:
            os.environ["GLIOMA_NB_REPORTS"] = old


def predict(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str], model: str | None = None,
            modalities: Sequence[str] | None = None, signature: bool = True, overrides: Sequence[str] = (),
            progress: bool = True) -> dict[str, Any]:
    """Segment every case of ``input_dir`` (and compute its signature and feature tables) into ``output_dir``.

    ``model``: a registered model (``glioma-nb models list``; default: the base configuration's); ``modalities``:
    the scans used (default: those every case has); ``signature``: also notebook 02 (feature tables; its ICC
    filter off unless ``overrides`` set ``signature.stability.perturbations``). Returns the record
    written to ``predict.json``."""
    input_dir = Path(input_dir).resolve()
    out = Path(output_dir).resolve()
    found = detect(input_dir)
    if modalities:
        absent = sorted(set(modalities) - set(found["modalities"]))
        if absent:
            raise PredictError(f"--modalities {' '.join(modalities)}: not every case of {input_dir} has "
                               f"{', '.join(absent)} (found in all: {', '.join(found['modalities'])})")
        found["modalities"] = [m for m in MODALITIES if m in modalities]
    steps = ["01_segment", "02_signature"] if signature else ["01_segment"]
    sets = [*([f"segment.model={model}"] if model else []), "signature.stability.perturbations=[]",
            "signature.mask=predicted", *overrides]
    request = {"input_dir": str(input_dir), "layout": found["layout"], "cases": found["cases"],
               "modalities": found["modalities"], "steps": steps, "overrides": sets}
    cohort_yaml = out / "cohort.yaml"
    record_path = out / RECORD
    run_root = out / "run"
    old = json.loads(record_path.read_text()) if record_path.exists() else None
    if old is not None and not old.get("run_dir"):   # an earlier call stopped before its run existed: nothing to keep
        old = None
        record_path.unlink()
        cohort_yaml.unlink(missing_ok=True)
        shutil.rmtree(run_root, ignore_errors=True)
    if old is not None and old.get("request") != request:
        raise PredictError(f"{out} holds the prediction of another input or setting ({old.get('request')}); an "
                           f"earlier result is never overwritten: choose another OUTPUT_DIR")
    if old is None and out.exists() and any(out.iterdir()):
        raise PredictError(f"{out} exists and is not a glioma-nb predict folder; choose an empty or new OUTPUT_DIR")
    with _reports_in(run_root):
        if old is not None and old.get("run_dir"):     # resume, or say it is done
            run_dir = Path(old["run_dir"])
            if runs.load_manifest(run_dir)["status"] != "completed":
                run_dir = _said_as_predict(runner.resume, run_dir, progress=progress)
            elif old.get("status") == "completed":
                if progress:
                    print(f"{out}: already complete ({len(found['cases'])} case(s)); nothing to do")
                return old
        else:                                           # new
            out.mkdir(parents=True, exist_ok=True)
            cohort_yaml.write_text(yaml.safe_dump(cohort_config(input_dir, found, f"predict-{input_dir.name}"),
                                                  sort_keys=False))
            provenance.write_json_atomic(record_path, {"request": request, "run_dir": None, "status": "starting"})
            run_dir = runner.create_run(str(cohort_yaml), sets, steps, progress=progress)
            provenance.write_json_atomic(record_path, {"request": request, "run_dir": str(run_dir), "status": "running"})
            if progress:
                print(f"run folder: {run_dir}", flush=True)
            run_dir = _said_as_predict(runner.execute, run_dir, progress=progress)
    rec = {"request": request, "run_dir": str(run_dir), "status": "completed", **_collect(run_dir, out, found)}
    provenance.write_json_atomic(record_path, rec)
    if progress:
        print(f"masks, volumes{', signature and features' if signature else ''}: {out} (summary.html)")
    return rec


def _said_as_predict(fn: Any, run_dir: Path, progress: bool) -> Path:
    """Run (or resume) the run; a failed step's message says how to go on with predict, not with glioma-nb run."""
    try:
        return fn(run_dir, progress=progress)
    except runs.RunError as exc:
        text = str(exc).split("\n  the partial notebook")[0]
        raise runs.RunError(f"{text}\n  the partial notebook is {run_dir}; fix the cause and run the same glioma-nb "
                            "predict command again: it resumes from the failed step") from exc


def _collect(run_dir: Path, out: Path, found: dict[str, Any]) -> dict[str, Any]:
    """The run's masks and tables at the top of ``out`` (written afresh from the run; the run is the record)."""
    masks = out / "masks"
    tmp = out / ".masks.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for cid in found["cases"]:
        src = run_dir / "masks" / f"{cid}.nii.gz"
        if src.exists():
            shutil.copy2(src, tmp / src.name)
    shutil.rmtree(masks, ignore_errors=True)
    os.replace(tmp, masks)
    tables = run_dir / "tables"
    cases = pd.read_csv(tables / "segmentation_cases.csv")
    vol_cols = ["case_id", "model", "backend", *[c for c in cases if c.endswith("_ml")], "flags", "status"]
    volumes = cases[[c for c in vol_cols if c in cases]]
    volumes.to_csv(out / "volumes.csv", index=False)
    written = ["volumes.csv"]
    for f in sorted(tables.glob("features_*.csv")):
        shutil.copy2(f, out / f.name)
        written.append(f.name)
    # every column of the network signature: before the filter, or as it is when too few cases fitted none
    for src in (tables / "unfiltered_signature.csv", tables / "features_signature.csv"):
        if src.exists():
            shutil.copy2(src, out / "signature.csv")
            written.append("signature.csv")
            break
    (out / "summary.html").write_text(_summary_html(run_dir, out, volumes, found, written))
    return {"n_cases": int(len(volumes)), "n_masks": len(list(masks.glob("*.nii.gz"))), "files": written,
            "model": str(volumes["model"].iloc[0]) if len(volumes) else None}


def _summary_html(run_dir: Path, out: Path, volumes: pd.DataFrame, found: dict[str, Any], written: list[str]) -> str:
    manifest = runs.load_manifest(run_dir)
    rel = html.escape(Path(os.path.relpath(run_dir, out)).as_posix())
    reports = "".join(f'<li><a href="{rel}/{s["name"]}.html">{s["name"]}</a> ({s.get("seconds", "?")} s)</li>'
                      for s in manifest["steps"])
    files = "".join(f'<li><a href="{html.escape(f)}">{html.escape(f)}</a></li>' for f in written)
    table = volumes.rename(columns=reporting.column_label).to_html(index=False, na_rep="",
                                                                   float_format=lambda v: f"{v:.1f}", border=0)
    title = f"glioma-nb predict: {len(volumes)} case(s) of {html.escape(Path(found['input_dir']).name)}"
    commit = html.escape(str((manifest.get("git") or {}).get("short", "")))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>body{{font-family:"
            "sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}td,th{padding:2px 8px;"
            "border-bottom:1px solid #ddd;text-align:right}caption{text-align:left;padding:4px 0}</style></head><body>"
            f"<h1>{title}</h1><p>Scans named as in {html.escape(found['layout'])}; modalities "
            f"{', '.join(found['modalities'])}; glioma-nb {commit}; run {html.escape(manifest['run_id'])}.</p>"
            "<table><caption>Table 1. Tumour volumes per case in ml (WT whole tumour, TC tumour core, ET enhancing "
            "tumour) from the predicted masks, with the segmentation's quality flags.</caption>"
            f"{table}</table><h2>Files</h2><ul>{files}<li>masks/: one NIfTI label map per case, on its scans' grid"
            f"</li></ul><h2>Reports</h2><ul>{reports}</ul></body></html>")
