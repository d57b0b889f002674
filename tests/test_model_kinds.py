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
from test_segment import _sphere

from glioma_nb import io, taps
from glioma_nb.segment import SegmentationError, examples, infer, kinds, registry, transforms

MODS = ("t1", "t1c", "t2", "flair")


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
        brain = _sphere(shape, [s / 2 for s in shape], 34, zooms)
        c = [s / 2 + rng.uniform(-2, 2) for s in shape]
        ed, et, nec = (_sphere(shape, c, r, zooms) & brain for r in (16 + 2 * i, 10 + i, 5))
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
    # 32 x 40 x 32 voxels: one 32^3 nnU-Net patch across x and z, two overlapping ones along y (stitching is still
    # compared), a quarter of the windows of the default 40 x 44 x 36 (a contract, not a figure, is tested here)
    cohort = brats_cohort(root / "cohort", n=2, shape=(32, 40, 32))
    cases = [{"images": c.images, "label": c.label} for c in cohort.cases]
    src = root / "src"
    examples.nnunet_model(src / "nnunet", cases, MODS, classes="brats", scheme="brats2018", folds=(0, 1),
                          features=(8, 16, 32), patch=(32, 32, 32), iterations=0)
    examples.nnunet_model(src / "nnunet-regions", cases, MODS, classes="brats", scheme="brats2018", folds=(0,),
                          features=(8, 16, 32), patch=(32, 32, 32), regions=True, dataset_id=991)
    examples.bundle_model(src / "bundle", 4, 4)
    examples.bundle_model(src / "bundle-regions", 4, 3, regions=True)      # brats_mri_segmentation's layout
    examples.torchscript_model(src / "ts", MODS, 4)
    models = root / "models"
    registry.import_model(src / "nnunet", "tiny-nnunet", dest=models)
    registry.import_model(src / "nnunet-regions", "tiny-nnunet-regions", dest=models)
    registry.import_model(src / "bundle", "tiny-bundle", modalities="t1,t1c,t2,flair", labels="brats2021",
                          spacing="2,2,2", dest=models)
    registry.import_model(src / "bundle-regions", "tiny-bundle-regions", modalities="t1,t1c,t2,flair",
                          labels="regions:tc,wt,et", dest=models)
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


@pytest.mark.parametrize("name,folder,folds", [("tiny-nnunet", "nnunet", (0, 1)),
                                               ("tiny-nnunet-regions", "nnunet-regions", (0,))])
def test_nnunet_folder_segments_exactly_as_nnunet_predictor(made, tmp_path, name, folder, folds):
    """Label-based (2 folds) and region-based (BraTS 2021 style sigmoid heads) nnU-Net folders."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    seg, out = _ours(made, name, tmp_path, taps.Request())      # the signature taps on, as in notebook 01
    assert seg.kind == "nnunet-v2" and seg.folds == [str(f) for f in folds] and seg.network_name == "PlainConvUNet"
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, perform_everything_on_device=False,
                           device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(made["src"] / folder), folds, "checkpoint_final.pth")
    n_fg = 0
    for case in made["cohort"].cases:
        files = [str(case.images[m]) for m in MODS]
        img, props = SimpleITKIO().read_images(files)
        theirs = pred.predict_single_npy_array(img, props, None, None, False)   # (z, y, x), dataset label values
        ours = _internal(out / f"{case.case_id}.nii.gz")                         # (x, y, z), internal classes
        # dataset values -> internal: label-based 1/2/3 = necrosis/edema/enhancing; region-based 1 = WT only
        # (oedema), 2 = TC only (necrosis), 3 = ET
        lut = np.array([0, 1, 2, 3] if folder == "nnunet" else [0, 2, 1, 3], dtype=np.uint8)
        assert np.array_equal(ours, lut[theirs.transpose(2, 1, 0)])
        n_fg += int((ours > 0).sum())
    assert n_fg > 0     # not trivially equal: the untrained network still calls some voxels tumour


@pytest.mark.parametrize("name", ["tiny-bundle", "tiny-bundle-regions"])
def test_bundle_folder_segments_exactly_as_its_own_inference_config(made, tmp_path, name):
    """A softmax UNet bundle, and a SegResNet bundle with sigmoid TC/WT/ET channels (the model zoo's
    brats_mri_segmentation layout), against `monai.bundle`'s own workflow on the same files."""
    from monai.bundle import ConfigWorkflow

    seg, out = _ours(made, name, tmp_path, taps.Request())      # the signature taps on, as in notebook 01
    assert seg.kind == "monai-bundle"
    assert seg.network_name == ("UNet" if name == "tiny-bundle" else "SegResNet")
    folder = made["models"] / name / "files"
    for case in made["cohort"].cases:   # the bundle's own inference config, as `monai.bundle run` runs it
        theirs_dir = tmp_path / "bundle_eval" / case.case_id
        wf = ConfigWorkflow(config_file=str(folder / "configs" / "inference.json"), workflow_type="infer",
                            meta_file=str(folder / "configs" / "metadata.json"), bundle_root=str(folder),
                            output_dir=str(theirs_dir), datalist=[{"image": [str(case.images[m]) for m in MODS]}])
        wf.initialize()
        wf.run()
        wf.finalize()
        theirs = np.asanyarray(nib.load(theirs_dir / "t1_seg.nii.gz").dataobj)
        if name == "tiny-bundle":
            theirs = np.squeeze(theirs).astype(np.uint8)
        else:   # three region channels, saved channel-last
            theirs = kinds.Outputs(regions=("tc", "wt", "et")).from_regions(np.moveaxis(np.squeeze(theirs), -1, 0))
        ours = _internal(out / f"{case.case_id}.nii.gz")
        assert np.array_equal(ours, theirs)
        assert name == "tiny-bundle" or ours.any()


