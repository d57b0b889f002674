"""``glioma-nb models list | import | pull | catalogue | example`` and the model workshop: ``segment-train | segment-rescore |
segment-compare | segment-postprocess-cv`` (:mod:`glioma_nb.api.zoo`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from glioma_nb import paths
from glioma_nb.api import zoo
from glioma_nb.segment import kinds, pull, registry


DEVICE_HELP = "auto: CUDA when available, else the CPU"


def add(sub: Any) -> dict[str, Any]:
    """Add this group's commands to ``sub``; returns command -> handler."""
    mo = sub.add_parser("models", help="segmentation models: list them, or import an nnU-Net v2 / MONAI bundle / "
                                       "TorchScript model into the user models folder ($GLIOMA_NB_MODELS)")
    mo_sub = mo.add_subparsers(dest="models_command", required=True)
    mo_sub.add_parser("list", help="shipped and registered models")
    mi = mo_sub.add_parser("import", help="register a model folder (copied, sha256 of every file, card skeleton)")
    mi.add_argument("path", help="nnU-Net v2 trained-model folder | MONAI bundle folder | TorchScript YAML (or its folder)")
    mi.add_argument("--name", required=True, help="the name cohorts use: segment.model=<name>")
    mi.add_argument("--kind", choices=kinds.importable(), help="default: detected")
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
    mp = mo_sub.add_parser("pull", help="fetch a public pretrained model of the catalogue, verify its published hash, "
                                        "register and card it (the only command that downloads)")
    mp.add_argument("model", help="NAME or NAME@VERSION of `glioma-nb models catalogue`, e.g. brats_mri_segmentation@0.4.2")
    mp.add_argument("--from", dest="from_file", metavar="FILE",
                    help="an archive fetched elsewhere (an offline machine): verified against the catalogue the same way")
    mp.add_argument("--name", help="the name cohorts use: segment.model=<name> (default: NAME-VERSION)")
    mp.add_argument("--timeout", type=float, default=30.0, help="seconds without data before a URL is given up")
    mo_sub.add_parser("catalogue", help="the public models `models pull` knows: versions, hash, licence, registered")
    mx = mo_sub.add_parser("example", help="write a small example model of a kind, made with the library's own "
                                           "classes (to try import; nnU-Net: fitted briefly on a cohort's cases)")
    mx.add_argument("kind", choices=kinds.importable(), help="the kind of model folder to write")
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
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=DEVICE_HELP)
    prec = t.add_mutually_exclusive_group()
    prec.add_argument("--bf16", dest="bf16", action="store_const", const=True, default=None,
                      help="bfloat16 autocast on the CPU (the default where the CPU has AVX512-BF16 / AMX; said in the "
                           "model card)")
    prec.add_argument("--fp32", dest="bf16", action="store_const", const=False, help="float32 on the CPU")
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
    ro.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=DEVICE_HELP)

    cm = sub.add_parser("segment-compare",
                        help="a cross-validated model spec (its segment-train --folds folder) against a shipped model, on "
                             "the cases the shipped model never saw: out-of-fold vs shipped scores, paired bootstrap CI "
                             "(writes <out>/compare_<model>.csv and _summary.csv; the card shows them at --ship)")
    cm.add_argument("--model", required=True, help="the cross-validated spec (path to its YAML)")
    cm.add_argument("--out", required=True, help="its segment-train --folds folder (every fold finished)")
    cm.add_argument("--against", required=True, help="the shipped model it would replace, e.g. flair-wt")
    cm.add_argument("--metric", default="dice_WT", help="per-case score column (dice_WT, lesion_dice_WT, hd95_WT, ...)")
    cm.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=DEVICE_HELP)
    cm.add_argument("--card", action="store_true",
                    help="also write the spec's model card beside its YAML (curve, out-of-fold figures, this comparison), "
                         "without shipping weights: the record of a model that is not shipped")

    pc = sub.add_parser("segment-postprocess-cv",
                        help="choose a model's post-processing by k-fold CV on its training patients (held-out untouched)")
    pc.add_argument("--model", required=True, help="brats-4mod | flair-wt | path to a model spec YAML")
    pc.add_argument("--out", required=True, help="CV folder (fold models, out-of-fold masks, scores); resumed when it exists")
    pc.add_argument("--folds", type=int, default=2, help="cross-validation folds over the cases that choose the rule")
    pc.add_argument("--cohort", help="the training source whose patients are split (default: the spec's last)")
    pc.add_argument("--iterations", type=int, help="override train.iterations for the fold models")
    pc.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=DEVICE_HELP)
    return {"models": models, "segment-train": segment_train, "segment-rescore": segment_rescore,
            "segment-compare": segment_compare, "segment-postprocess-cv": segment_postprocess_cv}


def models(args: argparse.Namespace, argv: list[str]) -> int:
    if args.models_command == "list":
        print(registry.list_models().to_string(index=False))
        print(f"user models folder: {paths.display_path(registry.models_dir())} (GLIOMA_NB_MODELS)")
    elif args.models_command == "catalogue":
        print(pd.DataFrame(pull.catalogue_table()).to_string(index=False))
        print(f"catalogue: {paths.display_path(pull.CATALOGUE)} (+ $GLIOMA_NB_CATALOGUE)")
    elif args.models_command == "pull":
        spec = pull.pull(args.model, from_file=args.from_file, name=args.name, timeout=args.timeout)
        print(f"registered {spec.parent.name}: {paths.display_path(spec)}; its card {paths.display_path(spec.with_name('card.md'))}"
              f"; use it with --set segment.model={spec.parent.name}")
    elif args.models_command == "example":
        folder = kinds.make_example(args.kind, Path(args.out), cohort=args.cohort, n_cases=args.cases,
                                    iterations=args.iterations, spacing=args.spacing, patch=args.patch)
        print(f"wrote {paths.terminal_path(folder)}; register it with: glioma-nb models import {args.out} --name <name>")
    else:
        spec = registry.import_model(args.path, args.name, kind=args.kind, modalities=args.modalities,
                                     labels=args.labels, layers=args.layers, folds=args.folds,
                                     checkpoint=args.checkpoint, spacing=args.spacing, trained_on=args.trained_on)
        print(f"registered {args.name}: {paths.display_path(spec)}; fill in {paths.display_path(spec.with_name('card.md'))}"
              f"; use it with --set segment.model={args.name}")
    return 0


def segment_train(args: argparse.Namespace, argv: list[str]) -> int:
    code = zoo.segment_train(args.model, args.out, iterations=args.iterations, device=args.device, bf16=args.bf16,
                             ship=args.ship, argv=argv, nproc=args.nproc, folds=args.folds, fold=args.fold)
    return code if isinstance(code, int) else 0


def segment_rescore(args: argparse.Namespace, argv: list[str]) -> int:
    zoo.segment_rescore(args.model, args.out, device=args.device)
    return 0


def segment_compare(args: argparse.Namespace, argv: list[str]) -> int:
    zoo.segment_compare(args.model, args.out, args.against, metric=args.metric, device=args.device, card=args.card,
                        argv=argv)
    return 0


def segment_postprocess_cv(args: argparse.Namespace, argv: list[str]) -> int:
    zoo.segment_postprocess_cv(args.model, args.out, folds=args.folds, cohort=args.cohort, iterations=args.iterations,
                               device=args.device, argv=argv)
    return 0
