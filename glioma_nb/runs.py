"""Run folders as data: find a run, read its manifest, feature tables and other tables, its recorded metrics,
the sha256 of its models, and open a completed run as the read-only reference of a validation run.

A run folder ``<reports>/<cohort>/<run_id>/`` holds::

    params.yaml            the resolved, validated configuration (frozen)
    manifest.json          git, params hash, input sha256s, environment, per-step status/timing/metrics
    qc/                    cohort QC: case_table.csv, problems.csv
    NN_step.ipynb / .html  executed notebooks (paths scrubbed) and their HTML
    figures/ tables/ models/ logs/ metrics/   what the steps write
    attempts/              notebooks of failed attempts, kept when a run is resumed

This module only reads run folders (and scrubs local paths from text); :mod:`glioma_nb.runner` creates and
executes them. It sits in the low layer: it imports no stage and no orchestration module.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from glioma_nb import config as config_mod
from glioma_nb import paths, provenance, records

#: every installed distribution of the run's environment (``name==version``), written when the run is created
REQUIREMENTS_LOCK = "requirements.lock"


class RunError(RuntimeError):
    """A run could not be created, resumed or completed; the message says which step and why."""


def read_feature_tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    """The feature tables 02_signature saved in a run (``tables/features_<source>``, parquet else CSV),
    by source, indexed by case_id."""
    out = {}
    for f in sorted((Path(run_dir) / "tables").glob("features_*.parquet")):
        out[f.stem.removeprefix("features_")] = pd.read_parquet(f).set_index("case_id")
    for f in sorted((Path(run_dir) / "tables").glob("features_*.csv")):
        name = f.stem.removeprefix("features_")
        if name not in out:
            out[name] = pd.read_csv(f, dtype={"case_id": str}).set_index("case_id")
    return out


def load_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "manifest.json"
    if not path.exists():
        raise RunError(f"{paths.display_path(run_dir)} is not a run folder (no manifest.json)")
    return json.loads(path.read_text())


def find_run(run: str, cohort: str | None = None, reports: Path | None = None) -> Path:
    """Locate a run folder by path or by run id (searched under the cohort's reports folder)."""
    p = Path(run)
    if (p / "manifest.json").exists():
        return p.resolve()
    root = reports or paths.reports_dir()
    if (root / run / "manifest.json").exists():  # <cohort>/<run_id> relative to the reports folder
        return (root / run).resolve()
    hits = sorted(root.glob(f"{cohort or '*'}/{run}"))
    hits = [h for h in hits if (h / "manifest.json").exists()]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise RunError(f"no run {run!r} under {paths.display_path(root)}"
                       + (f"/{cohort}" if cohort else "") + "; give the run folder or its id")
    raise RunError(f"run id {run!r} is ambiguous: {[paths.display_path(h) for h in hits]}; pass --cohort")


#: what an interactive step reads from its upstream run: the steps that must be completed there
UPSTREAM_NEEDS = {"00_preprocess": (), "01_segment": (), "02_signature": ("01_segment",), "03_classify": ("02_signature",),
                  "04_stratify": ("02_signature",), "05_validate": ("02_signature",), "06_longitudinal": ("01_segment",)}


def step_status(manifest: Mapping[str, Any], step: str) -> str | None:
    """Status of ``step`` in a run's manifest (None when the run does not list it)."""
    return next((e["status"] for e in manifest.get("steps", []) if e["name"] == step), None)


def missing_upstream(run_dir: Path, step: str) -> list[str]:
    """The steps ``step`` builds on that are not completed in ``run_dir`` (empty: it can be the upstream)."""
    manifest = load_manifest(run_dir)
    return [s for s in UPSTREAM_NEEDS[step] if step_status(manifest, s) != "completed"]


def latest_completed_run(cohort: str, step: str, reports: Path | None = None) -> Path | None:
    """The newest completed runner run of ``cohort`` (a name under the reports folder) that holds everything
    ``step`` builds on; interactive runs are never picked."""
    root = (reports or paths.reports_dir()) / cohort
    found = []
    for m in root.glob("*/manifest.json"):
        try:
            manifest = load_manifest(m.parent)
        except (OSError, ValueError):  # a manifest being written or broken: not a candidate
            continue
        if manifest.get("mode") == "interactive" or manifest.get("status") != "completed":
            continue
        if all(step_status(manifest, s) == "completed" for s in UPSTREAM_NEEDS[step]):
            found.append((manifest.get("created_utc", ""), m.parent.name, m.parent))
    return max(found)[2].resolve() if found else None


# ------------------------------------------------------------------------------------------ executing
def scrub_text(text: str, extra: Mapping[str, str] | None = None) -> str:
    """Replace absolute local paths in ``text`` by placeholders so shared reports leak no local paths."""
    subs: dict[str, str] = {}
    for label, root in (("<reports>", paths.reports_dir()), ("<shared>", paths.shared_data_dir()),
                        ("<data>", paths.data_dir()), ("<venv>", Path(sys.prefix)),
                        ("<python>", Path(sys.base_prefix)), (".", paths.project_root()),
                        ("~", Path.home())):
        s = str(root)
        if len(s) > 1:
            subs[s] = label
            real = str(Path(s).resolve())
            if real != s and len(real) > 1:
                subs[real] = label
    subs.update(extra or {})
    for src in sorted(subs, key=len, reverse=True):
        text = text.replace(src, subs[src])
    return text


def read_table(run_dir: Path, name: str, folder: str = "tables", dtype: Mapping[str, Any] | None = None
               ) -> pd.DataFrame | None:
    """A table of a run (``<folder>/<name>``: parquet, else CSV read with ``dtype``), or None when there is none."""
    parquet, csv = Path(run_dir) / folder / f"{name}.parquet", Path(run_dir) / folder / f"{name}.csv"
    if parquet.exists():
        return pd.read_parquet(parquet)
    if csv.exists():
        return pd.read_csv(csv, dtype=dict(dtype) if dtype else None)
    return None




#: steps whose models a reference run must hold
REFERENCE_STEPS = ("02_signature", "03_classify", "04_stratify")


class ValidationError(RuntimeError):
    """A validation run cannot use its reference run; the message says what is wrong and the fix."""


# ----------------------------------------------------------------------------------------- reference runs
def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hash): a run's state, to show it is unchanged."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): provenance.sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def model_hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of every file under a run's ``models/`` (``models/...`` path -> hash), sorted; unfinished
    ``.part`` files left out."""
    return {f"models/{rel}": h for rel, h in tree_hashes(Path(run_dir) / "models").items() if not rel.endswith(".part")}


@dataclass
class Reference:
    """A completed training run, read-only: its folder, manifest, frozen config and model hashes."""

    run_dir: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    models: dict[str, str]
    notes: list[str] = field(default_factory=list)
    _kinds: dict[str, str] | None = field(default=None, repr=False)   # model file -> record kind, learnt once

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def cohort(self) -> str:
        return self.manifest["cohort"]

    def metrics(self, step: str) -> dict[str, Any]:
        return m_step(self.run_dir, step)

    def table(self, name: str) -> pd.DataFrame | None:
        return read_table(self.run_dir, name)

    def feature_tables(self) -> dict[str, pd.DataFrame]:
        return read_feature_tables(self.run_dir)

    def load(self, rel: str) -> records.ModelRecord:
        """A model record of the reference run, after checking its hash against the recorded one."""
        path = self.run_dir / rel
        if not path.exists():
            raise ValidationError(f"reference run {self.run_id}: {rel} is missing; the reference run's models must "
                                  "be complete: rerun its training cohort")
        if rel in self.models and provenance.sha256_file(path) != self.models[rel]:
            raise ValidationError(f"reference run {self.run_id}: {rel} changed after it was checked "
                                  f"(sha256 {self.models[rel][:12]}); a locked model must not change")
        return records.load(path)

    def models_of(self, kind: str) -> list[tuple[str, records.ModelRecord]]:
        """Every model record of ``kind`` in the reference run, as (relative path, record), sorted by path.

        Each call loads its records afresh (hash checked); the kind of every file is learnt once, so a
        later call does not load the files of other kinds again."""
        if self._kinds is None:
            self._kinds = {}
            for rel in sorted(k for k in self.models if k.startswith("models/") and k.endswith(".joblib")
                              and "/" not in k[len("models/"):]):
                self._kinds[rel] = self.load(rel).kind
        return [(rel, self.load(rel)) for rel, k in self._kinds.items() if k == kind]


def load_reference(run: str | Path, reports: Path | None = None) -> Reference:
    """Open a reference run and check it: completed training steps, models present and unmodified.

    Refuses (:class:`ValidationError`) a run whose 02-04 did not complete, that has no models, that is
    itself a validation run, or whose model files differ from the sha256 the runner recorded when the
    step wrote them.
    """
    try:
        rd = find_run(str(run), reports=reports)
    except RunError as exc:
        raise ValidationError(f"validate.reference_run: {exc}") from None
    manifest = load_manifest(rd)
    cfg = config_mod.load_yaml(rd / "params.yaml")
    where = f"reference run {manifest['run_id']} ({paths.display_path(rd)})"
    if (cfg.get("validate") or {}).get("reference_run"):
        raise ValidationError(f"{where} is itself a validation run; give the training run it was validated against")
    status = {s["name"]: s["status"] for s in manifest["steps"]}
    bad = [s for s in REFERENCE_STEPS if status.get(s) != "completed"]
    if bad:
        raise ValidationError(f"{where}: steps {bad} are not completed ({', '.join(status.get(s, 'absent') for s in bad)}); "
                              "a reference run must have fitted its filters, classifiers and survival models: "
                              f"resume it (glioma-nb run --cohort {manifest['cohort']} --resume {manifest['run_id']}) "
                              "or run the training cohort with all steps")
    now = model_hashes(rd)
    if not any(k.endswith(".joblib") for k in now):
        raise ValidationError(f"{where} has no models/*.joblib; rerun its training cohort")
    recorded = manifest.get("models_sha256") or {}
    notes = []
    if not recorded:
        notes.append(f"{where} predates model hashing: its {len(now)} model files were hashed now, not when written")
        recorded = now
    missing = sorted(set(recorded) - set(now))
    changed = sorted(k for k in recorded if k in now and now[k] != recorded[k])
    if missing or changed:
        raise ValidationError(f"{where}: model files {'missing: ' + str(missing) if missing else ''}"
                              f"{' changed since the run wrote them: ' + str(changed) if changed else ''}; "
                              "locked models must be exactly those the training run fitted: rerun the training cohort")
    return Reference(rd, manifest, cfg, recorded, notes)


def verify_unchanged(ref: Reference) -> pd.DataFrame:
    """Re-hash the reference run's models: one row per file with the recorded and current sha256."""
    now = model_hashes(ref.run_dir)
    rows = [{"file": k, "sha256_recorded": v, "sha256_now": now.get(k), "unchanged": now.get(k) == v}
            for k, v in ref.models.items()]
    table = pd.DataFrame(rows, columns=["file", "sha256_recorded", "sha256_now", "unchanged"])
    if not table["unchanged"].all():
        raise ValidationError(f"reference run {ref.run_id}: {list(table.loc[~table['unchanged'], 'file'])} changed "
                              "during validation; nothing may write into a reference run")
    return table


