"""``glioma-nb run | study | overlap | validate | synth | cohorts | compare | publish | lab | docs``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from glioma_nb import STEPS, config, io, paths, publish, runner, runs, serial_real, synthetic
from glioma_nb.api import cohorts, docs, lab
from glioma_nb.api import predict as predict_api
from glioma_nb.segment import models


def add(sub: Any) -> dict[str, Any]:
    """Add this group's commands to ``sub``; returns command -> handler."""
    r = sub.add_parser("run", help="run a cohort's step notebooks (00 for a raw cohort, 01-05, 06 for serial scans) "
                                    "into a new run folder")
    r.add_argument("--cohort", default="synthetic", help="configs/cohorts/<name>.yaml by name, or the path of a cohort "
                                                          "YAML (default: synthetic)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set segment.n_overlay_cases=2 (repeatable)")
    r.add_argument("--steps", nargs="+", choices=STEPS, help="run only these steps")
    r.add_argument("--resume", metavar="RUN_ID", help="continue a failed run from its first unfinished step")

    pr = sub.add_parser("predict", help="segment a folder of scans without a cohort YAML: masks, volumes, the network "
                                        "signature and feature tables, an HTML summary (notebooks 01 and 02)")
    pr.add_argument("input_dir", help="a folder with one folder per case, files named as BraTS 2018-2021 "
                                      "(<case>_t1ce.nii.gz, ...) or BraTS 2023+ (<case>-t1c.nii.gz, ...) name them")
    pr.add_argument("output_dir", help="new or empty folder for the results; the same folder again resumes or "
                                       "says it is done")
    pr.add_argument("--model", help="registered model (glioma-nb models list; default: the base configuration's, "
                                    "brats-4mod)")
    pr.add_argument("--modalities", nargs="+", choices=("t1", "t1c", "t2", "flair"),
                    help="the scans to use (default: those every case has)")
    pr.add_argument("--signature", action=argparse.BooleanOptionalAction, default=True,
                    help="the network signature and feature tables too (notebook 02; default: yes)")
    pr.add_argument("--dicom-seg", action="store_true", help="DICOM SEG masks too: only for DICOM scans, "
                    "which predict does not read (see the error's fix)")
    pr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set segment.tta=true (repeatable)")

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
    v.add_argument("--cohort", default="synthetic", help="a cohort: configs/cohorts/<name>.yaml by name, or the path of a cohort YAML")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set cohort.exclude=[C01] (repeatable; keys as in configs/base.yaml)")

    s = sub.add_parser("synth", help="write a synthetic cohort (BraTS layout) to a folder")
    s.add_argument("--out", required=True, help="destination folder (must not exist or be empty)")
    s.add_argument("--n", type=int, default=40, help="number of cases")
    s.add_argument("--seed", type=int, default=0, help="random seed of the cohort: the same seed, size and spacing "
                                                       "give the same files")
    s.add_argument("--resolution", type=int, default=2, choices=(1, 2), help="voxel size in mm")
    s.add_argument("--serial-from", metavar="COHORT", default=None,
                   help="instead: serial scans grown from a real cohort's images and reference masks (a name in "
                        "configs/cohorts or a cohort YAML): per case up to 6 scans in which its lesion grows at a "
                        "planted VDE, with planted transformation and survival (glioma_nb.serial_real); writes "
                        "<out>/<cohort>-serial.yaml to run it")
    s.add_argument("--cases", default="all", help="with --serial-from: all | held-out:MODEL (the cases the model's "
                                                  "card holds out of its training) | comma-separated case ids")

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
    lb.add_argument("--port", type=int, default=8888, help="the port JupyterLab listens on")
    lb.add_argument("--ip", default="127.0.0.1", help="0.0.0.0 to reach it from outside a container")
    lb.add_argument("--browser", action=argparse.BooleanOptionalAction, default=None,
                    help="open a browser (default: only when not root)")

    dc = sub.add_parser("docs", help="the documentation site: reference pages generated from the code, the executed "
                        "synthetic notebooks, then mkdocs build --strict into site/")
    dc.add_argument("--site", default=None, help="output folder (default: site/)")
    return {"run": run, "predict": predict, "study": study, "overlap": overlap, "validate": validate, "synth": synth, "cohorts": listing,
            "compare": compare, "publish": publish_run, "lab": start_lab, "docs": build_docs}


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.resume:
        if args.overrides:
            raise config.ConfigError("--set cannot be combined with --resume: a run's parameters are frozen")
        run_dir = runner.resume(runs.find_run(args.resume, args.cohort))
    else:
        run_dir = runner.run(args.cohort, args.overrides, args.steps)
    print(f"completed: {paths.display_path(run_dir)}")
    return 0


