"""``glioma-nb publish``: a run or a study folder as a self-contained, citable supplement, packaged as an RO-Crate
(``ro-crate-metadata.json``, JSON-LD, written by the ``rocrate`` library) in one zip.

What goes in: the executed notebooks (.ipynb and .html), tables as CSV, figures as PNG (300 dpi) and PDF, the frozen
``params.yaml``, ``manifest.json`` (inputs' sha256, environment, steps), ``requirements.lock``, each analysis's
participant flow (``flow.csv`` and its figure), the CLEAR and TRIPOD+AI checklists filled from the run, the model
cards of the segmentation model, and an ``index.html`` a reader opens first. Optional: the locked model records
(``include_models``) and the masks (``include_masks``). Never: images, caches, attempts, logs, training checkpoints.

Every text file is scrubbed of local paths and the host name (:func:`glioma_nb.runs.scrub_text`), then every
file is checked: a supplement that still names a local path is refused, as is an existing output (nothing is
overwritten), and nothing half-written is left (built in a temporary folder, moved into place when complete).
"""
from __future__ import annotations

import html
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from glioma_nb import config as config_mod
from glioma_nb import flow, paths, plotting, provenance, reporting, runs
from glioma_nb.publish import checklists

STEP_TITLES = {"00_preprocess": "00 Preprocess: raw scans to BraTS space", "01_segment": "01 Segment",
               "02_signature": "02 Image signature", "03_classify": "03 Classify", "04_stratify": "04 Stratify",
               "05_validate": "05 Validate", "06_longitudinal": "06 Longitudinal: growth and transformation"}
TEXT_SUFFIXES = {".ipynb", ".html", ".csv", ".json", ".yaml", ".yml", ".md", ".lock", ".txt", ".svg"}
MODEL_CARDS = Path(__file__).resolve().parent.parent / "segment" / "models"


class PublishError(RuntimeError):
    """A supplement that cannot be made: the message names the run or file and the fix."""


@dataclass
class Part:
    """One run of the supplement: its folder, its place in the supplement and its role in a study."""

    run_dir: Path
    prefix: str
    role: str
    facts: checklists.Facts = field(init=False)

    def __post_init__(self) -> None:
        self.facts = checklists.Facts(self.run_dir, self.prefix, runs.load_manifest(self.run_dir),
                                      config_mod.load_yaml(self.run_dir / "params.yaml"))


def _select(run_dir: Path, include_masks: bool, include_models: bool) -> list[Path]:
    """The files of a run that go into its supplement, relative to the run folder."""
    pats = ["*.ipynb", "*.html", "params.yaml", "manifest.json", runs.REQUIREMENTS_LOCK, "tables/*.csv",
            "figures/*.png", "figures/*.pdf", "metrics/*.json", "qc/*.csv", "logs/radiomics_settings.yaml"]
    if include_models:
        pats.append("models/*.joblib")
    if include_masks:
        pats += ["masks/*.nii.gz", "masks/*.json", "masks/*_seg.dcm"]
    files = {p.relative_to(run_dir) for pat in pats for p in run_dir.glob(pat) if p.is_file()}
    return sorted(files)


def _sensitive() -> dict[str, str]:
    """Strings that must not appear in a supplement: local roots and the host name."""
    out = {}
    for label, root in (("<reports>", paths.reports_dir()), ("<shared>", paths.shared_data_dir()),
                        ("<data>", paths.data_dir()), ("<project>", paths.project_root()), ("~", Path.home())):
        for s in {str(root), str(Path(root).resolve())}:
            if len(s) > 1:
                out[s] = label
    host = platform.node()
    if host_is_identifying(host):
        out[host] = "<host>"
    return out


def host_is_identifying(host: str) -> bool:
    """A host name worth scrubbing: one that names a machine (``gpu-node-17``, ``lab.example.org``, a long name),
    not a short word that ordinary text contains (``vm``, ``node``, ``box``)."""
    return bool(host) and (len(host) >= 8 or any(c in host for c in ".-_") or any(c.isdigit() for c in host))