def m_step(run_dir: Path, step: str) -> dict[str, Any]:
    """A step's recorded metrics: from the manifest entry, else metrics/<step>.json, else {}."""
    entry = next((e for e in load_manifest(run_dir)["steps"] if e["name"] == step), {"name": step})
    return _entry_metrics(run_dir, entry)


def _entry_metrics(run_dir: Path, entry: Mapping[str, Any]) -> dict[str, Any]:
    if entry.get("metrics"):
        return entry["metrics"]
    f = Path(run_dir) / "metrics" / f"{entry['name']}.json"
    return json.loads(f.read_text()) if f.exists() else {}


# ------------------------------------------------------------------------------------------- one run
def run_summary(run_dir: Path) -> pd.DataFrame:
    """One row per step of a run: status, seconds, and the scalar metrics the step recorded."""
    manifest = load_manifest(Path(run_dir))
    rows = []
    for entry in manifest["steps"]:
        metrics = _entry_metrics(run_dir, entry)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and k != "step"}
        rows.append({"step": entry["name"], "status": entry["status"], "seconds": entry.get("seconds"), **scalars})
    return pd.DataFrame(rows)


def provenance_table(run_dir: Path) -> pd.DataFrame:
    """Key provenance facts of a run as a two-column table (what a reviewer checks first)."""
    m = load_manifest(Path(run_dir))
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


