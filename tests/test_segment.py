"""Segmentation: transforms, inference in the original space, metrics, training, shipped weights."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import requires_shared

from glioma_nb import io
from glioma_nb.segment import SegmentationError, infer, kinds, metrics, models, train, transforms
from glioma_nb.segment.step import SegmentResult

TINY = dict(name="unet", channels=[4, 8, 16], strides=[2, 2], num_res_units=1)


def _sphere(shape, centre, radius, zooms=(1.0, 1.0, 1.0)):
    grid = np.meshgrid(*[(np.arange(n) - c) * z for n, c, z in zip(shape, centre, zooms)], indexing="ij")
    return sum(g ** 2 for g in grid) <= radius ** 2


def _cohort(tmp_path: Path, n: int = 2, zooms=(1.0, 1.0, 3.0), shape=(48, 44, 20), mods=("flair",),
            flip_affine: bool = True, seed: int = 0) -> io.Cohort:
    """Cases with a bright sphere (the 'tumour') in a dimmer ellipsoid 'brain', non-trivial affine."""
    rng = np.random.default_rng(seed)
    aff = np.diag([*zooms, 1.0])
    if flip_affine:  # LPS-like voxel axes: i runs right->left, j anterior->posterior
        aff[0, 0], aff[1, 1] = -zooms[0], -zooms[1]
    aff[:3, 3] = [40.0, 30.0, -20.0]
    cases = []
    for i in range(n):
        cid = f"case{i}"
        d = tmp_path / cid
        d.mkdir(parents=True)
        centre = [s / 2 + rng.uniform(-3, 3) for s in shape]
        brain = _sphere(shape, [s / 2 for s in shape], 20, zooms)
        tumour = _sphere(shape, centre, 8 + 2 * i, zooms) & brain
        images = {}
        for m in mods:
            img = np.where(brain, 100 + rng.normal(0, 5, shape), 0) + 150 * tumour
            nib.save(nib.Nifti1Image(img.astype(np.float32), aff), d / f"{m}.nii.gz")
            images[m] = d / f"{m}.nii.gz"
        nib.save(nib.Nifti1Image(tumour.astype(np.uint8), aff), d / "seg.nii.gz")
        cases.append(io.Case(cid, images, d / "seg.nii.gz"))
    return io.Cohort("toy", tmp_path, cases, pd.DataFrame(index=[c.case_id for c in cases]), tuple(mods),
                     io.LABEL_SCHEMES["binary"])


def _spec(**kw) -> models.ModelSpec:
    base = dict(name="tiny", network=TINY, modalities=("flair",), classes="wt", spacing=(2.0, 2.0, 3.0),
                patch=(32, 32, 16), train={})
    base.update(kw)
    return models.ModelSpec(**base)


class Threshold(torch.nn.Module):
    """A 'network' that calls a voxel tumour when its z-scored intensity is above 1 (known answer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones_like(x[:, :1]), (x[:, :1] - 1.0) * 50], dim=1)


def test_load_and_preprocess_shapes_and_spacing(tmp_path):
    cohort = _cohort(tmp_path, n=1)
    spec = _spec()
    d = transforms.load_case(cohort, "case0", spec, with_label=True)
    assert tuple(d["image"].shape) == (1, 48, 44, 20)
    assert np.allclose(np.asarray(d["image"].affine), nib.load(cohort.case("case0").images["flair"]).affine)
    out = transforms.preprocess(spec, with_label=True)(d)
    pix = np.abs(np.diag(np.asarray(out["image"].affine)[:3, :3]))
    assert np.allclose(pix, spec.spacing)
    assert out["image"].shape[1:] == out["label"].shape[1:]
    assert set(np.unique(out["label"].numpy())) <= {0, 1}
    # z-scored over the non-zero voxels
    img = out["image"][0].numpy()
    assert abs(img[img != 0].mean()) < 0.05


def test_prediction_returns_to_original_space(tmp_path):
    """A known-answer 'network' through preprocess -> sliding window -> Invertd lands on the sphere."""
    cohort = _cohort(tmp_path, n=1)
    spec = _spec()
    classes = infer.predict_case(Threshold(), spec, transforms.load_case(cohort, "case0", spec))
    ref = np.asanyarray(nib.load(cohort.case("case0").label).dataobj)
    assert classes.shape == ref.shape
    dice, _ = metrics.region_scores(classes > 0, ref > 0, (1, 1, 3))
    assert dice > 0.9  # resampling to 2x2x3 mm and back costs a little at the boundary only


