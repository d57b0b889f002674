"""The MONAI model zoo's real `brats_mri_segmentation` bundle (its configs byte for byte from
../shared/data/model-zoo; seeded weights of its exact `network_def`, as its SOURCE.txt says, since the trained
weights cannot be downloaded here): pulled with `models pull` from a local HTTP server and carded, its masks voxel-identical to MONAI's own
`python -m monai.bundle run` of the same config and weights, and notebooks 01 + 02 end to end on two brats18
cases with its SegResNet signature (a 240x240x160 window over 155-slice images)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import SHARED, requires_shared
from loopback import Loopback

from glioma_nb import config, io
from glioma_nb.segment import SegmentationError, kinds, pull, registry
from glioma_nb.segment.kinds import bundle

ZOO = SHARED / "model-zoo" / "brats_mri_segmentation"
pytestmark = [requires_shared("model-zoo/brats_mri_segmentation"), requires_shared("brats18"), pytest.mark.check]
FILES = {"t1c": "t1ce", "t1": "t1", "t2": "t2", "flair": "flair"}      # brats18 file names of the channel_def order


def seeded_bundle(dest: Path) -> Path:
    """The bundle's configs with seeded weights of its own network_def (../shared/data/model-zoo/SOURCE.txt)."""
    from monai.bundle import ConfigParser

    shutil.copytree(ZOO, dest)
    dest.chmod(0o755)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    (dest / "models").mkdir()
    parser = ConfigParser()
    parser.read_config(str(dest / "configs" / "inference.json"))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), dest / "models" / "model.pt")
    return dest


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The bundle imported by name only, and a run of notebooks 01 + 02 on two brats18 cases with it."""
    from glioma_nb import runner

    root = tmp_path_factory.mktemp("zoo")
    src = seeded_bundle(root / "brats_mri_segmentation")
    models = root / "models"
    # registered the way a user gets the bundle (issue 47): `models pull` from a real HTTP server on 127.0.0.1 serving
    # the bundle's archive (its real configs, seeded weights), the test catalogue entry pinning that archive's sha256
    archive = shutil.make_archive(str(root / "brats_mri_segmentation_v0.4.2"), "zip", root, "brats_mri_segmentation")
    data = Path(archive).read_bytes()
    with Loopback() as server:
        server.files["/brats_mri_segmentation_v0.4.2.zip"] = data
        catalogue = {"brats_mri_segmentation-seeded": {
            **pull.load_catalogue()["brats_mri_segmentation"], "default_version": "0.4.2",
            "versions": {"0.4.2": {"urls": [server.url + "/brats_mri_segmentation_v0.4.2.zip"],
                                   "sha256": hashlib.sha256(data).hexdigest(), "folder": "brats_mri_segmentation",
                                   "from": "this test: the real configs with seeded weights"}}}}
        pull.pull("brats_mri_segmentation-seeded", name="zoo-brats", root=models, catalogue=catalogue)
    cohort = io.load_cohort(config.resolve_config("brats18-dev"), progress=False)
    cases = cohort.case_ids[:2]
    mp = pytest.MonkeyPatch()
    mp.setenv("GLIOMA_NB_MODELS", str(models))
    mp.setenv("GLIOMA_NB_REPORTS", str(root / "reports"))
    try:
        run_dir = runner.run("brats18-dev", [
            "segment.model=zoo-brats", "segment.backend=torch",   # compared voxel for voxel with MONAI's torch run
            f"cohort.exclude=[{', '.join(c for c in cohort.case_ids if c not in cases)}]",
            "cohort.clinical.require_all_cases=false", "segment.n_overlay_cases=1", "signature.radiomics=null", "signature.location_features=false",
            "signature.stability.perturbations=[]", "signature.feature_map=false"],
            steps=["01_segment", "02_signature"], progress=False)
    finally:
        mp.undo()
    return {"src": src, "models": models, "cohort": cohort, "cases": cases, "run": run_dir, "root": root}


def test_imported_by_name_only_reads_channels_and_labels_from_the_bundle(zoo):
    entry = yaml.safe_load((zoo["models"] / "zoo-brats" / registry.SPEC).read_text())
    assert entry["pulled"]["version"] == "0.4.2" and len(entry["pulled"]["sha256"]) == 64
    card = (zoo["models"] / "zoo-brats" / "card.md").read_text()
    assert "Not measured here" in card and "Apache-2.0" in card and "val_mean_dice_wt 0.9026" in card
    assert entry["modalities"] == ["t1c", "t1", "t2", "flair"]         # metadata.json: T1c, T1, T2, FLAIR
    assert kinds.Outputs.parse(entry["outputs"]).labels == kinds.LABEL_PRESETS["brats2018"]
    probe = entry["bundle"]["probe"]
    # SegResNet's three sigmoid channels (TC, WT, ET) become one channel of BraTS 2018 labels (its Lambdad)
    assert probe["network_channels"] == 3 and probe["channels"] == 1
    assert probe["lit"] == {0: [1], 1: [2], 2: [4]} and probe["values"] == [0, 1, 2, 4]
    card = (zoo["models"] / "zoo-brats" / "card.md").read_text()
    assert "Test run at import" in card and "SegResNet" in card


def test_a_label_mapping_that_cannot_fit_is_refused_naming_the_one_that_fits(zoo, tmp_path):
    # the README's former example: region channels, but the bundle's postprocessing returns a label map
    with pytest.raises(SegmentationError, match=r"one channel with values \[0, 1, 2, 4\].*--labels regions:tc,wt,et "
                                                r"cannot fit.*--labels brats2018 fits"):
        registry.import_model(zoo["src"], "zoo-regions", labels="regions:tc,wt,et", dest=tmp_path)
    assert not (tmp_path / "zoo-regions").exists() and not list(tmp_path.glob(".*importing"))
    entry = yaml.safe_load((zoo["models"] / "zoo-brats" / registry.SPEC).read_text())
    probe, fitting = entry["bundle"]["probe"], kinds.Outputs(labels=kinds.LABEL_PRESETS["brats2018"])
    with pytest.raises(SegmentationError, match=r"value\(s\) \[4\] have no meaning.*--labels brats2018 fits"):
        bundle.check_bundle_outputs("x", zoo["src"], kinds.Outputs.parse("brats2021"), probe, fitting)
    bundle.check_bundle_outputs("x", zoo["src"], kinds.Outputs.parse("1=necrosis,2=oedema,4=enhancing"), probe,
                                  fitting)
    # an order against metadata.json is refused (names in any case are read: test_model_kinds imports T1,T1c,...)
    with pytest.raises(SegmentationError, match="disagrees with .*metadata.json, whose input channels are T1c, T1"):
        registry.import_model(zoo["src"], "zoo-order", modalities="t1,t1c,t2,flair", labels="brats2018", dest=tmp_path)


def test_masks_are_voxel_identical_to_monais_own_bundle_run(zoo, tmp_path):
    """`python -m monai.bundle run` (needs `fire`) with the bundle's own inference.json and the same weights."""
    folder = zoo["models"] / "zoo-brats" / "files"
    data = zoo["cohort"].root
    datalist = [{"image": [str(data / c / f"{c}_{FILES[m]}.nii.gz") for m in ("t1c", "t1", "t2", "flair")]}
                for c in zoo["cases"]]
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                        str(folder / "configs" / "inference.json"), "--meta_file", str(folder / "configs" / "metadata.json"),
                        "--bundle_root", str(folder), "--output_dir", str(tmp_path / "eval"),
                        "--test_datalist", repr(datalist), "--dataloader#num_workers", "0",
                        "--dataloader#shuffle", "False"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    n_tumour = 0
    for c in zoo["cases"]:
        theirs = np.squeeze(np.asanyarray(nib.load(tmp_path / "eval" / f"{c}_t1ce" / f"{c}_t1ce_seg.nii.gz").dataobj))
        ours = np.asanyarray(nib.load(zoo["run"] / "masks" / f"{c}.nii.gz").dataobj)   # brats18's scheme: 1/2/4
        assert ours.shape == theirs.shape == (240, 240, 155)
        assert np.array_equal(ours, theirs), f"{c}: {(ours != theirs).sum()} voxels differ"
        assert set(np.unique(ours)) == {0, 1, 2, 4}          # seeded weights still call every class
        n_tumour += int((ours > 0).sum())
    assert n_tumour > 0


def test_notebooks_01_and_02_run_with_the_segresnet_signature(zoo):
    metrics = json.loads((zoo["run"] / "metrics" / "01_segment.json").read_text())
    assert metrics["model"] == "zoo-brats" and metrics["kind"] == "monai-bundle"
    assert metrics["n_segmented"] == 2 and metrics["n_without_signature"] == 0
    sig = pd.read_parquet(zoo["run"] / "tables" / "features_signature.parquet").set_index("case_id")
    per_layer = pd.Series([c.split("__")[1] for c in sig.columns]).value_counts().to_dict()
    # SegResNet's default layers (init_filters 16): channels x 2 statistics x 3 regions, plus 3 volumes
    channels = {"enc1": 16, "enc2": 32, "enc3": 64, "bottleneck": 128, "dec4": 64, "dec3": 32, "dec2": 16}
    assert per_layer == {**{k: 6 * v for k, v in channels.items()}, "volume": 3}
    assert sig.shape == (2, 2115) and sig.notna().all().all()
    assert (zoo["run"] / "02_signature.html").exists()
    assert json.loads((zoo["run"] / "metrics" / "02_signature.json").read_text())["step"] == "02_signature"
