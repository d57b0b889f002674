"""Benchmarks: the foundation (synthetic generation, cohort QC), preprocessing of raw scans against BrainLes
(``bench-preprocess``), segmentation (``bench-segment``), signatures (``bench-signature``) and the analysis of
notebooks 03/04 at scale (``bench-analysis``) and the per-case work of 01/02 on 1 and N Dask workers (``bench-scale``).

Results go to ``bench/results/<name>_<UTC time>.json`` with seconds per case and peak memory; compare
ratios within one file, never absolute numbers across machines (the CI machine is shared and noisy).
"""
from __future__ import annotations

import dataclasses
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import nibabel as nib
import numpy as np
import pandas as pd

from glioma_nb import compute, config, io, paths, provenance, synthetic, taps
from glioma_nb.classify import cv as ccv
from glioma_nb.io import features as cfeat
from glioma_nb.preprocess import dicom as pre_dicom
from glioma_nb.preprocess import pipeline as pre_pipeline
from glioma_nb.preprocess import register as pre_register
from glioma_nb.segment import backend, infer, kinds, metrics, models, registry, train
from glioma_nb.signature import handcrafted
from glioma_nb.stratify import clustering, risk
from glioma_nb.stratify.survival import survival_frame


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _new_results() -> dict[str, object]:
    """The header every benchmark JSON starts with (time, git, environment) and its empty list."""
    return {"created_utc": provenance.utc_now().isoformat(timespec="seconds"), "git": provenance.git_info(),
            "environment": provenance.environment(), "benchmarks": []}


def _write_results(results: dict[str, object], out_dir: str, name: str) -> Path:
    """Write ``<out_dir>/<name>_<UTC time>.json`` atomically; returns its path."""
    out = paths.resolve_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_{provenance.utc_now().strftime('%Y%m%dT%H%M%SZ')}.json"
    provenance.write_json_atomic(path, results)
    return path


def run_foundation_bench(cohorts: Iterable[str], out_dir: str = "bench/results") -> Path:
    results = _new_results()
    with tempfile.TemporaryDirectory() as tmp:
        n = 8
        t0 = time.perf_counter()
        synthetic.generate_cohort(Path(tmp) / "syn", synthetic.SyntheticSpec(n_cases=n, seed=123), progress=False)
        dt = time.perf_counter() - t0
        results["benchmarks"].append({"name": "synthetic_generate_2mm", "cases": n, "seconds": round(dt, 3),
                                      "seconds_per_case": round(dt / n, 3), "peak_rss_mb": round(_peak_rss_mb(), 1)})
    for name in cohorts:
        cfg = config.resolve_config(name)
        try:
            synthetic.ensure_cohort_data(cfg, progress=False)
            t0 = time.perf_counter()
            cohort, report = io.check_cohort(cfg, progress=False)
        except io.CohortError as exc:
            results["benchmarks"].append({"name": f"qc_{name}", "skipped": str(exc).splitlines()[0]})
            continue
        dt = time.perf_counter() - t0
        n = max(len(cohort.cases), 1)
        results["benchmarks"].append({"name": f"qc_{name}", "cases": len(cohort.cases), "seconds": round(dt, 3),
                                      "seconds_per_case": round(dt / n, 3), "qc_errors": len(report.errors),
                                      "peak_rss_mb": round(_peak_rss_mb(), 1)})
    return _write_results(results, out_dir, "foundation")


