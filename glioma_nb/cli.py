"""Command line: ``glioma-nb run | study | overlap | validate | synth | cohorts | compare | lab | bench | models | idc``
(also ``python -m glioma_nb``)."""
from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from glioma_nb import STEPS, bench, compute, config, docs, io, paths, provenance, publish, runner, runs, synthetic
from glioma_nb.preprocess import pipeline as pre_pipeline
from glioma_nb.runs import ValidationError
from glioma_nb.segment import cv, examples, metrics, models, postprocess, postprocess_cv, registry, train
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.sources import download as idc_download
from glioma_nb.sources import idc
from glioma_nb.validate import overlap as val_overlap


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """``glioma-nb segment-train ... --nproc N`` as the torchrun command that runs it in N processes (one machine;
    ``--nproc`` removed from the arguments each process gets)."""
    rest = [a for a in argv if not a.startswith("--nproc=")]
    if "--nproc" in rest:
        at = rest.index("--nproc")
        del rest[at:at + 2]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "glioma_nb", *rest]


def segment_train(model: str, out: str, iterations: int | None = None, device: str = "auto", bf16: bool = False,
                  ship: bool = False, argv: list[str] | None = None, nproc: int = 1, folds: int | None = None,
                  fold: list[int] | None = None) -> dict | int:
    """``glioma-nb segment-train``: train a model spec on its shared-data split; optionally ship it. ``nproc`` > 1
    runs the same command under torchrun in that many processes (DDP; see :func:`train.train`). ``folds``: k-fold
    cross-validation over all the spec's cases (:func:`cv.cross_validate`; ``fold``: train only these folds)."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        cmd = torchrun_command(nproc, argv or [])
        print("running: " + " ".join(cmd[1:]), flush=True)
        return subprocess.run(cmd, check=False).returncode
    spec = models.load_spec(model)
    settings = train.TrainSettings.from_spec(spec, iterations=iterations)
    if folds:
        return _segment_train_cv(spec, Path(out), folds, settings, device, bf16, ship, fold, argv)
    sources = train.sources_from_spec(spec, progress=True)
    with train.ddp_session(device):
        summary = train.train(spec, sources, Path(out), settings, device=device, bf16=bf16)
        lead = train.world()[0] == 0
    if not lead:
        return summary
    print(f"trained {spec.name}: final loss {summary['final_loss']:.4f} in {summary['seconds'] / 60:.1f} min"
          + (f" on {summary['processes']} processes" if summary["processes"] > 1 else ""))
    if ship:
        dev = models.resolve_device(device)
        net = models.load_model(spec, Path(out) / "weights.pt", device=dev)
        per_case = train.evaluate_held_out(spec, net, sources, Path(out), device=dev)
        per_case.to_csv(Path(out) / "held_out_scores.csv", index=False)
        command = "python -m glioma_nb " + " ".join(argv or [])
        card = train.ship(spec, Path(out), per_case, command)
        print(f"shipped {spec.weights_path.name} with model card {card.name}")
    return summary


def _segment_train_cv(spec: models.ModelSpec, out: Path, folds: int, settings: train.TrainSettings, device: str,
                      bf16: bool, ship: bool, only: list[int] | None, argv: list[str] | None) -> dict:
    if only is not None:
        bad = [f for f in only if not 0 <= f < folds]
        if bad:
            raise SegmentationError(f"--fold {bad}: folds are 0..{folds - 1}")
        if ship:
            raise SegmentationError("--ship needs every fold; leave out --fold")
    with train.ddp_session(device):
        if train.world()[1] > 1:      # torchrun: every process trains; rank 0 alone predicts and scores
            cv.train_folds(spec, out, folds, settings, device=models.resolve_device(device), bf16=bf16, only=only)
            if train.world()[0] != 0:
                return {"model": spec.name}
    res = cv.cross_validate(spec, out, folds, settings, device=device, bf16=bf16, only=only)
    summary = cv.read_table(out, "oof_summary")
    print(f"{spec.name}: {folds}-fold cross-validation, {res['n_cases']} cases out of fold"
          + (f" (folds {only} only)" if only is not None else "") + f"; chosen {res['variant']}, post-processing {res['rule']}")
    print(summary.round(3).to_string(index=False))
    if ship:
        card = cv.ship(spec, out, "python -m glioma_nb " + " ".join(argv or []))
        print(f"shipped {folds} fold models of {spec.name} with model card {card.name}")
    return res


def segment_compare(model: str, out: str, against: str, metric: str = "dice_WT", device: str = "auto",
                    card: bool = False, argv: list[str] | None = None) -> Any:
    """``glioma-nb segment-compare``: a cross-validated spec (its CV folder ``out``) against a shipped model on the
    cases the shipped model never saw (:func:`cv.compare_with`); prints the paired comparison and the curve."""
    spec, base = models.load_spec(model), models.load_spec(against)
    summary, _ = cv.compare_with(spec, Path(out), base, metric=metric, device=models.resolve_device(device))
    g = cv.curve_gain(cv.training_curve(Path(out)))
    print(f"{spec.name} (out of fold) vs {base.name} (as shipped), {metric}, on the cases {base.name} never saw:")
    print(summary.round(4).to_string(index=False))
    print(f"training curve: fold-mean held-out Dice {g['previous']:.3f} -> {g['last']:.3f} over the "
          f"last interval (gain {g['gain']:+.3f} at {g['iteration']:.0f} iterations)")
    if card:
        path = cv.write_unshipped_card(spec, Path(out), "python -m glioma_nb " + " ".join(argv or []))
        print(f"wrote {paths.display_path(path)} (not shipped: no weights copied)")
    return summary


def segment_postprocess_cv(model: str, out: str, folds: int = 2, cohort: str | None = None, iterations: int | None = None,
                       device: str = "auto", argv: list[str] | None = None) -> str:
    """``glioma-nb segment-postprocess-cv``: the out-of-fold Dice of every post-processing rule and the
    rule chosen (``<out>/oof_scores.csv``, ``<out>/postprocess_choice.json``)."""
    spec = models.load_spec(model)
    oof = postprocess_cv.cross_validate(spec, Path(out), folds=folds, cohort=cohort, iterations=iterations, device=device)
    rule, summary = postprocess.choose(oof)
    meta = {"model": spec.name, "folds": folds, "iterations": iterations or spec.train.get("iterations"),
            "cases": int(oof["case_id"].nunique()), "command": "python -m glioma_nb " + " ".join(argv or [])}
    path = postprocess.write_choice(Path(out), rule, summary, meta)
    print(summary.round(4).to_string())
    print(f"chosen: {rule} (set postprocess: {rule} in the model spec); {path}")
    return rule


def lab_argv(port: int = 8888, ip: str = "127.0.0.1", token: str = "", root_dir: Path | None = None,
             browser: bool | None = None) -> list[str]:
    """The ``jupyter lab`` command line of ``make lab``: the server's root is the project (notebooks and run
    folders both reachable), it opens on ``notebooks/``, runs as root where a container makes you root
    (``--allow-root``), and uses this environment's Python for its kernels. ``browser=None`` opens one
    only when not root (containers have none)."""
    root = Path(root_dir or paths.project_root()).resolve()
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    argv = [str(Path(sys.executable).with_name("jupyter")), "lab", f"--ServerApp.root_dir={root}",
            "--LabApp.default_url=/lab/tree/notebooks" if (root / "notebooks").is_dir() else "--LabApp.default_url=/lab",
            f"--ServerApp.ip={ip}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}"]
    if is_root:
        argv.append("--allow-root")
    if not (browser if browser is not None else not is_root):
        argv.append("--no-browser")
    return argv


def lab(port: int = 8888, ip: str = "127.0.0.1", browser: bool | None = None) -> None:
    """``glioma-nb lab`` (``make lab``): print the URL with its token, then become the JupyterLab server."""
    token = os.environ.get("GLIOMA_NB_LAB_TOKEN") or secrets.token_hex(24)
    argv = lab_argv(port, ip, token, browser=browser)
    host = "127.0.0.1" if ip in ("0.0.0.0", "::", "") else ip
    print(f"JupyterLab on {paths.display_path(paths.notebooks_dir())} (run folders under reports/):\n"
          f"    http://{host}:{port}/lab/tree/notebooks?token={token}\n"
          "Open a numbered notebook and Run All: it builds on the latest completed run of its cohort "
          "(parameters cell: upstream). Stop with Ctrl-C twice.", flush=True)
    os.execv(argv[0], argv)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glioma-nb", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run notebooks 01-05 for a cohort into a new run folder")
    r.add_argument("--cohort", default="synthetic", help="configs/cohorts/<name>.yaml (default: synthetic)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set segment.n_overlay_cases=2 (repeatable)")
    r.add_argument("--steps", nargs="+", choices=STEPS, help="run only these steps")
    r.add_argument("--resume", metavar="RUN_ID", help="continue a failed run from its first unfinished step")

    st = sub.add_parser("study", help="a training cohort and independent validation cohorts end to end, "
                                      "with a study summary")
    st.add_argument("--study", help="configs/studies/<name>.yaml or a YAML path")
    st.add_argument("--cohorts", nargs="+", metavar="COHORT",
                    help="short form: the first cohort trains, the others are validated against it")
    st.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override applied to every run of the study (repeatable)")
    st.add_argument("--resume", metavar="STUDY_DIR", help="continue a failed study (its folder)")

    ov = sub.add_parser("overlap", help="patients of one cohort that are also in another (by id and by image)")
    ov.add_argument("--cohort", required=True, help="the cohort checked (e.g. a validation cohort)")
    ov.add_argument("--against", required=True, help="the cohort it must not share patients with (training)")
    ov.add_argument("--no-images", action="store_true", help="compare patient ids only")

    v = sub.add_parser("validate", help="check a cohort's files and clinical table; report every problem")
    v.add_argument("--cohort", default="synthetic")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    s = sub.add_parser("synth", help="write a synthetic cohort (BraTS layout) to a folder")
    s.add_argument("--out", required=True, help="destination folder (must not exist or be empty)")
    s.add_argument("--n", type=int, default=40, help="number of cases")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resolution", type=int, default=2, choices=(1, 2), help="voxel size in mm")

    sub.add_parser("cohorts", help="list the cohort configurations")

    c = sub.add_parser("compare", help="compare two run folders' tables and metrics (exit 1 when they differ)")
    c.add_argument("run_a", help="run folder or run id")
    c.add_argument("run_b", help="run folder or run id")

    pu = sub.add_parser("publish", help="a run or study as a citable supplement: an RO-Crate zip with index.html, "
                        "notebooks, tables, figures, flow and the CLEAR / TRIPOD+AI checklists")
    pu.add_argument("source", help="run folder, study folder or run id")
    pu.add_argument("--out", required=True, help="the supplement zip (never overwritten)")
    pu.add_argument("--include-masks", action="store_true", help="the predicted masks too (mind the data's licence)")
    pu.add_argument("--include-models", action="store_true", help="the locked model records (joblib) too")

    lb = sub.add_parser("lab", help="JupyterLab on notebooks/ (root or not); prints the URL with its token")
    lb.add_argument("--port", type=int, default=8888)
    lb.add_argument("--ip", default="127.0.0.1", help="0.0.0.0 to reach it from outside a container")
    lb.add_argument("--browser", action=argparse.BooleanOptionalAction, default=None,
                    help="open a browser (default: only when not root)")

    dc = sub.add_parser("docs", help="the documentation site: reference pages generated from the code, the executed "
                        "synthetic notebooks, then mkdocs build --strict into site/")
    dc.add_argument("--site", default=None, help="output folder (default: site/)")
    b = sub.add_parser("bench", help="benchmarks of the foundation (synthetic generation, cohort QC) as JSON")
    b.add_argument("--cohorts", nargs="+", default=["synthetic", "brats18-dev", "tcga-lgg-dev"])
    b.add_argument("--out", default="bench/results", help="folder for the JSON result")
    bp = sub.add_parser("bench-preprocess", help="raw scans to BraTS space: s/case by step, and the comparison with "
                                                 "BrainLes's output of the same scans (JSON)")
    bp.add_argument("--cohort", default="tcga-lgg-native", help="a raw cohort (cohort.source: raw)")
    bp.add_argument("--variants", nargs="+", default=["default", "n4", "affine"],
                    choices=["default", "n4", "affine", "template_mask"])
    bp.add_argument("--model", default="brats-4mod", help="the network run on ours and on the reference's output")
    bp.add_argument("--no-dicom", action="store_true", help="skip the DICOM round trip of the same scans")
    bp.add_argument("--out", default="bench/results")
    bs = sub.add_parser("bench-segment", help="segmentation inference s/case, peak memory, held-out Dice (JSON)")
    bs.add_argument("--models", nargs="+", default=["brats-4mod", "flair-wt"],
                    help="shipped or registered models (glioma-nb models list)")
    bs.add_argument("--cohort", default="brats18-dev", help="the cohort a registered model is timed and scored on")
    bs.add_argument("--max-cases", type=int, default=20, help="held-out cases per cohort and model")
    bs.add_argument("--out", default="bench/results")

    bsig = sub.add_parser("bench-signature", help="network signature and PyRadiomics s/case, CPU and GPU (JSON)")
    bsig.add_argument("--cohorts", nargs="+", default=["brats18-dev", "tcga-lgg-dev", "synthetic"])
    bsig.add_argument("--max-cases", type=int, default=5)
    bsig.add_argument("--filters-cases", type=int, default=1, help="cases for the (slow) LoG/wavelet extraction")
    bsig.add_argument("--out", default="bench/results")
    bsig.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda when present")

    bsc = sub.add_parser("bench-scale", help="cases/hour of 01 and 02's per-case work serially and on 1..N Dask "
                                             "workers (JSON)")
    bsc.add_argument("--cohort", default="synthetic")
    bsc.add_argument("--n-cases", type=int, default=8)
    bsc.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="local:N executors to time (and serial)")
    bsc.add_argument("--radiomics", default="mri-3d", help="PyRadiomics settings of the 02 part")
    bsc.add_argument("--out", default="bench/results")

    ba = sub.add_parser("bench-analysis", help="seconds of notebooks 03/04's computations at n cases x p features (JSON)")
    ba.add_argument("--cohort", default="upenn-gbm")
    ba.add_argument("--n", nargs="+", type=int, default=[100, 300, 611])
    ba.add_argument("--p", nargs="+", type=int, default=[100, 1000, 5000])
    ba.add_argument("--table", default="captk", help="the cohort's feature table to subsample")
    ba.add_argument("--out", default="bench/results")

    mo = sub.add_parser("models", help="segmentation models: list them, or import an nnU-Net v2 / MONAI bundle / "
                                       "TorchScript model into the user models folder ($GLIOMA_NB_MODELS)")
    mo_sub = mo.add_subparsers(dest="models_command", required=True)
    mo_sub.add_parser("list", help="shipped and registered models")
    mi = mo_sub.add_parser("import", help="register a model folder (copied, sha256 of every file, card skeleton)")
    mi.add_argument("path", help="nnU-Net v2 trained-model folder | MONAI bundle folder | TorchScript YAML (or its folder)")
    mi.add_argument("--name", required=True, help="the name cohorts use: segment.model=<name>")
    mi.add_argument("--kind", choices=("nnunet-v2", "monai-bundle", "torchscript"), help="default: detected")
    mi.add_argument("--modalities", help="input channels in order, any case, e.g. T1c,T1,T2,FLAIR (default: read from "
                                         "nnU-Net's dataset.json channel_names, a bundle's metadata.json channel_def)")
    mi.add_argument("--labels", help="output mapping: brats2018 | brats2021 | wt | 1=necrosis,2=oedema,3=enhancing | "
                                     "regions:tc,wt,et (default: read from nnU-Net's dataset.json label names; a bundle "
                                     "is run once on a synthetic case and its mapping read from what it returns and "
                                     "its metadata.json; a mapping that cannot fit is refused)")
    mi.add_argument("--layers", help="signature layers, comma-separated module names (default: the architecture's)")
    mi.add_argument("--folds", help="nnU-Net folds to ensemble, e.g. 0,1,2 (default: every fold_* with a checkpoint)")
    mi.add_argument("--checkpoint", help="nnU-Net checkpoint file name (default checkpoint_final.pth)")
    mi.add_argument("--spacing", help="MONAI bundle: the voxel size its preprocessing works at, e.g. 1,1,1 (for notes)")
    mi.add_argument("--trained-on", help="COHORT:case1,case2,... the cases the weights saw (their Dice is then shown "
                                         "grey, not summarised); default: the folder's trained_on.json if any")
    mx = mo_sub.add_parser("example", help="write a small example model of a kind, made with the library's own "
                                           "classes (to try import; nnU-Net: fitted briefly on a cohort's cases)")
    mx.add_argument("kind", choices=("nnunet-v2", "monai-bundle", "torchscript"))
    mx.add_argument("out", help="new folder")
    mx.add_argument("--cohort", default="synthetic", help="nnU-Net: the cohort whose cases it is planned and fitted on")
    mx.add_argument("--cases", type=int, default=8, help="nnU-Net: fit on the first N cases (the rest are held out)")
    mx.add_argument("--iterations", type=int, default=300, help="nnU-Net: Adam steps per fold (0: untrained)")
    mx.add_argument("--spacing", default="2,2,2", help="nnU-Net: the voxel size it works at (mm)")
    mx.add_argument("--patch", default="64,64,64", help="nnU-Net: the patch size (voxels)")

    t = sub.add_parser("segment-train", help="train a segmentation model (models/<name>.yaml) on its shared-data split")
    t.add_argument("--model", required=True, help="brats-4mod | flair-wt | path to a model spec YAML")
    t.add_argument("--out", required=True, help="training folder (checkpoint, log, weights); resumed when it exists")
    t.add_argument("--iterations", type=int, help="override train.iterations of the spec")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CPU (opt-in)")
    t.add_argument("--nproc", type=int, default=1,
                   help="train in N processes with torchrun DDP (one per GPU with --device cuda, gloo on CPU); the "
                        "global batch (batch_cases x samples_per_case patches) and the learning rate stay those of one "
                        "process, split over the N")
    t.add_argument("--folds", type=int,
                   help="k-fold cross-validation over every case of the spec's sources (folds by patient): one model per "
                        "fold in <out>/fold<i> (finished folds are skipped), out-of-fold masks and scores, the "
                        "post-processing rule chosen on them")
    t.add_argument("--fold", type=int, nargs="+",
                   help="with --folds: only these folds (trained, predicted and scored: a partial cross-validation, e.g. "
                        "on another machine or for an ablation; run without it to finish and --ship)")
    t.add_argument("--ship", action="store_true",
                   help="after training: score the held-out cases (with --folds: the out-of-fold figures), copy the "
                        "weights into the package (with --folds: every fold model, shipped as an ensemble), write the "
                        "model card")

    ro = sub.add_parser("segment-rescore", help="score a shipped model's card cases again with today's metrics: a "
                        "cross-validated ensemble's out-of-fold cases (each by its shipped fold model; rewrites "
                        "<model>.oof.csv), or a single network's held-out cases; rewrites the card's metric tables")
    ro.add_argument("--model", required=True, help="a shipped model, e.g. brats-4mod or flair-wt")
    ro.add_argument("--out", default="train/rescore", help="folder of the predicted masks (a per-case cache)")
    ro.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    cm = sub.add_parser("segment-compare",
                        help="a cross-validated model spec (its segment-train --folds folder) against a shipped model, on "
                             "the cases the shipped model never saw: out-of-fold vs shipped scores, paired bootstrap CI "
                             "(writes <out>/compare_<model>.csv and _summary.csv; the card shows them at --ship)")
    cm.add_argument("--model", required=True, help="the cross-validated spec (path to its YAML)")
    cm.add_argument("--out", required=True, help="its segment-train --folds folder (every fold finished)")
    cm.add_argument("--against", required=True, help="the shipped model it would replace, e.g. flair-wt")
    cm.add_argument("--metric", default="dice_WT", help="per-case score column (dice_WT, lesion_dice_WT, hd95_WT, ...)")
    cm.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    cm.add_argument("--card", action="store_true",
                    help="also write the spec's model card beside its YAML (curve, out-of-fold figures, this comparison), "
                         "without shipping weights: the record of a model that is not shipped")

    pc = sub.add_parser("segment-postprocess-cv",
                        help="choose a model's post-processing by k-fold CV on its training patients (held-out untouched)")
    pc.add_argument("--model", required=True, help="brats-4mod | flair-wt | path to a model spec YAML")
    pc.add_argument("--out", required=True, help="CV folder (fold models, out-of-fold masks, scores); resumed when it exists")
    pc.add_argument("--folds", type=int, default=2)
    pc.add_argument("--cohort", help="the training source whose patients are split (default: the spec's last)")
    pc.add_argument("--iterations", type=int, help="override train.iterations for the fold models")
    pc.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    ic = sub.add_parser("idc", help="public cohorts from the NCI Imaging Data Commons: the manifest (offline, from the "
                        "bundled index) and the download (s5cmd)")
    ic_sub = ic.add_subparsers(dest="idc_command", required=True)
    im = ic_sub.add_parser("manifest", help="the cohort's series from the bundled IDC index (offline), with a report "
                           "of every scan found, complete or not and why, and the download size")
    im.add_argument("--cohort", required=True, help="an IDC cohort (configs/cohorts/<name>.yaml with cohort.idc)")
    im.add_argument("--out", required=True, help="manifest CSV (never overwritten; <stem>.report.csv beside it)")
    im.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    idl = ic_sub.add_parser("download", help="fetch the manifest's series (resumable, verified, header-checked)")
    idl.add_argument("--cohort", required=True)
    idl.add_argument("--manifest", help="the manifest CSV to fetch (default: <dest>/manifest.csv, made from the "
                     "bundled index the first time)")
    idl.add_argument("--dest", help="download folder (default: the cohort's cohort.root)")
    idl.add_argument("--scans", nargs="+", help="only these scan ids")
    idl.add_argument("--dry-run", action="store_true", help="print the size and the s5cmd commands; fetch nothing")
    idl.add_argument("--reserve-gb", type=float, default=1.0, help="refuse to start unless this much stays free")
    idl.add_argument("--workers", type=int, default=8, help="s5cmd --numworkers (parallel files of a series)")
    idl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def idc_manifest(cohort: str, out: str, overrides: Sequence[str] = ()) -> idc.Manifest:
    """``glioma-nb idc manifest``: write the cohort's manifest and report; print the report."""
    cfg = config.resolve_config(cohort, overrides)
    man = idc.build_manifest(cfg)
    path, rep = idc.write_manifest(man, Path(out))
    print(man.text())
    print(f"wrote {paths.display_path(path)} ({len(man.table)} series) and {paths.display_path(rep)}")
    return man


