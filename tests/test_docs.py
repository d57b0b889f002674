"""The documentation site (issue 38): the generated reference covers every CLI command and every config key,
the navigation names only pages that exist, and the site builds strict from a real run's executed notebooks."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from glioma_nb import cli, config, paths
from glioma_nb.api import docs


def _leaf_paths(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        yield key
        if isinstance(v, dict) and v:
            yield from _leaf_paths(v, key)


def test_every_cli_command_is_in_the_reference():
    parser = cli.parser()
    commands = docs.cli_commands(parser)
    page = docs.cli_reference(parser)
    assert {"glioma-nb run", "glioma-nb docs", "glioma-nb publish", "glioma-nb models import",
            "glioma-nb idc download"} <= set(commands)
    for c in commands:
        assert f"## `{c}`" in page, c
    for flag in ("--cohort", "--set", "--resume", "--include-masks", "--folds"):
        assert f"`{flag}`" in page, flag


def test_every_option_and_argument_says_what_it_means():
    """The CLI reference is generated from the parser: an option without help would be an empty row there."""
    import argparse

    parser = cli.parser()
    empty = [f"{name} {' '.join(a.option_strings) or a.dest}" for name, sub in docs._subcommands(parser)
             for a in sub._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
             and not (a.help or "").strip()]
    assert not empty, empty
    page = docs.cli_reference(parser)
    assert "path of a cohort YAML" in page and "random seed of the cohort" in page


def test_every_command_answers_help(capsys):
    """Each command and sub-command (as the reference lists them) parses --help and prints its usage; a handler
    exists for every top-level command."""
    parser, handlers = cli.parser_and_handlers()
    commands = docs.cli_commands(parser)
    assert len(commands) >= 25
    assert {c.split()[1] for c in commands} == set(handlers)
    for c in commands:
        with pytest.raises(SystemExit) as done:
            cli.main([*c.split()[1:], "--help"])
        assert done.value.code == 0, c
        assert capsys.readouterr().out.startswith(f"usage: {c}"), c


def test_every_config_key_is_in_the_reference_with_its_default_and_comment():
    """The page's own parse of base.yaml (keys, defaults, comments) against the YAML loader's keys."""
    listed = {k["key"]: k for k in docs.config_keys()}
    loaded = set(_leaf_paths(config.base_config()))
    assert loaded == set(listed), (sorted(loaded - set(listed))[:5], sorted(set(listed) - loaded)[:5])
    page = docs.config_reference()
    for key in loaded:
        assert f"| `{key}` |" in page, key
    assert listed["longitudinal.vde_cut_mm_per_year"]["default"] == "8"
    assert "Pallud" in listed["longitudinal.vde_cut_mm_per_year"]["comment"]
    # a comment continued on the lines under the key is kept whole
    assert "dask-jobqueue's" in listed["compute.slurm.processes"]["comment"]


def test_the_navigation_names_only_pages_that_exist_or_are_generated():
    nav = yaml.safe_load((paths.project_root() / "mkdocs.yml").read_text())["nav"]

    def pages(item):
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for v in item.values():
                yield from pages(v)
        elif isinstance(item, list):
            for v in item:
                yield from pages(v)

    generated = {g for g in docs.GENERATED if g.endswith(".md")} | {"notebooks/index.md"}
    for page in pages(nav):
        assert (docs.docs_dir() / page).exists() or page in generated, page
    committed = {str(p.relative_to(docs.docs_dir())) for p in docs.docs_dir().rglob("*.md")
                 if not str(p.relative_to(docs.docs_dir())).startswith("notebooks/")} - generated
    named = set(pages(nav))
    assert committed <= named, sorted(committed - named)


def test_readme_fits_on_a_screen():
    lines = (paths.project_root() / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    assert "make run-all" in "\n".join(lines) and "make test" in "\n".join(lines)


def _measured_docs():
    sys.path.insert(0, str(paths.project_root() / "tools"))
    try:
        import measured_docs
    finally:
        sys.path.pop(0)
    return measured_docs


def test_every_quoted_time_and_the_overview_caption_are_the_measured_runs():
    """The README's and the docs' times and the overview figure's caption are rendered from
    docs/assets/measured.json (one fresh-check's figures, tools/measured_docs.py): a hand edit that drifts
    from the record fails here, and each block is present where the reader looks for it."""
    md = _measured_docs()
    m = json.loads(md.MEASURED.read_text())
    blocks = md.render(m)
    found = {}
    for rel in md.FILES:
        for name, body in md.blocks_in((paths.project_root() / rel).read_text()).items():
            assert body == blocks[name], f"{rel}: block {name} differs from measured.json; run tools/measured_docs.py --render"
            found.setdefault(name, []).append(rel)
    assert found["times"] == ["README.md", "docs/quickstart.md"]
    assert found["overview_readme"] == ["README.md"] and found["overview_docs"] == ["docs/index.md"]
    assert found["slowest"] == ["docs/quickstart.md"] and found["per_case"] == ["docs/quickstart.md"]
    assert sum(m["steps_s"].values()) <= m["make_run_all_s"] and m["pytest_s"] <= m["make_test_s"]


def test_no_quoted_time_is_contradicted_by_the_latest_benchmark_by_more_than_25_percent():
    """Every time the README and the quick start quote (make run-all, pytest, seconds per case of each network) read
    from their text and held against the latest benchmark: bench/results/backends_*.json where `make bench-segment`
    wrote one (git-ignored), else its copy in docs/assets/measured.json (a clean clone); more than 25 % off fails."""
    import re

    md = _measured_docs()
    m = json.loads(md.MEASURED.read_text())
    latest = {**m["segment"], **md.segment_record(md.bench_files())}
    text = "\n".join((paths.project_root() / f).read_text() for f in ("README.md", "docs/quickstart.md"))
    checked = 0
    for model, words in md.SEGMENT_MODELS.items():
        for quoted in re.findall(re.escape(words) + r": [^(]*\((\d+(?:\.\d+)?) s per case", text):
            assert abs(float(quoted) / latest[model]["auto_s_per_case"] - 1) <= 0.25, (model, quoted)
            checked += 1
    current = "\n".join(b for f in md.FILES for b in md.blocks_in((paths.project_root() / f).read_text()).values())
    for pattern, key in ((r"`make run-all` (\d+) s", "make_run_all_s"), (r"pytest (\d+) s", "pytest_s")):
        for quoted in re.findall(pattern, current):   # the current times (older ones are quoted with their commit)
            assert abs(float(quoted) / m[key] - 1) <= 0.25, (key, quoted)
            checked += 1
    assert checked >= 5


def test_the_measured_record_is_read_from_a_fresh_checks_own_output(tmp_path):
    """tools/measured_docs.py on a fresh-check's output (the lines it prints, the pytest log, a run manifest):
    the figures it records are those of the logs; a failed check is refused."""
    md = _measured_docs()
    run = tmp_path / "project" / "reports" / "synthetic" / "20261207T000000Z_abc1234"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({
        "run_id": run.name, "cohort": "synthetic", "status": "completed", "created_utc": "2026-12-07T00:00:00+00:00",
        "git": {"commit": "abc1234def"}, "steps": [{"name": "01_segment", "seconds": 171.6},
                                                    {"name": "02_signature", "seconds": 17.2}]}))
    (tmp_path / "test.log").write_text(
        "=== slowest 20 durations ===\n86.02s call     tests/test_a.py::test_x\n65.31s setup    tests/test_b.py::test_y\n"
        "=========== 434 passed, 4 skipped, 275 warnings in 549.02s (0:09:09) ===========\n")
    out = (f"make test: exit 0 in 659 s   (log: {tmp_path}/test.log; last line: ...)\n"
           f"make run-all : exit 0 in 301 s   (log: {tmp_path}/run.log)\nrun folder: reports/synthetic/{run.name}/\n")
    (tmp_path / "fresh.log").write_text(out)
    m = md.record(md.parse_fresh_log((tmp_path / "fresh.log").read_text()))
    assert (m["commit"], m["pytest_s"], m["passed"], m["skipped"], m["make_test_s"], m["make_run_all_s"]) == (
        "abc1234", 549, 434, 4, 659, 301)
    assert m["steps_s"] == {"01_segment": 172, "02_signature": 17}
    assert m["slowest"][1] == {"seconds": 65.31, "phase": "setup", "test": "tests/test_b.py::test_y"}
    text = md.render(m)["times"]
    assert "about five minutes" in text and "about eleven minutes" in text and "01 172, 02 17" in text
    (tmp_path / "fresh.log").write_text(out.replace("make test: exit 0", "make test: exit 2"))
    with pytest.raises(SystemExit, match="failed"):
        md.record(md.parse_fresh_log((tmp_path / "fresh.log").read_text()))


@pytest.mark.slow
def test_the_site_builds_strict_from_a_real_run(synthetic_training_run, tmp_path, monkeypatch):
    """The docs of this checkout, copied to a temporary folder, with the session's synthetic run as the executed
    notebooks: mkdocs build --strict succeeds, renders the notebook pages with their figures, and fails on a broken
    internal link."""
    _, run_dir = synthetic_training_run
    root = tmp_path / "project"
    shutil.copytree(docs.docs_dir(), root / "docs", ignore=shutil.ignore_patterns(*[g for g in docs.GENERATED]))
    shutil.copy(paths.project_root() / "mkdocs.yml", root / "mkdocs.yml")
    monkeypatch.setattr(docs, "docs_dir", lambda: root / "docs")
    monkeypatch.setattr(docs, "latest_run", lambda cohort: run_dir if cohort == "synthetic" else None)
    made = docs.generate(cli.parser(), run_if_missing=False, run_bench=False, progress=False)
    assert "04_stratify.md" in made["notebooks"]
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site), "--config-file",
           str(root / "mkdocs.yml")]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (site / "notebooks" / "04_stratify" / "index.html").read_text()
    assert "Kaplan-Meier" in html and "<img" in html
    assert (site / "reference" / "cli" / "index.html").exists() and (site / "reference" / "api" / "index.html").exists()
    page = root / "docs" / "quickstart.md"
    page.write_text(page.read_text() + "\n[a broken link](no-such-page.md)\n")
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    assert proc.returncode != 0 and "no-such-page.md" in proc.stderr
