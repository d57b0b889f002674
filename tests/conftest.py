"""Shared fixtures: tiny seeded NIfTI cohorts with a non-identity affine, isolated report/data folders."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from filelock import FileLock  # noqa: E402

from glioma_nb import paths  # noqa: E402

SHARED = paths.shared_data_dir()
AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, -2.0, 0, 40.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])
SHAPE = (24, 28, 16)
SPHERE_RADIUS_MM = 9.0


def requires_shared(sub: str = "") -> pytest.MarkDecorator:
    """Skip (with the reason) when ../shared/data or one of its folders is absent."""
    target = SHARED / sub
    return pytest.mark.skipif(not target.exists(), reason=f"shared data not present: {target} (CI has it)")


#: session and module fixtures that take tens of seconds to minutes, most expensive first. Under pytest-xdist each
#: worker builds its own copy of a fixture it needs; ``make test`` runs ``--dist loadgroup``, and the hook below sends
#: every test on one of these to one worker (the first of them it uses names the group). The training run is not
#: among them: it is built once for both workers, in the background (``pytest_collection_finish``).
EXPENSIVE_FIXTURES = ("zoo", "synthetic_40", "serial_cohort", "simulated", "made", "collection", "upenn_all")


#: tests that take 20 s or more (``make test`` and ``make check`` list the slowest) without the training run or an
#: expensive fixture: scheduled first
LONG_TESTS = ("test_a_2_worker_local_cluster_gives_the_serial_tables_and_a_killed_case_is_redone",
              "test_failed_step_is_recorded_and_resume_continues", "test_segment_notebook_trains_when_asked",
              "test_a_raw_cohort_run_preprocesses_first_and_later_steps_read_brats_space",
              "test_a_wrong_series_is_flagged_not_passed", "test_grid_in_parallel_equals_serial_and_resumes_from_its_cache",
              "test_ddp_on_2_cpu_processes_gives_the_weights_of_one_process_with_the_same_global_batch",
              "test_every_pinned_package_imports_in_a_fresh_interpreter",
              "test_predict_writes_masks_volumes_signature_resumes_and_never_overwrites",
              # make check's (-m check)
              "test_the_shipped_models_brats18_masks_score_as_the_official_evaluation_scores_them",
              "test_the_shipped_out_of_fold_table_rescored_keeps_its_masks_and_takes_the_official_hd95",
              "test_the_flair_wt_card_rescored_keeps_its_dice_and_takes_the_official_hd95")


def _order(item: pytest.Item) -> int:
    """Longest first, so that two workers end together: the long tests and the expensive fixtures' groups while the
    training run is built in the background, then the tests on the training run (the study first: 2 minutes), then
    the rest, seconds each, which fill in whatever time one worker has left."""
    names = getattr(item, "fixturenames", ())
    if TRAINING_RUN in names:
        return 1 if "study" in item.name else 2
    if item.originalname in LONG_TESTS or any(f in names for f in EXPENSIVE_FIXTURES):
        return 0
    return 3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (make test): the tests in the order of :func:`_order` (every worker collects the
    same order), and the tests on one expensive fixture in one group. pytest-xdist 3.8's loadgroup names a test's
    group by suffixing ``item._nodeid``, which pytest 9 no longer reads (a node's id is ``item._id``): its own
    ``xdist_group`` marker groups nothing here. The suffix is set on ``_id`` instead, the way its scheduler
    (``LoadGroupScheduling``: the scope after the last "@") reads it."""
    if not getattr(config.option, "loadgroup", False):   # set on each worker from --dist loadgroup
        return
    from _pytest.nodeid import NodeId

    items[:] = sorted(items, key=_order)
    for item in items:
        names = getattr(item, "fixturenames", ())
        used = [f for f in EXPENSIVE_FIXTURES if f in names]
        # a test on the training run is not grouped: groups are scheduled by size, before it is built
        if used and TRAINING_RUN not in names and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{used[0]}")