def _segment_model_bench(model: str, device: str, max_cases: int, cohort_name: str = "brats18-dev") -> dict[str, object]:
    """Inference time, memory and Dice of one model (own process): a shipped model on its held-out shared cases, or
    (a cross-validated ensemble, which saw every case) on the first ``max_cases`` of its last source for time, with
    its out-of-fold Dice from ``<model>.oof.csv``, and the cost of the ensemble with and without mirroring and of one
    fold model; a registered model (nnU-Net, MONAI bundle, TorchScript) on the first ``max_cases`` of ``cohort_name``
    its ``trained_on`` does not list, the network signature pooled in the same pass (as notebook 01 runs it)."""
    import torch

    seg = registry.load(model, device=device)
    variants: dict[str, kinds.Segmenter] = {}
    oof = None
    if isinstance(seg, kinds.GliomaNbSegmenter):
        srcs = train.sources_from_spec(seg.spec)
        sources = [(s.cohort, s.held_out[:max_cases]) for s in srcs if s.held_out]
        if not sources:       # a cross-validated ensemble: every case was trained on by some fold
            sources = [(srcs[-1].cohort, srcs[-1].train[:max_cases])]
            oof_path = seg.spec.folder / f"{seg.spec.name}.oof.csv"
            oof = pd.read_csv(oof_path) if oof_path.exists() else None
            if models.is_ensemble(seg.net):
                flip = dataclasses.replace(seg.spec, tta=not seg.spec.tta)
                variants = {("ensemble_without_mirroring" if seg.spec.tta else "ensemble_with_mirroring"):
                            kinds.GliomaNbSegmenter(flip, seg.net),
                            "one_fold_model": kinds.GliomaNbSegmenter(seg.spec, seg.net.members[0])}
        request = None
    else:
        cfg = config.resolve_config(cohort_name)
        synthetic.ensure_cohort_data(cfg, progress=False)
        cohort = io.load_cohort(cfg, progress=False)
        seen = set(registry.trained_on(seg, cohort.name, cohort.case_ids, cohort.root))
        sources = [(cohort, [c for c in cohort.case_ids if c not in seen][:max_cases])]   # cases it never saw
        request = taps.Request()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows, per_case = [], []
    extra: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cohort, ids in sources:
            mask_dir = Path(tmp) / cohort.name
            # one pass per case: load, preprocess, sliding window, inversion to the original grid, the model's
            # post-processing rule, mask written (registered models: with the network signature of the same pass)
            table = infer.segment_cohort(cohort, seg, None, mask_dir, case_ids=ids, device=device, progress=False,
                                         signature=request)
            rows += [{"cohort": cohort.name, "case_id": r.case_id, "seconds_total": r.seconds}
                     for r in table.itertuples()]
            if cohort.scheme is not None and oof is None:
                per_case.append(metrics.cohort_scores(cohort, mask_dir, ids).assign(cohort=cohort.name))
            for name, other in variants.items():
                t = infer.segment_cohort(cohort, other, None, Path(tmp) / name / cohort.name, case_ids=ids,
                                         device=device, progress=False)
                extra[f"{name}_seconds_per_case_median"] = round(float(t["seconds"].median()), 3)
    scores = pd.concat(per_case, ignore_index=True) if per_case else pd.DataFrame(columns=["cohort"])
    dice = {}
    for cohort, part in scores.groupby("cohort"):
        dice[cohort] = metrics.summarise(part).round(4).to_dict(orient="records")
    secs = [r["seconds_total"] for r in rows]
    out: dict[str, object] = {"name": f"segment_{model}_{device}", "model": model, "kind": seg.kind, "device": device,
                              "network": seg.network_name, "with_network_signature": request is not None,
                              "postprocess": seg.postprocess, "cases": len(rows),
                              "seconds_per_case_median": round(float(np.median(secs)), 3),
                              "seconds_per_case_max": round(float(np.max(secs)), 3),
                              "torch_threads": torch.get_num_threads(), "peak_rss_mb": round(_peak_rss_mb(), 1),
                              "per_case": rows, "held_out_scores": dice}
    if isinstance(seg, kinds.GliomaNbSegmenter):
        out.update({"ensemble": seg.spec.ensemble, "mirroring": seg.spec.tta, **extra})
    if oof is not None:
        out["out_of_fold_scores"] = {co: metrics.summarise(g.drop(columns=["cohort", "case_id", "fold", "variant", "rule"],
                                                                  errors="ignore")).round(4).to_dict(orient="records")
                                     for co, g in oof.groupby("cohort")}
    if device == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def run_segment_bench(models_: Iterable[str] = ("brats-4mod", "flair-wt"), max_cases: int = 20,
                      out_dir: str = "bench/results", cohort: str = "brats18-dev", backend_cases: int = 12) -> Path:
    """``make bench-segment``: per model (shipped or registered, any kind), inference seconds per case (load,
    preprocess, sliding window, inversion to the original grid) and peak memory on CPU and on GPU when present,
    plus Dice (shipped models: their held-out shared cases; registered models: the first cases of ``cohort`` that
    their ``trained_on`` does not list). Each model/device runs in its own process. With ``backend_cases``, each
    model's torch / OpenVINO comparison on that many cases of ``cohort`` (:func:`_backend_bench`) joins the file."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import torch

    results = _new_results()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for model in models_:
        for device in devices:
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                res = pool.submit(_segment_model_bench, model, device, max_cases, cohort).result()
            results["benchmarks"].append(res)
            print(f"{res['name']}: {res['seconds_per_case_median']} s/case (median of {res['cases']}), "
                  f"peak RSS {res['peak_rss_mb']} MB", flush=True)
        if backend_cases:
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                res = pool.submit(_backend_bench, model, cohort, backend_cases).result()
            results["benchmarks"].append(res)
            print(say_backends(res), flush=True)
    return _write_results(results, out_dir, "segment")


def _label_dice(a: np.ndarray, b: np.ndarray, scheme: io.LabelScheme) -> dict[str, float]:
    """Dice per region of two label maps in one scheme (:func:`metrics.region_scores`; a region both leave empty
    agrees: 1)."""
    ra, rb = io.region_masks(a, scheme), io.region_masks(b, scheme)
    dice = {r: metrics.region_scores(ra[r], rb[r], (1.0,) * a.ndim, hd95=False)[0] for r in ra}
    return {r: 1.0 if np.isnan(d) else d for r, d in dice.items()}


def _signature_difference(dirs: dict[str, Path], ids: list[str]) -> dict[str, object]:
    """How far the OpenVINO signatures are from torch's: per column, the largest |difference| over the cases and
    rows (perturbations), relative to the column's largest |torch value| over them; the worst column named."""
    a = pd.concat({c: taps.read_signature(taps.signature_path(dirs["torch"], c)) for c in ids
                   if taps.signature_path(dirs["torch"], c).exists()})
    b = pd.concat({c: taps.read_signature(taps.signature_path(dirs["openvino"], c)) for c in ids
                   if taps.signature_path(dirs["openvino"], c).exists()})
    if a.empty or not a.index.equals(b.index) or list(a.columns) != list(b.columns):
        return {"compared": False, "why": "the two backends' signature tables differ in cases, rows or columns"}
    diff = (a - b).abs().max()
    scale = a.abs().max()
    rel = (diff / scale.where(scale > 0)).fillna(0.0)
    worst = str(rel.idxmax())
    return {"compared": True, "columns": int(a.shape[1]), "rows": int(a.shape[0]),
            "max_relative_difference": float(rel.max()), "worst_column": worst,
            "worst_column_abs_difference": float(diff[worst]), "worst_column_scale": float(scale[worst]),
            "columns_over_1e-3": int((rel > 1e-3).sum()), "median_relative_difference": float(rel.median())}