def test_torchscript_module_segments_as_the_module_does(made, tmp_path):
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import Invertd

    seg, out = _ours(made, "tiny-ts", tmp_path)
    assert seg.kind == "torchscript" and list(seg.stages()) == ["enc1", "bottleneck"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(made["src"] / "ts" / "model.ts")).eval()
    for case in made["cohort"].cases:
        data = transforms.load_case(made["cohort"], case.case_id, seg)
        pre = transforms.preprocess(seg.pre_spec)
        d = pre({"image": data["image"]})
        with torch.inference_mode():
            logits = sliding_window_inference(d["image"][None], (32, 32, 32), 1, lambda x: module(x)[0], overlap=0.5,
                                              mode="gaussian")
        inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(
            {"image": d["image"], "pred": MetaTensor(torch.softmax(logits[0], 0), meta=dict(d["image"].meta))})
        theirs = np.asarray(inv["pred"]).argmax(0)
        assert np.array_equal(_internal(out / f"{case.case_id}.nii.gz"), theirs.astype(np.uint8))


def _plant_conv(state, weight_key, identity_from=0):
    """Plant a first convolution: channel 0 passes input channel ``identity_from`` through (centre tap 1), channel k
    > 0 is the constant k (zero weights, bias k). Returns the number of channels."""
    w = state[weight_key]
    w.zero_()
    c = [s // 2 for s in w.shape[2:]]
    w[0, identity_from, c[0], c[1], c[2]] = 1.0
    bias = state[weight_key.replace("weight", "bias")]
    bias.copy_(torch.arange(len(bias), dtype=bias.dtype))
    return int(w.shape[0])


def _check_planted(seg, out, cohort, stage, identity=True):
    """Constant channels pool to their planted value with SD 0; with ``identity`` (a stride-1 layer), the identity
    channel pools to the mean of the preprocessed image inside the reference mask on the model grid (the stitching
    of overlapping, mirrored patches is exact for a full-resolution map)."""
    main, long = taps.load_signature(out, cohort.case_ids)
    n = int(sum(c.startswith(f"WT__{stage}__") and c.endswith("__mean") for c in main.columns))
    assert n >= 2
    for k in range(1, n):
        assert np.allclose(main[f"WT__{stage}__c{k:03d}__mean"], k, atol=1e-5)
        assert np.allclose(main[f"ET__{stage}__c{k:03d}__sd"], 0, atol=1e-5)
    for cid in cohort.case_ids if identity else ():
        data = transforms.load_case(cohort, cid, seg, with_label=True)
        p = seg.run(data, None)
        wt = p.reference > 0
        expected = float(p.image[0][wt].mean())
        assert main.loc[cid, f"WT__{stage}__c000__mean"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    return main, long


def test_nnunet_signature_planted_activation_columns_and_determinism(made, tmp_path):
    src = tmp_path / "planted"
    shutil.copytree(made["src"] / "nnunet", src)
    shutil.rmtree(src / "fold_1")
    ck = torch.load(src / "fold_0" / "checkpoint_final.pth", weights_only=False)
    layer = "encoder.stages.0.0.convs.0.conv"
    _plant_conv(ck["network_weights"], f"{layer}.weight")
    torch.save(ck, src / "fold_0" / "checkpoint_final.pth")
    models = tmp_path / "models"
    registry.import_model(src, "planted", layers=f"{layer},encoder.stages.2", dest=models)
    spec = yaml.safe_load((models / "planted" / registry.SPEC).read_text())
    spec["nnunet"]["mirroring"] = False      # the pooled layers, not nnU-Net's mirroring (8 passes), are tested here
    (models / "planted" / registry.SPEC).write_text(yaml.safe_dump(spec, sort_keys=False))
    seg = registry.load("planted", root=models)
    assert seg.stages() == {"encoder-stages-0-0-convs-0-conv": layer, "encoder-stages-2": "encoder.stages.2"}
    req = taps.Request(mask="reference", perturbations=("erode", "noise"))
    for out in (tmp_path / "a", tmp_path / "b"):
        infer.segment_cohort(made["cohort"], seg, None, out, progress=False, signature=req, postprocess="none")
    main, long = _check_planted(seg, tmp_path / "a", made["cohort"], "encoder-stages-0-0-convs-0-conv")
    again, _ = taps.load_signature(tmp_path / "b", made["cohort"].case_ids)
    pd.testing.assert_frame_equal(main, again)             # deterministic, bit for bit
    assert list(main.columns) == taps.columns(["WT", "TC", "ET"], {"encoder-stages-0-0-convs-0-conv": 8,
                                                                      "encoder-stages-2": 32})
    assert set(long.index.get_level_values("perturbation")) == {"none", "erode", "noise"}
    # the default layers of nnU-Net's PlainConvUNet: encoder stages (deepest = bottleneck), decoder stages
    assert registry.load("tiny-nnunet", root=made["models"]).default_stages() == {
        "enc1": "encoder.stages.0", "enc2": "encoder.stages.1", "bottleneck": "encoder.stages.2",
        "dec2": "decoder.stages.0", "dec1": "decoder.stages.1"}


def test_bundle_and_torchscript_signatures_pool_the_planted_activation(made, tmp_path):
    # MONAI bundle: plant the UNet's first convolution
    src = tmp_path / "bundle"
    shutil.copytree(made["src"] / "bundle", src)
    state = torch.load(src / "models" / "model.pt", weights_only=True)
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 5)
    _plant_conv(state, key)
    torch.save(state, src / "models" / "model.pt")
    registry.import_model(src, "planted-bundle", modalities="t1,t1c,t2,flair", labels="brats2021",
                          layers=key[: -len(".weight")], dest=tmp_path / "models")
    seg = registry.load("planted-bundle", root=tmp_path / "models")
    req = taps.Request(mask="reference")
    infer.segment_cohort(made["cohort"], seg, None, tmp_path / "mb", progress=False, signature=req, postprocess="none")
    main, _ = _check_planted(seg, tmp_path / "mb", made["cohort"], kinds.stage_name(key[: -len(".weight")]),
                             identity=False)
    infer.segment_cohort(made["cohort"], seg, None, tmp_path / "mb2", progress=False, signature=req, postprocess="none")
    pd.testing.assert_frame_equal(main, taps.load_signature(tmp_path / "mb2", made["cohort"].case_ids)[0])
    assert list(registry.load("tiny-bundle", root=made["models"]).default_stages()) == ["enc1", "enc2", "bottleneck",
                                                                                        "dec2"]

    # TorchScript: a module whose feature output is the planted map
    class Planted(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = torch.cat([torch.ones_like(x[:, :1]), x[:, 3:4]], dim=1)
            k = torch.arange(3, dtype=x.dtype).view(1, 3, 1, 1, 1)
            feat = torch.cat([x[:, :1], torch.ones_like(x[:, :2])], dim=1) * (k > 0) * k + x[:, :1] * (k == 0)
            return logits, feat

    ts = tmp_path / "ts"
    ts.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(Planted()).save(str(ts / "m.ts"))
    (ts / "m.yaml").write_text(yaml.safe_dump({"module": "m.ts", "modalities": list(MODS), "spacing": [2, 2, 2],
                                               "patch": [32, 32, 32], "outputs": {"labels": "wt"},
                                               "feature_outputs": ["planted"]}))
    registry.import_model(ts, "planted-ts", dest=tmp_path / "models")
    seg = registry.load("planted-ts", root=tmp_path / "models")
    assert seg.classes == "wt"
    infer.segment_cohort(made["cohort"], seg, None, tmp_path / "mt", progress=False, signature=req, postprocess="none")
    main, _ = taps.load_signature(tmp_path / "mt", made["cohort"].case_ids)
    assert list(main.columns) == taps.columns(["WT"], {"planted": 3})
    infer.segment_cohort(made["cohort"], seg, None, tmp_path / "mt2", progress=False, signature=req, postprocess="none")
    pd.testing.assert_frame_equal(main, taps.load_signature(tmp_path / "mt2", made["cohort"].case_ids)[0])
    for k in (1, 2):
        assert np.allclose(main[f"WT__planted__c{k:03d}__mean"], k, atol=1e-5)


def test_segresnet_bundle_signature_in_any_layer_order_pools_the_planted_activation(made, tmp_path):
    """The brats_mri_segmentation layout (SegResNet, sigmoid TC/WT/ET): its first convolution planted so that
    channel k is (k+1) x input channel 0, tapped after a coarser layer (the order in which MONAI's multi-output
    sliding window failed: 'size of tensor a (32) must match ... (16)'), and in the other order."""
    src = tmp_path / "bundle"
    shutil.copytree(made["src"] / "bundle-regions", src)
    state = torch.load(src / "models" / "model.pt", weights_only=True)
    w = state["convInit.conv.weight"]
    w.zero_()
    for k in range(w.shape[0]):
        w[k, 0, 1, 1, 1] = k + 1.0
    torch.save(state, src / "models" / "model.pt")
    req = taps.Request(mask="reference")
    tables = []
    for i, layers in enumerate(("down_layers.1,convInit.conv", "convInit.conv,down_layers.1")):
        registry.import_model(src, f"planted-segresnet{i}", modalities="T1,T1c,T2,FLAIR", labels="regions:tc,wt,et",
                              layers=layers, dest=tmp_path / "models")
        seg = registry.load(f"planted-segresnet{i}", root=tmp_path / "models")
        assert seg.modalities == ("t1", "t1c", "t2", "flair") and seg.network_name == "SegResNet"
        infer.segment_cohort(made["cohort"], seg, None, tmp_path / f"s{i}", progress=False, signature=req,
                             postprocess="none")
        tables.append(taps.load_signature(tmp_path / f"s{i}", made["cohort"].case_ids)[0])
    a, b = tables
    assert list(a.columns) == taps.columns(["WT", "TC", "ET"], {"down_layers-1": 16, "convInit-conv": 8})
    pd.testing.assert_frame_equal(a[b.columns], b)          # the layer order changes nothing
    for cid in made["cohort"].case_ids:
        data = transforms.load_case(made["cohort"], cid, seg, with_label=True)
        p = seg.run(data, None)
        x0 = p.image[0][p.reference > 0]
        for k in range(8):      # stitched over overlapping 32^3 windows: Gaussian weights cancel on any map
            assert a.loc[cid, f"WT__convInit-conv__c{k:03d}__mean"] == pytest.approx((k + 1) * x0.mean(), rel=1e-4)


def test_tapped_layers_equal_a_direct_forward_hook_when_the_window_is_larger_than_the_image():
    """brats_mri_segmentation's case: a 240x240x160 window over 155 slices. One padded window: every tapped
    layer, at its own resolution, equals the layer's output on the padded image with the padding cut off."""
    import torch.nn.functional as F
    from monai.networks.nets import SegResNet

    from glioma_nb.segment import window

    torch.manual_seed(0)
    net = SegResNet(3, 8, 4, 3, blocks_down=(1, 2, 2), blocks_up=(1, 1)).eval()
    x = torch.randn(4, 20, 24, 30)
    patch = (32, 32, 32)
    stages = {"bottleneck": "down_layers.2", "dec1": "up_layers.1", "enc1": "down_layers.0", "dec2": "up_layers.0"}
    probs, maps = window.sliding_window(net, x, patch, stages=stages, activation="sigmoid")
    pads = [((p - n) // 2, p - n - (p - n) // 2) for n, p in zip(x.shape[1:], patch)]
    xp = F.pad(x[None], [v for lo_hi in reversed(pads) for v in lo_hi])
    hooks = window.Hooks(net, stages)
    with torch.inference_mode():
        logits = net(xp)
    hooks.close()
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:]))
    assert torch.allclose(probs, torch.sigmoid(logits[0][(slice(None), *crop)]), atol=1e-5)
    for s, act in hooks.acts.items():
        z = [q / p for q, p in zip(act.shape[2:], patch)]
        idx = tuple(slice(int(round(lo * f)), int(round((lo + n) * f))) for (lo, _), n, f in zip(pads, x.shape[1:], z))
        assert maps[s].shape == act[0][(slice(None), *idx)].shape, s
        assert torch.allclose(maps[s], act[0][(slice(None), *idx)], atol=1e-5), s


def test_bundle_label_mapping_is_read_from_its_test_run_and_channel_names(made, tmp_path):
    from glioma_nb.segment.kinds import bundle

    def one(lit, values):
        return {"network_channels": len(lit), "channels": 1, "values": values, "lit": lit}

    presets = kinds.LABEL_PRESETS
    nested = one({0: [1], 1: [2], 2: [4]}, [0, 1, 2, 4])        # brats_mri_segmentation: TC, WT, ET -> 1/2/4
    assert bundle.bundle_outputs(nested, ["Tumor core", "Whole tumor", "Enhancing tumor"]).labels == presets["brats2018"]
    assert bundle.bundle_outputs(nested, None).labels == presets["brats2018"]          # 1/2/4 without names
    argmax = one({0: [0], 1: [1], 2: [2], 3: [3]}, [0, 1, 2, 3])                         # softmax classes, argmax
    assert bundle.bundle_outputs(argmax, ["background", "NCR", "edema", "enhancing"]).labels == presets["brats2021"]
    assert bundle.bundle_outputs(argmax, None) is None                  # 1/2/3 alone could be either convention
    assert bundle.bundle_outputs(one({0: [0], 1: [1]}, [0, 1]), None).labels == presets["wt"]
    passing = {"network_channels": 3, "channels": 3, "values": None, "lit": {0: [1, 0, 0], 1: [0, 1, 0], 2: [0, 0, 1]}}
    assert bundle.bundle_outputs(passing, ["TC", "WT", "ET"]).regions == ("tc", "wt", "et")
    assert bundle.bundle_outputs(passing, None) is None
    with pytest.raises(SegmentationError, match="3 channels .*regions:wt,tc cannot fit: it names 2 region"):
        bundle.check_bundle_outputs("x", tmp_path, kinds.Outputs(regions=("wt", "tc")), passing, None)
    with pytest.raises(SegmentationError, match=r"brats2018 cannot fit: the channel index .* is never \[4\]"):
        bundle.check_bundle_outputs("x", tmp_path, kinds.Outputs.parse("brats2018"), passing, None)
    # a bundle whose metadata names neither channels nor outputs: import asks for both, after a real test run
    with pytest.raises(SegmentationError, match="no input channel_def .*give --modalities"):
        registry.import_model(made["src"] / "bundle", "x", dest=tmp_path / "models")
    with pytest.raises(SegmentationError, match=r"one channel with values \[.*do not say what they mean; give --labels"):
        registry.import_model(made["src"] / "bundle", "x", modalities="t1,t1c,t2,flair", dest=tmp_path / "models")
    assert not (tmp_path / "models" / "x").exists()


def test_default_layers_of_nnunet_plain_and_residual_encoder_unets():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    from glioma_nb.segment.kinds import nnunet

    kw = dict(conv_bias=True, norm_op=torch.nn.InstanceNorm3d)
    plain = PlainConvUNet(4, 3, (8, 16, 32), torch.nn.Conv3d, 3, (1, 2, 2), (1, 1, 1), 4, (1, 1), **kw)
    resenc = ResidualEncoderUNet(4, 3, (8, 16, 32), torch.nn.Conv3d, 3, (1, 2, 2), (1, 1, 1), 4, (1, 1), **kw)
    for net in (plain, resenc):
        stages = nnunet.nnunet_stages(net)
        assert stages == {"enc1": "encoder.stages.0", "enc2": "encoder.stages.1", "bottleneck": "encoder.stages.2",
                          "dec2": "decoder.stages.0", "dec1": "decoder.stages.1"}
        assert set(stages.values()) <= set(dict(net.named_modules()))
    with pytest.raises(SegmentationError, match="no default signature layers for Linear"):
        nnunet.nnunet_stages(torch.nn.Linear(2, 2), "odd")


def test_bad_models_are_clear_errors(made, tmp_path):
    src, models = made["src"], tmp_path / "models"
    # a missing checkpoint
    nn = tmp_path / "nn"
    shutil.copytree(src / "nnunet", nn)
    (nn / "fold_1" / "checkpoint_final.pth").unlink()
    with pytest.raises(SegmentationError, match=r"checkpoint .*fold_1.*checkpoint_final.pth not found"):
        registry.import_model(nn, "x", folds="0,1", dest=models)
    bundle = tmp_path / "bundle"
    shutil.copytree(src / "bundle", bundle)
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(SegmentationError, match=r"checkpoint .*models/model.pt not found"):
        registry.import_model(bundle, "x", modalities="t1,t1c,t2,flair", labels="brats2021", dest=models)
    assert not models.exists() or not any(models.iterdir())          # nothing half-registered
    # the wrong channel count for the model
    with pytest.raises(SegmentationError, match=r"dataset.json has 4 channel\(s\).*declares 2 modalities"):
        registry.import_model(src / "nnunet", "x", modalities="t1,flair", dest=models)
    with pytest.raises(SegmentationError, match=r"network takes 4 input channel\(s\).*declares 1 modalities"):
        registry.import_model(src / "bundle", "x", modalities="flair", labels="brats2021", dest=models)
    # an unknown layer lists the candidates
    with pytest.raises(SegmentationError, match=r"unknown signature layer\(s\) \['encoder.nope'\].*encoder.stages.0"):
        registry.import_model(src / "nnunet", "x", layers="encoder.nope", dest=models)
    # no label mapping
    odd = tmp_path / "odd"
    shutil.copytree(src / "nnunet", odd)
    ds = json.loads((odd / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "class_a": 1, "class_b": 2, "class_c": 3}
    (odd / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(SegmentationError, match=r"no label mapping for \['class_a'.*--labels"):
        registry.import_model(odd, "x", dest=models)
    registry.import_model(odd, "odd", labels="1=necrosis,2=edema,3=enhancing", dest=models)   # given: fine
    # a registered file that changed is refused; a name is never overwritten
    ck = models / "odd" / "files" / "fold_0" / "checkpoint_final.pth"
    ck.write_bytes(ck.read_bytes() + b"0")
    with pytest.raises(SegmentationError, match=r"checkpoint_final.pth has changed since it was imported"):
        registry.load("odd", root=models)
    with pytest.raises(SegmentationError, match="already registered"):
        registry.import_model(odd, "odd", labels="brats2021", dest=models)
    # a cohort without a modality the model needs
    flair_only = io.Cohort("f", made["cohort"].root, made["cohort"].cases, made["cohort"].clinical, ("flair",),
                           made["cohort"].scheme)
    with pytest.raises(SegmentationError, match=r"model tiny-ts needs"):
        seg = registry.load("tiny-ts", root=made["models"])
        for c in flair_only.cases:
            c = io.Case(c.case_id, {"flair": c.images["flair"]}, c.label)
            transforms.load_case(io.Cohort("f", flair_only.root, [c], flair_only.clinical, ("flair",), None),
                                 c.case_id, seg)


def test_a_model_at_another_voxel_size_resamples_with_a_note(made, tmp_path):
    cohort = brats_cohort(tmp_path / "c1mm", n=1, shape=(48, 48, 40), zooms=(1.5, 1.5, 1.5))
    seg = registry.load("tiny-ts", root=made["models"])                     # works at 2 mm
    table = infer.segment_cohort(cohort, seg, None, tmp_path / "m", progress=False)
    assert "resampled by the model's preprocessing" in table.loc[0, "notes"]
    assert nib.load(tmp_path / "m" / "case0.nii.gz").shape == (48, 48, 40)     # back on the case's own grid


def test_models_cli_import_and_list(made, tmp_path, monkeypatch, capsys):
    from glioma_nb import cli

    monkeypatch.setenv("GLIOMA_NB_MODELS", str(tmp_path / "user-models"))
    assert cli.main(["models", "import", str(made["src"] / "ts"), "--name", "my-ts"]) == 0
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "my-ts" in out and "torchscript" in out and "brats-4mod" in out
    card = (tmp_path / "user-models" / "my-ts" / "card.md").read_text()
    assert "Training data" in card and "model.ts" in card
    assert cli.main(["models", "import", str(made["src"] / "ts"), "--name", "my-ts"]) == 2   # never overwritten
    # the cases a registered model saw are known, so notebook 01 does not score them as unseen
    assert cli.main(["models", "import", str(made["src"] / "ts"), "--name", "seen", "--trained-on", "toy4:case0"]) == 0
    seg = registry.load("seen")
    assert registry.trained_on(seg, "toy4", ["case0", "case1"]) == ["case0"]
    assert registry.trained_on(seg, "other", ["case0"]) == []
    with pytest.raises(SegmentationError, match="registered torchscript model whose weights are its imported files"):
        registry.load("seen", weights="elsewhere.pt")
    # the example bundle names its channels in metadata.json, so it imports by name alone, as the model zoo's does
    assert cli.main(["models", "example", "monai-bundle", str(tmp_path / "ex")]) == 0
    assert cli.main(["models", "import", str(tmp_path / "ex"), "--name", "ex-bundle"]) == 0
    entry = yaml.safe_load((tmp_path / "user-models" / "ex-bundle" / registry.SPEC).read_text())
    assert entry["modalities"] == ["t1", "t1c", "t2", "flair"]
    assert kinds.Outputs.parse(entry["outputs"]).labels == kinds.LABEL_PRESETS["brats2021"]   # argmax 0..3, named


def test_locked_validation_refuses_a_registered_model_whose_files_changed(made, tmp_path, monkeypatch):
    from glioma_nb.runs import ValidationError
    from glioma_nb.validate import reference

    root = tmp_path / "user-models"
    monkeypatch.setenv("GLIOMA_NB_MODELS", str(root))
    registry.import_model(made["src"] / "ts", "locked-ts")
    seg = registry.load("locked-ts")

    class Ref:   # a reference run whose 01_segment used the model as registered now
        run_id = "ref-run"

        def __init__(self, fp):
            self.fp = fp

        def metrics(self, step):
            return {"model": "locked-ts", "model_fingerprint": self.fp}

    cfg = {"segment": {"model": "locked-ts"}, "cohort": {"name": "v", "modalities": list(MODS)}}
    reference.check_compatible(cfg, Ref(seg.fingerprint))                     # the same files: fine
    shutil.rmtree(root / "locked-ts")
    (made["src"] / "ts2").mkdir()
    shutil.copy(made["src"] / "ts" / "model.yaml", made["src"] / "ts2" / "model.yaml")
    examples.torchscript_model(tmp_path / "other", MODS, 4, seed=1)
    shutil.copy(tmp_path / "other" / "model.ts", made["src"] / "ts2" / "model.ts")
    registry.import_model(made["src"] / "ts2", "locked-ts")                   # deleted and re-imported: other weights
    with pytest.raises(ValidationError, match="holds other files than when the reference run ref-run used it"):
        reference.check_compatible(cfg, Ref(seg.fingerprint))


def test_nnunet_label_mappings_from_dataset_json():
    from glioma_nb.segment.kinds import nnunet

    # BraTS 2021 as nnU-Net's Dataset137 converts it: 1 edema, 2 non-enhancing tumour, 3 enhancing
    plain = {"labels": {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}}
    assert nnunet.nnunet_outputs(plain).labels == {0: "background", 1: "oedema", 2: "necrosis", 3: "enhancing"}
    # the region-based variant: value i is written where region i is the innermost
    regions = {"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
               "regions_class_order": [1, 2, 3]}
    out = nnunet.nnunet_outputs(regions)
    assert out.labels == {0: "background", 1: "oedema", 2: "necrosis", 3: "enhancing"} and out.classes == "brats"
    exported = np.array([0, 1, 2, 3])
    assert list(out.from_labels(exported)) == [0, 2, 1, 3]          # internal: 1 necrosis, 2 oedema, 3 enhancing
    assert nnunet.nnunet_outputs({"labels": {"background": 0, "tumor": 1}}).classes == "wt"
    with pytest.raises(SegmentationError, match="no label mapping"):
        nnunet.nnunet_outputs({"labels": {"background": 0, "liver": 1}})
    assert nnunet.nnunet_outputs({"labels": {"background": 0, "liver": 1}}, "wt").labels == {0: "background",
                                                                                              1: "tumour"}


def test_a_kind_is_one_registered_class(tmp_path, monkeypatch, capsys):
    """A new kind is a Segmenter subclass registered by name: detection, the import's entry, building and the
    example all go through it, and the command line offers it (its choices come from the registry)."""
    from glioma_nb import cli
    from glioma_nb.segment.kinds import base

    assert kinds.names() == ("glioma-nb", "nnunet-v2", "monai-bundle", "torchscript")
    assert kinds.importable() == ("nnunet-v2", "monai-bundle", "torchscript")
    monkeypatch.setattr(base, "REGISTRY", dict(base.REGISTRY))
    monkeypatch.setattr(kinds, "REGISTRY", base.REGISTRY)

    @base.register
    class Toy(kinds.Segmenter):
        kind, importable = "toy", True

        @classmethod
        def detect(cls, path):
            return (path / "toy.txt").exists()

        @classmethod
        def example(cls, out, **_):
            out.mkdir(parents=True)
            (out / "toy.txt").write_text("a toy model")
            return out

    with pytest.raises(ValueError, match="registered twice"):
        base.register(Toy)
    assert "toy" in kinds.importable() and kinds.get("toy") is Toy
    assert cli.main(["models", "example", "toy", str(tmp_path / "t")]) == 0
    assert registry.detect_kind(tmp_path / "t") == "toy"
    with pytest.raises(SegmentationError, match="model kind 'tin' is not one of"):
        kinds.get("tin")
    with pytest.raises(SystemExit):
        cli.main(["models", "example", "tin", str(tmp_path / "u")])
    err = capsys.readouterr().err
    assert "invalid choice: 'tin'" in err and "toy" in err.split("choose from")[1]


@pytest.mark.parametrize("name", ["tiny-nnunet", "tiny-nnunet-regions", "tiny-bundle", "tiny-bundle-regions",
                                  "tiny-ts"])
def test_every_kind_segments_alike_in_openvino_and_in_torch(made, tmp_path, name):
    """segment.backend openvino: the network's forward pass in OpenVINO, the kind's own window, mirroring, folds and
    post-processing unchanged; masks and the signature of the same pass as in torch."""
    out = {}
    for b in ("torch", "openvino"):
        seg = registry.load(name, root=made["models"])
        seg.backend = b
        out[b] = tmp_path / b
        table = infer.segment_cohort(made["cohort"], seg, None, out[b], progress=False, signature=taps.Request(),
                                     postprocess="none")
        assert set(table["backend"]) == {b}, table["backend"].tolist()
    for case in made["cohort"].cases:
        a = _internal(out["torch"] / f"{case.case_id}.nii.gz")
        o = _internal(out["openvino"] / f"{case.case_id}.nii.gz")
        assert np.mean(a != o) <= 1e-4
        sa = taps.read_signature(taps.signature_path(out["torch"], case.case_id))
        so = taps.read_signature(taps.signature_path(out["openvino"], case.case_id))
        assert list(sa.columns) == list(so.columns)
        np.testing.assert_allclose(so.to_numpy(), sa.to_numpy(), rtol=1e-3, atol=1e-4)   # activations are O(0.1-1)