@pytest.fixture(scope="session", autouse=True)
def _converted_networks(pytestconfig: pytest.Config):
    """OpenVINO conversions (glioma_nb.segment.backend) are cached in the session's folder, shared by its
    pytest-xdist workers, never in the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GLIOMA_NB_CACHE", str(_session_folder(pytestconfig) / "cache"))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs and generated data of a test never land in the project's reports/ or data/."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("GLIOMA_NB_REPORTS", str(base / "reports"))
    monkeypatch.setenv("GLIOMA_NB_DATA", str(base / "data"))


def sphere_label(shape=SHAPE, affine=AFFINE, radius_mm=SPHERE_RADIUS_MM) -> np.ndarray:
    """BraTS-2018 label map: a sphere (WT) whose inner half-radius core is 1 and a shell of 4 inside it."""
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    r = np.sqrt(((xyz - centre[:, None, None, None]) ** 2).sum(0))
    lab = np.zeros(shape, np.uint8)
    lab[r <= radius_mm] = 2
    lab[r <= 0.7 * radius_mm] = 4
    lab[r <= 0.4 * radius_mm] = 1
    return lab


def write_brats_cohort(root: Path, n: int = 3, seed: int = 0) -> Path:
    """A tiny valid cohort in BraTS layout (4 modalities + seg + clinical.csv); returns its YAML path."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lab = sphere_label()
    brain = np.zeros(SHAPE, bool)
    brain[2:-2, 2:-2, 1:-1] = True
    rows = []
    for i in range(n):
        cid = f"C{i:02d}"
        (root / cid).mkdir()
        for suffix in ("t1", "t1ce", "t2", "flair"):
            data = np.where(brain, rng.normal(500, 50, SHAPE) + 200 * (lab > 0), 0).astype(np.float32)
            nib.save(nib.Nifti1Image(data, AFFINE), root / cid / f"{cid}_{suffix}.nii.gz")
        nib.save(nib.Nifti1Image(lab, AFFINE), root / cid / f"{cid}_seg.nii.gz")
        rows.append({"case_id": cid, "age": 40 + i, "sex": "F" if i % 2 else "M", "grade": ["II", "III", "IV"][i % 3],
                     "idh": ["mutant", "wildtype"][i % 2], "os_months": 10.0 + i, "dead": i % 2})
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    cfg = {"cohort": {"root": str(root), "layout": "brats", "label": {"present": True, "scheme": "brats2018"},
                      "clinical": {"file": "clinical.csv", "id_column": "case_id", "time_unit": "months",
                                   "columns": {"age": "age", "sex": "sex", "who_grade": "grade", "idh_mutant": "idh",
                                               "os_time": "os_months", "os_event": "dead"}}}}
    path = root.parent / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny_cohort(tmp_path: Path) -> Path:
    """YAML path of a fresh 3-case cohort (each test may break it as it likes)."""
    return write_brats_cohort(tmp_path / "tiny")


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-case synthetic cohort (2 mm), generated once per test session."""
    from glioma_nb import synthetic

    out = tmp_path_factory.mktemp("syn") / "n12"
    return synthetic.generate_cohort(out, synthetic.SyntheticSpec(n_cases=12, seed=7), progress=False)


def synthetic_yaml(root: Path, dest: Path, **cohort_extra) -> Path:
    """A cohort YAML reading an existing synthetic folder (the built-in synthetic.yaml with root set)."""
    cfg = yaml.safe_load((paths.configs_dir() / "cohorts" / "synthetic.yaml").read_text())
    cfg["cohort"]["source"] = "files"
    cfg["cohort"]["root"] = str(root)
    cfg["cohort"].update(cohort_extra)
    dest.write_text(yaml.safe_dump(cfg))
    return dest


@pytest.fixture(scope="session")
def synthetic_40(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """YAML of a 40-case synthetic cohort (the default size, 2 mm), generated once per test session."""
    from glioma_nb import synthetic

    base = tmp_path_factory.mktemp("syn40")
    root = synthetic.generate_cohort(base / "n40", synthetic.SyntheticSpec(n_cases=40, seed=11), progress=False)
    return synthetic_yaml(root, base / "syn40.yaml")


def planted_table(n: int = 80, p: int = 20, signal: float = 1.5, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Binary labels and ``p`` Gaussian features, of which ``f0`` is shifted by ``signal`` in class 1."""
    rng = np.random.default_rng(seed)
    y = pd.Series(rng.integers(0, 2, n), index=[f"c{i}" for i in range(n)])
    X = pd.DataFrame(rng.normal(size=(n, p)), index=y.index, columns=[f"f{j}" for j in range(p)])
    X["f0"] += signal * y
    return X, y


