"""Validation across runs and cohorts. Locked-model validation comes with the validate issue; this
module already summarises a run: every step's status, timing and recorded metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from glioma_nb import runner


def run_summary(run_dir: Path) -> pd.DataFrame:
    """One row per step of a run: status, seconds, and the scalar metrics the step recorded."""
    manifest = runner.load_manifest(Path(run_dir))
    rows = []
    for entry in manifest["steps"]:
        metrics = entry.get("metrics") or {}
        if not metrics:
            mfile = Path(run_dir) / "metrics" / f"{entry['name']}.json"
            if mfile.exists():
                metrics = json.loads(mfile.read_text())
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and k != "step"}
        rows.append({"step": entry["name"], "status": entry["status"], "seconds": entry.get("seconds"), **scalars})
    return pd.DataFrame(rows)


def provenance_table(run_dir: Path) -> pd.DataFrame:
    """Key provenance facts of a run as a two-column table (what a reviewer checks first)."""
    m = runner.load_manifest(Path(run_dir))
    env = m.get("environment", {})
    pk = env.get("packages", {})
    rows = [
        ("run id", m["run_id"]), ("cohort", m["cohort"]), ("mode", m.get("mode")),
        ("git commit", f"{m['git']['commit']}{' (uncommitted changes)' if m['git']['dirty'] else ''}"),
        ("parameters sha256", m["params_sha256"]), ("input files hashed", len(m.get("inputs", {}))),
        ("python", env.get("python")), ("platform", env.get("platform")),
        ("CUDA available", env.get("torch_cuda_available")), ("GPU", env.get("gpu") or "none"),
        *((f"package {k}", v) for k, v in pk.items() if v),
    ]
    return pd.DataFrame(rows, columns=["item", "value"]).astype({"value": str})
