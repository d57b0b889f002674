"""Runner: the same code path as `make run-all`, manifest contents, no overwrite, resume."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import FAST_RUN

from glioma_nb import STEPS, cli, config, paths, provenance, runner, runs, step_section


@pytest.mark.slow
def test_run_all_steps_end_to_end(synthetic_training_run, tmp_path):
    y, run_dir = synthetic_training_run
    fast = FAST_RUN
    assert run_dir.parent == paths.reports_dir() / "synsmall"
    # 00 runs for raw cohorts only (tests/test_preprocess.py), 06 for serial ones (tests/test_longitudinal.py)
    ran = [s for s in STEPS if s not in ("00_preprocess", "06_longitudinal")]
    assert not (run_dir / "00_preprocess.ipynb").exists()
    for step in ran:
        assert (run_dir / f"{step}.ipynb").exists() and (run_dir / f"{step}.html").exists(), step
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "completed" and m["run_id"] == run_dir.name
    assert [s["status"] for s in m["steps"]] == ["completed"] * 5
    assert all(s["seconds"] > 0 and s["metrics"]["step"] == s["name"] for s in m["steps"])
    assert m["steps"][0]["metrics"]["n_cases"] == 12
    seg = m["steps"][0]["metrics"]
    assert seg["params"]["n_overlay_cases"] == 2 and seg["model"] == "brats-4mod" and seg["n_segmented"] == 12
    assert len(list((run_dir / "masks").glob("*.nii.gz"))) == 12 and "dice_WT" in seg
    strat = m["steps"][3]["metrics"]
    assert strat["clusters"]["all"]["k"] >= 2 and (run_dir / "models" / "clusters__all.joblib").exists()
    assert any("too few events" in n for n in strat["notes"]) or strat["risk_models"]  # 12 cases: said, not hidden
    # 12 cases x (4 modalities + label) + clinical table, each with a sha256
    assert len(m["inputs"]) == 12 * 5 + 1 and all(len(h) == 64 for h in m["inputs"].values())
    assert set(m["git"]) == {"commit", "short", "branch", "dirty"} and m["run_id"].endswith(
        m["git"]["short"] + ("-dirty" if m["git"]["dirty"] else ""))
    assert m["environment"]["packages"]["torch"].startswith("2.13") and "torch_cuda_available" in m["environment"]
    frozen = config.load_yaml(run_dir / "params.yaml")
    assert frozen == config.resolve_config(str(y), fast)
    assert m["params_sha256"] == config.config_hash(frozen)
    assert (run_dir / "tables" / "features_volumetric.csv").exists() and (run_dir / "figures").iterdir()
    # each notebook shows what its one step call produced (names of tables and figures), not a dump of them
    for step in ran:
        nb = nbformat.read(run_dir / f"{step}.ipynb", as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code" and ".step(ctx, **ctx.params)" in c.source)
        shown = cell.outputs[-1]["data"]["text/plain"]
        assert shown.endswith(")") and "Result(tables=[" in shown and len(shown) < 2500, (step, shown[:300])
    # progress bars and warnings go to logs/<step>.stderr.log, not into the reports
    for step in ran:
        nb = nbformat.read(run_dir / f"{step}.ipynb", as_version=4)
        assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"], step
    seg_log = (run_dir / "logs" / "01_segment.stderr.log").read_text()
    assert "segment (brats-4mod): 100%|" in seg_log and "12/12" in seg_log and "\r" not in seg_log
    # each report is titled as its notebook is (its first heading), not nbconvert's "Notebook"
    import html as html_mod

    for step in ran:
        template = nbformat.read(paths.notebooks_dir() / f"{step}.ipynb", as_version=4)
        heading = next(line for c in template.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                       if line.startswith("#")).lstrip("#").strip()
        assert heading.startswith(step[:2]) and f"<title>{html_mod.escape(heading)}</title>" in (
            run_dir / f"{step}.html").read_text(), step
    # shared reports leak no local paths
    cohort_root = config.load_yaml(y)["cohort"]["root"]
    leaks = [str(paths.project_root()), str(Path.home()), cohort_root, str(y.parent), str(tmp_path), str(run_dir)]
    for f in list(run_dir.glob("*.ipynb")) + list(run_dir.glob("*.html")):
        text = f.read_text()
        for leak in leaks:
            assert leak not in text, f"{f.name} contains {leak}"


def test_no_displayed_table_shows_a_raw_column_name_and_no_section_is_empty(synthetic_training_run):
    """What a reviewer reads: the executed HTML of every step. A table header in snake_case (``median_ci_low``) is a
    raw column name (reporting.COLUMN_LABELS gives its words); a heading followed by nothing before the next heading
    is an empty section. Both are listed, by report, when found."""
    import html as html_mod
    import re

    _, run_dir = synthetic_training_run
    raw, empty, n_tables, n_sections = {}, {}, 0, 0
    for f in sorted(run_dir.glob("*.html")):
        page = re.sub(r"<style.*?</style>|<script.*?</script>", "", f.read_text(), flags=re.S)
        for table in re.findall(r"<table.*?</table>", page, re.S):
            n_tables += 1
            head = re.search(r"<thead>(.*?)</thead>", table, re.S)
            for th in re.findall(r"<th[^>]*>(.*?)</th>", head.group(1) if head else "", re.S):
                text = html_mod.unescape(re.sub(r"<.*?>", "", th)).strip()
                if re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", text):
                    raw.setdefault(f.name, set()).add(text)
        for m in re.finditer(r"<h([2-4])[^>]*>(.*?)</h\1>(.*?)(?=<h[1-4][^>]*>|</body>)", page, re.S):
            n_sections += 1
            if not re.sub(r"<[^>]+>|\s|\u00b6", "", m.group(3)):
                empty.setdefault(f.name, []).append(re.sub(r"<.*?>", "", m.group(2)))
    assert n_tables >= 20 and n_sections >= 40
    assert raw == {}, raw
    assert empty == {}, empty


def test_compare_runs_finds_every_changed_number(synthetic_training_run, tmp_path, capsys):
    """The before/after check of a refactoring: a run compared with its copy is identical; a changed table
    cell, a changed metric and a missing table are each reported, timings are not."""
    _, run_dir = synthetic_training_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    diffs, counts = runs.compare_runs(run_dir, copy)
    assert diffs.empty and counts["tables"] >= 20 and counts["metrics_files"] == 5
    t = pd.read_csv(copy / "tables" / "classification_results.csv")
    t.loc[0, "auc"] += 1e-12
    t.to_csv(copy / "tables" / "classification_results.csv", index=False)
    m = json.loads((copy / "metrics" / "04_stratify.json").read_text())
    m["n_events"] += 1
    m["seconds_in_notebook"] += 100  # a timing: not a difference
    (copy / "metrics" / "04_stratify.json").write_text(json.dumps(m))
    (copy / "tables" / "km_summary.parquet").unlink()
    steps = pd.read_csv(copy / "tables" / "run_summary.csv")
    steps["seconds"] += 1.0  # a timing column: not a difference
    steps.to_csv(copy / "tables" / "run_summary.csv", index=False)
    diffs, _ = runs.compare_runs(run_dir, copy)
    assert sorted(diffs["name"]) == ["04_stratify.json/n_events", "classification_results.csv", "km_summary.parquet"]
    assert cli.main(["compare", str(run_dir), str(copy)]) == 1 and "3 difference(s)" in capsys.readouterr().out


def test_each_method_sentence_is_the_runs_own_settings(synthetic_training_run):
    """01-04 say in words what this run did, with the values of its frozen params.yaml (the fast settings of the
    test run differ from the defaults, so a sentence written for the defaults fails here)."""
    import yaml

    _, run_dir = synthetic_training_run
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    shown = {step: (run_dir / f"{step}.ipynb").read_text() for step in ("01_segment", "03_classify", "04_stratify")}
    seg, cls, strat = params["segment"], params["classify"], params["stratify"]
    assert f"overlap {seg['overlap']:g}, Gaussian blending" in shown["01_segment"]
    assert f"{cls['outer_splits']} outer x {cls['inner_splits']} inner" in shown["03_classify"]
    assert f"with {cls['repeats']} seed(s)" in shown["03_classify"]
    assert (f"the smallest possible P is 1/{cls['n_permutations'] + 1}" in shown["03_classify"]
            if cls["n_permutations"] else "No permutation test" in shown["03_classify"])
    assert f"{strat['n_resamples']} random {strat['subsample']:.0%} subsets" in shown["04_stratify"]
    assert f"l1_ratio {strat['l1_ratio']:g}" in shown["04_stratify"]
    assert f"{strat['n_bootstrap']:,}-resample bootstrap" in shown["04_stratify"]


def test_method_sentences_follow_their_parameters():
    from glioma_nb.classify import step as classify_step
    from glioma_nb.stratify import step as stratify_step

    kw = dict(classifier="svm_rbf", selection="none", k_features=10, outer_splits=4, inner_splits=2, repeats=1,
              n_permutations=0, permutation="auto", n_bootstrap=200, baseline="clinical", min_class_size=5,
              diagnosis_features="all")
    text = classify_step.method_sentence(**kw)
    assert "RBF-kernel SVM" in text and "every feature (no selection)" in text and "No permutation test" in text
    text = classify_step.method_sentence(**{**kw, "n_permutations": 20, "selection": "univariate"},
                                         perm_methods=["fixed", "fixed"])
    assert "ANOVA F selection of at most 10" in text and "1/21" in text and "fixed, one CV at fixed" in text
    skw = dict(cluster_method="ward", k=3, k_max=4, n_resamples=50, subsample=0.8, pca_variance=0.9, adjust_for=[],
               min_events_per_variable=10, l1_ratio=1.0, outer_splits=5, inner_splits=3, repeats=2, min_events=10,
               horizons_years=[1, 3], calibration_years=2, risk_split="tertiles", n_bootstrap=500)
    text = stratify_step.method_sentence(**skw)
    assert "k = 3 (fixed)" in text and "ward on 50 random 80% subsets" in text and "keeping 90%" in text
    assert "10 events per covariate" in text and "1, 3 year(s)" in text and "tertiles" in text


def test_a_step_reads_its_parameters_from_the_frozen_config(synthetic_training_run):
    """Parameters are written once: what the step ran with is its config section, as frozen in the run."""
    _, run_dir = synthetic_training_run
    frozen = config.load_yaml(run_dir / "params.yaml")
    for step in STEPS[1:-1]:   # 00_preprocess: raw cohorts only; 06_longitudinal: serial cohorts only
        recorded = json.loads((run_dir / "metrics" / f"{step}.json").read_text())["params"]
        assert recorded == json.loads(json.dumps(frozen[step_section(step)])), step
    assert frozen["classify"]["repeats"] == 1  # the run's override (FAST_RUN), not the base default


def _tiny_run(tiny_cohort, steps=("01_segment", "03_classify")):
    return runner.create_run(str(tiny_cohort), steps=list(steps), progress=False)


def test_runs_never_overwrite_each_other(tiny_cohort, monkeypatch):
    monkeypatch.setattr(provenance, "make_run_id", lambda git=None, when=None: "20260101T000000Z_abc1234")
    a = _tiny_run(tiny_cohort)
    params_a = (a / "params.yaml").read_text()
    b = runner.create_run(str(tiny_cohort), ["project.seed=5"], steps=["03_classify"], progress=False)
    assert a != b and b.name == "20260101T000000Z_abc1234-2"
    assert (a / "params.yaml").read_text() == params_a


def test_invalid_cohort_creates_no_run_folder(tiny_cohort):
    (tiny_cohort.parent / "tiny" / "C01" / "C01_t1.nii.gz").unlink()
    before = set(paths.reports_dir().rglob("manifest.json")) if paths.reports_dir().exists() else set()
    with pytest.raises(Exception, match="missing t1 file"):
        _tiny_run(tiny_cohort)
    after = set(paths.reports_dir().rglob("manifest.json")) if paths.reports_dir().exists() else set()
    assert after == before


@pytest.mark.slow
def test_failed_step_is_recorded_and_resume_continues(tiny_cohort):
    run_dir = _tiny_run(tiny_cohort)
    victim = tiny_cohort.parent / "tiny" / "C02" / "C02_flair.nii.gz"
    keep = victim.read_bytes()
    victim.unlink()  # the cohort breaks after the run was created
    with pytest.raises(runs.RunError, match="step 01_segment failed") as err:
        runner.execute(run_dir, progress=False)
    assert "--resume" in str(err.value)
    m = runs.load_manifest(run_dir)
    assert m["status"] == "failed" and m["steps"][0]["status"] == "failed"
    assert "missing flair file" in m["steps"][0]["error"] and m["steps"][1]["status"] == "pending"
    assert (run_dir / "01_segment.ipynb").exists()  # partial notebook kept
    # inputs changed -> resume refuses
    victim.write_bytes(keep[:-10] + b"0123456789")
    with pytest.raises(runs.RunError, match="inputs changed"):
        runner.resume(run_dir, progress=False)
    assert runs.load_manifest(run_dir)["resumes"] == []  # a refused resume changes nothing
    victim.write_bytes(keep)
    # a case the failed attempt finished (mask + network signature) is a per-case cache: the resumed
    # step keeps and reuses it
    from glioma_nb import io
    from glioma_nb.segment import infer, models
    from glioma_nb.segment.step import signature_request

    cfg = config.load_yaml(run_dir / "params.yaml")
    cohort, _ = io.check_cohort(cfg, progress=False)
    spec = models.load_spec("brats-4mod")
    infer.segment_cohort(cohort, spec, models.load_model(spec), run_dir / "masks", case_ids=["C01"], progress=False,
                         signature=signature_request(cfg))
    m = runs.load_manifest(run_dir)
    m["steps"][0]["outputs"] += ["masks/C01.nii.gz", "masks/C01.json", "masks/C01.signature.parquet"]
    provenance.write_json_atomic(run_dir / "manifest.json", m)
    runner.resume(run_dir, progress=False)
    with open(run_dir / "tables" / "segmentation_cases.csv") as fh:
        cases = {r["case_id"]: r["status"] for r in csv.DictReader(fh)}
    assert cases == {"C00": "predicted", "C01": "cached", "C02": "predicted"}
    m = runs.load_manifest(run_dir)
    assert m["status"] == "completed" and [s["status"] for s in m["steps"]] == ["completed", "completed"]
    assert (run_dir / "attempts" / "01_segment.attempt1.ipynb").exists()
    assert len(m["resumes"]) == 1 and m["steps"][0]["attempts"][0]["error"]
    with pytest.raises(runs.RunError, match="already completed"):
        runner.resume(run_dir, progress=False)


def test_resume_after_a_killed_process_moves_its_orphaned_outputs_aside(tiny_cohort, monkeypatch):
    """A process killed mid-step records no outputs; the resumed step must not trip over its files."""
    import time

    run_dir = _tiny_run(tiny_cohort)
    m = runs.load_manifest(run_dir)
    setup_files = runner._list_files(run_dir)
    time.sleep(0.05)
    m["steps"][0].update(status="running", started_epoch=time.time(),
                         started_utc=provenance.utc_now().isoformat(timespec="seconds"))
    m["status"] = "running"
    provenance.write_json_atomic(run_dir / "manifest.json", m)
    time.sleep(0.05)
    (run_dir / "01_segment.ipynb").write_text("{}")
    (run_dir / "figures" / "01_segment__overlays.png").write_bytes(b"png")
    (run_dir / "masks").mkdir(exist_ok=True)
    (run_dir / "masks" / "C00.nii.gz").write_bytes(b"mask")  # a finished case: a cache, kept in place
    monkeypatch.setattr(runner, "execute", lambda rd, progress=True: rd)  # only the tidying is under test
    runner.resume(run_dir, progress=False)
    assert not (run_dir / "figures" / "01_segment__overlays.png").exists()
    assert (run_dir / "attempts" / "01_segment.attempt1" / "figures" / "01_segment__overlays.png").exists()
    assert (run_dir / "attempts" / "01_segment.attempt1.ipynb").exists()
    assert (run_dir / "masks" / "C00.nii.gz").exists()
    assert setup_files <= runner._list_files(run_dir)  # params, qc tables of the set-up stay
    step = runs.load_manifest(run_dir)["steps"][0]
    assert step["status"] == "pending" and "figures/01_segment__overlays.png" in step["attempts"][0]["outputs"]


def test_study_resume_resumes_an_interrupted_training_run(tmp_path, monkeypatch):
    """study --resume continues the training run it recorded instead of starting another."""
    monkeypatch.setenv("GLIOMA_NB_REPORTS", str(tmp_path / "reports"))
    train = tmp_path / "reports" / "c" / "R1"
    train.mkdir(parents=True)
    (train / "manifest.json").write_text(json.dumps({"status": "failed", "cohort": "c", "run_id": "R1"}))
    sdir = tmp_path / "reports" / "studies" / "s" / "S1"
    sdir.mkdir(parents=True)
    (sdir / "study.json").write_text(json.dumps({"name": "s", "status": "running", "overrides": [],
                                                 "training": {"cohort": "c", "run": "c/R1", "run_id": "R1"},
                                                 "validation": []}))
    resumed = []

    def fake_resume(rd, progress=True):
        resumed.append(Path(rd).name)
        raise runs.RunError("stop here")

    monkeypatch.setattr(runner, "resume_run", fake_resume)
    with pytest.raises(runs.RunError, match="stop here"):
        runner.run_study(resume=str(sdir), progress=False)
    assert resumed == ["R1"] and json.loads((sdir / "study.json").read_text())["status"] == "failed"


def test_cli_refuses_overrides_with_resume(capsys):
    assert cli.main(["run", "--resume", "x", "--set", "project.seed=1"]) == 2
    assert "frozen" in capsys.readouterr().err


def test_scrub_text_replaces_local_roots():
    text = f"{paths.project_root()}/notebooks/x {Path.home()}/y {paths.shared_data_dir()}/brats18"
    out = runs.scrub_text(text)
    assert str(paths.project_root()) not in out and "<shared>/brats18" in out


def test_interactive_open_step_creates_a_run_with_the_notebook_parameters(tiny_cohort):
    """JupyterLab "Run All" (run_dir == "") takes the runner's path: a new run folder, parameters frozen."""
    ctx = runner.open_step("03_classify", run_dir="", cohort=str(tiny_cohort), overrides=["project.seed=3"],
                           params={"min_class_size": 1}, upstream="none")
    assert ctx.run_dir.parent == paths.reports_dir() / "tiny"
    frozen = config.load_yaml(ctx.run_dir / "params.yaml")
    assert frozen["classify"]["min_class_size"] == 1 and frozen["project"]["seed"] == 3
    assert len(ctx.cohort.cases) == 3 and list(ctx.case_table["case_id"]) == ["C00", "C01", "C02"]
    ctx.record(answer=42)
    out = ctx.finish()
    m = runs.load_manifest(ctx.run_dir)
    assert m["mode"] == "interactive" and m["steps"] == [{"name": "03_classify", "status": "completed", "metrics": out}]
    assert json.loads((ctx.run_dir / "metrics" / "03_classify.json").read_text())["answer"] == 42
    ctx.save_table(ctx.case_table, "t")
    with pytest.raises(FileExistsError, match="never overwritten"):
        ctx.save_table(ctx.case_table, "t")


