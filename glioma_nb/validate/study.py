"""Studies: the summary of a training run and its validation runs, regenerated from their run folders."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from glioma_nb import paths, reporting, runs


# ---------------------------------------------------------------------------------------------- studies
def study_table(study_dir: Path) -> pd.DataFrame:
    """The study summary, regenerated from the run folders' manifests and metrics: every headline
    metric of every validation run (training CV beside validation), and each run's identity."""
    study = json.loads((Path(study_dir) / "study.json").read_text())
    rows = []
    for v in study.get("validation", []):
        rd = paths.reports_dir() / v["run"] if v.get("run") else None
        if rd is None or not (rd / "manifest.json").exists():
            continue
        m = runs.load_manifest(rd)
        met = runs.m_step(rd, "05_validate")
        for r in met.get("headline", []):
            rows.append({"training_cohort": study["training"]["cohort"], "training_run": study["training"].get("run_id"),
                         "validation_cohort": m["cohort"], "validation_run": m["run_id"], **r})
    cols = ["training_cohort", "training_run", "validation_cohort", "validation_run", *reporting.HEADLINE_COLUMNS]
    return pd.DataFrame(rows, columns=cols)


def save_study_output(study_dir: Path, table: pd.DataFrame | None = None, fig: Any = None, name: str = "study_summary") -> Path:
    """Write a study table (CSV) or figure (PNG) into the study folder; never overwrites."""
    kind, ext = ("tables", "csv") if table is not None else ("figures", "png")
    out = Path(study_dir) / kind / f"{name}.{ext}"
    if out.exists():
        raise FileExistsError(f"{paths.display_path(out)} exists; outputs of a study are never overwritten")
    out.parent.mkdir(exist_ok=True)
    if table is not None:
        table.to_csv(out, index=False)
    else:
        fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def study_runs(study_dir: Path) -> pd.DataFrame:
    """One row per run of a study: role, cohort, run id, status, cases, seconds."""
    study = json.loads((Path(study_dir) / "study.json").read_text())
    rows = []
    for role, entries in (("training", [study["training"]]), ("validation", study.get("validation", []))):
        for e in entries:
            row = {"role": role, "cohort": paths.display_path(Path(e["cohort"])) if Path(e["cohort"]).is_absolute()
                   else e["cohort"], "run": e.get("run_id"), "status": "not started",
                   "cases": None, "seconds": None}
            rd = paths.reports_dir() / e["run"] if e.get("run") else None
            if rd is not None and (rd / "manifest.json").exists():
                m = runs.load_manifest(rd)
                row.update(cohort=m["cohort"], status=m["status"], cases=m["cohort_summary"]["n_cases"],
                           seconds=m.get("seconds_total"))   # the cohort's name, not the YAML path a study may give
            rows.append(row)
    return pd.DataFrame(rows)