def _backend_bench(model: str, cohort_name: str, max_cases: int, models_root: str | None = None) -> dict[str, object]:
    """Both backends of one registered or shipped model in this process, on the first ``max_cases`` of
    ``cohort_name`` (:func:`compare_backends`)."""
    cfg = config.resolve_config(cohort_name)
    synthetic.ensure_cohort_data(cfg, progress=False)
    cohort = io.load_cohort(cfg, progress=False)
    root = Path(models_root) if models_root else None
    out = compare_backends(cohort, lambda: registry.load(model, root=root) if root else registry.load(model),
                           cohort.case_ids[:max_cases])
    return {"name": f"backends_{model}", "model": model, **out}


def compare_backends(cohort: io.Cohort, load: Any, ids: list[str]) -> dict[str, object]:
    """torch, then OpenVINO, of the segmenter ``load()`` makes, on cases ``ids`` of ``cohort``: seconds per case of
    notebook 01's pass with the network signature and the main job's stability perturbations (the OpenVINO
    conversion timed apart: the first case of a cold cache pays it); the masks' Dice per region and voxel
    disagreement between the two; the signature's largest relative difference, in each backend's own predicted
    mask (end to end: a voxel that changes class moves a small region's mean) and, where the cohort has label
    maps, in the reference mask (the network's outputs alone)."""
    import torch

    perts = tuple(config.base_config()["signature"]["stability"]["perturbations"])
    out: dict[str, Any] = {"cohort": cohort.name, "cases": len(ids), "openvino": backend.available(),
                           "torch_threads": torch.get_num_threads(), "perturbations": list(perts)}
    masks = {"predicted": taps.Request(perturbations=perts)}
    if cohort.scheme is not None:
        masks["reference"] = taps.Request(mask="reference")
    with tempfile.TemporaryDirectory() as tmp:
        for which, request in masks.items():
            dirs: dict[str, Path] = {}
            for name in ("torch", "openvino"):
                seg = load()
                seg.backend = name
                dirs[name] = Path(tmp) / which / name
                t0 = time.perf_counter()
                table = infer.segment_cohort(cohort, seg, None, dirs[name], case_ids=ids, signature=request,
                                             progress=False)
                wall = time.perf_counter() - t0
                secs = table["seconds"].to_numpy(dtype=float)
                out[f"{which}_{name}"] = {
                    "seconds_per_case_median": round(float(np.median(secs)), 3),
                    "seconds_per_case_mean_after_first": round(float(np.mean(secs[1:] if len(secs) > 1 else secs)), 3),
                    "first_case_seconds": round(float(secs[0]), 3), "wall_seconds": round(wall, 1),
                    "backend_used": sorted(set(table["backend"].astype(str)))}
                out.setdefault("kind", seg.kind)
                out.setdefault("network", seg.network_name)
            t, o = out[f"{which}_torch"], out[f"{which}_openvino"]
            out[f"{which}_speedup_median"] = round(t["seconds_per_case_median"] / o["seconds_per_case_median"], 2)
            if which == "predicted":
                dice: dict[str, list[float]] = {}
                disagreement = []
                for c in ids:
                    la = np.asarray(nib.load(infer.mask_path(dirs["torch"], c)).dataobj)
                    lb = np.asarray(nib.load(infer.mask_path(dirs["openvino"], c)).dataobj)
                    disagreement.append(float(np.mean(la != lb)))
                    scheme = io.LABEL_SCHEMES[json.loads((dirs["torch"] / f"{c}.json").read_text())["scheme"]]
                    for r, d in _label_dice(la, lb, scheme).items():
                        dice.setdefault(r, []).append(d)
                out["mask_dice_min"] = {r: round(min(v), 6) for r, v in dice.items()}
                out["mask_dice_mean"] = {r: round(float(np.mean(v)), 6) for r, v in dice.items()}
                out["voxel_disagreement_max"] = max(disagreement)
                out["voxel_disagreement_mean"] = float(np.mean(disagreement))
            out[f"signature_{which}_mask"] = _signature_difference(dirs, ids)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return out


