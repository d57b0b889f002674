"""nnU-Net folders written by nnU-Net's own training, not by our `models example`: nnUNetv2_plan_and_preprocess and
nnUNetv2_train (the trainer variant nnUNetTrainer_1epoch, as published BraTS models use variants) for the default
plans and for the residual-encoder planner nnUNetPlannerResEncM, on brats18 cases at 5 mm (a synthetic
four-modality cohort without ../shared/data). Each folder imported with `glioma-nb models import` segments
voxel-identically to `nnUNetv2_predict` on the same files, with its signature layers in the same pass.

Minutes of CPU (two trainings of 250 iterations), so `make test` skips it; `make check-models` runs it
(GLIOMA_NB_CHECK_MODELS=1) and prints the minutes each step took.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import SHARED

from glioma_nb import io, taps
from glioma_nb.segment import examples, infer, registry

pytestmark = pytest.mark.skipif(not os.environ.get("GLIOMA_NB_CHECK_MODELS"),
                                reason="minutes of nnU-Net training: run by `make check-models`")
MODS = ("t1", "t1c", "t2", "flair")
DATASET = 995
NAME = f"Dataset{DATASET}_GliomaNbCheck"
PLANNERS = {"default": ("ExperimentPlanner", "nnUNetPlans"), "resenc-m": ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans")}
TRAINER = "nnUNetTrainer_1epoch"
N_TRAIN, N_TEST = 6, 2


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _low_res_cohort(root: Path) -> io.Cohort:
    """brats18 cases resampled to 5 mm (or the synthetic four-modality cases of test_model_kinds): BraTS 2018
    labels, one folder per case."""
    import SimpleITK as sitk

    src = SHARED / "brats18"
    cases = []
    if src.exists():
        for d in sorted(p for p in src.iterdir() if p.is_dir())[: N_TRAIN + N_TEST]:
            out = root / d.name
            out.mkdir(parents=True)
            images = {}
            for m, f in (("t1", "t1"), ("t1c", "t1ce"), ("t2", "t2"), ("flair", "flair"), ("seg", "seg")):
                img = sitk.ReadImage(str(d / f"{d.name}_{f}.nii.gz"))
                size = [int(round(n * s / 5.0)) for n, s in zip(img.GetSize(), img.GetSpacing())]
                small = sitk.Resample(img, size, sitk.Transform(), sitk.sitkNearestNeighbor if m == "seg" else
                                      sitk.sitkLinear, img.GetOrigin(), (5.0, 5.0, 5.0), img.GetDirection(), 0,
                                      img.GetPixelID())
                sitk.WriteImage(small, str(out / f"{m}.nii.gz"))
                images[m] = out / f"{m}.nii.gz"
            label = images.pop("seg")
            cases.append(io.Case(d.name, images, label))
        return io.Cohort("brats18-5mm", root, cases, pd.DataFrame(index=[c.case_id for c in cases]), MODS,
                         io.LABEL_SCHEMES["brats2018"])
    from test_model_kinds import brats_cohort

    return brats_cohort(root, n=N_TRAIN + N_TEST)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet-own")
    cohort = _low_res_cohort(root / "cohort")
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "results"), "nnUNet_n_proc_DA": "1", "nnUNet_compile": "false"}
    raw = root / "raw" / NAME
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / sub).mkdir(parents=True)
    for i, c in enumerate(cohort.cases):
        images = raw / ("imagesTr" if i < N_TRAIN else "imagesTs")
        for k, m in enumerate(MODS):
            shutil.copy(c.images[m], images / f"{c.case_id}_{k:04d}.nii.gz")
        if i < N_TRAIN:
            lab = nib.load(c.label)
            nib.save(nib.Nifti1Image(examples._label_values(np.asanyarray(lab.dataobj), "brats", "brats2018"),
                                     lab.affine), raw / "labelsTr" / f"{c.case_id}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {str(k): examples.CHANNEL_NAMES[m] for k, m in enumerate(MODS)},
        "labels": examples.DATASET_LABELS["brats"], "numTraining": N_TRAIN, "file_ending": ".nii.gz"}, indent=1))
    minutes, folders = {}, {}

    def run(step: str, *cmd: str) -> None:
        t = time.perf_counter()
        r = subprocess.run(list(cmd), env=env, capture_output=True, text=True)
        minutes[step] = round((time.perf_counter() - t) / 60, 2)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"

    for key, (planner, plans) in PLANNERS.items():
        run(f"plan_and_preprocess {key}", _bin("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET), "-c", "3d_fullres",
            "-pl", planner, "-np", "1", "--verify_dataset_integrity")
        run(f"train {key}", _bin("nnUNetv2_train"), str(DATASET), "3d_fullres", "0", "-tr", TRAINER, "-p", plans,
            "-device", "cpu")
        run(f"predict {key}", _bin("nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(root / f"pred-{key}"),
            "-d", str(DATASET), "-c", "3d_fullres", "-tr", TRAINER, "-p", plans, "-f", "0", "-device", "cpu")
        folders[key] = root / "results" / NAME / f"{TRAINER}__{plans}__3d_fullres"
    print("\nminutes of nnU-Net's own commands:", json.dumps(minutes))
    (root / "minutes.json").write_text(json.dumps(minutes, indent=1))
    test = io.Cohort(cohort.name, cohort.root, cohort.cases[N_TRAIN:], cohort.clinical.iloc[N_TRAIN:], MODS,
                     cohort.scheme)
    return {"root": root, "cohort": test, "folders": folders, "minutes": minutes}


@pytest.mark.parametrize("key", list(PLANNERS))
def test_folder_from_nnunetv2_train_segments_as_nnunetv2_predict(trained, key, tmp_path):
    folder = trained["folders"][key]
    assert (folder / "fold_0" / "checkpoint_final.pth").exists()
    models = tmp_path / "models"
    registry.import_model(folder, f"own-{key}", dest=models)        # channels and labels read from dataset.json
    seg = registry.load(f"own-{key}", root=models)
    assert seg.network_name == ("ResidualEncoderUNet" if key == "resenc-m" else "PlainConvUNet")
    out = tmp_path / "masks"
    infer.segment_cohort(trained["cohort"], seg, None, out, progress=False, signature=taps.Request(),
                         postprocess="none")
    lut = np.array([0, 1, 2, 4], np.uint8)          # dataset labels 1/2/3 -> the cohort's BraTS 2018 values
    for c in trained["cohort"].cases:
        theirs = np.asanyarray(nib.load(trained["root"] / f"pred-{key}" / f"{c.case_id}.nii.gz").dataobj)
        ours = np.asanyarray(nib.load(out / f"{c.case_id}.nii.gz").dataobj)
        assert ours.shape == theirs.shape
        assert np.array_equal(ours, lut[theirs]), f"{key} {c.case_id}: {(ours != lut[theirs]).sum()} voxels differ"
    sig, _ = taps.load_signature(out, trained["cohort"].case_ids)
    layers = {c.split("__")[1] for c in sig.columns if c.count("__") == 3} - {"volume"}
    assert {"enc1", "bottleneck", "dec1"} <= layers and len(sig) == N_TEST


@pytest.mark.parametrize("key", list(PLANNERS))
def test_folder_from_nnunetv2_train_runs_alike_in_openvino(trained, key, tmp_path):
    """segment.backend openvino on nnU-Net's own folders (PlainConvUNet, ResidualEncoderUNet): both backends in
    this process on the held-out cases, s/case and the faithfulness figures printed (and kept in minutes.json's
    folder as backends-<key>.json)."""
    from glioma_nb import bench

    models = tmp_path / "models"
    registry.import_model(trained["folders"][key], f"own-{key}", dest=models)
    res = bench.compare_backends(trained["cohort"], lambda: registry.load(f"own-{key}", root=models),
                                 trained["cohort"].case_ids)
    res["model"] = f"nnU-Net {key}"
    (trained["root"] / f"backends-{key}.json").write_text(json.dumps(res, indent=1))
    print("\n" + bench.say_backends(res))
    assert res["predicted_openvino"]["backend_used"] == ["openvino"]
    assert min(res["mask_dice_min"].values()) >= 0.999 and res["voxel_disagreement_max"] <= 1e-4
    assert res["signature_reference_mask"]["max_relative_difference"] <= 1e-3


def test_a_zip_from_nnunetv2_export_model_to_zip_is_pulled_and_segments_as_nnunetv2_predict(trained, tmp_path):
    """Issue 47: nnU-Net's own `nnUNetv2_export_model_to_zip` of the trained default-planner folder, served by a real
    HTTP server on 127.0.0.1 and pulled with `models pull` (a test catalogue entry pinning the zip's sha256): the
    registered model segments exactly as nnUNetv2_predict did."""
    import hashlib

    import yaml
    from loopback import Loopback

    from glioma_nb.segment import pull

    _, plans = PLANNERS["default"]
    archive = tmp_path / "export.zip"
    env = {**os.environ, "nnUNet_raw": str(trained["root"] / "raw"), "nnUNet_preprocessed": str(trained["root"] / "pre"),
           "nnUNet_results": str(trained["root"] / "results")}
    r = subprocess.run([_bin("nnUNetv2_export_model_to_zip"), "-d", str(DATASET), "-o", str(archive), "-c", "3d_fullres",
                        "-tr", TRAINER, "-p", plans, "-f", "0"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    data = archive.read_bytes()
    models = tmp_path / "models"
    with Loopback() as server:
        server.files["/export.zip"] = data
        cat = {"own-export": {"kind": "nnunet-v2", "default_version": "1",
                              "versions": {"1": {"urls": [server.url + "/export.zip"],
                                                 "sha256": hashlib.sha256(data).hexdigest()}},
                              "licence": "test", "training_data": f"{N_TRAIN} brats18 cases at 5 mm"}}
        spec = pull.pull("own-export", root=models, catalogue=cat)
    assert yaml.safe_load(spec.read_text())["kind"] == "nnunet-v2"
    seg = registry.load("own-export-1", root=models)
    out = tmp_path / "masks"
    infer.segment_cohort(trained["cohort"], seg, None, out, progress=False, signature=taps.Request(), postprocess="none")
    lut = np.array([0, 1, 2, 4], np.uint8)
    for c in trained["cohort"].cases:
        theirs = np.asanyarray(nib.load(trained["root"] / "pred-default" / f"{c.case_id}.nii.gz").dataobj)
        assert np.array_equal(np.asanyarray(nib.load(out / f"{c.case_id}.nii.gz").dataobj), lut[theirs]), c.case_id