@pytest.mark.slow
def test_segment_notebook_trains_when_asked(tiny_cohort):
    """segment.train: the notebook trains on the cohort, scores only the held-out patients, logs the training."""
    # segment.backend torch: the network trained here is segmenting 1 case, not worth an OpenVINO conversion in a test
    run_dir = runner.create_run(str(tiny_cohort), ["segment.train=true", "segment.train_iterations=4", "segment.backend=torch"],
                                steps=["01_segment"], progress=False)
    runner.execute(run_dir, progress=False)
    seg = runs.load_manifest(run_dir)["steps"][0]["metrics"]
    assert seg["weights"].startswith("trained in this run (4 iterations on 2 cases)")
    assert seg["dice_WT_n"] == 1 and seg["n_trained_on"] == 2 and seg["n_segmented"] == 3
    assert (run_dir / "models" / "segment__brats-4mod" / "train_log.csv").exists()
    assert (run_dir / "figures" / "01_segment__train_log.png").exists()


def _completed_run(cohort_yaml, steps=("01_segment", "02_signature"), status="completed", mode="runner", features=True):
    """A run folder of ``cohort_yaml`` whose ``steps`` are marked ``status`` (and a planted feature table)."""
    rd = runner.create_run(str(cohort_yaml), steps=list(steps), progress=False)
    m = runs.load_manifest(rd)
    m["status"], m["mode"] = status, mode
    for e in m["steps"]:
        e["status"] = status
    (rd / "manifest.json").write_text(json.dumps(m))
    if features:
        X = pd.DataFrame({"case_id": ["C00", "C01", "C02"], "f_planted": [1.0, 2.0, 3.0]})
        X.to_parquet(rd / "tables" / "features_signature.parquet", index=False)
    return rd


