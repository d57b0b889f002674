"""Runs: immutable run folders, papermill execution of the step notebooks, manifest, resume, studies.

A run folder ``<reports>/<cohort>/<run_id>/`` (its layout: :mod:`glioma_nb.runs`) is created by
:func:`create_run` and executed by :func:`execute`; a notebook opens its step with :func:`open_step`, which
gives the step its section of the frozen configuration (``ctx.params``): parameters are written once, in
``configs/base.yaml`` and the cohort files, and changed with ``--set`` / ``overrides``.
Nothing in an existing run folder is ever overwritten by another run.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from glioma_nb import STEPS, compute, io, paths, plotting, provenance, reporting, runs, step_section, synthetic
from glioma_nb import config as config_mod
from glioma_nb.preprocess import pipeline as pre_pipeline
from glioma_nb.runs import RunError, find_run, load_manifest, read_feature_tables, scrub_text
from glioma_nb.sources import idc
from glioma_nb.validate import overlap as val_overlap
from glioma_nb.validate import reference as val_reference

RUN_SUBDIRS = ("qc", "figures", "tables", "models", "logs", "metrics", "attempts", "masks")
# Caches kept in place when a failed step is resumed: finished masks are not redone, and a model trained
# in the run (notebook 01, segment.train) resumes from its checkpoint, and the node x feature set evaluations of
# 03_classify (cache/03_classify) are read back.
CACHE_SUBDIRS = ("masks/", "models/segment__", "cache/")


def cohort_inputs(cfg: Mapping[str, Any], cohort: io.Cohort | pre_pipeline.RawCohort) -> list[Path]:
    """Every file a run reads: images, labels, clinical table."""
    files = cohort.input_files()
    if cfg["cohort"].get("idc") and cfg["cohort"].get("root"):   # the manifest a downloaded IDC cohort came from
        pinned = paths.resolve_path(cfg["cohort"]["root"]) / "manifest.csv"
        if pinned.exists():
            files.append(pinned)
    for table in (cfg["cohort"]["clinical"].get("file"), (cfg["cohort"].get("timepoints") or {}).get("file")):
        if table:
            files.append(paths.resolve_path(table, base=io.source_root(cfg)))
    return files


def _check_inputs(cfg: Mapping[str, Any], steps: Sequence[str], progress: bool
                  ) -> tuple[io.Cohort | pre_pipeline.RawCohort, io.QCReport]:
    """Check what a run reads: the raw scans of a run that preprocesses them (the BraTS-space cohort is
    00_preprocess's output), else the cohort's files. Raises :class:`CohortError` listing every problem."""
    if cfg["cohort"]["source"] == "raw" and "00_preprocess" in steps:
        cohort_obj, report = pre_pipeline.check_raw(cfg)
    else:
        cohort_obj, report = io.check_cohort(cfg, progress=progress)
    if not report.ok:
        raise io.CohortError(report)
    return cohort_obj, report


def _new_run_dir(base: Path, run_id: str) -> tuple[Path, str]:
    base.mkdir(parents=True, exist_ok=True)
    candidate, n = run_id, 1
    while True:
        try:
            (base / candidate).mkdir()
            return base / candidate, candidate
        except FileExistsError:  # same second, same commit: never reuse a folder
            n += 1
            candidate = f"{run_id}-{n}"


def create_run(cohort: str = "synthetic", overrides: Iterable[str] | Mapping[str, Any] = (),
               steps: Iterable[str] | None = None, mode: str = "runner", progress: bool = True,
               upstream: Path | None = None) -> Path:
    """Resolve and validate the configuration, check the cohort, and create a new run folder.

    With ``upstream`` (an interactive step that builds on an earlier run), the configuration is that run's
    frozen one with ``overrides`` on top, ``cohort`` is the upstream's, and the manifest records the upstream;
    nothing is written into the upstream run. Nothing is written when the configuration or the cohort is
    invalid (:class:`ConfigError`, :class:`CohortError` list every problem).
    """
    explicit = bool(steps)   # steps named by the caller are run as named (no 00_preprocess added)
    if upstream is not None:
        cfg = config_mod.with_overrides(config_mod.load_yaml(upstream / "params.yaml"), overrides)
    else:
        cfg = config_mod.resolve_config(cohort, overrides)
    compute.parse(cfg["compute"]["executor"])   # a bad executor fails here, before anything is written
    ref, locked = None, None
    if cfg["validate"]["reference_run"]:
        ref = runs.load_reference(cfg["validate"]["reference_run"], paths.reports_dir(cfg["run"]["reports_dir"]))
        cfg, locked = val_reference.lock_config(cfg, ref)
        val_reference.check_compatible(cfg, ref)
        steps = list(steps) if steps else list(val_reference.VALIDATION_STEPS)
        refit = [s for s in steps if s in ("03_classify", "04_stratify")]
        if refit:
            raise config_mod.ConfigError(
                f"a validation run applies the models locked in {ref.run_id}; {refit} would refit them on the "
                f"validation cohort: run the steps {list(val_reference.VALIDATION_STEPS)} (the default)")
    raw = cfg["cohort"]["source"] == "raw"
    steps = list(steps) if steps else list(cfg["run"]["steps"])
    if raw and ref is None and not explicit and "00_preprocess" not in steps:
        steps.insert(0, "00_preprocess")   # a raw cohort is preprocessed before anything reads it
    if raw and ref is not None and "00_preprocess" in steps:   # the overlap guard reads the BraTS-space cohort
        raise config_mod.ConfigError(
            f"a validation run of the raw cohort {cfg['cohort']['name']} reads its preprocessed scans: preprocess "
            f"them first (glioma-nb run --cohort {cfg['cohort']['name']} --steps 00_preprocess --set "
            "validate.reference_run=''), then start the validation run")
    serial = io.has_timepoints(cfg["cohort"])
    if serial and ref is None and not explicit and "06_longitudinal" not in steps:
        steps.append("06_longitudinal")   # serial scans: growth and transformation after the other steps
    if "06_longitudinal" in steps and not serial:
        raise config_mod.ConfigError(f"06_longitudinal needs serial scans (cohort.timepoints.file); "
                                     f"{cfg['cohort']['name']} has one scan per patient")
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise config_mod.ConfigError(f"unknown steps {unknown}; known: {list(STEPS)}")
    if "00_preprocess" in steps and not raw:
        raise config_mod.ConfigError("00_preprocess needs a raw cohort (cohort.source: raw, cohort.raw); "
                                     f"{cfg['cohort']['name']} has source {cfg['cohort']['source']!r}")
    synthetic.ensure_cohort_data(cfg, progress=progress)
    cohort_obj, report = _check_inputs(cfg, steps, progress)
    overlap = _overlap(ref, cohort_obj, progress) if ref is not None else None
    git = provenance.git_info()
    run_dir, run_id = _new_run_dir(paths.reports_dir(cfg["run"]["reports_dir"]) / cfg["cohort"]["name"],
                                   provenance.make_run_id(git))
    try:
        for sub in RUN_SUBDIRS:
            (run_dir / sub).mkdir()
        config_mod.dump_yaml(cfg, run_dir / "params.yaml")
        (run_dir / runs.REQUIREMENTS_LOCK).write_text(provenance.requirements_lock(), encoding="utf-8")
        report.case_table.to_csv(run_dir / "qc" / "case_table.csv", index=False)
        if isinstance(cohort_obj, pre_pipeline.RawCohort):   # the series scan, so 00 does not read the headers again
            cohort_obj.save(run_dir / "qc" / pre_pipeline.RAW_SCAN)
        report.to_frame().to_csv(run_dir / "qc" / "problems.csv", index=False)
        manifest = {
            "run_id": run_id, "cohort": cfg["cohort"]["name"], "mode": mode, "status": "created",
            "created_utc": provenance.utc_now().isoformat(timespec="seconds"),
            "git": git, "params_file": "params.yaml", "params_sha256": config_mod.config_hash(cfg),
            "inputs": provenance.hash_inputs(cohort_inputs(cfg, cohort_obj),
                                             known=getattr(cohort_obj, "known_sha256", dict)()),
            "cohort_summary": {"n_cases": len(cohort_obj.cases), "modalities": list(cohort_obj.modalities),
                               "label_scheme": getattr(cohort_obj, "scheme", None) and cohort_obj.scheme.name,
                               "qc_warnings": len(report.warnings)},
            "environment": provenance.environment(),
            **({"idc": idc.run_record(cfg)} if cfg["cohort"].get("idc") else {}),
            "steps": [{"name": s, "status": "pending"} for s in steps],
            "resumes": [],
        }
        if upstream is not None:
            up = load_manifest(upstream)
            manifest["upstream"] = {
                "run_id": up["run_id"], "cohort": up["cohort"], "run_dir": _run_ref(upstream),
                "status": up["status"], "git": up["git"]["short"], "params_sha256": up["params_sha256"],
                "steps": {e["name"]: e["status"] for e in up["steps"]}}
        if ref is not None:
            table, notes = overlap
            table.to_csv(run_dir / "qc" / "overlap.csv", index=False)
            locked.to_csv(run_dir / "qc" / "locked_settings.csv", index=False)
            manifest["reference"] = {
                "run_id": ref.run_id, "cohort": ref.cohort, "run_dir": paths.display_path(ref.run_dir),
                "git": ref.manifest["git"]["short"], "models_sha256": ref.models, "notes": ref.notes,
                "overlap_cases": sorted(set(table["validation_case"])), "overlap_notes": notes}
        provenance.write_json_atomic(run_dir / "manifest.json", manifest)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing half-written
        raise
    return run_dir


def _overlap(ref: Any, cohort_obj: io.Cohort, progress: bool) -> tuple[pd.DataFrame, list[str]]:
    """The patient-overlap guard of a validation run, with a loud warning when it finds anyone."""
    try:
        train, _ = io.check_cohort(ref.config, progress=False, images=False)
    except (io.CohortError, OSError) as exc:
        table = pd.DataFrame(columns=["validation_case", "training_case", "patient_id", "by", "image_correlation"])
        return table, [f"the reference cohort {ref.cohort} cannot be read here ({str(exc).splitlines()[0]}): "
                       "patient overlap NOT checked"]
    table, notes = val_overlap.patient_overlap(train, cohort_obj)
    if len(table):
        print(f"WARNING: {table['validation_case'].nunique()} validation case(s) of {cohort_obj.name} are also in the "
              f"training cohort {ref.cohort} of {ref.run_id} ({', '.join(sorted(set(table['validation_case'])))}); "
              "they are left out of every validation metric (qc/overlap.csv)", file=sys.stderr, flush=True)
    return table, notes


def export_html(notebook: Path, html: Path) -> None:
    """The executed notebook as HTML (nbconvert and nbformat are imported here: a step's kernel never needs
    them, and jsonschema's IRI grammar alone takes a second to import)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb, resources={"metadata": {"name": notebook_title(nb, notebook)}})
    html.write_text(body, encoding="utf-8")


def move_stderr(notebook: Path, log: Path) -> int:
    """Move the executed notebook's stderr (per-case progress bars, library warnings) into ``log``, each block under
    the number of the cell that wrote it: the report keeps what a reader needs, the log what a developer does. An
    error of a failed cell is not stderr and stays. Returns the number of blocks moved."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    moved: dict[int, str] = {}
    n = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        keep = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                moved[i] = moved.get(i, "") + out.get("text", "")
                n += 1
            else:
                keep.append(out)
        cell["outputs"] = keep
    if moved:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            for i, text in moved.items():   # a progress bar redraws with \r: its last state is what it said
                lines = [line.rstrip("\r").split("\r")[-1] for line in text.split("\n")]
                fh.write(f"--- {notebook.name}, cell {i}\n" + "\n".join(line for line in lines if line.strip()) + "\n")
        nbformat.write(nb, notebook)
    return n


def notebook_title(nb: Any, path: Path) -> str:
    """The notebook's own title: its first markdown heading ("03 Classify: histology and molecular subtype"), else
    the file's name; the executed report's ``<title>`` (nbconvert would say "Notebook")."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return Path(path).stem


def _step_params(cfg: Mapping[str, Any], run_dir: Path, step: str) -> dict[str, Any]:
    """What papermill injects into a step notebook: only where the run is. The step's own parameters are
    its section of the run's frozen configuration (``ctx.params``), written once, in the config files."""
    rel = paths.display_path(run_dir)
    return {"run_dir": rel if not rel.startswith("<") else str(run_dir), "cohort": cfg["cohort"]["name"],
            "overrides": [], "upstream": ""}


def _list_files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def _written_since(run_dir: Path, entry: dict[str, Any]) -> list[str]:
    """Files of ``run_dir`` written since the first attempt of ``entry`` (a step) started.

    A killed process records no outputs, so a resumed step finds what its earlier attempts left by
    modification time; the manifest and the ``attempts/`` archive are not the step's.
    """
    starts = []
    for e in [entry, *entry.get("attempts", [])]:
        if e.get("started_epoch") is not None:
            starts.append(float(e["started_epoch"]))
        elif e.get("started_utc"):  # manifests written before started_epoch: second resolution, and
            # the kernel's start-up second is skipped so the run's own set-up files stay in place
            starts.append(datetime.fromisoformat(e["started_utc"]).timestamp() + 1)
    if not starts:
        return []
    t0 = min(starts)
    return sorted(rel for rel in _list_files(run_dir) if rel != "manifest.json" and not rel.startswith("attempts/")
                  and (run_dir / rel).stat().st_mtime >= t0)


def execute(run_dir: Path, progress: bool = True) -> Path:
    """Execute the pending steps of a run folder in order; stop at the first failure.

    The failed step keeps its partially executed notebook (and HTML) and the error goes into the
    manifest; :class:`RunError` is raised. Completed steps are never executed again.
    """
    import papermill as pm

    run_dir = Path(run_dir).resolve()
    manifest = load_manifest(run_dir)
    cfg = config_mod.load_yaml(run_dir / "params.yaml")
    manifest["status"] = "running"
    provenance.write_json_atomic(run_dir / "manifest.json", manifest)
    scrub = bool(cfg["run"]["scrub_paths"])
    extra = {str(io.cohort_root(cfg)): f"<cohort:{cfg['cohort']['name']}>", str(run_dir): "<run>"}
    for entry in manifest["steps"]:
        if entry["status"] == "completed":
            continue
        step = entry["name"]
        template = paths.notebooks_dir() / f"{step}.ipynb"
        out_nb = run_dir / f"{step}.ipynb"
        out_html = run_dir / f"{step}.html"
        before = _list_files(run_dir)
        entry.update(status="running", started_utc=provenance.utc_now().isoformat(timespec="seconds"),
                     started_epoch=time.time(), notebook=out_nb.name)
        entry.pop("error", None)
        provenance.write_json_atomic(run_dir / "manifest.json", manifest)
        if progress:
            print(f"[{manifest['cohort']}/{manifest['run_id']}] {step} ...", flush=True)
        t0 = time.perf_counter()
        error: str | None = None
        try:
            pm.execute_notebook(str(template), str(out_nb), parameters=_step_params(cfg, run_dir, step),
                                kernel_name=cfg["run"]["kernel"], cwd=str(paths.project_root()),
                                progress_bar=False, execution_timeout=cfg["run"]["cell_timeout_s"],
                                # the notebook's stderr (its per-case progress bars, warnings) goes on to the terminal
                                stderr_file=sys.stderr if progress else None)
        except KeyboardInterrupt:
            error = "interrupted by the user"
        except Exception as exc:  # papermill wraps the notebook's exception
            error = _short_error(exc)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        entry["finished_utc"] = provenance.utc_now().isoformat(timespec="seconds")
        if out_nb.exists():
            if scrub:
                out_nb.write_text(scrub_text(out_nb.read_text(encoding="utf-8"), extra), encoding="utf-8")
            move_stderr(out_nb, run_dir / "logs" / f"{step}.stderr.log")
            if cfg["run"]["export_html"]:
                try:
                    export_html(out_nb, out_html)
                    entry["html"] = out_html.name
                except Exception as exc:  # an HTML failure must not hide the step's own status
                    entry["html_error"] = _short_error(exc)
        metrics_file = run_dir / "metrics" / f"{step}.json"
        if metrics_file.exists():
            entry["metrics"] = json.loads(metrics_file.read_text())
        entry["outputs"] = sorted(_list_files(run_dir) - before - {"manifest.json"})
        models = [f for f in entry["outputs"] if f.startswith("models/") and not f.endswith(".part")]
        if models and error is None:  # a later validation run checks the locked models against these
            manifest.setdefault("models_sha256", {}).update({f: provenance.sha256_file(run_dir / f) for f in models})
        if progress:
            print(f"[{manifest['cohort']}/{manifest['run_id']}] {step} {'completed' if error is None else 'FAILED'} in "
                  f"{entry['seconds']:.0f} s", flush=True)
        if error is None:
            entry["status"] = "completed"
            provenance.write_json_atomic(run_dir / "manifest.json", manifest)
            continue
        entry.update(status="failed", error=error)
        manifest["status"] = "failed"
        provenance.write_json_atomic(run_dir / "manifest.json", manifest)
        raise RunError(f"run {manifest['run_id']} step {step} failed: {error}\n"
                       f"  the partial notebook is {paths.display_path(out_nb)}; fix the cause and resume with\n"
                       f"  glioma-nb run --cohort {manifest['cohort']} --resume {manifest['run_id']}")
    manifest["status"] = "completed"
    manifest["finished_utc"] = provenance.utc_now().isoformat(timespec="seconds")
    manifest["seconds_total"] = round(sum(s.get("seconds", 0) for s in manifest["steps"]), 2)
    provenance.write_json_atomic(run_dir / "manifest.json", manifest)
    return run_dir


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # papermill's message ends with the notebook exception: keep the informative tail
    tail = "\n".join(lines[-6:]) if lines else type(exc).__name__
    return scrub_text(f"{type(exc).__name__}: {tail}")[:4000]


def resume(run_dir: Path, progress: bool = True) -> Path:
    """Continue a failed or interrupted run from its first unfinished step.

    Inputs must be unchanged (sha256); the failed attempt's notebook is kept under ``attempts/``.
    """
    run_dir = Path(run_dir).resolve()
    manifest = load_manifest(run_dir)
    if manifest["status"] == "completed":
        raise RunError(f"run {manifest['run_id']} is already completed; start a new run instead")
    cfg = config_mod.load_yaml(run_dir / "params.yaml")
    cohort_obj, report = _check_inputs(cfg, [e["name"] for e in manifest["steps"]], progress)
    now = provenance.hash_inputs(cohort_inputs(cfg, cohort_obj))
    if now != manifest["inputs"]:
        changed = sorted(k for k in set(now) | set(manifest["inputs"]) if now.get(k) != manifest["inputs"].get(k))
        raise RunError(f"run {manifest['run_id']}: inputs changed since the run started ({changed[:5]}...); "
                       "a resumed run must read the same data: start a new run")
    git = provenance.git_info()
    if git["commit"] != manifest["git"]["commit"] or git["dirty"]:
        print(f"warning: resuming run {manifest['run_id']} with code {git['short']}{'-dirty' if git['dirty'] else ''}"
              f" (run started at {manifest['git']['short']}); recorded in manifest.resumes", file=sys.stderr)
    for entry in manifest["steps"]:
        if entry["status"] in ("failed", "running"):
            n = len(list((run_dir / "attempts").glob(f"{entry['name']}.attempt*.ipynb"))) + 1
            for ext in ("ipynb", "html"):
                src = run_dir / f"{entry['name']}.{ext}"
                if src.exists():
                    src.replace(run_dir / "attempts" / f"{entry['name']}.attempt{n}.{ext}")
            # what the failed attempt wrote moves aside too, so the retry starts clean and nothing is lost;
            # a killed process recorded no outputs: those are the files written since the step started
            outputs = sorted(set(entry.get("outputs") or []) | set(_written_since(run_dir, entry)))
            entry["outputs"] = outputs
            for rel in outputs:
                src = run_dir / rel
                if src.exists() and src.parent != run_dir and not rel.startswith(CACHE_SUBDIRS):
                    dest = run_dir / "attempts" / f"{entry['name']}.attempt{n}" / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src.replace(dest)
            entry.setdefault("attempts", []).append(
                {k: entry.get(k) for k in ("error", "seconds", "started_utc", "started_epoch", "outputs")})
            entry["status"] = "pending"
    manifest["resumes"].append({"at_utc": provenance.utc_now().isoformat(timespec="seconds"), "git": git})
    provenance.write_json_atomic(run_dir / "manifest.json", manifest)
    return execute(run_dir, progress=progress)


resume_run = resume  # run_study's ``resume`` argument (a study folder) shadows the function inside it


def run(cohort: str = "synthetic", overrides: Iterable[str] = (), steps: Iterable[str] | None = None,
        progress: bool = True) -> Path:
    """Create a run folder for ``cohort`` and execute its notebooks (what ``make run-all`` calls)."""
    run_dir = create_run(cohort, overrides, steps, progress=progress)
    if progress:
        print(f"run folder: {paths.display_path(run_dir)}", flush=True)
    return execute(run_dir, progress=progress)


# ----------------------------------------------------------------------------------- inside notebooks
@dataclass
class StepContext:
    """What a notebook step works with: its run folder, frozen config, cohort and QC tables (the
    :class:`glioma_nb.results.StepContext` protocol that every step is typed against).

    Open it with :func:`open_step`; finish with :meth:`finish`, which writes ``metrics/<step>.json``.
    """

    step: str
    run_dir: Path
    config: dict[str, Any]
    cohort: io.Cohort   # 00_preprocess: the raw cohort (glioma_nb.preprocess.pipeline.RawCohort)
    case_table: pd.DataFrame
    problems: pd.DataFrame
    params: dict[str, Any]
    upstream: Path | None = None
    read_only: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    not_available: list[dict[str, str]] = field(default_factory=list)
    _t0: float = field(default_factory=time.perf_counter)
    _scratch: Path | None = None
    _executor: compute.Executor | None = None

    @property
    def seed(self) -> int:
        """The run's seed (``project.seed``): every random choice of a step starts from it."""
        return int(self.config["project"]["seed"])

    @property
    def executor(self) -> compute.Executor:
        """Where this step's per-case work runs (``compute.executor``; a Dask cluster is started on first use and
        closed by :meth:`finish`)."""
        if self._executor is None:
            self._executor = compute.Executor.from_config(self.config)
        return self._executor

    @property
    def clinical(self) -> pd.DataFrame:
        return self.cohort.clinical

    @property
    def inputs(self) -> Path:
        """Where this step reads what earlier steps wrote (masks, feature tables, scores): the upstream run of
        an interactive step, else the run itself."""
        return self.upstream or self.run_dir

    @property
    def output_dir(self) -> Path:
        """Where this step's outputs go: the run folder, or a scratch folder when the run is read-only."""
        if not self.read_only:
            return self.run_dir
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"glioma-nb-{self.run_dir.name}-{self.step}-"))
        return self._scratch

    def path(self, kind: str, name: str) -> Path:
        """Path of an output ``name`` in the run's ``kind`` folder (figures, tables, models, logs); in a
        read-only run, in a scratch folder outside it."""
        if kind not in RUN_SUBDIRS:
            raise ValueError(f"kind must be one of {RUN_SUBDIRS}")
        out = self.output_dir / kind / name
        out.parent.mkdir(exist_ok=True)
        if out.exists():
            raise FileExistsError(f"{paths.display_path(out)} exists; outputs of a run are never overwritten")
        return out

    def save_figure(self, fig: Any, name: str, dpi: int = 300) -> Path:
        """``figures/<step>__<name>.png`` at print resolution and the same figure as vector PDF (for a journal's
        production); returns the PNG's path."""
        out = self.path("figures", f"{self.step}__{name}.png")
        fig.savefig(out, dpi=dpi, bbox_inches="tight")
        fig.savefig(out.with_suffix(".pdf"), bbox_inches="tight", metadata={"Creator": "glioma-nb", "Producer": None,
                                                                            "CreationDate": None})
        return out

    def save_table(self, df: pd.DataFrame, name: str, index: bool = False) -> Path:
        """Save a table as CSV and parquet under ``tables/``; returns the CSV path."""
        out = self.path("tables", f"{name}.csv")
        df.to_csv(out, index=index)
        try:
            df.to_parquet(self.path("tables", f"{name}.parquet"), index=index)
        except Exception as exc:  # e.g. mixed-type object columns: the CSV stays the record
            print(f"note: {name}.parquet not written ({type(exc).__name__}: {exc}); the CSV is complete")
        return out

    def save_feature_tables(self, tables: Mapping[str, pd.DataFrame]) -> None:
        """Save feature tables (index case_id) as ``tables/features_<source>`` for the later steps."""
        for name, table in tables.items():
            self.save_table(table.rename_axis("case_id").reset_index(), f"features_{name}")

    def feature_tables(self) -> dict[str, pd.DataFrame]:
        """The feature tables 02_signature saved (``tables/features_<source>`` of :attr:`inputs`), by source."""
        return read_feature_tables(self.inputs)

    def record(self, **metrics: Any) -> None:
        """Record headline metrics of this step (written to metrics/<step>.json and the manifest)."""
        self.metrics.update(metrics)

    def mark_not_available(self, what: str, where: str) -> str:
        """Note an analysis whose module is not implemented yet; returns the sentence to display."""
        self.not_available.append({"what": what, "where": where})
        return f"Not yet available: {what} ({where}). No numbers are shown for it."

    def finish(self) -> dict[str, Any]:
        if self._executor is not None:
            self._executor.close()
        out = {"step": self.step, "seconds_in_notebook": round(time.perf_counter() - self._t0, 2),
               "params": self.params, **self.metrics}
        if self.not_available:
            out["not_available"] = self.not_available
        if self.read_only:
            print(f"{paths.display_path(self.run_dir)} is read-only here: its record is unchanged; what these cells "
                  f"saved is in the scratch folder {self.output_dir}")
            return out
        provenance.write_json_atomic(self.run_dir / "metrics" / f"{self.step}.json", out)
        manifest = load_manifest(self.run_dir)
        if manifest.get("mode") == "interactive":
            for entry in manifest["steps"]:
                if entry["name"] == self.step:
                    entry.update(status="completed", metrics=out)
            provenance.write_json_atomic(self.run_dir / "manifest.json", manifest)
        return out

    def __repr__(self) -> str:
        extra = f", upstream={paths.display_path(self.upstream)!r}" if self.upstream else ""
        extra += ", read_only=True" if self.read_only else ""
        return (f"StepContext(step={self.step!r}, run={paths.display_path(self.run_dir)!r}, "
                f"cohort={self.cohort.name!r}, cases={len(self.cohort.cases)}{extra})")


