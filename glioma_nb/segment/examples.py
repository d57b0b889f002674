"""Small example models of every external kind, made with each library's own classes.

They exist to try ``glioma-nb models import`` end to end, and for the faithfulness tests (glioma-nb
against each library's own inference on the same files). ``glioma-nb models example KIND OUT`` writes one.

- :func:`nnunet_model`: a raw nnU-Net dataset written from a cohort's cases, fingerprinted and planned
  by nnunetv2 itself (``DatasetFingerprintExtractor`` and ``ExperimentPlanner``, in a subprocess with its own
  ``nnUNet_raw``/``nnUNet_preprocessed``), its ``3d_fullres`` PlainConvUNet made smaller (stages,
  features, patch), built by ``nnUNetTrainer.build_network_architecture`` and saved as
  ``fold_<k>/checkpoint_final.pth`` in the trainer's own checkpoint format. With ``iterations``, each
  fold's network is fitted briefly (Adam, Dice + cross-entropy) on the cohort's cases preprocessed by
  nnU-Net's own preprocessor; otherwise its weights are the seeded initialisation.
- :func:`bundle_model`: a MONAI bundle (``configs/inference.json``, ``configs/metadata.json``,
  ``models/model.pt``) whose inference config loads, orients, resamples and normalises the images,
  runs a small MONAI UNet by sliding window and inverts the prediction.
- :func:`torchscript_model`: a scripted module returning ``(logits, enc1, bottleneck)`` with its YAML.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import yaml

from glioma_nb.segment.errors import SegmentationError

CHANNEL_NAMES = {"t1": "T1", "t1c": "T1ce", "t2": "T2", "flair": "FLAIR"}
DATASET_LABELS = {"brats": {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3},
                  "wt": {"background": 0, "tumor": 1}}

# nnU-Net's own fingerprint and planner, in a process with its own nnUNet_raw (paths are read at import). The
# intensity statistics sample 1e5 foreground voxels, not nnU-Net's 1e8 (they only matter for CT normalisation).
_PLAN = """
import sys
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
if __name__ == "__main__":
    fpe = DatasetFingerprintExtractor(int(sys.argv[1]), num_processes=1, verbose=False)
    fpe.num_foreground_voxels_for_intensitystats = 1e5
    fpe.run(overwrite_existing=True)
    ExperimentPlanner(int(sys.argv[1])).plan_experiment()