def test_segment_cohort_writes_original_affine_and_resumes(tmp_path):
    cohort = _cohort(tmp_path / "c", n=2)
    spec = _spec()
    out = tmp_path / "masks"
    first = infer.segment_cohort(cohort, spec, Threshold(), out, progress=False)
    assert (first["status"] == "predicted").all()
    for cid in cohort.case_ids:
        saved = nib.load(out / f"{cid}.nii.gz")
        src = nib.load(cohort.case(cid).images["flair"])
        assert np.allclose(saved.affine, src.affine) and saved.shape == src.shape
        assert json.loads((out / f"{cid}.json").read_text())["scheme"] == "binary"
    # an interrupted cohort: one case's files are missing; only that case is run again
    (out / "case1.nii.gz").unlink()
    again = infer.segment_cohort(cohort, spec, Threshold(), out, progress=False).set_index("case_id")
    assert again.loc["case0", "status"] == "cached" and again.loc["case1", "status"] == "predicted"
    assert not list(out.glob("*.tmp*"))
    scores = metrics.cohort_scores(cohort, out)
    assert (scores["dice_WT"] > 0.9).all()


def test_missing_modality_and_2d_image_are_clear_errors(tmp_path):
    cohort = _cohort(tmp_path / "a", n=1, mods=("flair",))
    spec4 = _spec(modalities=("t1", "t1c", "t2", "flair"), classes="brats")
    with pytest.raises(SegmentationError, match=r"case case0: model tiny needs .*no \['t1', 't1c', 't2'\]"):
        transforms.load_case(cohort, "case0", spec4)
    with pytest.raises(SegmentationError, match="case case0"):
        infer.segment_cohort(cohort, spec4, Threshold(), tmp_path / "m", progress=False)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((32, 32, 1), np.float32), np.eye(4)), flat)
    cohort.cases[0].images["flair"] = flat
    with pytest.raises(SegmentationError, match=r"case case0: flat.nii.gz has shape \(32, 32, 1\).*3D"):
        transforms.load_case(cohort, "case0", _spec())


@pytest.mark.parametrize("scheme,values", [("brats2018", (1, 2, 4)), ("brats2021", (1, 2, 3))])
def test_label_remapping_round_trip(scheme, values):
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[1, :, :], lab[2, :, :], lab[3, :, :] = values
    sch = io.LABEL_SCHEMES[scheme]
    cls = transforms.label_to_classes(lab, sch, "brats")
    assert sorted(np.unique(cls)) == [0, 1, 2, 3]
    back, out_scheme = transforms.classes_to_label(cls, "brats", sch)
    assert out_scheme.name == scheme and np.array_equal(back, lab)
    # into the other BraTS scheme: only the enhancing value changes
    other = io.LABEL_SCHEMES["brats2021" if scheme == "brats2018" else "brats2018"]
    moved, _ = transforms.classes_to_label(cls, "brats", other)
    assert set(np.unique(moved)) == {0, 1, 2, 4 if other.name == "brats2018" else 3}
    wt = transforms.label_to_classes(lab, sch, "wt")
    assert wt.sum() == (lab > 0).sum()
    with pytest.raises(SegmentationError, match="binary"):
        transforms.label_to_classes(lab > 0, io.LABEL_SCHEMES["binary"], "brats", "c1")


def test_dice_and_hd95_known_answers():
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[2:12, 2:12, 2:12] = True        # 1000 voxels
    b[7:17, 2:12, 2:12] = True        # 1000 voxels, 500 shared
    dice, hd = metrics.region_scores(a, b, (1, 1, 1))
    assert dice == pytest.approx(2 * 500 / 2000)
    assert hd == pytest.approx(5.0, abs=0.5)
    _, hd_mm = metrics.region_scores(a, b, (2, 1, 1))  # the shift is along the 2 mm axis
    assert hd_mm == pytest.approx(10.0, abs=1.0)
    assert metrics.region_scores(a, a, (1, 1, 1)) == (1.0, 0.0)
    # the official conventions: empty in both is undefined, empty in one is Dice 0 and an infinite HD95
    assert all(np.isnan(metrics.region_scores(np.zeros_like(a), np.zeros_like(a), (1, 1, 1))))
    assert metrics.region_scores(a, np.zeros_like(a), (1, 1, 1)) == (0.0, float("inf"))