def test_an_interactive_step_builds_on_the_latest_completed_run_and_never_writes_into_it(tiny_cohort, capsys,
                                                                                         monkeypatch, tmp_path):
    monkeypatch.setenv("GLIOMA_NB_REPORTS", str(tmp_path / "reports"))  # only this test's runs of "tiny"
    old = _completed_run(tiny_cohort)
    newest = _completed_run(tiny_cohort)
    _completed_run(tiny_cohort, status="failed")          # newer, but failed
    _completed_run(tiny_cohort, mode="interactive")       # newer, but an interactive run
    _completed_run(tiny_cohort, steps=("01_segment",))    # newer, completed, but without the features 03 reads
    assert runs.latest_completed_run("tiny", "03_classify") == newest.resolve() != old.resolve()
    before = runs.tree_hashes(newest)
    ctx = runner.open_step("03_classify", cohort=str(tiny_cohort), overrides=["classify.repeats=1"])
    out = capsys.readouterr().out
    assert f"upstream: {paths.display_path(newest)} (the latest completed run of tiny" in out
    assert ctx.upstream == newest.resolve() and ctx.inputs == ctx.upstream and ctx.run_dir != ctx.upstream
    assert list(ctx.feature_tables()["signature"]["f_planted"]) == [1.0, 2.0, 3.0]
    assert ctx.params["repeats"] == 1 and not ctx.read_only
    ctx.save_table(ctx.case_table, "t")
    ctx.finish()
    m = runs.load_manifest(ctx.run_dir)
    assert m["mode"] == "interactive" and m["upstream"]["run_id"] == newest.name
    assert m["upstream"]["steps"] == {"01_segment": "completed", "02_signature": "completed"}
    assert (ctx.run_dir / "tables" / "t.csv").exists() and runs.tree_hashes(newest) == before
    # reopened by its folder (a kernel restarted mid-analysis), the interactive run keeps its upstream
    again = runner.open_step("03_classify", run_dir=str(ctx.run_dir))
    assert again.upstream == newest.resolve() and again.read_only  # its step is completed: read-only now
    newest.rename(newest.with_name("moved-away"))
    capsys.readouterr()
    orphan = runner.open_step("03_classify", run_dir=str(ctx.run_dir))
    assert orphan.upstream is None and "upstream run tiny/" in capsys.readouterr().out