"""


def _label_values(label: np.ndarray, classes: str, scheme_name: str) -> np.ndarray:
    lab = np.asarray(label)
    out = np.zeros(lab.shape, np.uint8)
    if classes == "wt":
        out[lab > 0] = 1
        return out
    out[lab == 1], out[lab == 2] = 1, 2
    out[lab == (4 if scheme_name == "brats2018" else 3)] = 3
    return out


def nnunet_model(out: Path, cases: Sequence[Mapping[str, Any]], modalities: Sequence[str], classes: str = "brats",
                 scheme: str = "brats2021", folds: Sequence[int] = (0,), features: Sequence[int] = (8, 16, 32),
                 patch: Sequence[int] | None = None, iterations: int = 0, seed: int = 0,
                 dataset_id: int = 990, spacing: Sequence[float] | None = None, regions: bool = False) -> Path:
    """A trained-model folder ``out`` (see the module docstring). ``cases``: dicts with ``images``
    (modality -> NIfTI path) and ``label`` (a label map in ``scheme``). ``regions``: a region-based model as
    nnU-Net's BraTS 2021 dataset (labels 1 oedema, 2 necrosis, 3 enhancing; sigmoid heads for whole tumour
    [1, 2, 3], tumour core [2, 3] and enhancing 3, ``regions_class_order`` [1, 2, 3]); untrained only."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SegmentationError(f"{out} exists and is not empty; give a new folder")
    if regions and (iterations or classes != "brats"):
        raise SegmentationError("a region-based example is BraTS subregions and untrained (iterations 0)")
    name = f"Dataset{dataset_id:03d}_GliomaNbExample"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw" / name
        (raw / "imagesTr").mkdir(parents=True)
        (raw / "labelsTr").mkdir()
        for i, c in enumerate(cases):
            for k, m in enumerate(modalities):
                img = nib.load(c["images"][m])
                nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine),
                         raw / "imagesTr" / f"case_{i:03d}_{k:04d}.nii.gz")
            lab = nib.load(c["label"])
            nib.save(nib.Nifti1Image(_label_values(np.asanyarray(lab.dataobj), classes, scheme), lab.affine),
                     raw / "labelsTr" / f"case_{i:03d}.nii.gz")
        ds = {"channel_names": {str(k): CHANNEL_NAMES[m] for k, m in enumerate(modalities)},
              "labels": DATASET_LABELS[classes], "numTraining": len(cases), "file_ending": ".nii.gz"}
        (raw / "dataset.json").write_text(json.dumps(ds, indent=1))
        env = {**os.environ, "nnUNet_raw": str(Path(tmp) / "raw"), "nnUNet_preprocessed": str(Path(tmp) / "pre"),
               "nnUNet_results": str(Path(tmp) / "results"), "nnUNet_n_proc_DA": "1"}
        script = Path(tmp) / "plan.py"
        script.write_text(_PLAN)
        done = subprocess.run([sys.executable, str(script), str(dataset_id)], env=env, capture_output=True, text=True)
        if done.returncode:
            raise SegmentationError(f"nnU-Net planning failed:\n{done.stderr[-3000:]}")
        plans = json.loads((Path(tmp) / "pre" / name / "nnUNetPlans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    plans["configurations"] = {"3d_fullres": cfg}
    if spacing is not None:     # the voxel size it works at, in nnU-Net's transposed axis order
        cfg["spacing"] = [float(spacing[::-1][i]) for i in plans["transpose_forward"]]
    arch = cfg["architecture"]["arch_kwargs"]
    n = len(features)
    arch["n_stages"] = n
    arch["features_per_stage"] = list(features)
    arch["kernel_sizes"] = arch["kernel_sizes"][:n]
    arch["strides"] = arch["strides"][:n]
    arch["n_conv_per_stage"] = [1] * n
    arch["n_conv_per_stage_decoder"] = [1] * (n - 1)
    div = np.prod(np.asarray(arch["strides"]), axis=0)
    p = np.asarray(patch if patch is not None else cfg["patch_size"])
    cfg["patch_size"] = [int(max(d, (v // d) * d)) for v, d in zip(p, div)]
    if regions:
        ds = {**ds, "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
              "regions_class_order": [1, 2, 3]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "plans.json").write_text(json.dumps(plans, indent=1))
    (out / "dataset.json").write_text(json.dumps(ds, indent=1))
    (out / "dataset_fingerprint.json").write_text(json.dumps({"note": "not needed for inference"}))
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    n_out = pm.get_label_manager(ds).num_segmentation_heads
    for f in folds:
        torch.manual_seed(seed + int(f))
        net = nnUNetTrainer.build_network_architecture(pm, cm, len(modalities), n_out, enable_deep_supervision=False)
        if iterations:
            _fit(net, pm, cm, ds, cases, modalities, classes, scheme, iterations, seed + int(f))
        ckpt = {"network_weights": net.state_dict(), "init_args": {"plans": plans, "configuration": "3d_fullres",
                                                                   "fold": int(f), "dataset_json": ds, "device": "cpu"},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 0}
        (out / f"fold_{f}").mkdir()
        torch.save(ckpt, out / f"fold_{f}" / "checkpoint_final.pth")
    return out


def _fit(net: Any, pm: Any, cm: Any, ds: Mapping[str, Any], cases: Sequence[Mapping[str, Any]],
         modalities: Sequence[str], classes: str, scheme: str, iterations: int, seed: int) -> None:
    """A few Adam steps of Dice + cross-entropy on random patches of nnU-Net-preprocessed cases."""
    import torch
    import torch.nn.functional as F
    from monai.losses import DiceCELoss

    pre = cm.preprocessor_class(verbose=False)
    data = []
    for c in cases:
        img = np.stack([np.asarray(nib.load(c["images"][m]).dataobj, np.float32) for m in modalities]).transpose(0, 3, 2, 1)
        lab = _label_values(np.asanyarray(nib.load(c["label"]).dataobj), classes, scheme)[None].transpose(0, 3, 2, 1)
        zooms = nib.load(c["images"][modalities[0]]).header.get_zooms()[:3]
        d, s, _ = pre.run_case_npy(img, lab.astype(np.float32), {"spacing": [float(z) for z in zooms[::-1]]},
                                   pm, cm, ds)
        data.append((torch.from_numpy(d), torch.from_numpy(np.clip(s, 0, None).astype(np.int64))))
    rng = np.random.default_rng(seed)
    patch = [int(p) for p in cm.patch_size]
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(iterations):
        x, y = data[int(rng.integers(len(data)))]
        pad = [max(0, p - s) for p, s in zip(patch, x.shape[1:])]
        if any(pad):
            spec = [v for q in reversed(pad) for v in (q // 2, q - q // 2)]
            x, y = F.pad(x, spec), F.pad(y, spec)
        fg = np.argwhere(y[0].numpy() > 0)
        centre = fg[rng.integers(len(fg))] if len(fg) and rng.random() < 0.67 else [rng.integers(s) for s in x.shape[1:]]
        start = [int(min(max(0, c - p // 2), s - p)) for c, p, s in zip(centre, patch, x.shape[1:])]
        sl = tuple(slice(a, a + p) for a, p in zip(start, patch))
        xb, yb = x[(slice(None), *sl)][None], y[(slice(None), *sl)][None]
        opt.zero_grad()
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
    net.eval()


BUNDLE_CONFIG = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "device": "$torch.device('cpu')",
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": "@n_channels", "out_channels": "@n_classes",
                    "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": "@spacing", "mode": "bilinear"},
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
        {"_target_": "EnsureTyped", "keys": "image"}]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@patch", "sw_batch_size": 1, "overlap": 0.5,
                "mode": "gaussian"},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
         "resample": False, "separate_folder": False, "output_dtype": "$np.uint8"}]},
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "$@bundle_root + '/data'",
    "datalist": [],
    "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
    "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                  "load_dict": {"model": "@network"}, "map_location": "@device"}],
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                  "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                  "val_handlers": "@handlers", "amp": False},
    "initialize": [],
    "run": ["$@evaluator.run()"],
    "finalize": [],
}


def bundle_model(out: Path, n_channels: int, n_classes: int, spacing: Sequence[float] = (2.0, 2.0, 2.0),
                 patch: Sequence[int] = (32, 32, 32), seed: int = 0, regions: bool = False,
                 inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None) -> Path:
    """A MONAI bundle folder (see the module docstring); weights are a seeded initialisation. ``regions``: the
    layout of the model zoo's brats_mri_segmentation instead (SegResNet, ``n_classes`` sigmoid region channels,
    thresholded at 0.5 after ``Invertd``). ``inputs`` / ``outputs``: channel names written as the
    ``channel_def`` of ``metadata.json`` (what ``models import`` reads), or none."""
    import torch
    from monai.bundle import ConfigParser

    out = Path(out)
    (out / "configs").mkdir(parents=True)
    (out / "models").mkdir()
    cfg = {**BUNDLE_CONFIG, "n_channels": n_channels, "n_classes": n_classes, "spacing": list(spacing),
           "patch": list(patch), "imports": ["$import torch", "$import numpy as np"]}
    if regions:
        cfg["network_def"] = {"_target_": "SegResNet", "blocks_down": [1, 2, 2], "blocks_up": [1, 1], "init_filters": 8,
                              "in_channels": "@n_channels", "out_channels": "@n_classes", "dropout_prob": 0.0}
        post = [dict(t) for t in BUNDLE_CONFIG["postprocessing"]["transforms"]]
        post[0] = {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}
        post[2] = {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}
        cfg["postprocessing"] = {"_target_": "Compose", "transforms": post}
    (out / "configs" / "inference.json").write_text(json.dumps(cfg, indent=1))
    (out / "configs" / "metadata.json").write_text(json.dumps({
        "version": "0.1.0", "monai_version": "1.6.1", "pytorch_version": torch.__version__.split("+")[0],
        "name": "glioma-nb example bundle", "task": "glioma segmentation (example, untrained)",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": n_channels,
                                 **({"channel_def": {str(i): n for i, n in enumerate(inputs)}} if inputs else {})}},
            "outputs": {"pred": {"type": "image", "num_channels": n_classes,
                                 **({"channel_def": {str(i): n for i, n in enumerate(outputs)}} if outputs else {})}}}},
        indent=1))
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def")
    torch.save(net.state_dict(), out / "models" / "model.pt")
    return out


def torchscript_model(out: Path, modalities: Sequence[str], n_classes: int, spacing: Sequence[float] = (2.0, 2.0, 2.0),
                      patch: Sequence[int] = (32, 32, 32), seed: int = 0) -> Path:
    """A scripted MONAI UNet returning (logits, enc1, bottleneck), with its YAML (see the module docstring)."""
    import warnings

    import torch
    from monai.networks.nets import UNet

    class WithFeatures(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            down = self.net.model[0]
            enc1 = down(x)
            bottleneck = self.net.model[1].submodule[1].submodule(self.net.model[1].submodule[0](enc1))
            return self.net(x), enc1, bottleneck

    out = Path(out)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    net = WithFeatures(UNet(3, len(modalities), n_classes, (8, 16, 32), (2, 2), num_res_units=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(net).save(str(out / "model.ts"))
    spec = {"module": "model.ts", "modalities": list(modalities), "spacing": list(spacing), "patch": list(patch),
            "orientation": "RAS", "normalise": "zscore-nonzero", "activation": "softmax",
            "outputs": {"labels": "brats2021" if n_classes == 4 else "wt"}, "feature_outputs": ["enc1", "bottleneck"]}
    (out / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out
