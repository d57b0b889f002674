"""Command line: ``glioma-nb run | study | overlap | validate | synth | cohorts | bench`` (also ``python -m glioma_nb``)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from glioma_nb import STEPS, config, io, paths, runner
from glioma_nb.segment import SegmentationError
from glioma_nb.validate import ValidationError


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

    b = sub.add_parser("bench", help="benchmarks of the foundation (synthetic generation, cohort QC) as JSON")
    b.add_argument("--cohorts", nargs="+", default=["synthetic", "brats18-dev", "tcga-lgg-dev"])
    b.add_argument("--out", default="bench/results", help="folder for the JSON result")
    bs = sub.add_parser("bench-segment", help="segmentation inference s/case, peak memory, held-out Dice (JSON)")
    bs.add_argument("--models", nargs="+", default=["brats-4mod", "flair-wt"])
    bs.add_argument("--max-cases", type=int, default=20, help="held-out cases per cohort and model")
    bs.add_argument("--out", default="bench/results")

    bsig = sub.add_parser("bench-signature", help="network signature and PyRadiomics s/case, CPU and GPU (JSON)")
    bsig.add_argument("--cohorts", nargs="+", default=["brats18-dev", "tcga-lgg-dev", "synthetic"])
    bsig.add_argument("--max-cases", type=int, default=5)
    bsig.add_argument("--filters-cases", type=int, default=1, help="cases for the (slow) LoG/wavelet extraction")
    bsig.add_argument("--out", default="bench/results")
    bsig.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda when present")

    t = sub.add_parser("segment-train", help="train a segmentation model (models/<name>.yaml) on its shared-data split")
    t.add_argument("--model", required=True, help="brats-4mod | flair-wt | path to a model spec YAML")
    t.add_argument("--out", required=True, help="training folder (checkpoint, log, weights); resumed when it exists")
    t.add_argument("--iterations", type=int, help="override train.iterations of the spec")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CPU (opt-in)")
    t.add_argument("--ship", action="store_true",
                   help="after training: score the held-out cases, copy the weights into the package, write the model card")

    pc = sub.add_parser("segment-postprocess-cv",
                        help="choose a model's post-processing by k-fold CV on its training patients (held-out untouched)")
    pc.add_argument("--model", required=True, help="brats-4mod | flair-wt | path to a model spec YAML")
    pc.add_argument("--out", required=True, help="CV folder (fold models, out-of-fold masks, scores); resumed when it exists")
    pc.add_argument("--folds", type=int, default=2)
    pc.add_argument("--cohort", help="the training source whose patients are split (default: the spec's last)")
    pc.add_argument("--iterations", type=int, help="override train.iterations for the fold models")
    pc.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            if args.resume:
                if args.overrides:
                    raise config.ConfigError("--set cannot be combined with --resume: a run's parameters are frozen")
                run_dir = runner.resume(runner.find_run(args.resume, args.cohort))
            else:
                run_dir = runner.run(args.cohort, args.overrides, args.steps)
            print(f"completed: {paths.display_path(run_dir)}")
        elif args.command == "study":
            if args.resume and args.overrides:
                raise config.ConfigError("--set cannot be combined with --resume: a study's parameters are frozen")
            sdir = runner.run_study(args.study, args.cohorts, args.overrides, resume=args.resume)
            print(f"study completed: {paths.display_path(sdir)}")
        elif args.command == "overlap":
            from glioma_nb import validate

            cohorts = []
            for name in (args.cohort, args.against):
                cfg = config.resolve_config(name)
                runner.ensure_cohort_data(cfg, progress=False)
                cohorts.append(io.load_cohort(cfg, progress=False))
            table, notes = validate.patient_overlap(cohorts[1], cohorts[0], fingerprints=not args.no_images)
            for n in notes:
                print(f"note: {n}")
            print(f"{table['validation_case'].nunique()} case(s) of {args.cohort} are also in {args.against}")
            if len(table):
                print(table.rename(columns={"validation_case": args.cohort, "training_case": args.against})
                      .to_string(index=False))
            return 1 if len(table) else 0
        elif args.command == "validate":
            cfg = config.resolve_config(args.cohort, args.overrides)
            runner.ensure_cohort_data(cfg)
            cohort, report = io.check_cohort(cfg)
            print(report.format())
            print(repr(cohort))
            return 0 if report.ok else 1
        elif args.command == "synth":
            from glioma_nb import synthetic

            out = synthetic.generate_cohort(args.out, synthetic.SyntheticSpec(args.n, args.seed, args.resolution))
            print(f"synthetic cohort: {out}")
        elif args.command == "cohorts":
            for name in config.available_cohorts():
                cfg = config.resolve_config(name)
                print(f"{name:20s} {cfg['cohort']['description']}")
        elif args.command == "bench":
            from glioma_nb import bench

            out = bench.run_foundation_bench(args.cohorts, args.out)
            print(f"benchmark written: {paths.display_path(out)}")
        elif args.command == "bench-segment":
            from glioma_nb import bench

            out = bench.run_segment_bench(args.models, args.max_cases, args.out)
            print(f"benchmark written: {paths.display_path(out)}")
        elif args.command == "bench-signature":
            from glioma_nb import bench

            out = bench.run_signature_bench(args.cohorts, args.max_cases, args.filters_cases, args.out, args.devices)
            print(f"benchmark written: {paths.display_path(out)}")
        elif args.command == "segment-train":
            from glioma_nb.segment import train_cli

            train_cli(args.model, args.out, iterations=args.iterations, device=args.device, bf16=args.bf16,
                      ship=args.ship, argv=list(argv) if argv is not None else sys.argv[1:])
        elif args.command == "segment-postprocess-cv":
            from glioma_nb.segment import postprocess_cv_cli

            postprocess_cv_cli(args.model, args.out, folds=args.folds, cohort=args.cohort, iterations=args.iterations,
                               device=args.device, argv=list(argv) if argv is not None else sys.argv[1:])
    except (config.ConfigError, io.CohortError, runner.RunError, FileExistsError, SegmentationError,
            ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