def test_bootstrap_summary_covers_the_mean():
    per_case = pd.DataFrame({"case_id": list("abcdefgh"), "dice_WT": [0.8, 0.85, 0.9, 0.7, 0.95, 0.88, 0.6, 0.9],
                             "hd95_WT": [5, 4, 3, np.nan, 2, 3, 9, 4]})
    summ = metrics.summarise(per_case).set_index("region")
    dice = summ[summ["metric"] == "Dice"].loc["WT"]
    assert dice["mean"] == pytest.approx(per_case["dice_WT"].mean())
    assert dice["ci_low"] < dice["mean"] < dice["ci_high"] and dice["n"] == 8
    hd = summ[summ["metric"] == "HD95 (mm)"].loc["WT"]
    assert hd["n"] == 7 and hd["n_missing"] == 1


def test_the_summary_counts_an_infinite_hd95_as_373_mm_and_sets_global_beside_lesion_wise():
    per_case = pd.DataFrame({"case_id": list("abcd"), "dice_ET": [0.8, 0.0, np.nan, 0.6],
                             "hd95_ET": [4.0, np.inf, np.nan, 6.0], "lesion_dice_ET": [0.7, 0.0, np.nan, 0.5],
                             "lesion_hd95_ET": [5.0, np.inf, np.nan, 8.0], "nsd_ET": [0.9, 0.0, np.nan, 0.8]})
    summ = metrics.summarise(per_case, n_boot=200)
    hd = summ[(summ["level"] == "global") & (summ["metric"] == "HD95 (mm)")].iloc[0]
    assert hd["mean"] == pytest.approx((4 + 373 + 6) / 3) and hd["n_inf"] == 1 and hd["n_missing"] == 1
    assert set(summ["level"]) == {"global", "lesion-wise"} and len(summ) == 5
    table = metrics.summary_table(summ)
    assert list(table.columns) == ["region", "metric", "global", "lesion-wise", "n"]
    row = table[table["metric"] == "Dice"].iloc[0]
    assert row["global"].startswith("0.467 [") and row["lesion-wise"].startswith("0.400 [")
    assert (table[table["metric"] == "NSD"]["lesion-wise"] == "").all()     # NSD is reported globally only


def test_short_training_lowers_the_loss_and_resumes_identically(tmp_path):
    cohort = _cohort(tmp_path / "c", n=3)
    spec = _spec()
    src = [train.TrainSource(cohort, ["case0", "case1"], ["case2"])]
    settings = train.TrainSettings(iterations=24, samples_per_case=2, lr=5e-3, val_every=12, checkpoint_every=8)
    torch.set_num_threads(1)
    full = train.train(spec, src, tmp_path / "full", settings, device="cpu", progress=False)
    log = pd.read_csv(tmp_path / "full" / "train_log.csv")
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]
    assert log["val_dice_wt"].notna().sum() == 2
    # interrupted after 10 iterations, then resumed: the same weights as the uninterrupted run
    part = train.train(spec, src, tmp_path / "part", settings, device="cpu", progress=False, stop_at=10)
    assert part == {"model": "tiny", "stopped_at": 10}
    resumed = train.train(spec, src, tmp_path / "part", settings, device="cpu", progress=False)
    a = torch.load(tmp_path / "full" / "weights.pt")
    b = torch.load(tmp_path / "part" / "weights.pt")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-3)
    # a checkpoint is never resumed under other settings
    other = train.TrainSettings(iterations=30, samples_per_case=2, lr=5e-3, val_every=12, checkpoint_every=8)
    with pytest.raises(SegmentationError, match="other training settings"):
        train.train(spec, src, tmp_path / "part", other, device="cpu", progress=False)


