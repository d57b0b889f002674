"""Shipping a network into the package, and a shipped network's card made again.

:func:`ship` copies what a training folder holds into ``glioma_nb/segment/models``: the fold models of a k-fold
cross-validation (``cv.json``: an ensemble, with the rule and mirroring chosen out of fold written into the spec),
or the one network of a split (``weights.pt``, with its held-out scores); and writes the model card beside them
(:mod:`glioma_nb.zoo.cards`). :func:`rescore` scores a shipped model's card cases again with today's metrics;
:func:`card_volumes` writes the whole-tumour volumes of those cases (``<name>.volumes.csv``: the volume error
06 carries into VDE CIs on a cohort without reference masks).
Weights over 20 MB are refused before anything is copied.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from glioma_nb import config, io
from glioma_nb.segment import infer, metrics, models, train
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.zoo import cards, cv, evaluate


def ship(spec: models.ModelSpec, out_dir: Path, command: str, per_case: pd.DataFrame | None = None) -> Path:
    """Ship what ``out_dir`` holds and write the model card: a finished cross-validation (``cv.json``) as its fold
    models, else (or when ``per_case`` is given) the single network ``weights.pt`` scored on its held-out cases
    (``per_case``: :func:`glioma_nb.zoo.evaluate.evaluate_held_out`; read from ``held_out_scores.csv`` when not given).
    ``command`` is what the card says reproduces it. Returns the card's path."""
    out_dir = Path(out_dir)
    if per_case is None and (out_dir / "cv.json").exists():
        return _ship_folds(spec, out_dir, command)
    if per_case is None:
        scores = out_dir / "held_out_scores.csv"
        if not scores.exists():
            raise SegmentationError(f"{out_dir} holds neither a cross-validation (cv.json) nor the held-out scores of "
                                    f"its network ({scores.name}); train it with segment-train --ship")
        per_case = pd.read_csv(scores)
    return _ship_single(spec, out_dir, per_case, command)


def rescore(spec: models.ModelSpec, out_dir: Path, device: str = "cpu", progress: bool = True) -> pd.DataFrame:
    """A shipped model's card cases scored again with today's metrics, its card's metric tables rewritten (the
    rest of the card left as it was made): a cross-validated ensemble's out-of-fold cases, each by the fold model
    that never saw it; a single network's held-out cases. ``out_dir``: the per-case mask cache."""
    return (_rescore_folds if spec.ensemble else _rescore_single)(spec, Path(out_dir), device=device, progress=progress)


def _set_yaml_key(path: Path, key: str, value: str, comment: str) -> None:
    """Rewrite the top-level line ``key: ...`` of a spec YAML (appended when absent), keeping the rest as written."""
    lines = path.read_text().splitlines()
    new = f"{key}: {value}" + (f"     # {comment}" if comment else "")
    at = [i for i, ln in enumerate(lines) if ln.startswith(f"{key}:")]
    if at:
        lines[at[0]] = new
    else:
        lines.insert(next((i for i, ln in enumerate(lines) if ln.startswith("train:")), len(lines)), new)
    path.write_text("\n".join(lines) + "\n")


def _ship_single(spec: models.ModelSpec, out_dir: Path, per_case: pd.DataFrame, command: str) -> Path:
    """Copy ``out_dir/weights.pt`` into the package and write the model card beside it (``per_case``:
    :func:`evaluate_held_out`, one row per case and rule)."""
    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "train_summary.json").read_text())
    size_mb = (out_dir / "weights.pt").stat().st_size / 1e6
    if size_mb > 20:   # checked before anything is copied into the package
        raise SegmentationError(f"{out_dir / 'weights.pt'} is {size_mb:.1f} MB; shipped weights must stay under 20 MB")
    shutil.copyfile(out_dir / "weights.pt", spec.weights_path)
    sha = models.sha256(spec.weights_path)
    spec.card_path.write_text(cards.single_card(spec, summary, per_case, command, sha, size_mb))
    return spec.card_path


def _ship_folds(spec: models.ModelSpec, out_dir: Path, command: str) -> Path:
    """Copy the fold models of ``out_dir`` into the package as ``<name>.fold<i>.pt``, write the chosen rule and the
    ensemble size into the spec YAML and the whole model card beside it (from ``cv.json`` and the out-of-fold
    tables; nothing in it is written by hand)."""
    out_dir = Path(out_dir)
    res = cv.finished_cv(out_dir, "--ship")
    k = int(res["folds"])
    sources = [out_dir / f"fold{f}" / "weights.pt" for f in range(k)]
    for src in sources:   # every fold checked before any is copied: a refused ensemble leaves the package as it was
        size = src.stat().st_size / 1e6
        if size > 20:
            raise SegmentationError(f"{src} is {size:.1f} MB; shipped weights must stay under 20 MB per fold")
    files = []
    for f, src in enumerate(sources):
        dst = spec.folder / f"{spec.name}.fold{f}.pt"
        shutil.copyfile(src, dst)
        files.append((dst.name, src.stat().st_size / 1e6, models.sha256(dst)))
    for old in [spec.weights_path, *spec.folder.glob(f"{spec.name}.fold*.pt")]:
        if old.exists() and old.name not in {f[0] for f in files}:
            old.unlink()
    assert spec.path is not None
    _set_yaml_key(spec.path, "postprocess", res["rule"], "chosen out of fold by segment-train --folds --ship")
    _set_yaml_key(spec.path, "ensemble", str(k), "fold models shipped by segment-train --folds --ship")
    _set_yaml_key(spec.path, "tta", "true" if res["variant"] == "tta" else "false",
                  "mirroring at inference, chosen out of fold by segment-train --folds --ship")
    spec = models.load_spec(spec.path)
    cv.oof_per_case(out_dir).to_csv(spec.folder / f"{spec.name}.oof.csv", index=False)
    cards.write_curve_figure(spec, out_dir)
    spec.card_path.write_text(cards.ensemble_card(spec, out_dir, files, command))
    return spec.card_path


