"""The documentation site (``make docs``): reference pages generated from the code, then MkDocs, strict.

Generated into ``docs/`` before every build (and git-ignored, so they cannot drift from the code):

``reference/cli.md``         every command and option, from the argparse parser
``reference/config.md``      every key of ``configs/base.yaml`` (the schema) with its default and its comment
``reference/api.md``         each stage's ``step`` and result, and the shared modules (mkdocstrings)
``reference/models.md``      the shipped model cards and the public models of `models pull`
``benchmarks.md``            the latest JSON of each benchmark under ``bench/results/``
``architecture-layers.md``   the import contract, from ``pyproject.toml``
``notebooks/<step>.md``      the executed notebooks of the latest completed synthetic run (and of the serial
                             cohort's, when there is one), converted with nbconvert, figures as files

:func:`build` writes them and runs ``mkdocs build --strict`` into ``site/``: a broken internal link, a page
missing from the navigation or a notebook that failed fails the build.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Iterator

from glioma_nb import STEPS, bench, paths, runner, runs
from glioma_nb.io import clinical as clinical_io
from glioma_nb.segment import pull

GENERATED = ("reference/cli.md", "reference/config.md", "reference/api.md", "reference/models.md", "benchmarks.md",
             "architecture-layers.md", "methods/notebooks.md", "notebooks", "reference/clinical.md",
             "reference/clinical_template.csv")
#: the stages whose step and result the API page documents
API_MODULES = ("glioma_nb.preprocess.step", "glioma_nb.segment.step", "glioma_nb.signature.step",
               "glioma_nb.classify.step", "glioma_nb.stratify.step", "glioma_nb.validate.step",
               "glioma_nb.longitudinal.step", "glioma_nb.results", "glioma_nb.runner", "glioma_nb.io.cohort",
               "glioma_nb.io.timeline", "glioma_nb.records", "glioma_nb.stats", "glioma_nb.flow", "glioma_nb.api.cohorts",
               "glioma_nb.api.idc", "glioma_nb.api.zoo", "glioma_nb.zoo.ship", "glioma_nb.taps", "glioma_nb.segment.kinds")


def docs_dir() -> Path:
    return paths.project_root() / "docs"


# ------------------------------------------------------------------------------------------- clinical table
def clinical_page() -> str:
    """The canonical clinical columns (``glioma_nb.io.CLINICAL_COLUMNS``), what each means and accepts, and the CSV
    template (``clinical_template.csv``, written beside this page)."""
    out = ["# The clinical table", "",
           "Generated from `glioma_nb.io.clinical` by `make docs`. A cohort's `clinical.file` (CSV, TSV or Excel) maps "
           "its own columns onto these canonical names in `cohort.clinical.columns` (canonical name: your column, or "
           "`{source, values}` to recode); a value the parser does not know is an error naming the case, the column "
           "and the value. Missing values: an empty cell, NA, unknown, not available.", "",
           "| column | meaning | accepts |", "|---|---|---|", "| `case_id` | the case, as the image folders name it "
           "(`cohort.clinical.id_column`) | any text |"]
    for name, kind in clinical_io.CLINICAL_COLUMNS.items():
        out.append(f"| `{name}` | {clinical_io.CLINICAL_MEANINGS[name]} | {clinical_io.accepted_values(kind)} |")
    columns = "\n".join(f"      {c}: {c}" for c in clinical_io.CLINICAL_COLUMNS)
    out += ["", "[The template](clinical_template.csv), with two example rows:", "", "```",
            clinical_io.clinical_template().to_csv(index=False).strip(), "```", "",
            "and the cohort YAML that reads it as it is:", "", "```yaml", "cohort:", "  clinical:",
            "    file: clinical_template.csv", "    id_column: case_id", "    time_unit: months", "    columns:",
            columns, "```", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ CLI
def _subcommands(parser: argparse.ArgumentParser, prefix: str = "glioma-nb") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subcommands(sub, f"{prefix} {name}")


def cli_commands(parser: argparse.ArgumentParser) -> list[str]:
    """Every command of the parser, nested ones included (``glioma-nb models import``)."""
    return [name for name, _ in _subcommands(parser)]


def cli_reference(parser: argparse.ArgumentParser) -> str:
    """Markdown: one section per command with its help and its options (generated from the parser)."""
    out = ["# Command line", "", "Generated from `glioma_nb.cli` by `make docs`. `make` targets wrap these commands "
           "(see the [quick start](../quickstart.md)).", ""]
    helps = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps.update({a.dest: a.help for a in action._choices_actions})
    for name, sub in _subcommands(parser):
        out += [f"## `{name}`", ""]
        leaf = name.split()[-1]
        text = helps.get(leaf) or sub.description or ""
        for action in sub._actions:   # nested help strings
            if isinstance(action, argparse._SubParsersAction):
                helps.update({a.dest: a.help for a in action._choices_actions})
        if text:
            out += [text.strip(), ""]
        out += ["```text", sub.format_usage().strip().replace("usage: ", ""), "```", ""]
        rows = []
        for a in sub._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flags = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.dest}`"
            default = "" if a.default in (None, argparse.SUPPRESS) or a.option_strings == [] else f"`{a.default}`"
            rows.append(f"| {flags} | {(a.help or '').replace('|', '/')} | {default} |")
        if rows:
            out += ["| option | meaning | default |", "|---|---|---|", *rows, ""]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- config
def config_keys(path: Path | None = None) -> list[dict[str, str]]:
    """Every key of ``configs/base.yaml`` with its dotted path, default (as written) and comment (its own line's,
    plus the comment lines under it that are indented past the key)."""
    lines = (path or paths.configs_dir() / "base.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    keys: list[dict[str, str]] = []
    key_re = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):(\s*)(.*)$")
    for line in lines:
        m = key_re.match(line)
        if m:
            indent, key, _, rest = len(m.group(1)), m.group(2), m.group(3), m.group(4)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            value, comment = rest, ""
            if "#" in rest:
                # a '#' inside quotes is part of the value
                q = re.match(r'^("[^"]*"|\'[^\']*\'|[^#]*?)\s*#\s?(.*)$', rest)
                if q:
                    value, comment = q.group(1).strip(), q.group(2).strip()
            dotted = ".".join([k for _, k in stack] + [key])
            keys.append({"key": dotted, "default": value.strip(), "comment": comment, "indent": str(indent)})
            stack.append((indent, key))
        elif line.strip().startswith("#") and keys:
            col = len(line) - len(line.lstrip())
            if col > int(keys[-1]["indent"]):
                keys[-1]["comment"] = (keys[-1]["comment"] + " " + line.strip().lstrip("#").strip()).strip()
    return keys


def config_reference() -> str:
    out = ["# Configuration keys", "", "Every key of `configs/base.yaml`, which is also the schema (a key not declared "
           "there is an error), with its default and its comment; generated by `make docs`. A cohort file "
           "(`configs/cohorts/<name>.yaml`) and `--set section.key=value` change them for a run, whose resolved "
           "configuration is frozen as `params.yaml`.", ""]
    section = None
    for k in config_keys():
        top = k["key"].split(".")[0]
        if top != section:
            section = top
            out += ["", f"## `{top}`", "", "| key | default | meaning |", "|---|---|---|"]
        default = k["default"].replace("|", "\\|")
        out.append(f"| `{k['key']}` | {'`' + default + '`' if default else ''} | {k['comment'].replace('|', '/')} |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------ API, cards
def api_reference() -> str:
    out = ["# Python API", "", "Each stage's `step(ctx, **params)` (what its notebook calls once) and its result, and the "
           "shared modules, from their docstrings (mkdocstrings).", ""]
    for mod in API_MODULES:
        out += [f"## `{mod}`", "", f"::: {mod}", "    options:", "      show_root_heading: false",
                "      show_source: false", "      members_order: source", "      heading_level: 3", ""]
    return "\n".join(out) + "\n"


def model_cards() -> str:
    out = ["# Shipped models", "", "The model cards shipped beside the weights in `glioma_nb/segment/models/` "
           "(training data, parameters, metrics, sha256, the command that reproduces them).", ""]
    for card in sorted((paths.project_root() / "glioma_nb" / "segment" / "models").glob("*.md")):
        text = card.read_text()
        text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)   # one level down
        out += [text, ""]
    out += ["# Public models (`glioma-nb models pull`)", "",
            "The catalogue `glioma_nb/segment/catalogue.yaml`: what `models pull NAME@VERSION` fetches and the hash it "
            "checks, each value from where its authors publish it. glioma-nb has not measured these models; their "
            "metrics are their authors'.", ""]
    for name, entry in pull.load_catalogue().items():
        out += [f"## {name} ({entry.get('kind', '')})", "", " ".join(str(entry.get("description", "")).split()), ""]
        for version, arch in (entry.get("versions") or {}).items():
            pinned = pull.published_hash(arch)
            out += [f"- **{version}**: " + ", ".join(f"<{u}>" for u in arch.get("urls") or []) +
                    (f"; {pinned[0]} `{pinned[1]}`" if pinned else "; no published hash (not pullable)") +
                    f" (from {' '.join(str(arch.get('from', 'not stated')).split())})"]
        where, metrics = pull.reported_metrics(entry)
        out += [f"- licence: {entry.get('licence', 'not stated')}",
                f"- training data: {' '.join(str(entry.get('training_data', 'not stated')).split())}",
                f"- its authors' metrics ({where}): {metrics}", ""]
    return "\n".join(out) + "\n"


def layers_page() -> str:
    conf = tomllib.loads((paths.project_root() / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    out = ["# The import contract", "", "Generated from `[tool.importlinter]` in `pyproject.toml` (what `make test` "
           "enforces through `tests/test_architecture.py`).", ""]
    for c in conf:
        out += [f"## {c['name']}", "", f"Type: `{c['type']}`", ""]
        for key in ("layers", "source_modules", "forbidden_modules", "modules"):
            if key in c:
                out += [f"{key.replace('_', ' ')}:", "", *[f"1. `{m}`" for m in c[key]], ""]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- bench
def benchmarks_page(results: Path | None = None) -> str:
    folder = results or paths.project_root() / "bench" / "results"
    latest: dict[str, Path] = {}
    for f in sorted(folder.glob("*.json")):
        latest[f.stem.rsplit("_", 1)[0]] = f   # <kind>_<UTC time>.json: the newest of each kind wins
    out = ["# Benchmarks", "", "The latest JSON of each benchmark under `bench/results/`, as measured (generated by "
           "`make docs`; never typed by hand). Run them with `make bench`, `make bench-segment`, "
           "`make bench-signature`, `make bench-scale`, `make bench-analysis`, `make bench-preprocess`.", ""]
    if not latest:
        out += ["No benchmark has been run in this checkout (bench/results/ holds no JSON): the figures quoted in the "
                "tutorials come from the runs they name."]
    for kind, f in sorted(latest.items()):
        data = json.loads(f.read_text())
        out += [f"## {kind}", "", f"`bench/results/{f.name}`", ""]
        flat = list(_flatten(data))
        out += ["| field | value |", "|---|---|", *[f"| `{k}` | {str(v).replace('|', '/')[:200]} |" for k, v in flat[:200]],
                ""]
    return "\n".join(out) + "\n"


def _flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


# ------------------------------------------------------------------------------------------ notebooks
def notebook_methods() -> str:
    """The first markdown cell (purpose, method, inputs, outputs) of every notebook template, as one page."""
    import nbformat

    out = ["# The notebooks' own methods", "", "The opening cell of each notebook in `notebooks/` (purpose, method "
           "with its references, inputs, parameters, outputs), as a reader of an executed report sees it; generated by "
           "`make docs`.", ""]
    for step in STEPS:
        nb = nbformat.read(paths.notebooks_dir() / f"{step}.ipynb", as_version=4)
        first = next(c.source for c in nb.cells if c.cell_type == "markdown")
        out += [re.sub(r"^# ", "## ", first, count=1), ""]
    return "\n".join(out) + "\n"


def latest_run(cohort: str) -> Path | None:
    """The newest completed runner run of ``cohort`` under the reports folder (None when there is none)."""
    root = paths.reports_dir() / cohort
    found = []
    for d in root.glob("*/manifest.json") if root.exists() else []:
        m = runs.load_manifest(d.parent)
        if m.get("mode") == "runner" and m.get("status") == "completed":
            found.append((m["created_utc"], d.parent))
    return sorted(found)[-1][1] if found else None


def notebook_pages(run_dir: Path, out: Path, label: str) -> list[str]:
    """Each executed notebook of ``run_dir`` as ``out/<step>.md`` (figures beside it); returns the page names."""
    from nbconvert import MarkdownExporter
    import nbformat

    out.mkdir(parents=True, exist_ok=True)
    made = []
    for step in STEPS:
        nb_file = run_dir / f"{step}.ipynb"
        if not nb_file.exists():
            continue
        nb = nbformat.read(nb_file, as_version=4)
        body, resources = MarkdownExporter().from_notebook_node(nb, resources={"output_files_dir": f"{step}_files"})
        stem = f"{label}-{step}" if label else step
        for name, data in resources.get("outputs", {}).items():
            target = out / name.replace(f"{step}_files", f"{stem}_files")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        body = body.replace(f"]({step}_files/", f"]({stem}_files/").replace(f'src="{step}_files/', f'src="{stem}_files/')
        manifest = runs.load_manifest(run_dir)
        head = (f"!!! note \"Executed notebook\"\n    `{step}` of the run `{manifest['run_id']}` of the cohort "
                f"`{manifest['cohort']}` (git {manifest['git']['short']}), rendered by `make docs`.\n\n")
        (out / f"{stem}.md").write_text(head + _demote_after_first_h1(body))
        made.append(f"{stem}.md")
    return made


def _demote_after_first_h1(text: str) -> str:
    """A notebook may have several H1 headings; keep its first as the page title and make the others H2."""
    seen, lines, code = False, [], False
    for line in text.splitlines():
        if line.startswith("```"):
            code = not code
        if not code and line.startswith("# "):
            if seen:
                line = "#" + line
            seen = True
        lines.append(line)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ build
def generate(parser: argparse.ArgumentParser, *, run_if_missing: bool = True, run_bench: bool = True,
             progress: bool = True) -> dict[str, Any]:
    """Write every generated page into ``docs/``; run the synthetic cohort first when no completed run exists, and
    the foundation benchmark when ``bench/results/`` holds no JSON (``run_bench``)."""
    d = docs_dir()
    for rel in GENERATED:
        p = d / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (d / "reference").mkdir(exist_ok=True)
    (d / "reference" / "cli.md").write_text(cli_reference(parser))
    (d / "reference" / "config.md").write_text(config_reference())
    (d / "reference" / "api.md").write_text(api_reference())
    (d / "reference" / "models.md").write_text(model_cards())
    (d / "reference" / "clinical.md").write_text(clinical_page())
    clinical_io.clinical_template().to_csv(d / "reference" / "clinical_template.csv", index=False)
    (d / "architecture-layers.md").write_text(layers_page())
    (d / "methods" / "notebooks.md").write_text(notebook_methods())
    results = d.parent / "bench" / "results"
    if run_bench and not list(results.glob("*.json")):
        print("make docs: no benchmark JSON under bench/results/: running make bench (synthetic generation, QC)",
              flush=True)
        bench.run_foundation_bench(["synthetic"], str(results))
    (d / "benchmarks.md").write_text(benchmarks_page(results))
    run = latest_run("synthetic")
    if run is None and run_if_missing:
        print("make docs: no completed synthetic run under reports/: running it (make run-all)", flush=True)
        run = runner.run("synthetic", progress=progress)
    if run is None:
        raise RuntimeError("no completed synthetic run to render the notebooks from: run make run-all first")
    pages = notebook_pages(run, d / "notebooks", "")
    serial = latest_run("synthetic-longitudinal")
    serial_pages = notebook_pages(serial, d / "notebooks", "serial") if serial is not None else []
    index = ["# Executed notebooks", "", f"The notebooks of the synthetic run `{run.name}`, executed by the runner and "
             "rendered here by `make docs` (what a supplement holds, as a reader sees it).", "",
             *[f"- [{p[:-3]}]({p})" for p in pages]]
    if serial_pages:
        index += ["", f"The serial-scan cohort's run `{serial.name}`:", "", *[f"- [{p[:-3]}]({p})" for p in serial_pages]]
    else:
        index += ["", "No completed run of `synthetic-longitudinal` here: `make run-all COHORT=synthetic-longitudinal` "
                  "renders notebook 06 too."]
    (d / "notebooks" / "index.md").write_text("\n".join(index) + "\n")
    return {"run": run.name, "notebooks": pages + serial_pages}


def build(parser: argparse.ArgumentParser, *, site: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate the pages and build the site with ``mkdocs build --strict``; returns what was built and the seconds."""
    t0 = time.perf_counter()
    made = generate(parser, progress=progress)
    t1 = time.perf_counter()
    site = site or paths.project_root() / "site"
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "--site-dir", str(site),
           "--config-file", str(paths.project_root() / "mkdocs.yml")]
    proc = subprocess.run(cmd, cwd=paths.project_root(), capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"mkdocs build --strict failed (exit {proc.returncode}); see the messages above")
    return {**made, "site": str(site), "generate_s": round(t1 - t0, 1), "mkdocs_s": round(time.perf_counter() - t1, 1)}