def run_backend_bench(models_: Iterable[str] = ("brats-4mod", "flair-wt"), cohort: str = "brats18-dev",
                      max_cases: int = 12, out_dir: str = "bench/results", models_root: str | None = None) -> Path:
    """``glioma-nb bench-segment --backends only``: torch against OpenVINO per model (each in its own process, both
    backends in that process): s/case, their ratio, and the faithfulness figures (:func:`_backend_bench`)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    results = _new_results()
    for model in models_:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            res = pool.submit(_backend_bench, model, cohort, max_cases, models_root).result()
        results["benchmarks"].append(res)
        print(say_backends(res), flush=True)
    return _write_results(results, out_dir, "backends")


def say_backends(res: dict[str, Any]) -> str:
    """One line of a backend comparison (:func:`compare_backends`)."""
    p = res["predicted_torch"], res["predicted_openvino"]
    return (f"{res.get('model', res.get('network'))} on {res['cases']} {res['cohort']} cases: torch "
            f"{p[0]['seconds_per_case_median']} s/case, OpenVINO {p[1]['seconds_per_case_median']} s/case "
            f"({res['predicted_speedup_median']}x; {p[1]['backend_used']}); mask Dice min {res['mask_dice_min']}, "
            f"voxel disagreement max {res['voxel_disagreement_max']:.2g}; signature max relative difference "
            f"{res['signature_predicted_mask'].get('max_relative_difference')} (predicted masks)"
            + (f", {res['signature_reference_mask'].get('max_relative_difference')} (reference masks)"
               if "signature_reference_mask" in res else ""))


def _signature_bench(cohort_name: str, device: str, max_cases: int, filters_cases: int) -> dict[str, object]:
    """Seconds per case: segmentation alone, + network signature (same pass), + its stability passes;
    PyRadiomics original image, + perturbations, and with LoG/wavelet filters (own process)."""
    import torch

    cfg = config.resolve_config(cohort_name)
    synthetic.ensure_cohort_data(cfg, progress=False)
    cohort, _ = io.check_cohort(cfg, progress=False, images=False)
    ids = cohort.case_ids[:max_cases]
    spec = models.load_spec(models.choose_model(cohort.modalities, "auto"))
    net = models.load_model(spec, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res: dict[str, object] = {"name": f"signature_{cohort_name}_{device}", "cohort": cohort_name, "device": device,
                              "model": spec.name, "cases": len(ids), "torch_threads": torch.get_num_threads()}
    requests = {"segmentation_only": None, "segmentation_plus_network_signature": taps.Request(),
                "plus_stability_perturbations": taps.Request(perturbations=taps.PERTURBATIONS)}
    with tempfile.TemporaryDirectory() as tmp:
        infer.segment_cohort(cohort, spec, net, Path(tmp) / "warm", case_ids=ids[:1], device=device, progress=False)
        for name, req in requests.items():
            table = infer.segment_cohort(cohort, spec, net, Path(tmp) / name, case_ids=ids, device=device,
                                         progress=False, signature=req)
            res[f"{name}_s_per_case"] = round(float(table["seconds"].median()), 3)
        res["network_signature_features"] = int(taps.load_signature(Path(tmp) / "segmentation_plus_network_signature",
                                                                     ids)[0].shape[1])
    if device == "cuda":
        res["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        res["gpu"] = torch.cuda.get_device_name(0)
        return res
    radiomics = (cfg.get("signature") or {}).get("radiomics") or "mri-3d"
    settings = handcrafted.load_settings(radiomics)
    masks = handcrafted.MaskSource.reference(cohort)
    for label, sets, cases, pert in [("radiomics_original", settings, ids, None),
                                     ("radiomics_original_one_perturbation", settings, ids, "rotate"),
                                     ("radiomics_log_wavelet", handcrafted.load_settings("mri-3d-filters"),
                                      ids[:filters_cases], None)]:
        secs, n_feat = [], 0
        for cid in cases:
            t0 = time.perf_counter()
            row = handcrafted.case_features(cohort, cid, sets, masks_from=masks, perturbation=pert)
            secs.append(time.perf_counter() - t0)
            n_feat = max(n_feat, len(row))
        res[f"{label}_s_per_case"] = round(float(np.median(secs)), 3)
        res[f"{label}_s_max"] = round(float(np.max(secs)), 3)
        res[f"{label}_features"] = n_feat
    res["radiomics_settings"] = radiomics
    res["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return res


def run_signature_bench(cohorts: Iterable[str] = ("brats18-dev", "tcga-lgg-dev", "synthetic"), max_cases: int = 5,
                        filters_cases: int = 1, out_dir: str = "bench/results",
                        devices: Iterable[str] | None = None) -> Path:
    """``make bench-signature``: network signature and PyRadiomics seconds per case, CPU and GPU when
    present; a cohort whose data are absent is recorded as skipped (the synthetic cohort always runs)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import torch

    results = _new_results()
    devices = list(devices) if devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in cohorts:
        for device in devices:
            try:
                with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                    res = pool.submit(_signature_bench, name, device, max_cases, filters_cases).result()
            except (io.CohortError, FileNotFoundError, config.ConfigError) as exc:
                res = {"name": f"signature_{name}_{device}", "skipped": str(exc).splitlines()[0]}
            results["benchmarks"].append(res)
            print({k: v for k, v in res.items() if not isinstance(v, (list, dict))}, flush=True)
    return _write_results(results, out_dir, "signature")


