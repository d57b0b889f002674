"""The package's layers hold: the import-linter contracts in pyproject.toml pass, they catch an upward import,
and no module imports itself back through others (no cycles)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx
import pytest

from glioma_nb import paths

ROOT = paths.project_root()
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=package_parent,
                          env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


@pytest.mark.parametrize("module, upward", [
    ("io/qc.py", "from glioma_nb import runner"),                 # low layer -> orchestration
    ("classify/cv.py", "from glioma_nb.classify import step"),   # stage compute -> its step
    ("stats.py", "from glioma_nb.stratify import survival"),      # low layer -> stage compute
    ("stratify/cox.py", "from glioma_nb.classify import cv"),     # one stage -> another (independent: "|")
    ("validate/apply.py", "from glioma_nb.longitudinal import growth"),   # one applier -> the other
    ("segment/infer.py", "from glioma_nb.zoo import cv"),         # the stage -> the model workshop above it
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward):
    pkg = tmp_path / "glioma_nb"
    shutil.copytree(ROOT / "glioma_nb", pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    f = pkg / module
    f.write_text(f.read_text() + f"\n{upward}  # deliberately upward\n")
    out = _lint(tmp_path)
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout[-3000:]
    assert f"glioma_nb.{module[:-3].replace('/', '.')}" in out.stdout  # the offending module is named


def test_no_import_cycles():
    graph = grimp.build_graph("glioma_nb", cache_dir=None)
    g = nx.DiGraph()
    for m in graph.modules:
        g.add_node(m)
        g.add_edges_from((m, d) for d in graph.find_modules_directly_imported_by(m))
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert cycles == []


def test_imports_sit_at_the_top_of_files():
    """A function-level import of the package hides a circle; heavy optional libraries may import late."""
    import ast

    late = []
    for f in sorted((ROOT / "glioma_nb").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("glioma_nb"):
                        late.append(f"{f.relative_to(ROOT)}:{sub.lineno}")
                    elif isinstance(sub, ast.Import) and any(a.name.startswith("glioma_nb") for a in sub.names):
                        late.append(f"{f.relative_to(ROOT)}:{sub.lineno}")
    assert late == []


def test_importing_plotting_changes_no_global_style():
    """The house style is applied by use_style / style(), never by an import (a user's notebook keeps its own)."""
    code = ("import matplotlib as m\nbefore = dict(m.rcParams)\nimport glioma_nb.plotting as p\n"
            "assert dict(m.rcParams) == before, 'import changed rcParams'\n"
            "with p.style():\n    assert m.rcParams['font.size'] == p.RC['font.size']\n"
            "assert dict(m.rcParams) == before, 'style() leaked'\np.use_style()\n"
            "assert m.rcParams['axes.titlesize'] == p.RC['axes.titlesize']\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stderr[-2000:]
