"""Any segmentation network: nnU-Net v2 folders, MONAI bundles and TorchScript modules through glioma-nb give
the masks of each library's own inference, a signature with the documented columns, and clear errors."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from glioma_nb import io
from glioma_nb.segment import SegmentationError, examples, infer, kinds, registry, transforms
from glioma_nb.signature import network

MODS = ("t1", "t1c", "t2", "flair")


def _ball(shape, centre, radius, zooms):
    grid = np.meshgrid(*[(np.arange(n) - c) * z for n, c, z in zip(shape, centre, zooms)], indexing="ij")
    return np.sqrt(sum(g ** 2 for g in grid)) <= radius


def brats_cohort(root: Path, n: int = 3, shape=(40, 44, 36), zooms=(2.0, 2.0, 2.0), seed: int = 0) -> io.Cohort:
    """Four-modality cases with a BraTS-like tumour (necrosis 1 inside enhancing 4 inside oedema 2), LPS-like
    affine, labels in the BraTS 2018 scheme."""
    rng = np.random.default_rng(seed)
    aff = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
    aff[:3, 3] = [40.0, 44.0, -30.0]
    cases = []
    for i in range(n):
        cid = f"case{i}"
        d = root / cid
        d.mkdir(parents=True)
        brain = _ball(shape, [s / 2 for s in shape], 34, zooms)
        c = [s / 2 + rng.uniform(-2, 2) for s in shape]
        ed, et, nec = (_ball(shape, c, r, zooms) & brain for r in (16 + 2 * i, 10 + i, 5))
        lab = np.where(nec, 1, np.where(et, 4, np.where(ed, 2, 0))).astype(np.uint8)
        base = {"t1": (100, -30, -40, -20), "t1c": (100, -20, 120, -10), "t2": (80, 90, 60, 100),
                "flair": (90, 120, 70, 60)}
        images = {}
        for m in MODS:
            b, e_ed, e_et, e_nec = base[m]
            img = np.where(brain, b + rng.normal(0, 4, shape), 0) + e_ed * ed + (e_et - e_ed) * et + (e_nec - e_et) * nec
            nib.save(nib.Nifti1Image(img.astype(np.float32), aff), d / f"{m}.nii.gz")
            images[m] = d / f"{m}.nii.gz"
        nib.save(nib.Nifti1Image(lab, aff), d / "seg.nii.gz")
        cases.append(io.Case(cid, images, d / "seg.nii.gz"))
    return io.Cohort("toy4", root, cases, pd.DataFrame(index=[c.case_id for c in cases]), MODS,
                     io.LABEL_SCHEMES["brats2018"])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One cohort, and one registered model of every external kind (made with the libraries' own classes)."""
    root = tmp_path_factory.mktemp("kinds")
    cohort = brats_cohort(root / "cohort")
    cases = [{"images": c.images, "label": c.label} for c in cohort.cases]
    src = root / "src"
    examples.nnunet_model(src / "nnunet", cases, MODS, classes="brats", scheme="brats2018", folds=(0, 1),
                          features=(8, 16, 32), patch=(32, 32, 32), iterations=0)
    examples.bundle_model(src / "bundle", 4, 4)
    examples.torchscript_model(src / "ts", MODS, 4)
    models = root / "models"
    registry.import_model(src / "nnunet", "tiny-nnunet", dest=models)
    registry.import_model(src / "bundle", "tiny-bundle", modalities="t1,t1c,t2,flair", labels="brats2021",
                          spacing="2,2,2", dest=models)
    registry.import_model(src / "ts", "tiny-ts", dest=models)
    return {"cohort": cohort, "src": src, "models": models, "root": root}


def _ours(made, name, tmp, request=None):
    seg = registry.load(name, root=made["models"])
    out = tmp / name
    infer.segment_cohort(made["cohort"], seg, None, out, progress=False, signature=request, postprocess="none")
    return seg, out


def _internal(path):
    lab = np.asanyarray(nib.load(path).dataobj)
    return transforms.label_to_classes(lab, io.LABEL_SCHEMES["brats2018"], "brats")


def test_nnunet_folder_segments_exactly_as_nnunet_predictor(made, tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    seg, out = _ours(made, "tiny-nnunet", tmp_path)
    assert seg.kind == "nnunet-v2" and seg.folds == ["0", "1"] and seg.network_name == "PlainConvUNet"
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, perform_everything_on_device=False,
                           device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(made["src"] / "nnunet"), (0, 1), "checkpoint_final.pth")
    n_fg = 0
    for case in made["cohort"].cases:
        files = [str(case.images[m]) for m in MODS]
        img, props = SimpleITKIO().read_images(files)
        theirs = pred.predict_single_npy_array(img, props, None, None, False)   # (z, y, x), dataset label values
        ours = _internal(out / f"{case.case_id}.nii.gz")                         # (x, y, z), internal classes
        assert np.array_equal(ours, theirs.transpose(2, 1, 0).astype(np.uint8))   # 1/2/3 = necrosis/edema/enhancing
        n_fg += int((ours > 0).sum())
    assert n_fg > 0     # not trivially equal: the untrained network still calls some voxels tumour


def test_bundle_folder_segments_exactly_as_its_own_inference_config(made, tmp_path):
    from monai.bundle import ConfigWorkflow

    seg, out = _ours(made, "tiny-bundle", tmp_path)
    assert seg.kind == "monai-bundle" and seg.network_name == "UNet"
    folder = made["models"] / "tiny-bundle" / "files"
    for case in made["cohort"].cases:   # the bundle's own inference config, as `monai.bundle run` runs it
        theirs_dir = tmp_path / "bundle_eval" / case.case_id
        wf = ConfigWorkflow(config_file=str(folder / "configs" / "inference.json"), workflow_type="infer",
                            meta_file=str(folder / "configs" / "metadata.json"), bundle_root=str(folder),
                            output_dir=str(theirs_dir), datalist=[{"image": [str(case.images[m]) for m in MODS]}])
        wf.initialize()
        wf.run()
        wf.finalize()
        theirs = np.squeeze(np.asanyarray(nib.load(theirs_dir / "t1_seg.nii.gz").dataobj))
        ours = _internal(out / f"{case.case_id}.nii.gz")
        assert np.array_equal(ours, theirs.astype(np.uint8))


def test_torchscript_module_segments_as_the_module_does(made, tmp_path):
    seg, out = _ours(made, "tiny-ts", tmp_path)
    assert seg.kind == "torchscript" and list(seg.stages()) == ["enc1", "bottleneck"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(made["src"] / "ts" / "model.ts")).eval()
    for case in made["cohort"].cases:
        data = transforms.load_case(made["cohort"], case.case_id, seg)
        pre = transforms.preprocess(seg.pre_spec)
        d = pre({"image": data["image"]})
        from monai.inferers import sliding_window_inference
        with torch.inference_mode():
            logits = sliding_window_inference(d["image"][None], (32, 32, 32), 1, lambda x: module(x)[0], overlap=0.5,
                                              mode="gaussian")
        from monai.transforms import Invertd
        from monai.data import MetaTensor
        inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(
            {"image": d["image"], "pred": MetaTensor(torch.softmax(logits[0], 0), meta=dict(d["image"].meta))})
        theirs = np.asarray(inv["pred"]).argmax(0)
        assert np.array_equal(_internal(out / f"{case.case_id}.nii.gz"), theirs.astype(np.uint8))