def test_a_non_finite_loss_stops_training_with_the_checkpoint_kept(tmp_path, monkeypatch):
    """A diverged run (as float16 autocast did on an H100) stops with an error instead of training NaNs."""
    calls = []
    loss_fn = train.dice_ce_loss

    def nan_after(x, y):
        calls.append(1)
        loss = loss_fn(x, y)
        return loss * float("nan") if len(calls) > 10 else loss

    monkeypatch.setattr(train, "dice_ce_loss", nan_after)
    monkeypatch.setattr(train, "MAX_NONFINITE", 5)
    cohort = _cohort(tmp_path / "c", n=2)
    settings = train.TrainSettings(iterations=40, checkpoint_every=10, val_every=100)
    with pytest.raises(SegmentationError, match=r"non-finite for 5 iterations \(iteration 15"):
        train.train(_spec(), [train.TrainSource(cohort, ["case0", "case1"])], tmp_path / "t", settings,
                    device="cpu", progress=False)
    state = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 10 and not (tmp_path / "t" / "weights.pt").exists()
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_split_by_patient_keeps_patients_together(tmp_path):
    """Two scans of one patient never fall on both sides, with the clinical table as io.clinical reads it (a plain
    index and a case_id column: the form whose patient ids were once lost, making every case its own patient) and
    indexed by case id."""
    cohort = _cohort(tmp_path, n=6)
    pid = ["p1", "p1", "p2", "p3", "p3", "p4"]
    pt = pd.Series(pid, index=cohort.case_ids)
    for clinical in (pd.DataFrame({"case_id": cohort.case_ids, "patient_id": pid}),
                     pd.DataFrame({"patient_id": pid}, index=cohort.case_ids)):
        cohort.clinical = clinical
        assert train.patients(cohort, cohort.case_ids) == pt.to_dict()
        for seed in range(8):        # with every case its own patient, some seed splits p1 or p3
            tr, te = train.split_by_patient(cohort, 0.5, seed=seed)
            assert not set(pt[tr]) & set(pt[te]) and sorted(tr + te) == cohort.case_ids
    cohort.clinical = pd.DataFrame({"case_id": cohort.case_ids, "patient_id": [None] * 6})
    assert train.patients(cohort, cohort.case_ids) == {c: c for c in cohort.case_ids}


def test_network_registry_builds_both_networks():
    x = torch.zeros(1, 4, 32, 32, 32)
    for net in ("unet", "segresnet"):
        spec = _spec(network={"name": net} if net == "segresnet" else TINY, modalities=("t1", "t1c", "t2", "flair"),
                     classes="brats")
        assert spec.build()(x).shape == (1, 4, 32, 32, 32)
    with pytest.raises(SegmentationError, match="unknown network"):
        _spec(network={"name": "vnet2000"}).build()


def test_shipped_ensemble_matches_its_model_card(tmp_path):
    """Every fold model of the shipped brats-4mod ensemble is under 20 MB with the sha256 its card records; a
    tampered copy is refused."""
    spec = models.load_spec("brats-4mod")
    assert spec.ensemble >= 2 and len(spec.weights_paths) == spec.ensemble
    hashes = models.card_hashes(spec.card_path)
    for p in spec.weights_paths:
        assert p.stat().st_size < 20e6 and hashes[p.name] == models.sha256(p)
    net = models.load_model(spec)
    assert models.is_ensemble(net) and len(net.members) == spec.ensemble
    x = torch.zeros(1, len(spec.modalities), *spec.patch)
    assert net(x).shape == (1, spec.n_outputs, *spec.patch)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for f in spec.folder.glob("brats-4mod.*"):
        shutil.copy(f, pkg / f.name)
    raw = bytearray((pkg / "brats-4mod.fold1.pt").read_bytes())
    raw[-100] ^= 0xFF
    (pkg / "brats-4mod.fold1.pt").write_bytes(bytes(raw))
    with pytest.raises(SegmentationError, match="brats-4mod.fold1.pt has sha256"):
        models.load_model(models.load_spec(pkg / "brats-4mod.yaml"))