def idc_fetch(cohort: str, manifest: str | None = None, dest: str | None = None, scans: Sequence[str] | None = None,
              dry_run: bool = False, reserve_gb: float = 1.0, workers: int = 8, overrides: Sequence[str] = ()) -> dict:
    """``glioma-nb idc download``: fetch a manifest's series into the cohort's root (or ``dest``). The manifest
    used is kept as ``<dest>/manifest.csv``, the cohort's pinned definition, which every run records."""
    import shutil

    cfg = config.resolve_config(cohort, overrides)
    if not cfg["cohort"].get("idc"):
        raise config.ConfigError(f"cohort {cohort} has no cohort.idc block: it is not an IDC cohort")
    target = Path(dest) if dest else paths.resolve_path(cfg["cohort"]["root"])
    pinned = target / idc_download.MANIFEST
    if manifest:
        given = Path(manifest)
        table = idc.read_manifest(given)
        if pinned.exists() and not dry_run and pinned.read_bytes() != given.read_bytes():
            # a new definition of the cohort (an override, a newer index): the old one is kept beside it, and
            # every run records the sha256 of the manifest it used
            kept = pinned.with_name(f"manifest.{provenance.utc_now().strftime('%Y%m%dT%H%M%SZ')}.csv")
            pinned.rename(kept)
            print(f"{paths.display_path(pinned)} held another manifest: kept as {kept.name}")
    elif pinned.exists():
        given, table = pinned, idc.read_manifest(pinned)
    else:
        man = idc.build_manifest(cfg)
        print(man.text())
        table, given = man.table, None
    if not dry_run:
        target.mkdir(parents=True, exist_ok=True)
        if not pinned.exists():
            if given is not None:
                shutil.copyfile(given, pinned)
            else:
                idc.write_manifest(man, pinned)
    with compute.Executor.from_config(cfg) as ex:
        res = idc_download.download(table, target, scans=scans, url=(cfg["cohort"]["idc"].get("endpoint")),
                                    dry_run=dry_run, reserve_gb=reserve_gb, workers=workers, executor=ex)
    if not dry_run:
        bad = {k: v for k, v in res["checks"].items() if v and v["status"] != "ok"}
        print(f"fetched {res['fetched_scans']} scan(s), {res['bytes'] / 1e9:.2f} GB in {res['seconds']} s into "
              f"{paths.display_path(target)}" + (f"; header check: {len(bad)} scan(s) not ok:" if bad else ""))
        for k, v in bad.items():
            print(f"  {k}: {v['status']}: " + "; ".join(v["notes"]))
    return res


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            if args.resume:
                if args.overrides:
                    raise config.ConfigError("--set cannot be combined with --resume: a run's parameters are frozen")
                run_dir = runner.resume(runs.find_run(args.resume, args.cohort))
            else:
                run_dir = runner.run(args.cohort, args.overrides, args.steps)
            print(f"completed: {paths.display_path(run_dir)}")
        elif args.command == "study":
            if args.resume and args.overrides:
                raise config.ConfigError("--set cannot be combined with --resume: a study's parameters are frozen")
            sdir = runner.run_study(args.study, args.cohorts, args.overrides, resume=args.resume)
            print(f"study completed: {paths.display_path(sdir)}")
        elif args.command == "overlap":
            cohorts = []
            for name in (args.cohort, args.against):
                cfg = config.resolve_config(name)
                synthetic.ensure_cohort_data(cfg, progress=False)
                cohorts.append(io.load_cohort(cfg, progress=False))
            table, notes = val_overlap.patient_overlap(cohorts[1], cohorts[0], fingerprints=not args.no_images)
            for n in notes:
                print(f"note: {n}")
            print(f"{table['validation_case'].nunique()} case(s) of {args.cohort} are also in {args.against}")
            if len(table):
                print(table.rename(columns={"validation_case": args.cohort, "training_case": args.against})
                      .to_string(index=False))
            return 1 if len(table) else 0
        elif args.command == "validate":
            cfg = config.resolve_config(args.cohort, args.overrides)
            synthetic.ensure_cohort_data(cfg)
            if cfg["cohort"]["source"] == "raw":   # the raw scans (the BraTS-space cohort is 00_preprocess's output)
                raw, report = pre_pipeline.check_raw(cfg)
                print(report.format())
                print(report.case_table.to_string(index=False))
                print(f"raw cohort {raw.name}: {len(raw.cases)} case(s) ready for 00_preprocess")
                return 0 if report.ok else 1
            cohort, report = io.check_cohort(cfg)
            print(report.format())
            print(repr(cohort))
            return 0 if report.ok else 1
        elif args.command == "synth":
            out = synthetic.generate_cohort(args.out, synthetic.SyntheticSpec(args.n, args.seed, args.resolution))
            print(f"synthetic cohort: {out}")
        elif args.command == "publish":
            publish.publish(args.source, args.out, include_masks=args.include_masks, include_models=args.include_models)
        elif args.command == "compare":
            diffs, counts = runs.compare_runs(runs.find_run(args.run_a), runs.find_run(args.run_b))
            print(f"compared {counts['tables']} tables ({counts['tables_byte_identical']} byte-identical) and "
                  f"{counts['metrics_files']} metrics files (timings left out): {len(diffs)} difference(s)")
            if len(diffs):
                print(diffs.to_string(index=False))
            return 1 if len(diffs) else 0
        elif args.command == "cohorts":
            for name in config.available_cohorts():
                cfg = config.resolve_config(name)
                print(f"{name:20s} {cfg['cohort']['description']}")
        elif args.command == "lab":
            lab(args.port, args.ip, args.browser)
        elif args.command == "docs":
            built = docs.build(_parser(), site=Path(args.site) if args.site else None)
            print(f"docs built strict in {built['generate_s'] + built['mkdocs_s']:.0f} s (pages generated "
                  f"{built['generate_s']} s, mkdocs {built['mkdocs_s']} s): {paths.display_path(Path(built['site']))}/"
                  f"index.html; notebooks from run {built['run']}")
        elif args.command == "bench":

            out = bench.run_foundation_bench(args.cohorts, args.out)
            print(f"benchmark written: {paths.display_path(out)}")
        elif args.command == "bench-analysis":
            out = bench.run_analysis_bench(args.cohort, args.n, args.p, args.table, args.out)
            print(f"benchmark written: {paths.display_path(out)}")
        elif args.command == "bench-preprocess":
            out = bench.run_preprocess_bench(args.cohort, args.out, args.variants, args.model, not args.no_dicom)
            print(f"benchmark written: {paths.display_path(out)}")
        elif args.command == "bench-segment":

            out = bench.run_segment_bench(args.models, args.max_cases, args.out, cohort=args.cohort)
            print(f"benchmark written: {paths.display_path(out)}")
        elif args.command == "bench-signature":

            out = bench.run_signature_bench(args.cohorts, args.max_cases, args.filters_cases, args.out, args.devices)
            print(f"benchmark written: {paths.display_path(out)}")
        elif args.command == "bench-scale":
            out = bench.run_scale_bench(args.cohort, args.n_cases, args.workers, args.radiomics, args.out)
            print(f"benchmark written: {paths.display_path(out)}")
        elif args.command == "models":
            if args.models_command == "list":
                table = registry.list_models()
                print(table.to_string(index=False))
                print(f"user models folder: {paths.display_path(registry.models_dir())} (GLIOMA_NB_MODELS)")
            elif args.models_command == "example":
                folder = examples.make(args.kind, Path(args.out), cohort=args.cohort, n_cases=args.cases,
                                       iterations=args.iterations, spacing=args.spacing, patch=args.patch)
                print(f"wrote {paths.display_path(folder)}; register it with: glioma-nb models import {args.out} "
                      f"--name <name>")
            else:
                spec = registry.import_model(args.path, args.name, kind=args.kind, modalities=args.modalities,
                                             labels=args.labels, layers=args.layers, folds=args.folds,
                                             checkpoint=args.checkpoint, spacing=args.spacing,
                                             trained_on=args.trained_on)
                print(f"registered {args.name}: {paths.display_path(spec)}; fill in {paths.display_path(spec.with_name('card.md'))}"
                      f"; use it with --set segment.model={args.name}")
        elif args.command == "segment-train":
            code = segment_train(args.model, args.out, iterations=args.iterations, device=args.device, bf16=args.bf16,
                                 ship=args.ship, argv=list(argv) if argv is not None else sys.argv[1:], nproc=args.nproc,
                                 folds=args.folds, fold=args.fold)
            if isinstance(code, int) and code:
                return code
        elif args.command == "idc":
            if args.idc_command == "manifest":
                idc_manifest(args.cohort, args.out, args.overrides)
            else:
                idc_fetch(args.cohort, args.manifest, args.dest, args.scans, args.dry_run, args.reserve_gb, args.workers,
                          args.overrides)
        elif args.command == "segment-compare":
            segment_compare(args.model, args.out, args.against, metric=args.metric, device=args.device, card=args.card,
                            argv=list(argv) if argv is not None else sys.argv[1:])
        elif args.command == "segment-rescore":
            spec = models.load_spec(args.model)
            dev = models.resolve_device(args.device)
            if spec.ensemble:
                new = cv.rescore_shipped(spec, Path(args.out) / spec.name, device=dev)
                print(f"{spec.name}: {len(new)} out-of-fold cases scored again; wrote {spec.name}.oof.csv and its card")
            else:
                new = train.rescore_held_out(spec, Path(args.out) / spec.name, device=dev)
                print(f"{spec.name}: {new['case_id'].nunique()} held-out cases scored again; rewrote its card")
            for keys, part in new.groupby(["cohort", *(["postprocess"] if "postprocess" in new else [])], sort=False):
                print(keys)
                print(metrics.summary_table(metrics.summarise(part)).to_string(index=False))
        elif args.command == "segment-postprocess-cv":
            segment_postprocess_cv(args.model, args.out, folds=args.folds, cohort=args.cohort, iterations=args.iterations,
                               device=args.device, argv=list(argv) if argv is not None else sys.argv[1:])
    except (config.ConfigError, io.CohortError, runs.RunError, FileExistsError, SegmentationError, publish.PublishError,
            ValidationError, idc.IdcError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