# --------------------------------------------------------------------------------------- comparing runs
#: metrics that measure time, not results: left out when two runs are compared
TIMING_KEYS = frozenset({"seconds_in_notebook", "seconds_per_case", "extraction_seconds", "seconds"})


def _metric_differences(x: Any, y: Any, path: str, out: list[dict[str, Any]]) -> None:
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y), key=str):
            if k in TIMING_KEYS:
                continue
            if k not in x or k not in y:
                out.append({"what": "metric", "name": f"{path}/{k}", "difference": f"only in run {'b' if k not in x else 'a'}"})
            else:
                _metric_differences(x[k], y[k], f"{path}/{k}", out)
    elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)):
            _metric_differences(u, v, f"{path}[{i}]", out)
    elif not (x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y)):  # NaN == NaN
        out.append({"what": "metric", "name": path, "difference": f"{x!r} != {y!r}"})


def compare_runs(a: Path, b: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every difference between two run folders' results: each table under ``tables/`` (same files, equal
    values, exactly: CSV and parquet) and each value in ``metrics/*.json`` (timings, :data:`TIMING_KEYS`,
    left out of both).

    Returns (differences: what, name, difference; counts of what was compared). Two runs of the same
    code, data and seed must give an empty table.
    """
    a, b = Path(a), Path(b)
    diffs: list[dict[str, Any]] = []
    counts = {"tables": 0, "tables_byte_identical": 0, "metrics_files": 0}
    ta = {p.name for p in (a / "tables").glob("*") if p.is_file()}
    tb = {p.name for p in (b / "tables").glob("*") if p.is_file()}
    for name in sorted(ta ^ tb):
        diffs.append({"what": "table", "name": name, "difference": f"only in run {'a' if name in ta else 'b'}"})
    for name in sorted(ta & tb):
        counts["tables"] += 1
        fa, fb = a / "tables" / name, b / "tables" / name
        if fa.read_bytes() == fb.read_bytes():
            counts["tables_byte_identical"] += 1
            continue
        read = pd.read_parquet if name.endswith(".parquet") else pd.read_csv
        ra, rb = read(fa), read(fb)
        timing = [c for c in ra.columns if c in TIMING_KEYS and c in rb.columns]
        try:
            pd.testing.assert_frame_equal(ra.drop(columns=timing), rb.drop(columns=timing), check_exact=True)
        except AssertionError as exc:
            diffs.append({"what": "table", "name": name, "difference": " ".join(str(exc).split())[:300]})
    ma = {p.name for p in (a / "metrics").glob("*.json")}
    mb = {p.name for p in (b / "metrics").glob("*.json")}
    for name in sorted(ma ^ mb):
        diffs.append({"what": "metric", "name": name, "difference": f"only in run {'a' if name in ma else 'b'}"})
    for name in sorted(ma & mb):
        counts["metrics_files"] += 1
        _metric_differences(json.loads((a / "metrics" / name).read_text()),
                            json.loads((b / "metrics" / name).read_text()), name, diffs)
    return pd.DataFrame(diffs, columns=["what", "name", "difference"]), counts