def test_shipped_single_model_matches_its_model_card(tmp_path, monkeypatch):
    """flair-wt ships one network (v1: the cross-validated v2 did not beat it, see configs/models/flair-wt-v2.yaml)."""
    spec = models.load_spec("flair-wt")
    assert spec.ensemble == 0 and spec.weights_path.stat().st_size < 20e6
    assert models.card_sha256(spec.card_path) == models.sha256(spec.weights_path)
    net = models.load_model(spec)
    x = torch.zeros(1, len(spec.modalities), *spec.patch)
    assert net(x).shape == (1, spec.n_classes, *spec.patch)
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    for f in ("flair-wt.yaml", "flair-wt.md"):
        shutil.copy(spec.path.parent / f, tmp_path / f)
    raw = bytearray(spec.weights_path.read_bytes())
    raw[-100] ^= 0xFF
    (tmp_path / "flair-wt.pt").write_bytes(bytes(raw))
    with pytest.raises(SegmentationError, match="sha256"):
        models.load_model(models.load_spec("flair-wt"))


def test_choose_model_by_modalities():
    assert models.choose_model(("t1", "t1c", "t2", "flair")) == "brats-4mod"
    assert models.choose_model(("flair",)) == "flair-wt"
    assert models.choose_model(("t1",)) is None
    assert models.choose_model(("flair",), "brats-4mod") == "brats-4mod"