class _SeedTorchOnImport(importlib.abc.MetaPathFinder):
    """Seeds torch the moment a step first imports it: importing torch only to seed it costs a step that never
    uses it (03, 04, 05) 1.6 s of its kernel's start."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def find_spec(self, name, path, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:  # pragma: no cover - torch is a dependency
            return spec
        exec_module, seed = spec.loader.exec_module, self.seed

        def exec_and_seed(module):
            exec_module(module)
            module.manual_seed(seed)

        spec.loader.exec_module = exec_and_seed
        return spec


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch: torch now when it is imported, else as soon as it is."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _SeedTorchOnImport)]
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
    else:
        sys.meta_path.insert(0, _SeedTorchOnImport(seed))


def open_step(step: str, run_dir: str = "", cohort: str = "synthetic", overrides: Iterable[str] = (),
              params: Mapping[str, Any] | None = None, upstream: str = "") -> StepContext:
    """Open the context of a notebook step.

    Under the runner, ``run_dir`` names the run folder being executed. In JupyterLab (``run_dir == ""``) a
    new *interactive* run folder is created for the step. A step that builds on earlier ones (02-05) reads
    their outputs from an *upstream* run: ``upstream`` (a run folder or id), or by default the latest
    completed run of ``cohort``; ``upstream="none"`` builds on nothing. The new run takes the upstream's
    frozen configuration with ``overrides`` (and ``params``, values for the step's own section) on top,
    records the upstream in its manifest and never writes into it.

    ``run_dir`` naming a run whose step is not being executed (an executed report opened in JupyterLab)
    gives a read-only context: cells read that run's tables; what they save goes to a scratch folder.
    The step's parameters are its section of the run's frozen configuration: ``ctx.params``.
    """
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; known: {list(STEPS)}")
    params = dict(params or {})
    read_only, up = False, None
    if not run_dir:
        up = _find_upstream(step, cohort, upstream)
        over = {step_section(step): params} if params else {}
        merged: dict[str, Any] = {}
        for item in overrides:
            merged = config_mod.deep_merge(merged, config_mod.parse_override(item))
        rd = create_run(cohort, config_mod.deep_merge(merged, over), steps=[step], mode="interactive",
                        progress=False, upstream=up)
        if up is not None:
            up_m = load_manifest(up)
            how = "named by upstream" if upstream else f"the latest completed run of {up_m['cohort']}"
            print(f"upstream: {paths.display_path(up)} ({how}; git {up_m['git']['short']}, created "
                  f"{up_m['created_utc']}): {step} reads its earlier steps' outputs there, read-only\n"
                  f"this interactive run: {paths.display_path(rd)}", flush=True)
        else:
            print(f"this interactive run: {paths.display_path(rd)} (no upstream run)", flush=True)
    else:
        rd = _locate_run(run_dir)
        manifest = load_manifest(rd)
        up_entry = manifest.get("upstream")
        try:
            up = runs.find_run(up_entry["run_dir"]) if up_entry else None
        except RunError:
            print(f"note: the upstream run {up_entry['run_dir']} of this interactive run is not here (moved or "
                  "deleted); only this run's own tables can be read", flush=True)
            up = None
        status = runs.step_status(manifest, step)
        read_only = not (status == "running" or (manifest.get("mode") == "interactive" and status == "pending"))
        if read_only:
            print(f"{paths.display_path(rd)}: step {step} is {status or 'not in this run'}, so this run is read-only "
                  "here: cells read its tables, and what they save goes to a scratch folder, never into it", flush=True)
    cfg = config_mod.load_yaml(rd / "params.yaml")
    if step == "00_preprocess" and (rd / "qc" / pre_pipeline.RAW_SCAN).exists():   # as the run's creation found it
        cohort_obj = pre_pipeline.RawCohort.load(rd / "qc" / pre_pipeline.RAW_SCAN)
        report = io.QCReport(cfg["cohort"]["name"])
    elif step == "00_preprocess":   # the raw cohort; every later step reads the BraTS-space one it writes
        cohort_obj, report = pre_pipeline.check_raw(cfg)
    else:
        cohort_obj, report = io.check_cohort(cfg, progress=False, images=False)
    if not report.ok:
        raise io.CohortError(report)
    case_table = runs.read_table(rd, "case_table", "qc")
    problems = runs.read_table(rd, "problems", "qc")
    seed_everything(int(cfg["project"]["seed"]))
    pd.set_option("display.max_columns", 60)  # reports show whole case tables, not "..." columns
    plotting.use_style()
    show_tables_as_read()
    case_table.attrs["table"], problems.attrs["table"] = "case_table", "problems"
    return StepContext(step, rd, cfg, cohort_obj, case_table, problems, dict(cfg.get(step_section(step)) or {}),
                       upstream=up, read_only=read_only)


def show_tables_as_read() -> None:
    """In a notebook kernel: every data frame a cell displays has its caption and columns named in words
    (:func:`glioma_nb.reporting.table_html`); the tables saved keep their names."""
    ip = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    if ip is not None and hasattr(ip, "display_formatter"):
        ip.display_formatter.formatters["text/html"].for_type(pd.DataFrame, reporting.table_html)


def _locate_run(run_dir: str) -> Path:
    """The run folder a notebook names; an executed report names its own run by a placeholder (``<run>``,
    ``<reports>/...``) and is opened from inside that folder."""
    if run_dir == "<run>":
        rd = Path.cwd()
    elif run_dir.startswith("<reports>/"):
        rd = paths.reports_dir() / run_dir.split("/", 1)[1]
    else:
        rd = paths.resolve_path(run_dir)
    if not (rd / "params.yaml").exists() or not (rd / "manifest.json").exists():
        raise RunError(f"{run_dir} is not a run folder (no params.yaml and manifest.json in {rd}); an executed "
                       "report finds its run when opened from the run folder itself")
    return rd


def _find_upstream(step: str, cohort: str, upstream: str) -> Path | None:
    """The run an interactive ``step`` builds on (see :func:`open_step`), checked to hold what it needs."""
    if upstream == "none" or not runs.UPSTREAM_NEEDS[step]:
        return None
    if upstream:
        up = runs.find_run(upstream)
        missing = runs.missing_upstream(up, step)
        if missing:
            raise RunError(f"upstream run {paths.display_path(up)} has not completed {missing}, which {step} reads; "
                           "name another run, or resume that one (glioma-nb run --resume)")
        return up
    cfg = config_mod.resolve_config(cohort)
    name, reports = cfg["cohort"]["name"], paths.reports_dir(cfg["run"]["reports_dir"])
    up = runs.latest_completed_run(name, step, reports)
    if up is None:
        raise RunError(f"{step} builds on {list(runs.UPSTREAM_NEEDS[step])}, and there is no completed run of cohort "
                       f"{name!r} under {paths.display_path(reports)}: run `make run-all COHORT={name}` first, set "
                       "upstream to a run folder or id, or upstream = \"none\" to start from nothing")
    return up


# ---------------------------------------------------------------------------------------------- studies
def load_study(study: str | None = None, cohorts: Sequence[str] | None = None) -> dict[str, Any]:
    """A study: one training cohort (or an existing training run) and validation cohorts.

    ``study`` names ``configs/studies/<name>.yaml`` (or is a YAML path) with keys ``description``,
    ``training: {cohort, overrides}`` or ``training: {run: <run folder or id>}``, ``validation: [{cohort,
    overrides}, ...]`` and ``overrides`` (applied to every run). ``cohorts`` is the short form: the first
    is the training cohort, the others are validated against it.
    """
    if study:
        path = paths.resolve_path(study) if study.endswith((".yaml", ".yml")) else \
            paths.configs_dir() / "studies" / f"{study}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in (paths.configs_dir() / "studies").glob("*.yaml"))
            raise config_mod.ConfigError(f"unknown study {study!r}: {paths.display_path(path)} does not exist; "
                                         f"available: {', '.join(known)}")
        spec = config_mod.load_yaml(path)
        spec.setdefault("name", path.stem)
    elif cohorts:
        spec = {"name": "-".join(cohorts), "training": {"cohort": cohorts[0]},
                "validation": [{"cohort": c} for c in cohorts[1:]]}
    else:
        raise config_mod.ConfigError("a study needs --study NAME or --cohorts TRAINING [VALIDATION ...]")
    unknown = set(spec) - {"name", "description", "training", "validation", "overrides"}
    train = spec.get("training") or {}
    if unknown or not (train.get("cohort") or train.get("run")):
        raise config_mod.ConfigError(f"study {spec.get('name')}: needs training.cohort (or training.run) and a "
                                     f"validation list; unknown keys {sorted(unknown)}")
    for v in spec.get("validation") or []:
        if not v.get("cohort"):
            raise config_mod.ConfigError(f"study {spec['name']}: every validation entry needs a cohort, got {v}")
    return spec


def _rel_run(run_dir: Path) -> str:
    return str(Path(run_dir).resolve().relative_to(paths.reports_dir().resolve()))


def _run_ref(run_dir: Path) -> str:
    """How a manifest names another run: ``<cohort>/<run_id>`` under the reports folder, else its path."""
    try:
        return _rel_run(run_dir)
    except ValueError:
        return paths.display_path(run_dir)


def run_study(study: str | None = None, cohorts: Sequence[str] | None = None, overrides: Iterable[str] = (),
              resume: str | None = None, progress: bool = True) -> Path:
    """Run a training cohort and its validation cohorts end to end, then the study summary notebook.

    The study folder ``<reports>/studies/<name>/<run_id>/`` holds ``study.json`` (which run folder
    plays which role), ``study_summary.ipynb`` / ``.html`` and ``tables/study_summary.csv``. Each
    cohort gets its own run folder as usual; a validation run names the training run as its
    ``validate.reference_run``. ``resume`` (a study folder) resumes a failed run and goes on.
    """
    if resume:
        sdir = paths.resolve_path(resume)
        if not (sdir / "study.json").exists():
            raise RunError(f"{resume} is not a study folder (no study.json)")
        spec = json.loads((sdir / "study.json").read_text())
    else:
        spec = load_study(study, cohorts)
        git = provenance.git_info()
        sdir, sid = _new_run_dir(paths.reports_dir() / "studies" / spec["name"], provenance.make_run_id(git))
        for sub in ("tables", "figures"):
            (sdir / sub).mkdir()
        spec = {**spec, "study_id": sid, "git": git, "status": "running",
                "created_utc": provenance.utc_now().isoformat(timespec="seconds"),
                "overrides": list(spec.get("overrides") or []) + list(overrides)}
        provenance.write_json_atomic(sdir / "study.json", spec)

    def save() -> None:
        provenance.write_json_atomic(sdir / "study.json", spec)

    def run_one(entry: dict[str, Any], extra: list[str]) -> Path:
        over = list(spec["overrides"]) + list(entry.get("overrides") or []) + extra
        if entry.get("run"):
            rd = paths.reports_dir() / entry["run"]
            if load_manifest(rd)["status"] != "completed":
                rd = resume_run(rd, progress=progress)
        else:
            rd = create_run(entry["cohort"], over, progress=progress)
            entry.update(run=_rel_run(rd), run_id=rd.name)
            save()
            if progress:
                print(f"[study {spec['name']}] {entry['cohort']}: {paths.display_path(rd)}", flush=True)
            execute(rd, progress=progress)
        return rd

    train = spec["training"]
    if train.get("run") and not train.get("run_id"):  # an existing training run named in the study file
        rd = find_run(train["run"])
        train.update(run=_rel_run(rd), run_id=rd.name, cohort=load_manifest(rd)["cohort"])
        save()
    try:
        train_dir = run_one(train, [])
        for v in spec.get("validation") or []:
            run_one(v, [f"validate.reference_run={train_dir}"])
    except BaseException:
        spec["status"] = "failed"
        save()
        raise
    nb = sdir / "study_summary.ipynb"
    if nb.exists():  # a resumed study: the earlier summary is kept aside, never overwritten
        n = len(list(sdir.glob("study_summary.attempt*.ipynb"))) + 1
        nb.replace(sdir / f"study_summary.attempt{n}.ipynb")
    import papermill as pm

    pm.execute_notebook(str(paths.notebooks_dir() / "study_summary.ipynb"), str(nb),
                        parameters={"study_dir": str(sdir)}, cwd=str(paths.project_root()), progress_bar=False,
                        kernel_name="python3")
    nb.write_text(scrub_text(nb.read_text(encoding="utf-8"), {str(sdir): "<study>"}), encoding="utf-8")
    export_html(nb, sdir / "study_summary.html")
    spec["status"] = "completed"
    spec["finished_utc"] = provenance.utc_now().isoformat(timespec="seconds")
    save()
    return sdir