# ------------------------------------------------------------------------------ analysis (notebooks 03, 04)
def _wide(X: pd.DataFrame, p: int, seed: int) -> pd.DataFrame:
    """``p`` columns from ``X``: its first p, or all of them and noisy copies (each real column plus Gaussian
    noise of half its SD) until there are p. Stands in for a larger feature table; says nothing of accuracy."""
    if p <= X.shape[1]:
        return X.iloc[:, :p]
    rng = np.random.default_rng(seed)
    extra, k = [], 0
    while X.shape[1] * (k + 1) < p:
        noise = rng.normal(size=X.shape) * X.std().to_numpy() * 0.5
        extra.append((X + noise).add_suffix(f"__copy{k}"))
        k += 1
    return pd.concat([X, *extra], axis=1).iloc[:, :p]


def run_analysis_bench(cohort_name: str = "upenn-gbm", ns: Iterable[int] = (100, 300, 611),
                       ps: Iterable[int] = (100, 1000, 5000), table: str = "captk",
                       out_dir: str = "bench/results") -> Path:
    """Seconds of the computations of notebooks 03 and 04 on subsamples of a feature-table cohort.

    Per (n cases, p features): 03 = :func:`classify.cv.evaluate` of nodes IDH and MGMT on the sets
    ``clinical`` and the image table (nested CV, permutation test, bootstrap CIs, refit: the cohort's
    settings, i.e. the base defaults); 04 = :func:`stratify.risk.evaluate_risk_models` of ``age`` and
    ``<table>+age`` and the consensus clustering of the table in ``all``. Cases are a random subsample
    (seed 0); p beyond the table's width adds noisy copies of its columns. The growth exponents come from a
    least-squares fit of log seconds on log n and log p.
    """
    cfg = config.resolve_config(cohort_name)
    cohort = io.load_cohort(cfg, progress=False)
    cl, st = cfg["classify"], cfg["stratify"]
    full = cohort.features[table]
    results = _new_results()
    results.update(cohort=cohort_name, table=table, settings={"classify": cl, "stratify": st})
    rows = []
    rng = np.random.default_rng(0)
    for n in ns:
        ids = sorted(rng.choice(full.index.to_numpy(), size=min(n, len(full)), replace=False))
        clin = cohort.clinical[cohort.clinical["case_id"].isin(ids)].reset_index(drop=True)
        for p in ps:
            X = _wide(full.loc[ids], p, seed=p)
            sets = {"clinical": cfeat.clinical_features(clin), table: X}
            t0 = time.perf_counter()
            grid = ccv.evaluate(sets, clin, nodes=["idh", "mgmt"], baseline="clinical",
                                classifier=cl["classifier"], selection=cl["selection"], k_features=cl["k_features"],
                                outer_splits=cl["outer_splits"], inner_splits=cl["inner_splits"],
                                repeats=cl["repeats"], n_permutations=cl["n_permutations"],
                                permutation=cl["permutation"], n_bootstrap=cl["n_bootstrap"],
                                min_class_size=cl["min_class_size"], n_jobs=cl["n_jobs"], progress=False)
            s03 = time.perf_counter() - t0
            surv = survival_frame(clin, "days").set_index("case_id")
            rsets, _ = cfeat.assemble_feature_sets(risk.survival_sources(clin, {table: X}), ["age", f"{table}+age"])
            t0 = time.perf_counter()
            res, _, _ = risk.evaluate_risk_models(
                rsets, surv, l1_ratio=st["l1_ratio"], outer_splits=st["outer_splits"],
                inner_splits=st["inner_splits"], repeats=st["repeats"], n_bootstrap=st["n_bootstrap"],
                min_events=st["min_events"], n_jobs=st["n_jobs"])
            clustering.cluster_subgroups(clin, X, ["all"], k=st["k"], k_max=st["k_max"],
                                         n_resamples=st["n_resamples"], subsample=st["subsample"],
                                         variance=st["pca_variance"], method=st["cluster_method"])
            s04 = time.perf_counter() - t0
            row = {"n": len(ids), "p": X.shape[1], "seconds_03": round(s03, 2), "seconds_04": round(s04, 2),
                   "pairs_evaluated_03": int(len(grid.results)), "risk_models_04": len(res),
                   "perm_method_03": sorted(set(grid.results.get("perm_method", pd.Series(dtype=str)))),
                   "peak_rss_mb": round(_peak_rss_mb(), 1)}
            rows.append(row)
            print(f"n={row['n']} p={row['p']}: 03 {s03:.1f} s, 04 {s04:.1f} s", flush=True)
    df = pd.DataFrame(rows)
    fits = {}
    for col in ("seconds_03", "seconds_04"):
        A = np.column_stack([np.ones(len(df)), np.log(df["n"]), np.log(df["p"])])
        coef, *_ = np.linalg.lstsq(A, np.log(df[col].clip(lower=1e-3)), rcond=None)
        fits[col] = {"exponent_n": round(float(coef[1]), 3), "exponent_p": round(float(coef[2]), 3)}
    results["benchmarks"] = rows
    results["growth"] = fits
    return _write_results(results, out_dir, "analysis")


