"""Benchmarks of the foundation: synthetic generation and cohort QC, seconds per case and peak memory.

Results go to ``bench/results/foundation_<UTC time>.json``; compare ratios within one file, never
absolute numbers across machines (the CI machine is shared and noisy).
"""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Iterable

from glioma_nb import config, io, paths, provenance, runner, synthetic


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_foundation_bench(cohorts: Iterable[str], out_dir: str = "bench/results") -> Path:
    results: dict[str, object] = {"created_utc": provenance.utc_now().isoformat(timespec="seconds"),
                                  "git": provenance.git_info(), "environment": provenance.environment(),
                                  "benchmarks": []}
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
            runner.ensure_cohort_data(cfg, progress=False)
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
    out = paths.resolve_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"foundation_{provenance.utc_now().strftime('%Y%m%dT%H%M%SZ')}.json"
    provenance.write_json_atomic(path, results)
    return path