@pytest.mark.shared_data
@requires_shared("brats18")
def test_a_shipped_fold_model_reproduces_its_out_of_fold_scores(tmp_path):
    """The out-of-fold figures of the card come from the shipped fold models: the fold model that never saw a real
    case segments it (with the spec's mirroring and rule) to the Dice recorded in ``brats-4mod.oof.csv``."""
    from glioma_nb import config

    cohort, report = io.check_cohort(config.resolve_config("brats18-dev"), progress=False, images=False)
    spec = models.load_spec("brats-4mod")
    oof = pd.read_csv(spec.folder / "brats-4mod.oof.csv")
    row = oof.sort_values("dice_WT").iloc[len(oof) // 2]
    member = models.load_model(spec).members[int(row["fold"])]
    table = infer.segment_cohort(cohort, spec, member, tmp_path, case_ids=[row["case_id"]], progress=False)
    assert table.loc[0, "status"] == "predicted" and table.loc[0, "postprocess"] == spec.postprocess
    scores = metrics.cohort_scores(cohort, tmp_path, [row["case_id"]]).iloc[0]
    for col in [c for c in oof.columns if c.startswith("dice_")]:
        assert scores[col] == pytest.approx(row[col], abs=0.02), col


@pytest.mark.shared_data
@requires_shared("tcga-lgg")
def test_shipped_flair_model_segments_a_held_out_real_case(tmp_path):
    """A tcga-lgg patient held out of flair-wt's training is segmented in its own space with a plausible Dice."""
    from glioma_nb import config

    cohort, report = io.check_cohort(config.resolve_config("tcga-lgg-dev"), progress=False, images=False)
    spec = models.load_spec("flair-wt")
    case_id = "TCGA_DU_5851_19950428"
    assert case_id not in models.training_cases(spec.train["sources"], "tcga-lgg-dev", cohort.case_ids)
    table = infer.segment_cohort(cohort, spec, models.load_model(spec), tmp_path, case_ids=[case_id], progress=False)
    assert table.loc[0, "status"] == "predicted"
    assert metrics.cohort_scores(cohort, tmp_path, [case_id]).loc[0, "dice_WT"] > 0.5


# --- post-processing: rules, CV choice, inference --------------------------------------------------

from glioma_nb.segment import postprocess  # noqa: E402
from glioma_nb.zoo import evaluate, postprocess_cv, ship  # noqa: E402


def test_postprocess_rules_keep_the_right_components():
    a = np.zeros((30, 30, 30), np.uint8)
    a[2:12, 2:12, 2:12] = 2          # 1000 voxels, class 2
    a[5:7, 5:7, 12:14] = 1           # touches the big block: the same component
    a[20:25, 20:25, 20:25] = 1       # 125 voxels: 12 % of the largest
    a[27, 27, 27] = 3                # 1 voxel
    a[14, 14, 14] = 1                # diagonal neighbour of nothing: its own component
    big = a.copy()
    big[20:, 20:, 20:] = 0
    big[14, 14, 14] = 0
    assert np.array_equal(postprocess.apply(a, "none"), a)
    assert np.array_equal(postprocess.apply(a, "largest"), big)              # classes inside are kept
    kept = postprocess.apply(a, "min_fraction:0.1")
    assert kept[20:25, 20:25, 20:25].all() and kept[27, 27, 27] == 0 and kept[14, 14, 14] == 0
    assert postprocess.apply(a, "min_fraction:0.2")[20:25, 20:25, 20:25].sum() == 0
    # 26-connectivity: a diagonal chain is one component
    d = np.zeros((5, 5, 5), np.uint8)
    d[0, 0, 0] = d[1, 1, 1] = d[2, 2, 2] = 1
    assert np.array_equal(postprocess.apply(d, "largest"), d)
    # an empty mask and a single component are returned unchanged
    assert not postprocess.apply(np.zeros((4, 4, 4), np.uint8), "largest").any()


@pytest.mark.parametrize("rule", ["biggest", "min_fraction:1.5", "min_fraction:x", "largest:0.2"])
def test_an_unknown_postprocess_rule_is_refused_with_the_accepted_forms(rule):
    with pytest.raises(SegmentationError, match="none, largest, min_fraction:F"):
        postprocess.parse_rule(rule)
    with pytest.raises(SegmentationError, match="none, largest"):
        _spec(postprocess=rule)


def test_a_spec_file_with_a_bad_rule_is_named(tmp_path):
    text = re.sub(r"(?m)^postprocess: .*$", "postprocess: biggest", models.MODELS_DIR.joinpath("brats-4mod.yaml").read_text())
    assert "biggest" in text
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(SegmentationError, match=r"m\.yaml: post-processing rule 'biggest'"):
        models.load_spec(tmp_path / "m.yaml")


def test_choose_keeps_a_rule_only_when_it_raises_the_out_of_fold_dice():
    base = {"a": 0.9, "b": 0.3, "c": 0.8}
    rows = [{"case_id": c, "rule": "none", "dice_WT": v} for c, v in base.items()]
    helps = rows + [{"case_id": c, "rule": "largest", "dice_WT": v + (0.4 if c == "b" else -0.01)}
                    for c, v in base.items()]
    rule, summary = postprocess.choose(pd.DataFrame(helps))
    assert rule == "largest"
    assert summary.loc["largest", "improved"] == 1 and summary.loc["largest", "worsened"] == 2
    hurts = rows + [{"case_id": c, "rule": "largest", "dice_WT": v - 0.05} for c, v in base.items()]
    assert postprocess.choose(pd.DataFrame(hurts))[0] == "none"


def test_fold_split_is_a_seeded_partition():
    ids = [f"p{i:02d}" for i in range(23)]
    folds = postprocess_cv.fold_split(ids, 3)
    assert sorted(sum(folds, [])) == ids and len({len(f) for f in folds} - {7, 8}) == 0
    assert folds == postprocess_cv.fold_split(list(reversed(ids)), 3)
    with pytest.raises(SegmentationError, match="2 <= folds"):
        postprocess_cv.fold_split(ids, 1)


def _blob_cohort(tmp_path: Path, n: int = 1) -> io.Cohort:
    """Toy cases whose image also has a bright blob away from the tumour: a false positive of the
    threshold 'network' that the label map does not have."""
    cohort = _cohort(tmp_path, n=n, shape=(64, 64, 20), zooms=(1.0, 1.0, 3.0))
    for case in cohort.cases:
        img = nib.load(case.images["flair"])
        data = np.asarray(img.dataobj).copy()
        blob = _sphere(data.shape, (8, 32, 10), 6, (1.0, 1.0, 3.0))   # 8 mm or more from the tumour
        assert not (blob & (np.asanyarray(nib.load(case.label).dataobj) > 0)).any()
        data[blob] = data.max()
        nib.save(nib.Nifti1Image(data, img.affine), case.images["flair"])
    return cohort


def test_inference_applies_the_spec_rule_and_reruns_a_case_cached_with_another(tmp_path):
    """A bright distant blob is a false positive of the threshold 'network': 'largest' removes it."""
    cohort = _blob_cohort(tmp_path / "c")
    out = tmp_path / "masks"
    raw = infer.segment_cohort(cohort, _spec(), Threshold(), out, progress=False)
    assert raw.loc[0, "postprocess"] == "none" and "fragmented" in raw.loc[0, "flags"]
    dice_raw = metrics.cohort_scores(cohort, out).loc[0, "dice_WT"]
    # a record written before post-processing existed has no rule: it is a 'none' mask, reused as such
    rec = json.loads((out / "case0.json").read_text())
    del rec["postprocess"]
    (out / "case0.json").write_text(json.dumps(rec))
    old = infer.segment_cohort(cohort, _spec(), Threshold(), out, progress=False)
    assert old.loc[0, "status"] == "cached" and old.loc[0, "postprocess"] == "none"
    # scoring with the rule applied to the cached masks == inferring with the rule
    dice_scored = metrics.cohort_scores(cohort, out, postprocess="largest").loc[0, "dice_WT"]
    again = infer.segment_cohort(cohort, _spec(postprocess="largest"), Threshold(), out, progress=False)
    assert again.loc[0, "status"] == "predicted"          # cached with another rule: run again
    assert again.loc[0, "postprocess"] == "largest" and "fragmented" in again.loc[0, "flags"]
    assert again.loc[0, "WT_ml"] < raw.loc[0, "WT_ml"]
    dice_post = metrics.cohort_scores(cohort, out).loc[0, "dice_WT"]
    assert dice_post > dice_raw + 0.05 and dice_post == pytest.approx(dice_scored)
    assert infer.segment_cohort(cohort, _spec(postprocess="largest"), Threshold(), out,
                                progress=False).loc[0, "status"] == "cached"


def test_weights_over_20_mb_are_refused_before_anything_is_copied(tmp_path, monkeypatch):
    """A cross-validation whose second fold model is too big leaves the package as it was (fold 0 not copied);
    so does a single network that is too big."""
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path / "pkg")
    (tmp_path / "pkg").mkdir()
    out = tmp_path / "cv"
    for f, mb in ((0, 1), (1, 21)):
        (out / f"fold{f}").mkdir(parents=True)
        (out / f"fold{f}" / "weights.pt").write_bytes(bytes(mb * 1_000_000))
    (out / "cv.json").write_text(json.dumps({"folds": 2, "variant": "plain", "rule": "none", "n_cases": 4}))
    with pytest.raises(SegmentationError, match=r"fold1/weights.pt is 21.0 MB; .* under 20 MB per fold"):
        ship.ship(_spec(), out, "cmd")
    single = tmp_path / "single"
    single.mkdir()
    (single / "weights.pt").write_bytes(bytes(21_000_000))
    (single / "train_summary.json").write_text("{}")
    with pytest.raises(SegmentationError, match=r"weights.pt is 21.0 MB; shipped weights must stay under 20 MB"):
        ship.ship(_spec(), single, "cmd", per_case=pd.DataFrame())
    assert list((tmp_path / "pkg").iterdir()) == []


