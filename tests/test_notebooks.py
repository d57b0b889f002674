"""Notebook contract: thin, output-free templates whose parameters match what the runner sends."""
from __future__ import annotations

import ast

import nbformat
import pytest

from glioma_nb import STEPS, config, paths, runner, step_section

COMMON = {"run_dir": "", "cohort": "synthetic", "overrides": []}


def _nb(step):
    return nbformat.read(paths.notebooks_dir() / f"{step}.ipynb", as_version=4)


def _parameters(nb) -> dict:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged 'parameters'"
    tree = ast.parse(cells[0].source)
    out = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign), "the parameters cell holds assignments of literals only"
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def test_every_step_has_a_notebook_and_nothing_else_is_there():
    assert sorted(p.stem for p in paths.notebooks_dir().glob("*.ipynb")) == [*STEPS, "study_summary"]


def test_study_summary_notebook_is_thin_and_takes_the_study_folder():
    nb = nbformat.read(paths.notebooks_dir() / "study_summary.ipynb", as_version=4)
    nbformat.validate(nb)
    assert _parameters(nb) == {"study_dir": ""}
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            tree = ast.parse("\n".join(l for l in cell.source.splitlines() if not l.startswith("%")))
            assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While)) for n in ast.walk(tree))


@pytest.mark.parametrize("step", STEPS)
def test_notebook_is_output_free_and_thin(step):
    nb = _nb(step)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {step[:2]} ")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit notebooks without outputs"
            tree = ast.parse("\n".join(l for l in cell.source.splitlines() if not l.startswith("%")))
            assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While)) for n in ast.walk(tree)), \
                "no def/class/loops in notebooks: logic lives in glioma_nb"
    assert "ctx.finish()" in nb.cells[-1].source, "the last cell records the step's metrics"


@pytest.mark.parametrize("step", STEPS)
def test_parameters_match_what_the_runner_sends(step, tmp_path):
    params = _parameters(_nb(step))
    cfg = config.resolve_config("synthetic")
    sent = runner._step_params(cfg, tmp_path, step)
    assert set(params) == set(sent), f"notebook parameters {sorted(params)} != runner's {sorted(sent)}"
    base = config.base_config()[step_section(step)]
    assert {k: params[k] for k in base} == base, "notebook defaults must equal configs/base.yaml"
    assert {k: params[k] for k in COMMON} == COMMON


@pytest.mark.parametrize("step", STEPS)
def test_setup_cell_opens_the_step_with_all_its_parameters(step):
    nb = _nb(step)
    setup = next(c.source for c in nb.cells if "open_step(" in c.source)
    assert f'open_step("{step}"' in setup
    for name in config.base_config()[step_section(step)]:
        assert f"{name}={name}" in setup, f"{name} is not passed to open_step"


@pytest.mark.parametrize("step", STEPS)
def test_parameter_comments_have_no_equals_sign(step):
    """papermill cannot parse `x = 1  # a = b` and then drops the parameter silently."""
    cell = next(c for c in _nb(step).cells if "parameters" in c.metadata.get("tags", []))
    bad = [line for line in cell.source.splitlines() if "#" in line and "=" in line.split("#", 1)[1]]
    assert not bad, bad
