"""`glioma-nb models pull` (issue 47) against a real HTTP server on 127.0.0.1: an nnU-Net v2 model zip (a trained-
model folder made with nnU-Net's own classes, zipped in the layout of nnUNetv2_export_model_to_zip) registered,
carded and segmenting with the signature exactly as the same folder imported by hand; a transfer cut half-way
resumed with a Range request; a tampered archive refused with nothing registered; no network named with the URL
and `--from`, which then imports the same archive offline. The shipped catalogue's MONAI model-zoo entry is checked
against the bundle's own metadata in ../shared."""
from __future__ import annotations

import hashlib
import json
import socket
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import SHARED, requires_shared
from loopback import Loopback
from test_model_kinds import MODS, brats_cohort

from glioma_nb import cli, taps
from glioma_nb.segment import examples, infer, pull, registry

ZIP_ROOT = "Dataset990_Toy/nnUNetTrainer__nnUNetPlans__3d_fullres"   # nnUNetv2_export_model_to_zip's layout


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 2-case cohort, an nnU-Net folder fitted on nothing (the contract, not a figure), its export-layout zip."""
    root = tmp_path_factory.mktemp("pull")
    cohort = brats_cohort(root / "cohort", n=2, shape=(32, 40, 32))
    cases = [{"images": c.images, "label": c.label} for c in cohort.cases]
    src = examples.nnunet_model(root / "src", cases, MODS, classes="brats", scheme="brats2018", folds=(0,),
                                features=(8, 16, 32), patch=(32, 32, 32), iterations=0)
    archive = root / "toy_nnunet.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(Path(src).rglob("*")):
            if f.is_file():
                z.write(f, f"{ZIP_ROOT}/{f.relative_to(src)}")
    return {"root": root, "cohort": cohort, "src": Path(src), "archive": archive, "bytes": archive.read_bytes()}


def _catalogue(path: Path, url: str, sha256: str) -> Path:
    path.write_text(yaml.safe_dump({"toy-nnunet": {
        "kind": "nnunet-v2", "description": "a toy nnU-Net model for the tests", "default_version": "1.0",
        "versions": {"1.0": {"urls": [url], "sha256": sha256, "from": "the test that made the archive"}},
        "licence": "CC0-1.0", "training_data": "nothing (untrained)",
        "reported_metrics": {"from": "nobody", "dice_wt": 0.5}}}))
    return path


def test_pulled_resumes_a_cut_transfer_registers_cards_and_segments_as_the_folder_imported_by_hand(toy, tmp_path,
                                                                                                  monkeypatch):
    models = tmp_path / "models"
    digest = hashlib.sha256(toy["bytes"]).hexdigest()
    with Loopback() as server:
        server.files["/toy.zip"] = toy["bytes"]
        monkeypatch.setenv("GLIOMA_NB_CATALOGUE", str(_catalogue(tmp_path / "cat.yaml", server.url + "/toy.zip", digest)))
        half = len(toy["bytes"]) // 2
        server.cut_after = half                                   # the first transfer stops half-way
        with pytest.raises(pull.PullError, match=rf"{server.url}/toy.zip[\s\S]*bytes are kept[\s\S]*resumes"):
            pull.pull("toy-nnunet", root=models)
        part = models / ".downloads" / "toy-nnunet-1.0.zip.part"
        assert part.stat().st_size == half and not registry.is_registered("toy-nnunet-1.0", models)
        spec = pull.pull("toy-nnunet@1.0", root=models)              # the same command resumes
        assert server.requests[-1] == ("/toy.zip", f"bytes={half}-")
    assert spec == models / "toy-nnunet-1.0" / registry.SPEC and not part.exists()
    assert not list(models.glob(".*extracting"))
    entry = yaml.safe_load(spec.read_text())
    assert entry["kind"] == "nnunet-v2" and entry["pulled"]["sha256"] == digest
    assert entry["pulled"]["source"] == server.url + "/toy.zip" and entry["modalities"] == list(MODS)
    card = spec.with_name("card.md").read_text()
    for words in ("Not measured here", "CC0-1.0", "nothing (untrained)", "dice_wt 0.5", digest,
                  "pull toy-nnunet@1.0", "What glioma-nb read"):
        assert words in card, words
    # registered and run as 01 runs it (the signature pooled in the same pass): the masks and signature of the folder
    # imported by hand
    registry.import_model(toy["src"], "by-hand", dest=models)
    req = taps.Request(mask="predicted", seed=0)
    out = {}
    for name in ("toy-nnunet-1.0", "by-hand"):
        seg = registry.load(name, root=models)
        table = infer.segment_cohort(toy["cohort"], seg, None, tmp_path / name, progress=False, signature=req,
                                     postprocess="none")
        assert (table["status"] == "predicted").all()
        out[name] = seg
    for c in toy["cohort"].case_ids:
        a, b = (np.asarray(nib.load(tmp_path / n / f"{c}.nii.gz").dataobj) for n in ("toy-nnunet-1.0", "by-hand"))
        assert np.array_equal(a, b), c
    sig_a, sig_b = (taps.load_signature(tmp_path / n, toy["cohort"].case_ids)[1] for n in ("toy-nnunet-1.0", "by-hand"))
    assert sig_a.shape[1] > 10 and sig_a.equals(sig_b)
    with pytest.raises(pull.PullError, match="already registered"):
        pull.pull("toy-nnunet", root=models)


def test_a_tampered_archive_is_refused_and_nothing_is_left(toy, tmp_path, monkeypatch):
    models = tmp_path / "models"
    bad = bytearray(toy["bytes"])
    bad[len(bad) // 3] ^= 0xFF
    with Loopback() as server:
        server.files["/toy.zip"] = bytes(bad)
        monkeypatch.setenv("GLIOMA_NB_CATALOGUE", str(_catalogue(tmp_path / "cat.yaml", server.url + "/toy.zip",
                                                                 hashlib.sha256(toy["bytes"]).hexdigest())))
        with pytest.raises(pull.PullError, match="its sha256 is [0-9a-f]{64}, the catalogue pins .*refused, nothing "
                                                 "registered"):
            pull.pull("toy-nnunet", root=models)
    assert not registry.registered(models)
    assert [p.name for p in models.iterdir()] == [".downloads"] and not list((models / ".downloads").iterdir())


def test_no_network_names_the_url_and_from_which_imports_the_same_archive_offline(toy, tmp_path, monkeypatch, capsys):
    with socket.socket() as s:                          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/toy.zip"
    models = tmp_path / "models"
    monkeypatch.setenv("GLIOMA_NB_MODELS", str(models))
    monkeypatch.setenv("GLIOMA_NB_CATALOGUE", str(_catalogue(tmp_path / "cat.yaml", dead,
                                                             hashlib.sha256(toy["bytes"]).hexdigest())))
    assert cli.main(["models", "pull", "toy-nnunet", "--timeout", "5"]) != 0
    err = capsys.readouterr().err
    assert dead in err and "--from FILE" in err and not registry.registered(models)
    assert cli.main(["models", "pull", "toy-nnunet", "--from", str(toy["archive"]), "--name", "toy"]) == 0
    assert "segment.model=toy" in capsys.readouterr().out
    entry = yaml.safe_load((models / "toy" / registry.SPEC).read_text())
    assert entry["pulled"]["source"] == f"file {toy['archive']}"
    assert cli.main(["models", "catalogue"]) == 0
    listed = capsys.readouterr().out
    assert "toy-nnunet@1.0" in listed and "brats_mri_segmentation@0.4.2" in listed and "sha1" in listed
    bad = tmp_path / "other.zip"
    bad.write_bytes(toy["bytes"][:-10])
    assert cli.main(["models", "pull", "toy-nnunet", "--from", str(bad), "--name", "toy2"]) != 0
    assert "refused, nothing registered" in capsys.readouterr().err and bad.exists()   # the user's file is kept


def test_the_catalogue_names_a_version_and_refuses_what_it_does_not_know():
    cat = pull.load_catalogue()
    rel = pull.resolve("brats_mri_segmentation", cat)
    assert rel.version == "0.4.2" and rel.hash == ("sha1", "bdbe477d6cc7290cf7ca50964d28652e401a09a7")
    assert rel.archive["urls"][0].endswith("/brats_mri_segmentation/versions/0.4.2/files/brats_mri_segmentation_v0.4.2.zip")
    assert "model_info.json" in rel.archive["from"] and rel.entry["licence"].startswith("Apache-2.0")
    with pytest.raises(pull.PullError, match="versions 0.4.2"):
        pull.resolve("brats_mri_segmentation@9.9", cat)
    with pytest.raises(pull.PullError, match="not in the model catalogue"):
        pull.resolve("no-such-model", cat)


@requires_shared("model-zoo/brats_mri_segmentation")
def test_the_catalogues_model_zoo_entry_is_what_the_bundle_itself_says():
    """The metrics, version and training data of the catalogue's BraTS bundle are those of its own metadata.json
    (../shared/data/model-zoo, byte for byte from the model-zoo repository)."""
    meta = json.loads((SHARED / "model-zoo" / "brats_mri_segmentation" / "configs" / "metadata.json").read_text())
    rel = pull.resolve("brats_mri_segmentation")
    assert rel.version == meta["version"]
    metrics = {k: v for k, v in rel.entry["reported_metrics"].items() if k != "from"}
    assert metrics == meta["eval_metrics"]
    assert meta["data_source"] in rel.entry["training_data"] and meta["intended_use"] in rel.entry["intended_use"]