def local_paths(params: Any, label: str = "<local>") -> dict[str, str]:
    """Every absolute path named in a run's parameters (the cohort's root, its clinical table, a reference run
    outside the reports folder, ...), mapped to a placeholder: the cohort's root to ``<cohort>``."""
    out: dict[str, str] = {}

    def walk(v: Any, key: str = "") -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, k)
        elif isinstance(v, list):
            for x in v:
                walk(x, key)
        elif isinstance(v, str) and len(v) > 1 and Path(v).is_absolute():
            out[v] = "<cohort>" if key == "root" else label
            real = str(Path(v).resolve())
            out.setdefault(real, out[v])
    walk(params)
    return out


def _scrub(text: str, extra: dict[str, str]) -> str:
    text = runs.scrub_text(text, extra)
    for s, label in sorted(_sensitive().items(), key=lambda kv: len(kv[0]), reverse=True):
        text = text.replace(s, label)
    return text


def _copy(src: Path, dest: Path, extra: dict[str, str]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix in TEXT_SUFFIXES:
        dest.write_text(_scrub(src.read_text(encoding="utf-8", errors="replace"), extra), encoding="utf-8")
    else:
        shutil.copyfile(src, dest)


def leaks(folder: Path, also: Any = ()) -> list[str]:
    """Files under ``folder`` that still name a local path or the host name (text and binary alike); ``also``:
    more strings to look for (the runs' own local paths)."""
    needles = [s.encode() for s in [*_sensitive(), *also]]
    bad = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            hit = next((n.decode() for n in needles if n in data), None)
            if hit:
                bad.append(f"{p.relative_to(folder)} ({hit})")
    return bad


def parts_of(source: Path) -> tuple[list[Part], dict[str, Any] | None]:
    """The runs of a run folder or a study folder (training first), and the study's spec (None for a run)."""
    if (source / "manifest.json").exists():
        m = runs.load_manifest(source)
        return [Part(source, f"runs/{m['cohort']}", "validation" if m.get("reference") else "training")], None
    if (source / "study.json").exists():
        spec = json.loads((source / "study.json").read_text())
        out = []
        for role, entries in (("training", [spec["training"]]), ("validation", spec.get("validation") or [])):
            for e in entries:
                if not e.get("run"):
                    raise PublishError(f"study {source.name}: the {role} cohort {e.get('cohort')} has no run yet; "
                                       "finish the study (glioma-nb study --resume) first")
                rd = paths.reports_dir() / e["run"]
                cohort = runs.load_manifest(rd)["cohort"]
                taken = {p.prefix for p in out}
                out.append(Part(rd, f"runs/{cohort}" if f"runs/{cohort}" not in taken else f"runs/{cohort}-{rd.name}",
                                role))
        return out, spec
    raise PublishError(f"{paths.display_path(source)} is neither a run folder (manifest.json) nor a study folder "
                       "(study.json); name a folder under reports/")


def publish(source: str | Path, out: str | Path, *, include_masks: bool = False, include_models: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Write the supplement of ``source`` (a run or study folder, or a run id) to the zip ``out``; returns a
    summary (files, bytes, seconds, checklist counts)."""
    from rocrate.rocrate import ROCrate

    t0 = time.perf_counter()
    out = Path(out).expanduser().resolve()
    if out.suffix != ".zip":
        raise PublishError(f"--out {out.name}: the supplement is a zip; name it <something>.zip")
    if out.exists():
        raise PublishError(f"{paths.display_path(out)} exists; a supplement is never overwritten: choose another name")
    src = Path(source).expanduser()
    if not src.exists():
        src = runs.find_run(str(source))
    src = src.resolve()
    parts, study = parts_of(src)
    for p in parts:
        status = p.facts.manifest.get("status")
        if status != "completed":
            raise PublishError(f"run {p.run_dir.name} of {p.facts.manifest.get('cohort')} is {status}, not completed: "
                               "resume it (glioma-nb run --resume) before publishing")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".publish-", dir=out.parent) as tmp:
        stage = Path(tmp) / "supplement"
        stage.mkdir()
        flows, lists, cards = [], {k: [] for k in checklists.CHECKLISTS}, set()
        local = {k: v for p in parts for k, v in local_paths(p.facts.params).items()}
        local.update(local_paths(study or {}))       # a study may name its cohorts by YAML path
        for p in parts:
            extra = {**local, str(p.run_dir): "<run>", str(p.run_dir.resolve()): "<run>"}
            for rel in _select(p.run_dir, include_masks, include_models):
                _copy(p.run_dir / rel, stage / p.prefix / rel, extra)
            lock = stage / p.prefix / runs.REQUIREMENTS_LOCK
            if not lock.exists():            # a run made before the environment was recorded with it
                lock.write_text("# publish-time environment: this run predates requirements.lock, so its own "
                                "environment is only\n# what manifest.json's environment names\n"
                                + provenance.requirements_lock(), encoding="utf-8")
            idc_manifest = _idc_manifest(p)
            if idc_manifest is not None:     # the public cohort's series list, as downloaded (sha256 checked)
                _copy(idc_manifest, stage / p.prefix / "idc_manifest.csv", extra)
            fl = flow.combine(*[runs.read_table(p.run_dir, f"flow_{s}") for s in
                                ("01_segment", "03_classify", "04_stratify", "05_validate", "06_longitudinal")])
            fl.to_csv(stage / p.prefix / "flow.csv", index=False)
            with plotting.style():
                fig = plotting.plot_flow(fl, title=f"Participant flow: {p.facts.manifest['cohort']}")
                fig.savefig(stage / p.prefix / "flow.png", dpi=300, bbox_inches="tight")
                fig.savefig(stage / p.prefix / "flow.pdf", bbox_inches="tight",
                            metadata={"Creator": "glioma-nb", "Producer": None, "CreationDate": None})
            plt.close(fig)
            flows.append(fl.assign(run=p.prefix))
            for key, (_, items) in checklists.CHECKLISTS.items():
                lists[key].append(checklists.fill(items, p.facts).assign(run=p.prefix))
            model = p.facts.metrics("01_segment").get("model")
            if model and (MODEL_CARDS / f"{model}.md").exists():
                cards.add(model)
        if study is not None:
            for name in ("study_summary.ipynb", "study_summary.html", "study.json"):
                if (src / name).exists():
                    _copy(src / name, stage / "study" / name, {**local, str(src): "<study>"})
            for f in sorted((src / "tables").glob("*.csv")):
                _copy(f, stage / "study" / "tables" / f.name, {**local, str(src): "<study>"})
        for model in sorted(cards):
            _copy(MODEL_CARDS / f"{model}.md", stage / "model_cards" / f"{model}.md", {})
        filled = {k: pd.concat(v, ignore_index=True) for k, v in lists.items()}
        for key, table in filled.items():
            (stage / f"checklist_{key}.csv").write_text(_scrub(table.to_csv(index=False), local), encoding="utf-8")
        all_flows = pd.concat(flows, ignore_index=True)
        all_flows.to_csv(stage / "flow.csv", index=False)
        (stage / "index.html").write_text(_scrub(index_page(parts, study, filled, all_flows, stage, sorted(cards),
                                                            include_masks, include_models), local), encoding="utf-8")
        bad = leaks(stage, also=[k for k in local if len(k) > 4])
        if bad:
            raise PublishError(f"the supplement would name local paths or the host: {bad[:5]}; nothing was written")
        n_files = sum(1 for f in stage.rglob("*") if f.is_file()) + 1   # + ro-crate-metadata.json
        crate = ROCrate(stage, init=True)
        _describe(crate, parts, study, stage)
        partial = out.with_name(out.name + ".partial")
        try:
            crate.write_zip(str(partial))
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)     # a zip cut short is never left beside the supplement
    counts = {k: t["answered_by"].value_counts().to_dict() for k, t in filled.items()}
    summary = {"out": paths.display_path(out), "runs": [p.prefix for p in parts], "mb": round(out.stat().st_size / 1e6, 2),
               "seconds": round(time.perf_counter() - t0, 1), "checklists": counts, "files": n_files,
               "run_folders_mb": round(sum(_size(p.run_dir) for p in parts) / 1e6, 1)}
    if progress:
        print(json.dumps(summary, indent=1))
    return summary


def _idc_manifest(p: Part) -> Path | None:
    """An IDC cohort's ``manifest.csv`` when it is still the one the run recorded (same sha256), else None."""
    rec = p.facts.manifest.get("idc") or {}
    root = p.facts.params.get("cohort", {}).get("root")
    if not rec.get("sha256") or not root:
        return None
    path = paths.resolve_path(root) / "manifest.csv"
    return path if path.exists() and provenance.sha256_file(path) == rec["sha256"] else None


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


FORMATS = {".ipynb": "application/x-ipynb+json", ".html": "text/html", ".csv": "text/csv", ".json": "application/json",
           ".yaml": "application/yaml", ".png": "image/png", ".pdf": "application/pdf", ".md": "text/markdown",
           ".lock": "text/plain", ".joblib": "application/octet-stream", ".gz": "application/gzip",
           ".dcm": "application/dicom"}


def _describe(crate: Any, parts: list[Part], study: dict[str, Any] | None, stage: Path) -> None:
    """The crate's root dataset, a description and format for every file, the cohorts as cited datasets,
    glioma-nb as the software and each run as a CreateAction (inputs: the cohort; results: the run's files)."""
    first = parts[0].facts
    crate.name = f"glioma-nb supplement: {study['name'] if study else first.manifest['cohort']}"
    crate.description = (first.params.get("project", {}).get("description") or
                         "Glioma MRI: segmentation, image signature, classification, survival stratification"
                         + (" and independent validation" if study else "") + " (glioma-nb).")
    crate.datePublished = time.strftime("%Y-%m-%d", time.gmtime())
    crate.license = "https://spdx.org/licenses/MIT"
    for e in crate.data_entities:
        suffix = "".join(Path(e.id).suffixes[-1:]) if not e.id.endswith(".nii.gz") else ".gz"
        if suffix in FORMATS:
            e["encodingFormat"] = FORMATS[suffix]
        e["name"] = Path(e.id.rstrip("/")).name
    git = first.manifest.get("git", {})
    software = crate.add_jsonld({"@id": "#glioma-nb", "@type": "SoftwareApplication", "name": "glioma-nb",
                                 "softwareVersion": git.get("commit", ""), "description": "git commit"
                                 + (" (uncommitted changes)" if git.get("dirty") else "")})
    for p in parts:
        c = p.facts.params.get("cohort", {})
        cit = c.get("citation") or {}
        doi = (cit.get("doi") or "").split(";")[0].strip()
        cohort_id = f"https://doi.org/{doi}" if doi else f"#cohort-{p.facts.manifest['cohort']}"
        cohort = crate.get(cohort_id) or crate.add_jsonld({"@id": cohort_id, "@type": "Dataset",
                                   "name": cit.get("source") or c.get("description") or p.facts.manifest["cohort"],
                                   "description": c.get("description", ""), "license": cit.get("licence", ""),
                                   "identifier": cit.get("doi", ""), "url": cit.get("url", "")})
        results = [{"@id": e.id} for e in crate.data_entities if e.id.startswith(p.prefix + "/")]
        crate.add_jsonld({"@id": f"#run-{p.run_dir.name}-{p.facts.manifest['cohort']}", "@type": "CreateAction",
                          "name": f"glioma-nb {p.role} run {p.run_dir.name} on {p.facts.manifest['cohort']}",
                          "instrument": {"@id": software.id}, "object": [{"@id": cohort.id}], "result": results,
                          "endTime": p.facts.manifest.get("finished_utc") or p.facts.manifest.get("created_utc")})


# ------------------------------------------------------------------------------------------------ the page
def _table_html(df: pd.DataFrame, links: dict[str, str] | None = None) -> str:
    if df is None or df.empty:
        return "<p><em>none</em></p>"
    rows = []
    for r in df.itertuples(index=False):
        cells = []
        for col, v in zip(df.columns, r):
            text = "" if (isinstance(v, float) and pd.isna(v)) else html.escape(str(v))
            if links and col in links and text:
                text = f'<a href="{html.escape(str(v))}">{text}</a>'
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _ci(v: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    if v is None or pd.isna(v):
        return ""
    s = f"{float(v):.{digits}f}"
    return s + (f" [{float(lo):.{digits}f}, {float(hi):.{digits}f}]" if pd.notna(lo) and pd.notna(hi) else "")


def headline(p: Part) -> pd.DataFrame:
    """A run's headline metrics with 95 % CIs: segmentation (global and lesion-wise Dice, HD95), each node's best
    classifier AUC, the paper's summary accuracies beside the paper's, the best risk model's C-index; a validation
    run's own headline table (training CV beside validation)."""
    f = p.facts
    rows: list[dict[str, Any]] = []
    val = f.table("validation_headline")
    if val is not None and len(val):
        t = reporting.format_headline(val)
        return t.assign(run=p.prefix)
    seg = f.table("segmentation_summary")
    if seg is not None and len(seg):
        for r in seg.itertuples():
            if getattr(r, "metric", "") in ("Dice", "HD95 (mm)") and pd.notna(getattr(r, "mean", None)):
                level = getattr(r, "level", "global")
                rows.append({"metric": f"{'' if level == 'global' else level + ' '}{r.metric} {r.region} (held out)",
                             "estimate [95% CI]": _ci(r.mean, r.ci_low, r.ci_high, 3 if r.metric == "Dice" else 2),
                             "n": int(r.n), "paper": ""})
    res = f.table("classification_results")
    if res is not None and len(res):
        best = res.loc[res.groupby("node", sort=False)["auc"].idxmax()]
        for r in best.itertuples():
            rows.append({"metric": f"AUC {r.node} ({r.feature_set}, nested CV)", "estimate [95% CI]":
                         _ci(r.auc, r.auc_lo, r.auc_hi), "n": int(r.n), "paper": ""})
    acc = f.table("classification_average_accuracy")
    if acc is not None and len(acc):
        for r in acc.itertuples():
            paper = reporting.PAPER_ACCURACY.get(r.kind, {}).get("cross-validation")
            rows.append({"metric": f"mean accuracy, {r.kind} nodes", "estimate [95% CI]": _ci(
                             r.average_accuracy, getattr(r, "average_accuracy_lo", None),
                             getattr(r, "average_accuracy_hi", None)),
                         "n": "", "paper": f"{paper:.3f} (CV)" if paper else ""})
    risk = f.table("risk_models")
    if risk is not None and len(risk) and "c_harrell" in risk:
        risk = risk.dropna(subset=["c_harrell"])
        by = risk.groupby("variant", sort=False) if "variant" in risk else [("", risk)]
        for variant, part in by:
            r = part.loc[part["c_harrell"].idxmax()]
            rows.append({"metric": f"Harrell's C, overall survival, best {variant} set ({r['feature_set']}, CV)".replace(
                         "best  set", "best set"), "estimate [95% CI]": _ci(r["c_harrell"], r.get("c_harrell_low"),
                                                                             r.get("c_harrell_high")),
                         "n": int(r["n"]) if "n" in r else "", "paper": ""})
    return pd.DataFrame(rows, columns=["metric", "estimate [95% CI]", "n", "paper"]).assign(run=p.prefix)


def _cohort_row(p: Part) -> dict[str, Any]:
    c = p.facts.params.get("cohort", {})
    cit = c.get("citation") or {}
    m = p.facts.manifest
    return {"cohort": m["cohort"], "role": p.role, "cases": p.facts.n_cases, "description": c.get("description", ""),
            "source": cit.get("source", ""), "DOI": cit.get("doi", ""), "licence": cit.get("licence", ""),
            "inputs (sha256 in manifest.json)": len(m.get("inputs", {})),
            "IDC manifest": f"{p.prefix}/idc_manifest.csv" if _idc_manifest(p) is not None else ""}


def _command(p: Part) -> str:
    m = p.facts.manifest
    if p.role == "validation" and m.get("reference"):
        return f"make run-all COHORTS=\"{m['reference'].get('cohort')} {m['cohort']}\""
    return f"make run-all COHORT={m['cohort']}"


def index_page(parts: list[Part], study: dict[str, Any] | None, filled: dict[str, pd.DataFrame], flows: pd.DataFrame,
               stage: Path, cards: list[str], include_masks: bool, include_models: bool) -> str:
    """The landing page: the question, cohorts, headline, flow, notebooks, figures, tables, models, checklists and
    how to reproduce; every link is relative and resolves inside the supplement."""
    first = parts[0].facts
    title = f"glioma-nb supplement: {study['name'] if study else first.manifest['cohort']}"
    question = (first.params.get("project", {}).get("description") or (study or {}).get("description") or
                "From glioma MRI to tumour masks, an image signature, histological and molecular classification, "
                "survival stratification" + (" and independent validation" if study else "") + ".")
    s = [f"<h1>{html.escape(title)}</h1>", f"<p class='lead'>{html.escape(str(question))}</p>",
         "<nav>" + " | ".join(f'<a href="#{a}">{b}</a>' for a, b in (
             ("cohorts", "Cohorts"), ("headline", "Headline"), ("flow", "Participant flow"), ("notebooks", "Notebooks"),
             ("figures", "Figures"), ("tables", "Tables"), ("models", "Models"), ("checklists", "Checklists"),
             ("reproduce", "Reproduce"))) + "</nav>"]
    s += ["<h2 id='cohorts'>Cohorts</h2>", _table_html(pd.DataFrame([_cohort_row(p) for p in parts]),
                                                       {"IDC manifest": ""})]
    s += ["<h2 id='headline'>Headline</h2>",
          "<p>Every metric with its 95% confidence interval (bootstrap); held-out or cross-validated figures only; a "
          "validation run shows the training cross-validation beside the independent cohort. The seed paper's "
          "figures come from its own cohorts: context, not a like-for-like benchmark.</p>"]
    for p in parts:
        s += [f"<h3>{html.escape(p.prefix)} ({p.role})</h3>", _table_html(headline(p).drop(columns="run"))]
    s += ["<h2 id='flow'>Participant flow</h2>",
          "<p>Per analysis: the cases that came in, each one left out with its first reason, and the cases analysed "
          "(analysed + excluded = in). All runs: <a href='flow.csv'>flow.csv</a>.</p>"]
    for p in parts:
        s += [f"<h3>{html.escape(p.prefix)}</h3>", _table_html(flow.summary(flows[flows["run"] == p.prefix]))]
    for p in parts:
        s.append(f"<figure><img src='{p.prefix}/flow.png' alt='participant flow of {html.escape(p.prefix)}'>"
                 f"<figcaption>Participant flow, {html.escape(p.prefix)} "
                 f"(<a href='{p.prefix}/flow.pdf'>PDF</a>)</figcaption></figure>")
    nb_rows = []
    for p in parts:
        for step, name in STEP_TITLES.items():
            if (stage / p.prefix / f"{step}.html").exists():
                nb_rows.append({"run": p.prefix, "notebook": name, "HTML": f"{p.prefix}/{step}.html",
                                "ipynb": f"{p.prefix}/{step}.ipynb"})
    if study and (stage / "study" / "study_summary.html").exists():
        nb_rows.append({"run": "study", "notebook": "Study summary", "HTML": "study/study_summary.html",
                        "ipynb": "study/study_summary.ipynb"})
    s += ["<h2 id='notebooks'>Executed notebooks</h2>", _table_html(pd.DataFrame(nb_rows), {"HTML": "", "ipynb": ""})]
    s.append("<h2 id='figures'>Figures</h2><p>PNG at 300 dpi; the PDF beside each is the vector version.</p>")
    for p in parts:
        s.append(f"<h3>{html.escape(p.prefix)}</h3><div class='gallery'>")
        for png in sorted((stage / p.prefix / "figures").glob("*.png")):
            rel = f"{p.prefix}/figures/{png.name}"
            pdf = png.with_suffix(".pdf")
            s.append(f"<figure><a href='{rel}'><img src='{rel}' alt='{html.escape(png.stem)}'></a>"
                     f"<figcaption>{html.escape(png.stem.replace('__', ': '))}"
                     + (f" (<a href='{p.prefix}/figures/{pdf.name}'>PDF</a>)" if pdf.exists() else "")
                     + "</figcaption></figure>")
        s.append("</div>")
    s.append("<h2 id='tables'>Tables (CSV)</h2>")
    for p in parts:
        tabs = sorted((stage / p.prefix / "tables").glob("*.csv"))
        s.append(f"<h3>{html.escape(p.prefix)}</h3><p class='files'>" + " ".join(
            f"<a href='{p.prefix}/tables/{t.name}'>{html.escape(t.stem)}</a>" for t in tabs) + "</p>")
    s.append("<h2 id='models'>Models</h2>")
    s.append("<p>Segmentation model cards: " + (", ".join(f"<a href='model_cards/{c}.md'>{c}</a>" for c in cards)
                                               or "none (no shipped model used)") + ".</p>")
    for p in parts:
        recs = sorted((stage / p.prefix / "models").glob("*.joblib"))
        s.append(f"<p>{html.escape(p.prefix)}: " + (", ".join(
            f"<a href='{p.prefix}/models/{r.name}'>{html.escape(r.stem)}</a>" for r in recs) if recs else
            "locked model records not included (publish with --include-models); their sha256 are in "
            f"<a href='{p.prefix}/manifest.json'>manifest.json</a>") + ".</p>")
    s.append(f"<p>Masks {'included under each run' if include_masks else 'not included (publish with --include-masks)'}"
             "; images are never included: they stay with their source (see Cohorts).</p>")
    s.append("<h2 id='checklists'>Reporting checklists</h2>")
    for key, (name, _) in checklists.CHECKLISTS.items():
        t = filled[key]
        n_auto = int((t["answered_by"] == checklists.AUTO).sum())
        s.append(f"<h3 id='checklist-{key}'>{html.escape(name)}</h3><p>{n_auto} of {len(t)} item rows answered from "
                 f"the run, {len(t) - n_auto} left to the author (<a href='checklist_{key}.csv'>CSV</a>). "
                 "Item texts are short paraphrases; the published checklist has the exact wording.</p>")
        s.append(_table_html(t, {"where": ""}))
    s.append("<h2 id='reproduce'>How to reproduce</h2><ul>")
    for p in parts:
        m = p.facts.manifest
        g = m.get("git", {})
        env = m.get("environment", {})
        s.append(f"<li><b>{html.escape(p.prefix)}</b> ({p.role}): glioma-nb git commit <code>{g.get('commit')}</code>"
                 f"{' (with uncommitted changes)' if g.get('dirty') else ''}; Python {env.get('python')}; "
                 f"<code>{html.escape(_command(p))}</code> with the frozen "
                 f"<a href='{p.prefix}/params.yaml'>params.yaml</a> (<code>--set</code> any key that differs from "
                 f"the cohort file); environment: <a href='{p.prefix}/{runs.REQUIREMENTS_LOCK}'>requirements.lock</a>"
                 f"; inputs and outputs: <a href='{p.prefix}/manifest.json'>manifest.json</a>.</li>")
    s.append("</ul><p>The supplement is an RO-Crate: <a href='ro-crate-metadata.json'>ro-crate-metadata.json</a> lists "
             "every file with its format, the cohorts as cited datasets and each run as a CreateAction.</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
             "vertical-align:top;text-align:left}th{background:#eef2f7}.gallery{display:flex;flex-wrap:wrap;gap:12px}"
             ".gallery figure{width:340px;margin:0}.gallery img{width:100%;border:1px solid #ddd}"
             "figure img{max-width:100%}nav{margin:1em 0}.lead{font-size:1.1em}.files a{margin-right:.6em}")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{style}</style></head><body>" + "\n".join(s) + CHECK_IMAGES
            + "</body></html>")


#: after loading, the page records how many images it has and how many failed to decode (``data-images``,
#: ``data-broken-images`` on <body>), so a headless browser's DOM dump shows whether every figure rendered
CHECK_IMAGES = ("<script>window.addEventListener('load',function(){var im=Array.from(document.images);"
                "document.body.dataset.images=im.length;document.body.dataset.brokenImages="
                "im.filter(function(i){return !i.complete||i.naturalWidth===0;}).length;});</script>")