def test_model_card_reports_held_out_dice_with_and_without_the_rule(tmp_path, monkeypatch):
    cohort = _blob_cohort(tmp_path / "c", n=2)
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path / "pkg")
    (tmp_path / "pkg").mkdir()
    cv = {"folds": 2, "cases": 46, "cohort": "toy", "iterations": 10, "dice": "0.70 -> 0.72", "command": "cv-cmd"}
    spec = _spec(postprocess="largest", postprocess_cv=cv)
    out = tmp_path / "train"
    out.mkdir()
    tiny = spec.build()
    models.save_weights(tiny, out / "weights.pt")
    (out / "train_summary.json").write_text(json.dumps({
        "n_parameters": 1, "train_cases": ["toy/x"], "held_out_cases": ["toy/case0", "toy/case1"], "iterations": 10,
        "settings": {"batch_cases": 1, "samples_per_case": 2, "lr": 0.1, "weight_decay": 0.0, "seed": 0},
        "device": "cpu", "bf16": False, "seconds": 6.0}))
    per_case = evaluate.evaluate_held_out(spec, Threshold(), [train.TrainSource(cohort, [], cohort.case_ids)], out,
                                       progress=False)
    assert sorted(per_case["postprocess"].unique()) == ["largest", "none"] and len(per_case) == 4
    wide = per_case.pivot(index="case_id", columns="postprocess", values="dice_WT")
    assert (wide["largest"] > wide["none"] + 0.05).all()
    card = ship.ship(spec, out, "train-cmd", per_case=per_case).read_text()
    assert "`largest`" in card and "2-fold cross-validation on 46 training patients" in card and "cv-cmd" in card
    assert "| toy | none | WT | Dice |" in card and "| toy | largest | WT | Dice |" in card
    assert "dice_WT (largest)" in card      # per case: raw and post-processed side by side


