"""What notebook 00 does with a raw cohort: every case to BraTS space, with a status table, similarity figures
and registration QC images.

The BraTS-layout cohort goes to :func:`glioma_nb.io.preprocessed_root` (a per-case cache shared by every run
with the same inputs and settings: a finished case is never redone, an interrupted run resumes at the next
case); the run folder gets the tables (``preprocess_cases``, ``preprocess_similarity``), the QC figures and
the step metrics. A case that fails is reported by name with its error and the others go on; the step then
fails at its end, so that 01 never starts on a cohort with a missing case.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from glioma_nb import compute, io, paths
from glioma_nb.preprocess import pipeline
from glioma_nb.preprocess import qc as pqc
from glioma_nb.preprocess.register import PreprocessError
from glioma_nb.results import StepContext, StepResult


@dataclass(repr=False)
class PreprocessResult(StepResult):
    """The preprocessed cohort's folder, each case's record (``preprocess.json``) and the cases that failed."""

    out_root: Path | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def save(self, ctx: Any) -> None:
        """Save tables, figures and metrics; then fail the step when a case failed, naming each (the other
        cases are kept: a resumed run redoes only the failed ones)."""
        super().save(ctx)
        if self.failed:
            raise PreprocessError(f"{len(self.failed)} case(s) failed preprocessing: " +
                                  "; ".join(f"{c}: {m.splitlines()[0]}" for c, m in self.failed.items()) +
                                  ". Fix their inputs (the message names the file) and resume the run: finished "
                                  "cases are not redone")


def _one_case(case_id: str, *, cases: dict[str, Any], out_root: Path, settings: Any, seed: int) -> dict[str, Any]:
    """Preprocess one case (a map item of :func:`step`, here or on a worker)."""
    return pipeline.preprocess_case(cases[case_id], out_root, settings, seed)


def step(ctx: StepContext, reference: str = "t1c", n_qc_cases: int = 4, progress: bool = True,
         **_: Any) -> PreprocessResult:
    """Preprocess every case of the raw cohort ``ctx.cohort`` (a :class:`pipeline.RawCohort`)."""
    cfg = ctx.config
    res = PreprocessResult()
    res.out_root = io.preprocessed_root(cfg)
    res.out_root.mkdir(parents=True, exist_ok=True)
    settings = pipeline.settings_of(cfg)
    seed = ctx.seed
    rows = []
    cases = {case.case_id: case for case in ctx.cohort.cases}
    done = getattr(ctx, "executor", compute.SERIAL).map(
        _one_case, list(cases), desc="preprocess", progress=progress, cases=cases, out_root=res.out_root,
        settings=settings, seed=seed)
    for cid in cases:
        if cid in done.errors:   # one case's failure must not lose the others
            res.failed[cid] = done.errors[cid]
            rows.append({"case_id": cid, "status": "failed", "cached": False, "seconds": None,
                         "flags": done.errors[cid][:300]})
            continue
        rec = done.values[cid]
        res.records.append(rec)
        rows.append({"case_id": cid, "status": rec["status"], "cached": rec["cached"],
                     "seconds": rec["seconds_total"], "flags": "; ".join(rec["flags"]),
                     "folder": paths.display_path(res.out_root / cid)})
    res.tables["preprocess_cases"] = pd.DataFrame(rows)
    sim = pd.DataFrame([{"case_id": r["case_id"], **r["similarity"]} for r in res.records])
    secs = pd.DataFrame([{"case_id": r["case_id"], **r["seconds"], "total": r["seconds_total"]}
                         for r in res.records])
    res.tables["preprocess_similarity"] = sim
    res.tables["preprocess_seconds"] = secs
    first = sorted(res.records, key=lambda r: r["status"] != "flagged")   # flagged cases are shown first
    shown = [res.out_root / r["case_id"] for r in first[:n_qc_cases]]
    if shown:
        res.add_figure("qc", pqc.case_figure(shown, list(ctx.cohort.modalities)))
    computed = [r["seconds_total"] for r in res.records if not r["cached"]]   # cached cases took no time here
    res.metrics = {
        "n_cases": len(ctx.cohort.cases), "n_ok": int(sum(r["status"] == "ok" for r in res.records)),
        "n_flagged": int(sum(r["status"] == "flagged" for r in res.records)), "n_failed": len(res.failed),
        "n_cached": int(sum(bool(r["cached"]) for r in res.records)),
        "seconds_per_case_computed": round(float(np.mean(computed)), 2) if computed else None,
        "preprocessed_root": paths.display_path(res.out_root), "reference": reference,
    }
    if not sim.empty:
        res.metrics["similarity_median"] = {k: round(float(v), 4) for k, v in sim.drop(columns="case_id").median().items()}
    return res