# ------------------------------------------------------------------------------------------- preprocessing
REFERENCE_FILES = {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "fla"}   # BrainLes's names in preprocessed_sri24/


def compare_to_reference(case_dir: Path, reference_dir: Path) -> dict[str, object]:
    """A preprocessed case against the reference tool's output of the same raw scans: brain-mask Dice, and the
    normalised cross-correlation of each modality inside their brain mask and inside both masks."""
    import nibabel as nib

    cid = case_dir.name
    ours_mask = np.asarray(nib.load(case_dir / f"{cid}_brainmask.nii.gz").dataobj) > 0
    ref_mask = np.asarray(nib.load(reference_dir / "brainmask.nii.gz").dataobj) > 0
    both = ours_mask & ref_mask
    out: dict[str, object] = {"brain_mask_dice": round(float(2 * both.sum() / (ours_mask.sum() + ref_mask.sum())), 4),
                              "brain_ml_ours": round(float(ours_mask.sum()) / 1000, 1),
                              "brain_ml_reference": round(float(ref_mask.sum()) / 1000, 1)}
    names = io.DEFAULT_FILES["brats"]
    for m, f in REFERENCE_FILES.items():
        a = np.asarray(nib.load(case_dir / f"{cid}_{names[m]}.nii.gz").dataobj, dtype=np.float32)
        b = np.asarray(nib.load(reference_dir / f"{f}.nii.gz").dataobj, dtype=np.float32)
        out[f"ncc_{m}_in_reference_mask"] = round(pre_register.correlation(a, b, ref_mask), 4)
        out[f"ncc_{m}_in_both_masks"] = round(pre_register.correlation(a, b, both), 4)
    return out


def _brats_cohort(root: Path, name: str) -> io.Cohort:
    cfg = config.resolve_config("synthetic", [f"cohort.root={root}", "cohort.source=files", "cohort.layout=brats",
                                              "cohort.label.present=false", f"cohort.name={name}",
                                              "cohort.clinical.file=null"])
    return io.load_cohort(cfg, progress=False)