def test_notebook_text_names_the_rule_and_where_it_came_from():
    cases = pd.DataFrame({"case_id": ["a"], "status": ["predicted"], "seconds": [1.0], "flags": [""]})
    spec = _spec(postprocess="largest", postprocess_cv={"folds": 2})

    def result(spec, rule):   # the result holds the model (a Segmenter of any kind); here a glioma-nb spec without weights
        return SegmentResult(spec=kinds.GliomaNbSegmenter(spec, None), weights="shipped", mask_dir=Path("m"), cases=cases,
                             postprocess=rule)

    text = result(spec, "largest").describe()
    assert "Post-processing: **largest** (only the largest connected component" in text
    assert "chosen by cross-validation" in text
    assert "chosen by" not in result(_spec(postprocess="largest"), "largest").describe()
    assert "Post-processing: none." in result(spec, "none").describe()
    assert result(spec, "largest").record()["postprocess"] == "largest"


def test_scores_figure_shows_the_out_of_fold_points_of_a_cross_validated_model():
    from glioma_nb import plotting

    scores = pd.DataFrame({"case_id": ["a", "b", "c"], "dice_WT": [0.8, 0.7, 0.9], "hd95_WT": [5.0, 6.0, 7.0],
                           "trained_on": [True, True, True]})
    oof = pd.DataFrame({"case_id": ["a", "b", "c"], "dice_WT": [0.61, 0.52, 0.43], "hd95_WT": [9.0, 10.0, 11.0]})
    fig = plotting.plot_segmentation_scores(scores, oof)
    dice = fig.axes[0]
    assert "out of fold (CV)" in [t.get_text() for t in dice.get_legend().get_texts()]
    assert "box: out of fold" in dice.get_title()          # every case was trained on: the OOF values are boxed
    ys = {round(float(y), 2) for c in dice.collections for y in np.asarray(c.get_offsets())[:, 1]}
    assert {0.61, 0.52, 0.43, 0.8, 0.7, 0.9} <= ys
    plain = plotting.plot_segmentation_scores(scores)
    assert "out of fold (CV)" not in [t.get_text() for t in plain.axes[0].get_legend().get_texts()]
    assert "box: out of fold" not in plain.axes[0].get_title()


def test_training_on_the_cpu_takes_bf16_where_the_cpu_has_it_unless_told_float32(tmp_path):
    """segment-train's default (bf16=None): bfloat16 autocast where the CPU has AVX512-BF16 / AMX, said in the
    summary the model card is written from; --fp32 (bf16=False) keeps float32."""
    from glioma_nb.cli import parser as build_parser

    cohort = _cohort(tmp_path / "c", n=2)
    src = [train.TrainSource(cohort, ["case0", "case1"])]
    settings = train.TrainSettings(iterations=2, samples_per_case=1, val_every=100, checkpoint_every=100)
    auto = train.train(_spec(), src, tmp_path / "auto", settings, device="cpu", bf16=None, progress=False)
    fp32 = train.train(_spec(), src, tmp_path / "fp32", settings, device="cpu", bf16=False, progress=False)
    assert auto["bf16"] is train.cpu_bf16_supported() and fp32["bf16"] is False
    parser = build_parser()
    assert parser.parse_args(["segment-train", "--model", "flair-wt", "--out", "x"]).bf16 is None
    assert parser.parse_args(["segment-train", "--model", "flair-wt", "--out", "x", "--fp32"]).bf16 is False
    assert parser.parse_args(["segment-train", "--model", "flair-wt", "--out", "x", "--bf16"]).bf16 is True
