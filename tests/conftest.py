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


@pytest.fixture(scope="session", autouse=True)
def _converted_networks(tmp_path_factory: pytest.TempPathFactory):
    """OpenVINO conversions (glioma_nb.segment.backend) are cached in the session's folder, shared by its
    pytest-xdist workers, never in the user's cache."""
    base = tmp_path_factory.getbasetemp()
    mp = pytest.MonkeyPatch()
    mp.setenv("GLIOMA_NB_CACHE", str((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "cache"))
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


@pytest.fixture(scope="session")
def synthetic_training_run(synthetic_small, tmp_path_factory):
    """A complete run (all five steps, fast settings) of the 12-case synthetic cohort, made once per
    session: the end-to-end runner test checks it, the validation tests lock its models. Under pytest-xdist
    (``make test`` runs 2 workers) the first worker that needs it makes it, under a file lock, and every other
    worker gets a copy of the finished run folder in its own reports folder (same run id)."""
    from glioma_nb import runner

    def make() -> tuple[Path, Path]:
        base = tmp_path_factory.mktemp("trainrun")
        y = synthetic_yaml(synthetic_small, base / "synsmall.yaml")
        mp = pytest.MonkeyPatch()  # the session-wide reports folder (the autouse fixture is per test)
        mp.setenv("GLIOMA_NB_REPORTS", str(tmp_path_factory.getbasetemp() / "reports"))
        mp.setenv("GLIOMA_NB_DATA", str(tmp_path_factory.getbasetemp() / "data"))
        try:
            return y, runner.run(str(y), FAST_RUN, progress=False)
        finally:
            mp.undo()

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make()
    shared = tmp_path_factory.getbasetemp().parent        # the session's folder, above every worker's
    record = shared / "synthetic_training_run.json"
    with FileLock(str(shared / "synthetic_training_run.lock")):
        if not record.exists():
            y, run_dir = make()
            record.write_text(json.dumps({"yaml": str(y), "run_dir": str(run_dir)}))
    made = json.loads(record.read_text())
    src = Path(made["run_dir"])
    own = tmp_path_factory.getbasetemp() / "reports" / src.parent.name / src.name
    if not own.exists():
        shutil.copytree(src, own)
    return Path(made["yaml"]), own