def _rescore_folds(spec: models.ModelSpec, out_dir: Path, device: str = "cpu", progress: bool = True) -> pd.DataFrame:
    """Score a shipped cross-validated model's out-of-fold cases again with today's metrics: each case of
    ``<name>.oof.csv`` segmented anew by the shipped fold model that never saw it (its ``fold``), with the chosen
    variant and rule, into ``out_dir`` (a per-case cache); returns the new table and writes it over
    ``<name>.oof.csv`` (git keeps the old one). The masks are those of the original cross-validation, up to
    floating point: the fold weights are the ones shipped."""
    path = spec.folder / f"{spec.name}.oof.csv"
    if not path.exists():
        raise SegmentationError(f"model {spec.name} has no shipped out-of-fold table ({path.name}): it was not shipped "
                                "from a cross-validation")
    old = pd.read_csv(path)
    rows = []
    for cohort_name, part in old.groupby("cohort", sort=False):
        cohort = io.load_cohort(config.resolve_config(cohort_name), progress=False)
        for (fold, variant, rule), g in part.groupby(["fold", "variant", "rule"], sort=True):
            net = models.load_model(spec, spec.weights_paths[int(fold)], device=device)
            mask_dir = Path(out_dir) / variant / cohort_name
            infer.segment_cohort(cohort, spec, net, mask_dir, case_ids=list(g["case_id"]), tta=cv.VARIANTS[variant],
                                 device=device, progress=progress, postprocess="none")
            s = metrics.cohort_scores(cohort, mask_dir, list(g["case_id"]), postprocess=rule)
            rows.append(s.assign(cohort=cohort_name, fold=int(fold), variant=variant, rule=rule))
    new = pd.concat(rows, ignore_index=True)
    cols = metrics.score_columns(new.columns)
    new = new[["cohort", "case_id", "fold", "variant", "rule", *cols]].round(4)
    new = new.set_index(["cohort", "case_id"]).loc[list(zip(old["cohort"], old["case_id"]))].reset_index()
    new.to_csv(path, index=False)
    cards.rewrite_oof_metrics(spec, new)
    return new


def _rescore_single(spec: models.ModelSpec, out_dir: Path, device: str = "cpu", progress: bool = True) -> pd.DataFrame:
    """Score a shipped single-network model's held-out cases again with today's metrics (the shipped weights,
    the spec's held-out lists) and rewrite its card's ``## Held-out metrics`` section; the rest of the card is
    left as it was made."""
    head, tail = cards.split_held_out(spec)
    net = models.load_model(spec, None, device=device)
    per_case = evaluate.evaluate_held_out(spec, net, train.sources_from_spec(spec, progress=progress), Path(out_dir),
                                          device=device, progress=progress)
    note = (f"Scored again with BraTS's official metrics (`glioma-nb segment-rescore --model {spec.name}`: the "
            "shipped weights, the same held-out cases; HD95 as brats-evaluation computes it).\n")
    spec.card_path.write_text(head + cards.held_out_section(spec, per_case, note) + tail)
    return per_case


def card_volumes(spec: models.ModelSpec, out_dir: Path, device: str = "cpu", progress: bool = True) -> pd.DataFrame:
    """The whole-tumour volume (mL) of every case a shipped model's card scores, predicted (the shipped weights as
    a run uses them: the spec's rule and mirroring; a cross-validated ensemble's case by the fold model that never
    saw it) and from the reference label map, written to ``<name>.volumes.csv`` beside the spec. ``out_dir``: the
    per-case mask cache."""
    if spec.ensemble:
        oof = pd.read_csv(spec.folder / f"{spec.name}.oof.csv")
        groups = [(co, int(f), list(g["case_id"])) for (co, f), g in oof.groupby(["cohort", "fold"], sort=False)]
        cohorts = {co: io.load_cohort(config.resolve_config(co), progress=False) for co in oof["cohort"].unique()}
        nets = {f: models.load_model(spec, spec.weights_paths[f], device=device) for f in {g[1] for g in groups}}
    else:
        srcs = train.sources_from_spec(spec, progress=progress)
        groups = [(s.cohort.name, -1, list(s.held_out)) for s in srcs if s.held_out]
        cohorts = {s.cohort.name: s.cohort for s in srcs}
        nets = {-1: models.load_model(spec, None, device=device)}
    rows = []
    for co, fold, ids in groups:
        cohort = cohorts[co]
        table = infer.segment_cohort(cohort, spec, nets[fold], Path(out_dir) / spec.name / co / f"fold{fold}",
                                     case_ids=ids, tta=spec.tta, device=device, progress=progress,
                                     postprocess=spec.postprocess)
        for r in table.itertuples():
            lab = cohort.load_label(r.case_id)
            vox_ml = float(abs(np.linalg.det(lab.affine[:3, :3]))) / 1000.0
            ref = float((np.asarray(lab.dataobj) > 0).sum()) * vox_ml
            rows.append({"cohort": co, "case_id": r.case_id, "fold": fold if fold >= 0 else None,
                         "WT_ml_predicted": round(float(r.WT_ml), 3), "WT_ml_reference": round(ref, 3)})
    out = pd.DataFrame(rows)
    out.to_csv(spec.folder / f"{spec.name}.volumes.csv", index=False)
    return out