def test_an_upstream_is_named_or_refused_with_the_fix(tiny_cohort, monkeypatch, tmp_path):
    monkeypatch.setenv("GLIOMA_NB_REPORTS", str(tmp_path / "reports"))
    with pytest.raises(runs.RunError, match="no completed run of cohort 'tiny'.*make run-all COHORT=tiny"):
        runner.open_step("04_stratify", cohort=str(tiny_cohort))
    partial = _completed_run(tiny_cohort, steps=("01_segment",))
    with pytest.raises(runs.RunError, match=r"has not completed \['02_signature'\], which 04_stratify reads"):
        runner.open_step("04_stratify", cohort=str(tiny_cohort), upstream=str(partial))
    ctx = runner.open_step("02_signature", cohort=str(tiny_cohort), upstream=f"tiny/{partial.name}")
    assert ctx.upstream == partial.resolve()
    alone = runner.open_step("04_stratify", cohort=str(tiny_cohort), upstream="none")
    assert alone.upstream is None and alone.inputs == alone.run_dir and alone.feature_tables() == {}


def test_a_completed_run_reopened_is_read_only_and_its_placeholders_resolve(tiny_cohort, monkeypatch, capsys):
    rd = _completed_run(tiny_cohort)
    before = runs.tree_hashes(rd)
    monkeypatch.chdir(rd)  # JupyterLab starts an executed report's kernel in the report's folder
    for name in ("<run>", f"<reports>/tiny/{rd.name}", str(rd)):
        ctx = runner.open_step("02_signature", run_dir=name)
        assert ctx.run_dir.resolve() == rd.resolve() and ctx.read_only
    assert "read-only" in capsys.readouterr().out
    out = ctx.save_table(ctx.case_table, "case_table_again")
    assert not out.is_relative_to(rd) and out.exists()
    ctx.record(x=1)
    ctx.finish()
    assert runs.tree_hashes(rd) == before
    monkeypatch.chdir(rd.parent)  # a report copied out of its run folder cannot find its run
    with pytest.raises(runs.RunError, match="not a run folder"):
        runner.open_step("02_signature", run_dir="<run>")


def test_a_step_seeds_torch_when_it_first_imports_it_and_a_step_without_torch_never_loads_it():
    """open_step seeds python, numpy and torch; torch is seeded on its first import (03-05 never import it: 1.6 s
    of every such kernel's start), with the step's seed, as if it had been imported to be seeded."""
    import subprocess
    import sys

    code = """
import sys
from glioma_nb import explore, runner
from glioma_nb.classify import step
from glioma_nb.stratify import step
from glioma_nb.validate import step
print(sorted(m for m in ("torch", "nbformat", "papermill", "nbconvert") if m in sys.modules))
runner.seed_everything(123)
assert "torch" not in sys.modules
import torch
a = torch.rand(3)
torch.manual_seed(123)
assert torch.equal(a, torch.rand(3)), "not seeded on import"
runner.seed_everything(5)
b = torch.rand(2)
torch.manual_seed(5)
assert torch.equal(b, torch.rand(2)), "not seeded when already imported"
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"   # nor papermill and nbformat (1.5 s: jsonschema's IRI grammar)
