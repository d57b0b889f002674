"""``glioma-nb bench | bench-preprocess | bench-segment | bench-signature | bench-scale | bench-analysis``:
benchmarks as JSON under bench/results/."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from glioma_nb import bench, paths


OUT_HELP = "folder of the JSON result (a new timestamped file; nothing is overwritten)"


def add(sub: Any) -> dict[str, Any]:
    """Add this group's commands to ``sub``; returns command -> handler."""
    b = sub.add_parser("bench", help="benchmarks of the foundation (synthetic generation, cohort QC) as JSON")
    b.add_argument("--cohorts", nargs="+", default=["synthetic", "brats18-dev", "tcga-lgg-dev"],
                   help="cohorts whose generation and QC are timed")
    b.add_argument("--out", default="bench/results", help="folder for the JSON result")
    bp = sub.add_parser("bench-preprocess", help="raw scans to BraTS space: s/case by step, and the comparison with "
                                                 "BrainLes's output of the same scans (JSON)")
    bp.add_argument("--cohort", default="tcga-lgg-native", help="a raw cohort (cohort.source: raw)")
    bp.add_argument("--variants", nargs="+", default=["default", "n4", "affine"],
                    choices=["default", "n4", "affine", "template_mask"],
                    help="preprocessing settings compared: default, N4 bias correction, affine-only registration, "
                         "the template's brain mask")
    bp.add_argument("--model", default="brats-4mod", help="the network run on ours and on the reference's output")
    bp.add_argument("--no-dicom", action="store_true", help="skip the DICOM round trip of the same scans")
    bp.add_argument("--out", default="bench/results", help=OUT_HELP)
    bs = sub.add_parser("bench-segment", help="segmentation inference s/case, peak memory, held-out Dice (JSON)")
    bs.add_argument("--models", nargs="+", default=["brats-4mod", "flair-wt"],
                    help="shipped or registered models (glioma-nb models list)")
    bs.add_argument("--cohort", default="brats18-dev", help="the cohort a registered model is timed and scored on")
    bs.add_argument("--max-cases", type=int, default=20, help="held-out cases per cohort and model")
    bs.add_argument("--out", default="bench/results", help=OUT_HELP)
    bs.add_argument("--backends", choices=["also", "only", "no"], default="also",
                    help="torch against OpenVINO in one process per model (on the CPU): s/case of 01's pass with the "
                         "signature and its perturbations, the ratio, mask Dice / voxel disagreement and signature "
                         "differences (on --backend-cases cases of --cohort): also (default; in the same JSON), only "
                         "(backends_<time>.json), no")
    bs.add_argument("--backend-cases", type=int, default=12, help="cases of the backend comparison")
    bs.add_argument("--models-root", default=None, help="registered models folder (default: GLIOMA_NB_MODELS)")

    bsig = sub.add_parser("bench-signature", help="network signature and PyRadiomics s/case, CPU and GPU (JSON)")
    bsig.add_argument("--cohorts", nargs="+", default=["brats18-dev", "tcga-lgg-dev", "synthetic"],
                      help="cohorts whose signature and PyRadiomics extraction are timed")
    bsig.add_argument("--max-cases", type=int, default=5, help="cases timed per cohort")
    bsig.add_argument("--filters-cases", type=int, default=1, help="cases for the (slow) LoG/wavelet extraction")
    bsig.add_argument("--out", default="bench/results", help=OUT_HELP)
    bsig.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda when present")

    bsc = sub.add_parser("bench-scale", help="cases/hour of 01 and 02's per-case work serially and on 1..N Dask "
                                             "workers (JSON)")
    bsc.add_argument("--cohort", default="synthetic", help="the cohort whose per-case work is timed")
    bsc.add_argument("--n-cases", type=int, default=8, help="cases timed on 1 and on 2 Dask workers")
    bsc.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="local:N executors to time (and serial)")
    bsc.add_argument("--radiomics", default="mri-3d", help="PyRadiomics settings of the 02 part")
    bsc.add_argument("--out", default="bench/results", help=OUT_HELP)

    ba = sub.add_parser("bench-analysis", help="seconds of notebooks 03/04's computations at n cases x p features (JSON)")
    ba.add_argument("--cohort", default="upenn-gbm", help="the cohort subsampled (its feature tables)")
    ba.add_argument("--n", nargs="+", type=int, default=[100, 300, 611], help="numbers of cases")
    ba.add_argument("--p", nargs="+", type=int, default=[100, 1000, 5000], help="numbers of features")
    ba.add_argument("--table", default="captk", help="the cohort's feature table to subsample")
    ba.add_argument("--out", default="bench/results", help=OUT_HELP)
    return {"bench": lambda a, _: _written(bench.run_foundation_bench(a.cohorts, a.out)),
            "bench-preprocess": lambda a, _: _written(bench.run_preprocess_bench(a.cohort, a.out, a.variants, a.model,
                                                                                 not a.no_dicom)),
            "bench-segment": lambda a, _: _written(
                bench.run_backend_bench(a.models, a.cohort, a.backend_cases, a.out, a.models_root)
                if a.backends == "only" else
                bench.run_segment_bench(a.models, a.max_cases, a.out, cohort=a.cohort,
                                        backend_cases=a.backend_cases if a.backends == "also" else 0)),
            "bench-signature": lambda a, _: _written(bench.run_signature_bench(a.cohorts, a.max_cases, a.filters_cases,
                                                                               a.out, a.devices)),
            "bench-scale": lambda a, _: _written(bench.run_scale_bench(a.cohort, a.n_cases, a.workers, a.radiomics,
                                                                       a.out)),
            "bench-analysis": lambda a, _: _written(bench.run_analysis_bench(a.cohort, a.n, a.p, a.table, a.out))}


def _written(out: Path) -> int:
    print(f"benchmark written: {paths.display_path(out)}")
    return 0