def run_preprocess_bench(cohort: str = "tcga-lgg-native", out_dir: str = "bench/results",
                         variants: Iterable[str] = ("default", "n4", "affine"), model: str = "brats-4mod",
                         with_dicom: bool = True) -> Path:
    """``make bench-preprocess``: each case of a raw cohort preprocessed from scratch (seconds per step, peak
    memory) under the default settings and variants; where the reference tool's output of the same scans sits
    beside them (``<case>/preprocessed_sri24``, BrainLes), brain-mask Dice, per-modality NCC, and ``model``'s
    masks on ours vs on theirs (Dice per region). ``with_dicom``: the same scans written as DICOM series and
    read back through the DICOM path (conversion seconds, voxel agreement with the NIfTI path)."""
    import nibabel as nib
    import SimpleITK as sitk

    cfg = config.resolve_config(cohort)
    raw, report = pre_pipeline.check_raw(cfg)
    if not report.ok:
        raise io.CohortError(report)
    results = _new_results()
    results["cohort"] = cohort
    tweaks = {"default": {}, "n4": {"n4": True}, "affine": {"atlas_transform": "affine"},
              "template_mask": {"skull_strip": "template"}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        for variant in variants:
            vcfg = config.with_overrides(cfg, [f"preprocess.{k}={v}" for k, v in tweaks[variant].items()])
            settings = pre_pipeline.settings_of(vcfg)
            for case in raw.cases:
                t0 = time.perf_counter()
                rec = pre_pipeline.preprocess_case(case, tmp_p / variant, settings, int(cfg["project"]["seed"]))
                row: dict[str, object] = {"name": f"preprocess_{variant}", "case_id": case.case_id,
                                          "settings": tweaks[variant], "seconds": round(time.perf_counter() - t0, 2),
                                          "seconds_by_step": rec["seconds"], "status": rec["status"],
                                          "flags": rec["flags"], "similarity": rec["similarity"],
                                          "peak_rss_mb": round(_peak_rss_mb(), 1)}
                ref_dir = case.folder / "preprocessed_sri24"
                if ref_dir.is_dir():
                    row["against_brainles"] = compare_to_reference(tmp_p / variant / case.case_id, ref_dir)
                results["benchmarks"].append(row)
        # the network on ours vs on theirs (default settings)
        seg = registry.load(model)
        mine, theirs = tmp_p / "seg_ours", tmp_p / "seg_theirs"
        names = io.DEFAULT_FILES["brats"]
        for case in raw.cases:
            ref_dir = case.folder / "preprocessed_sri24"
            if not ref_dir.is_dir():
                continue
            (mine / case.case_id).mkdir(parents=True)
            (theirs / case.case_id).mkdir(parents=True)
            for m, f in REFERENCE_FILES.items():
                (mine / case.case_id / f"{case.case_id}_{names[m]}.nii.gz").symlink_to(
                    tmp_p / "default" / case.case_id / f"{case.case_id}_{names[m]}.nii.gz")
                # BrainLes's FLAIR here has a constant background (0.022 after its 0-1 scaling) where the others
                # have 0: every file is set to 0 outside its brain mask, as a BraTS file is
                img = nib.load(ref_dir / f"{f}.nii.gz")
                brain = np.asarray(nib.load(ref_dir / "brainmask.nii.gz").dataobj) > 0
                nib.save(nib.Nifti1Image((img.get_fdata(dtype=np.float32) * brain).astype(np.float32), img.affine),
                         theirs / case.case_id / f"{case.case_id}_{names[m]}.nii.gz")
        if any(mine.glob("*")):
            masks = {}
            for label, root in (("ours", mine), ("brainles", theirs)):
                c = _brats_cohort(root, f"{cohort}-{label}")
                infer.segment_cohort(c, seg, None, tmp_p / f"masks_{label}", progress=False)
                masks[label] = c
            for cid in masks["ours"].case_ids:
                a = np.asarray(nib.load(tmp_p / "masks_ours" / f"{cid}.nii.gz").dataobj)
                b = np.asarray(nib.load(tmp_p / "masks_brainles" / f"{cid}.nii.gz").dataobj)
                sc = metrics.case_scores(a, b, io.mask_scheme(tmp_p / "masks_ours", cid, a),
                                         io.mask_scheme(tmp_p / "masks_brainles", cid, b), (1, 1, 1))
                results["benchmarks"].append({"name": f"segment_{model}_ours_vs_brainles", "case_id": cid,
                                              **{k: round(float(v), 4) for k, v in sc.items()}})
        if with_dicom:
            for case in raw.cases:
                dcm = tmp_p / "dicom" / case.case_id
                for n, m in enumerate(raw.modalities, start=2):
                    pre_dicom.write_series(sitk.ReadImage(str(case.files[m])), dcm / m, f"AX {m.upper()}", n,
                                           patient_id=case.case_id)
                dcfg = config.with_overrides(cfg, [f"cohort.root={tmp_p / 'dicom'}", "cohort.raw.format=dicom",
                                                   "cohort.raw.series={t1: '^AX T1$', t1c: '^AX T1C$', "
                                                   "t2: '^AX T2$', flair: '^AX FLAIR$'}"])
                t0 = time.perf_counter()
                draw, dreport = pre_pipeline.check_raw(dcfg)
                t_find = time.perf_counter() - t0
                if not dreport.ok:
                    raise io.CohortError(dreport)
                t0 = time.perf_counter()
                rec = pre_pipeline.preprocess_case(draw.cases[0], tmp_p / "from_dicom", pre_pipeline.settings_of(dcfg),
                                                   int(cfg["project"]["seed"]))
                dt = time.perf_counter() - t0
                a = np.asarray(nib.load(tmp_p / "from_dicom" / case.case_id / f"{case.case_id}_brainmask.nii.gz").dataobj)
                b = np.asarray(nib.load(tmp_p / "default" / case.case_id / f"{case.case_id}_brainmask.nii.gz").dataobj)
                results["benchmarks"].append({
                    "name": "preprocess_from_dicom", "case_id": case.case_id, "seconds_find_and_check_series": round(t_find, 2),
                    "seconds": round(dt, 2), "seconds_by_step": rec["seconds"],
                    "brain_mask_dice_vs_nifti_path": round(float(2 * ((a > 0) & (b > 0)).sum() / ((a > 0).sum() + (b > 0).sum())), 4)})
    return _write_results(results, out_dir, "preprocess")


def run_scale_bench(cohort_name: str = "synthetic", n_cases: int = 8, workers: Iterable[int] = (1, 2),
                    radiomics: str = "mri-3d", out_dir: str = "bench/results") -> Path:
    """Cases per hour of the per-case work of 01 (segmentation + network signature with the stability
    perturbations) and of 02 (PyRadiomics + its perturbed re-extractions) on ``compute.executor`` serial and
    ``local:N`` for each N in ``workers`` (``scale_<time>.json``): the ratio of N workers to 1 is the scaling
    on this machine. The start-up (cluster, and one case more that makes the workers import their libraries
    and receive the model) is timed apart from the ``n_cases`` timed; every executor's masks and PyRadiomics
    tables are checked against serial's."""
    import nibabel as nib

    cfg = config.resolve_config(cohort_name)
    synthetic.ensure_cohort_data(cfg, progress=False)
    cohort, _ = io.check_cohort(cfg, progress=False, images=False)
    if len(cohort.case_ids) < n_cases + 1:
        raise ValueError(f"cohort {cohort_name} has {len(cohort.case_ids)} cases; bench-scale needs n_cases + 1 "
                         "(one warms each executor up)")
    ids, warm = cohort.case_ids[:n_cases], cohort.case_ids[n_cases:n_cases + 1]
    device = models.resolve_device(cfg["project"]["device"])
    seg = registry.load(models.choose_model(cohort.modalities, cfg["segment"]["model"]), device=device)
    perts = tuple(cfg["signature"]["stability"]["perturbations"])
    req = taps.Request(mask="predicted", perturbations=perts, seed=int(cfg["project"]["seed"]))
    settings = handcrafted.load_settings(radiomics)
    results = _new_results()
    results.update(cohort=cohort_name, n_cases=len(ids), model=seg.name, device=device, perturbations=list(perts),
                   radiomics=radiomics, cpu_count=compute.cpu_count(), gpus=compute.n_gpus())
    reference: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ["serial", *(f"local:{n}" for n in workers)]:
            mask_dir = Path(tmp) / spec.replace(":", "")
            with compute.Executor(spec) as ex:
                n_workers = ex.n_workers
                # start-up: the cluster, and one case on it (workers import torch and PyRadiomics, get the model)
                t0 = time.perf_counter()
                infer.segment_cohort(cohort, seg, None, Path(tmp) / f"warm_{spec.replace(':', '')}", case_ids=warm,
                                     device=device, progress=False, signature=req, executor=ex)
                start = time.perf_counter() - t0
                t0 = time.perf_counter()
                infer.segment_cohort(cohort, seg, None, mask_dir, case_ids=ids, device=device, progress=False,
                                     signature=req, executor=ex)
                t_seg = time.perf_counter() - t0
                masks = handcrafted.MaskSource.predicted(cohort, mask_dir)
                t0 = time.perf_counter()
                sets = handcrafted.cohort_feature_sets(cohort, settings, [None, *perts], masks_from=masks,
                                                       seeds=list(range(len(perts) + 1)), case_ids=ids, executor=ex,
                                                       progress=False)
                t_rad = time.perf_counter() - t0
            arrays = {c: np.asarray(nib.load(mask_dir / f"{c}.nii.gz").dataobj) for c in ids}
            if spec == "serial":
                reference = {"masks": arrays, "sets": sets}
            same_masks = all(np.array_equal(arrays[c], reference["masks"][c]) for c in ids)
            same_rad = all(sets[p].equals(reference["sets"][p]) for p in sets)
            results["benchmarks"].append({
                "executor": spec, "workers": n_workers,
                "start_and_first_case_s": round(start, 2),
                "01_seconds": round(t_seg, 2), "01_cases_per_hour": round(3600 * len(ids) / t_seg, 1),
                "02_seconds": round(t_rad, 2), "02_cases_per_hour": round(3600 * len(ids) / t_rad, 1),
                "masks_equal_serial": same_masks, "radiomics_equal_serial": same_rad,
                "peak_rss_mb_client": round(_peak_rss_mb(), 1)})
    rows = {b["executor"]: b for b in results["benchmarks"]}
    one = rows.get("local:1")
    if one:
        results["speedup_vs_1_worker"] = {
            k: {"01": round(b["01_cases_per_hour"] / one["01_cases_per_hour"], 2),
                "02": round(b["02_cases_per_hour"] / one["02_cases_per_hour"], 2)} for k, b in rows.items()}
    return _write_results(results, out_dir, "scale")
