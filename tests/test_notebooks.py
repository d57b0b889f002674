"""Notebook contract: thin, output-free templates whose parameters match what the runner sends."""
from __future__ import annotations

import ast

import nbformat
import pytest

from glioma_nb import STEPS, config, paths, runner, step_section

COMMON = {"run_dir": "", "cohort": "synthetic", "overrides": [], "upstream": ""}


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


#: calls a notebook cell may make: the step, opening the context, saving/finishing, and showing things
DISPLAY_CALLS = {"display", "Markdown", "print", "repr", "len"}
DISPLAY_METHODS = {"get", "round", "head", "describe", "counts", "set_sizes", "notes_markdown", "family_counts"}
#: the names a cell may bind: the context and the step's result, nothing computed
BOUND = {"ctx", "res", "seg"}


def computation_in(source: str) -> list[str]:
    """What in a notebook cell is computation rather than opening the step, calling it once and displaying its
    result: definitions, loops, comprehensions, arithmetic, assignments other than ``ctx``/``res``, calls into
    the package other than ``open_step``/``step``, and calls that are not display."""
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.startswith("%")))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.For, ast.While,
                             ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp, ast.AugAssign,
                             ast.BinOp, ast.With)):
            found.append(f"{type(node).__name__} at line {node.lineno}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if len(names) != len(targets) or not set(names) <= BOUND:
                found.append(f"assignment at line {node.lineno}")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                ok = f.id in DISPLAY_CALLS
            elif isinstance(f, ast.Attribute):
                owner = f.value.id if isinstance(f.value, ast.Name) else None
                ok = ((f.attr == "open_step" and owner == "runner") or (f.attr == "step" and node.args
                      and isinstance(node.args[0], ast.Name) and node.args[0].id == "ctx")
                      or (owner in BOUND and f.attr in ("save", "finish")) or f.attr in DISPLAY_METHODS
                      or owner == "explore")  # the exploration helpers: one call, one figure
            else:
                ok = False
            if not ok:
                found.append(f"call {ast.unparse(f)}() at line {node.lineno}")
    return found


def test_computation_check_catches_what_a_thin_notebook_must_not_do():
    thin = ('res = classify_step.step(ctx, **ctx.params)\nres.figures.get("roc", Markdown("none"))\n'
            'if res.val:\n    display(res.tables["x"].round(3))\nexplore.km_by(ctx, "age")\nres.save(ctx)\nctx.finish()')
    assert computation_in(thin) == []
    for fat in ("x = res.tables['a'].mean()", "res.tables['a']['auc'] * 2", "[r for r in res.notes]",
                "plotting.plot_km(res.surv)", "fig, ax = plt.subplots()", "stratify.cox.fit_cox(surv, d)",
                "for n in res.notes:\n    print(n)", "res.tables['a'].groupby('node').mean()",
                "ctx.save_table(res.tables['a'], 'b')"):
        assert computation_in(fat), fat


@pytest.mark.parametrize("step", STEPS)
def test_notebook_is_output_free_and_thin(step):
    nb = _nb(step)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {step[:2]} ")
    calls = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit notebooks without outputs"
            if "parameters" not in cell.metadata.get("tags", []):  # literals only: checked by _parameters
                assert computation_in(cell.source) == [], f"computation in a cell of {step}: logic lives in glioma_nb"
            calls += ".step(ctx, **ctx.params)" in cell.source
    assert calls == 1, "one step call, with the step's config section"
    assert nb.cells[-1].source.splitlines()[-1] == "ctx.finish()", "the last cell records the step's metrics"


@pytest.mark.parametrize("step", STEPS)
def test_parameters_are_only_where_the_run_is(step, tmp_path):
    """Parameters are written once (configs/base.yaml): the notebook and the runner only say which run."""
    params = _parameters(_nb(step))
    # 06 opens on the serial cohort by default (the only built-in cohort with timepoints)
    assert params == ({**COMMON, "cohort": "synthetic-longitudinal"} if step == "06_longitudinal" else COMMON)
    cfg = config.resolve_config("synthetic")
    assert set(runner._step_params(cfg, tmp_path, step)) == set(COMMON)


@pytest.mark.parametrize("step", STEPS)
def test_setup_cell_opens_the_step_without_repeating_its_parameters(step):
    nb = _nb(step)
    setup = next(c.source for c in nb.cells if "open_step(" in c.source)
    assert " ".join(setup.split()).count(
        f'open_step("{step}", run_dir=run_dir, cohort=cohort, overrides=overrides, upstream=upstream)') == 1
    for name in config.base_config()[step_section(step)]:
        assert f"{name}=" not in setup, f"{name} is repeated in the notebook"


@pytest.mark.parametrize("step", STEPS)
def test_parameter_comments_have_no_equals_sign(step):
    """papermill cannot parse `x = 1  # a = b` and then drops the parameter silently."""
    cell = next(c for c in _nb(step).cells if "parameters" in c.metadata.get("tags", []))
    bad = [line for line in cell.source.splitlines() if "#" in line and "=" in line.split("#", 1)[1]]
    assert not bad, bad
