"""glioma-nb predict: a folder of BraTS-named scans in, masks, volumes, signature and feature tables out, without a
cohort YAML; the same folder again resumes or says it is done; another input there is refused."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import AFFINE, SHAPE, sphere_label

from glioma_nb import cli, provenance, runner, runs
from glioma_nb.api import predict as predict_api


CASES = ("BraTS-GLI-00000-000", "BraTS-GLI-00002-001", "BraTS-GLI-00003-000")


def _scans(root: Path, names: str = "brats2023", cases=CASES,
           seg: bool = True) -> Path:
    """Case folders named as BraTS 2023+ (``<case>-t1n.nii.gz``, -t1c, -t2w, -t2f, -seg; ET = 3) or BraTS 2018-2021
    (``<case>_t1.nii.gz``, _t1ce, _t2, _flair, _seg; ET = 4) name them: a bright sphere in noise."""
    lab = sphere_label()
    if names == "brats2023":
        lab[lab == 4] = 3
    sep, suffixes = ("-", ("t1n", "t1c", "t2w", "t2f")) if names == "brats2023" else ("_", ("t1", "t1ce", "t2", "flair"))
    rng = np.random.default_rng(5)
    brain = np.zeros(SHAPE, bool)
    brain[2:-2, 2:-2, 1:-1] = True
    for cid in cases:
        (root / cid).mkdir(parents=True)
        for s in suffixes:
            data = np.where(brain, rng.normal(500, 50, SHAPE) + 300 * (lab > 0), 0).astype(np.float32)
            nib.save(nib.Nifti1Image(data, AFFINE), root / cid / f"{cid}{sep}{s}.nii.gz")
        if seg:
            nib.save(nib.Nifti1Image(lab, AFFINE), root / cid / f"{cid}{sep}seg.nii.gz")
    return root


def test_the_layout_modalities_and_labels_are_found_by_their_names(tmp_path):
    found = predict_api.detect(_scans(tmp_path / "b23"))
    assert (found["layout"], found["modalities"], found["labels"]) == ("brats2023", ["t1", "t1c", "t2", "flair"], True)
    found = predict_api.detect(_scans(tmp_path / "b21", names="brats2018", cases=("P1",), seg=False))
    assert (found["layout"], found["cases"], found["labels"]) == ("brats", ["P1"], False)
    (tmp_path / "b21" / "P1" / "P1_t2.nii.gz").unlink()              # a modality one case lacks is not used
    assert predict_api.detect(tmp_path / "b21")["modalities"] == ["t1", "t1c", "flair"]


def test_folders_it_cannot_read_are_named_with_the_fix(tmp_path):
    with pytest.raises(predict_api.PredictError, match="no such folder"):
        predict_api.detect(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "scan_0000.nii.gz").write_bytes(b"")
    with pytest.raises(predict_api.PredictError, match="no case folders"):
        predict_api.detect(tmp_path / "flat")
    (tmp_path / "other" / "A").mkdir(parents=True)
    (tmp_path / "other" / "A" / "A_0000.nii.gz").write_bytes(b"")
    with pytest.raises(predict_api.PredictError, match=r"BraTS 2023\+[\s\S]*layout per_case or manifest"):
        predict_api.detect(tmp_path / "other")
    root = _scans(tmp_path / "mixed")
    (root / "stray").mkdir()
    with pytest.raises(predict_api.PredictError, match="1 of 4 case folder.*stray"):
        predict_api.detect(root)


def test_predict_writes_masks_volumes_signature_resumes_and_never_overwrites(tmp_path, capsys):
    inp = _scans(tmp_path / "scans")
    out = tmp_path / "out"
    flair = ["--model", "flair-wt", "--modalities", "flair"]   # one network on one modality: the quickest model
    assert cli.main(["predict", str(inp), str(out), *flair]) == 0
    rec = json.loads((out / "predict.json").read_text())
    assert rec["status"] == "completed" and rec["request"]["layout"] == "brats2023" and rec["n_masks"] == 3
    assert rec["model"] == "flair-wt" and rec["request"]["modalities"] == ["flair"]
    vols = pd.read_csv(out / "volumes.csv").set_index("case_id")
    for cid in CASES:
        img = nib.load(out / "masks" / f"{cid}.nii.gz")
        assert img.shape == SHAPE and np.allclose(img.affine, AFFINE)    # on the scans' own grid
        wt_ml = float((np.asarray(img.dataobj) > 0).sum()) * abs(np.linalg.det(AFFINE[:3, :3])) / 1000
        assert vols.loc[cid, "WT_ml"] == pytest.approx(wt_ml, abs=1e-3)
    sig = pd.read_csv(out / "signature.csv")
    assert len(sig) == 3 and sig.shape[1] > 10 and (out / "features_volumetric.csv").exists()
    html = (out / "summary.html").read_text()
    assert "<title>glioma-nb predict: 3 case(s) of scans</title>" in html and "Table 1. Tumour volumes" in html
    assert "01_segment.html" in html and "02_signature.html" in html
    run_dir = Path(rec["run_dir"])
    assert (run_dir / "02_signature.html").exists() and runs.load_manifest(run_dir)["status"] == "completed"
    # the reference label maps were found (BraTS 2023+ labels: ET = 3) and scored
    assert json.loads((run_dir / "metrics" / "01_segment.json").read_text())["dice_WT_n"] == 3
    assert (run_dir / "figures" / "02_signature__pca.png").exists()    # 3 cases, no clinical table: PCA uncoloured
    capsys.readouterr()
    # again: nothing to do
    assert cli.main(["predict", str(inp), str(out), *flair]) == 0
    assert "already complete" in capsys.readouterr().out
    # killed while 02 ran: the same command resumes it
    m = runs.load_manifest(run_dir)
    m["status"], m["steps"][1]["status"] = "running", "running"
    provenance.write_json_atomic(run_dir / "manifest.json", m)
    provenance.write_json_atomic(out / "predict.json", {**rec, "status": "running"})
    assert cli.main(["predict", str(inp), str(out), *flair]) == 0
    m = runs.load_manifest(run_dir)
    assert m["status"] == "completed" and len(m["resumes"]) == 1 and (run_dir / "attempts").exists()
    assert json.loads((out / "predict.json").read_text())["status"] == "completed"
    # another model or another folder's scans into the same OUTPUT_DIR: refused, nothing changed
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert cli.main(["predict", str(inp), str(out)]) == 2                  # brats-4mod on all four: another setting
    assert "never overwritten" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert cli.main(["predict", str(inp), str(tmp_path)]) == 2        # a folder that is not a predict folder
    assert "not a glioma-nb predict folder" in capsys.readouterr().err
    assert cli.main(["predict", str(inp), str(tmp_path / "d"), "--dicom-seg"]) == 2
    assert "DICOM series" in capsys.readouterr().err


def test_a_call_that_stopped_before_its_run_existed_leaves_the_folder_to_the_next(tmp_path, monkeypatch):
    """A run the runner refuses to create leaves only the predict record; the next
    call, with other settings, starts afresh instead of refusing the folder."""
    inp = _scans(tmp_path / "scans", cases=CASES[:1])
    out = tmp_path / "out"

    def refuse(*a, **k):
        raise runs.RunError("refused")

    monkeypatch.setattr(runner, "create_run", refuse)
    with pytest.raises(runs.RunError, match="refused"):
        predict_api.predict(inp, out, model="flair-wt", modalities=["flair"], progress=False)
    assert json.loads((out / "predict.json").read_text())["run_dir"] is None
    monkeypatch.setattr(runner, "create_run", lambda *a, **k: (_ for _ in ()).throw(runs.RunError("again")))
    with pytest.raises(runs.RunError, match="again"):    # another setting: not "holds the prediction of another"
        predict_api.predict(inp, out, model="brats-4mod", progress=False)