FAST_RUN = ["segment.n_overlay_cases=2", "classify.n_permutations=5", "classify.repeats=1", "classify.n_bootstrap=100",
            "classify.permutation=fixed", "signature.stability.perturbations=[erode, dilate]",
            "stratify.n_resamples=20", "stratify.repeats=1", "stratify.n_bootstrap=50"]


TRAINING_RUN = "synthetic_training_run"


def shared_training_run(shared: Path) -> dict[str, str]:
    """The 12-case synthetic cohort (seed 7, as ``synthetic_small``) and its complete run (all five steps, fast
    settings), made once in ``shared`` under a file lock; returns ``{"yaml", "run_dir"}``. A failed build leaves no
    record, and the next caller builds it again and fails with the real error."""
    from glioma_nb import runner, synthetic

    record = shared / f"{TRAINING_RUN}.json"
    with FileLock(str(shared / f"{TRAINING_RUN}.lock")):
        if not record.exists():
            base = shared / "trainrun"
            if base.exists():
                shutil.rmtree(base)         # what a killed build left
            root = synthetic.generate_cohort(base / "syn" / "n12", synthetic.SyntheticSpec(n_cases=12, seed=7),
                                             progress=False)
            y = synthetic_yaml(root, base / "synsmall.yaml")
            mp = pytest.MonkeyPatch()
            mp.setenv("GLIOMA_NB_REPORTS", str(base / "reports"))
            mp.setenv("GLIOMA_NB_DATA", str(base / "data"))
            try:
                run_dir = runner.run(str(y), FAST_RUN, progress=False)
            finally:
                mp.undo()
            record.write_text(json.dumps({"yaml": str(y), "run_dir": str(run_dir)}))
    return json.loads(record.read_text())


def _session_folder(config: pytest.Config) -> Path:
    """The session's folder: above every pytest-xdist worker's own, or the session's own without workers."""
    base = config._tmp_path_factory.getbasetemp()
    return base.parent if hasattr(config, "workerinput") else base


def pytest_collection_finish(session: pytest.Session) -> None:
    """The first pytest-xdist worker whose tests need the training run starts building it in a background process
    (tests/build_training_run.py), so that no worker waits minutes for it on a lock: the tests that use it are
    spread over both workers and reach it after it is made (about 3 minutes of the suite's first 5)."""
    config = session.config
    if not hasattr(config, "workerinput") or not any(TRAINING_RUN in getattr(i, "fixturenames", ())
                                                     for i in session.items):
        return
    shared = _session_folder(config)
    try:
        fd = os.open(shared / f"{TRAINING_RUN}.started", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return                                   # the other worker started it
    os.close(fd)
    import subprocess
    import sys

    env = {**os.environ, "GLIOMA_NB_CACHE": str(shared / "cache")}   # the workers' cache, never the user's
    with open(shared / f"{TRAINING_RUN}.log", "w") as log:                # the child keeps its own handle
        config._training_run_builder = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("build_training_run.py")), str(shared)], env=env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(Path(__file__).parent.parent))


def pytest_sessionfinish(session: pytest.Session) -> None:
    builder = getattr(session.config, "_training_run_builder", None)
    if builder is not None and builder.poll() is None:   # an interrupted session leaves no build behind
        builder.kill()
        builder.wait()


@pytest.fixture(scope="session")
def synthetic_training_run(tmp_path_factory, pytestconfig):
    """A complete run (all five steps, fast settings) of a 12-case synthetic cohort, made once per session: the
    end-to-end runner test checks it, the validation tests lock its models. Under pytest-xdist (``make test`` runs
    2 workers) it is built in the background from the start of the session (``pytest_collection_finish``); each
    worker waits on its lock and gets a copy of the finished run folder in its own reports folder (same run id).
    Returns the cohort's YAML and the run folder."""
    made = shared_training_run(_session_folder(pytestconfig))
    src = Path(made["run_dir"])
    own = tmp_path_factory.getbasetemp() / "reports" / src.parent.name / src.name
    if not own.exists():
        shutil.copytree(src, own)
    return Path(made["yaml"]), own