def predict(args: argparse.Namespace, argv: list[str]) -> int:
    if args.dicom_seg:
        raise predict_api.PredictError(
            "--dicom-seg: a DICOM SEG refers to the DICOM series it was drawn on, and predict reads NIfTI folders; "
            "for DICOM scans write a raw cohort (cohort.source: raw, raw.format: dicom) and run glioma-nb run --cohort "
            "<yaml> --set segment.export_dicom_seg=true (docs/tutorials/raw-dicom.md)")
    predict_api.predict(args.input_dir, args.output_dir, model=args.model, modalities=args.modalities,
                        signature=args.signature, overrides=args.overrides)
    return 0


def study(args: argparse.Namespace, argv: list[str]) -> int:
    if args.resume and args.overrides:
        raise config.ConfigError("--set cannot be combined with --resume: a study's parameters are frozen")
    sdir = runner.run_study(args.study, args.cohorts, args.overrides, resume=args.resume)
    print(f"study completed: {paths.display_path(sdir)}")
    return 0


def overlap(args: argparse.Namespace, argv: list[str]) -> int:
    table, notes = cohorts.overlap(args.cohort, args.against, images=not args.no_images)
    for n in notes:
        print(f"note: {n}")
    print(f"{table['validation_case'].nunique()} case(s) of {args.cohort} are also in {args.against}")
    if len(table):
        print(table.rename(columns={"validation_case": args.cohort, "training_case": args.against})
              .to_string(index=False))
    return 1 if len(table) else 0


def validate(args: argparse.Namespace, argv: list[str]) -> int:
    report, found = cohorts.check(args.cohort, args.overrides)
    print(report.format())
    print(found)
    return 0 if report.ok else 1


def synth(args: argparse.Namespace, argv: list[str]) -> int:
    if args.serial_from:
        return _serial_from(args)
    out = synthetic.generate_cohort(args.out, synthetic.SyntheticSpec(args.n, args.seed, args.resolution))
    print(f"synthetic cohort: {out}")
    return 0


def _serial_from(args: argparse.Namespace) -> int:
    cfg = config.resolve_config(args.serial_from)
    cohort = io.load_cohort(cfg)
    name = cfg["cohort"]["name"]
    if args.cases == "all":
        cases = cohort.case_ids
    elif args.cases.startswith("held-out:"):
        model = args.cases.split(":", 1)[1]
        spec = models.load_spec(model)
        held = [c for src in spec.train.get("sources", []) if src.get("cohort") == name
                for c in src.get("held_out") or []]
        if not held:
            print(f"model {model}'s card holds no case of cohort {name} out of its training; give the case ids "
                  "(--cases A,B,C) or --cases all", file=sys.stderr)
            return 2
        cases = held
    else:
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    try:
        out = serial_real.generate_from(cohort, cfg["cohort"], args.out, cases, seed=args.seed)
    except ValueError as exc:   # a case the cohort lacks, a cohort without reference masks
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serial cohort grown from {len(cases)} {name} cases: {out}\n"
          f"run it: glioma-nb run --cohort {out / f'{name}-serial.yaml'}")
    return 0


def listing(args: argparse.Namespace, argv: list[str]) -> int:
    for name in config.available_cohorts():
        cfg = config.resolve_config(name)
        print(f"{name:20s} {cfg['cohort']['description']}")
    return 0


def compare(args: argparse.Namespace, argv: list[str]) -> int:
    diffs, counts = runs.compare_runs(runs.find_run(args.run_a), runs.find_run(args.run_b))
    print(f"compared {counts['tables']} tables ({counts['tables_byte_identical']} byte-identical) and "
          f"{counts['metrics_files']} metrics files (timings left out): {len(diffs)} difference(s)")
    if len(diffs):
        print(diffs.to_string(index=False))
    return 1 if len(diffs) else 0


def publish_run(args: argparse.Namespace, argv: list[str]) -> int:
    publish.publish(args.source, args.out, include_masks=args.include_masks, include_models=args.include_models)
    return 0


def start_lab(args: argparse.Namespace, argv: list[str]) -> int:
    lab.lab(args.port, args.ip, args.browser)
    return 0


def build_docs(args: argparse.Namespace, argv: list[str]) -> int:
    built = docs.build(args.parser, site=Path(args.site) if args.site else None)
    print(f"docs built strict in {built['generate_s'] + built['mkdocs_s']:.0f} s (pages generated "
          f"{built['generate_s']} s, mkdocs {built['mkdocs_s']} s): {paths.display_path(Path(built['site']))}/"
          f"index.html; notebooks from run {built['run']}")
    return 0
