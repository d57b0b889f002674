"""Shipped-weights v2: region outputs, deep supervision, the ET rule, k-fold cross-validation by patient, the
ensemble that is shipped and its model card."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from glioma_nb import io
from glioma_nb.segment import kinds, models, postprocess, train, transforms
from glioma_nb.zoo import cards, cv, ship
from glioma_nb.segment.errors import SegmentationError

TINY = dict(name="unet", channels=[4, 8, 16], strides=[2, 2], num_res_units=1)


def test_region_targets_and_the_dice_bce_loss_have_known_answers():
    classes = torch.tensor([[0, 1, 2, 3]])        # background, necrosis/core, oedema, enhancing
    y = train.region_targets(classes, ("wt", "tc", "et"))
    assert y[0].T.tolist() == [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
    target = torch.tensor([0, 1, 2, 3, 3, 1, 2, 0]).view(1, 1, 2, 2, 2).float()
    perfect = (train.region_targets(target[:, 0], ("wt", "tc", "et")) * 2 - 1) * 30
    assert train.dice_bce_loss(perfect, target, ("wt", "tc", "et")).item() < 1e-6
    wrong = -perfect
    assert train.dice_bce_loss(wrong, target, ("wt", "tc", "et")).item() > 10   # Dice 1 + BCE 30
    # an empty region (no ET) with a confident empty prediction costs nothing
    no_et = torch.tensor([0, 1, 2, 1, 2, 1, 2, 0]).view(1, 1, 2, 2, 2).float()
    good = (train.region_targets(no_et[:, 0], ("wt", "tc", "et")) * 2 - 1) * 30
    assert train.dice_bce_loss(good, no_et, ("wt", "tc", "et")).item() < 1e-4


def test_deep_supervision_adds_heads_at_lower_resolutions_and_weights_them_as_nnunet():
    spec = models.ModelSpec(name="t", network=dict(TINY, channels=[4, 8, 16, 32], strides=[2, 2, 2]),
                            modalities=("flair",), classes="brats", outputs="regions", spacing=(2, 2, 2),
                            patch=(32, 32, 32))
    net = spec.build()
    ds = train.deep_supervised(net, spec, 2)
    outs = ds(torch.zeros(2, 1, 32, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 32, 32, 32), (2, 3, 16, 16, 16), (2, 3, 8, 8, 8)]
    assert train.deep_supervision_weights(2) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    y = torch.randint(0, 4, (2, 1, 32, 32, 32)).float()
    expected = sum(w * train.dice_bce_loss(o, torch.nn.functional.interpolate(y, size=o.shape[2:]), spec.regions)
                   for w, o in zip(train.deep_supervision_weights(2), outs))
    assert train.supervised_loss(outs, y, spec).item() == pytest.approx(expected.item(), rel=1e-5)
    # the shipped state dict is the network's alone
    assert set(net.state_dict()) == set(spec.build().state_dict())
    with pytest.raises(SegmentationError, match="deep supervision of 3 levels"):
        train.deep_supervised(spec.build(), spec, 3)


def test_the_et_rule_turns_a_small_enhancing_region_into_core_and_keeps_a_large_one():
    c = np.zeros((20, 20, 20), np.uint8)
    c[2:12, 2:12, 2:12] = 2          # oedema
    c[4:8, 4:8, 4:8] = 1             # core
    c[5:7, 5:7, 5:7] = 3             # 8 voxels of ET = 0.064 mL at 2 mm
    c[15:17, 15:17, 15:17] = 2       # a stray component
    small = postprocess.apply(c, "et_min:0.1", voxel_ml=0.008)
    assert (small == 3).sum() == 0 and (small == 1).sum() == (c == 1).sum() + 8
    assert ((small > 0) == (c > 0)).all() and (np.isin(small, (1, 3)) == np.isin(c, (1, 3))).all()  # WT, TC kept
    assert (postprocess.apply(c, "et_min:0.05", voxel_ml=0.008) == c).all()
    both = postprocess.apply(c, "largest+et_min:0.1", voxel_ml=0.008)
    assert both[16, 16, 16] == 0 and (both == 3).sum() == 0
    # label values of the BraTS 2018 scheme
    lab = np.where(c == 3, 4, c).astype(np.uint8)
    assert (postprocess.apply(lab, "et_min:0.1", voxel_ml=0.008, et=4) == 4).sum() == 0
    assert "et_min:0.5" in postprocess.brats_rules() and "largest+et_min:0.5" in postprocess.brats_rules()
    with pytest.raises(SegmentationError, match="et_min:V"):
        postprocess.parse_rule("et_min:-1")


def _brats_case(rng, shape=(28, 28, 22)):
    """Four modalities of a 'brain' with a tumour: oedema shell, core, enhancing rim (rim absent when ``small``)."""
    grid = np.meshgrid(*[np.arange(n) - n / 2 + rng.uniform(-2, 2) for n in shape], indexing="ij")
    r = np.sqrt(sum(g ** 2 for g in grid))
    brain = np.sqrt(sum((np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")[i]) ** 2
                        for i in range(3))) < 12
    lab = np.zeros(shape, np.uint8)
    lab[(r < 8) & brain] = 2
    lab[r < 5] = 4
    lab[r < 3.5] = 1
    imgs = {}
    for k, (m, gain) in enumerate({"t1": (0, 0, 0), "t1ce": (0, 0, 300), "t2": (200, 150, 100),
                                   "flair": (250, 100, 100)}.items()):
        base = np.where(brain, 400 + rng.normal(0, 20, shape), 0)
        for v, g in zip((2, 1, 4), gain):
            base = base + g * (lab == v)
        imgs[m] = base.astype(np.float32)
    return imgs, lab


@pytest.fixture
def cv_setup(tmp_path, monkeypatch):
    """A 4-case BraTS-layout cohort (two cases are one patient) and a tiny region spec over it, in a models folder."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    rows = []
    for i in range(4):
        cid = f"P{i:02d}"
        (root / cid).mkdir(parents=True)
        imgs, lab = _brats_case(rng)
        for m, a in imgs.items():
            nib.save(nib.Nifti1Image(a, aff), root / cid / f"{cid}_{m}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), root / cid / f"{cid}_seg.nii.gz")
        rows.append({"case_id": cid, "patient": "same" if i in (0, 3) else cid})
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    cohort_yaml = tmp_path / "toy.yaml"
    cohort_yaml.write_text(yaml.safe_dump({"cohort": {
        "root": str(root), "layout": "brats", "label": {"present": True, "scheme": "brats2018"},
        "clinical": {"file": "clinical.csv", "id_column": "case_id", "columns": {"patient_id": "patient"}}}}))
    mdir = tmp_path / "pkg"
    mdir.mkdir()
    spec_yaml = mdir / "toy-net.yaml"
    spec_yaml.write_text(yaml.safe_dump({
        "name": "toy-net", "network": dict(TINY), "modalities": ["t1", "t1c", "t2", "flair"], "classes": "brats",
        "outputs": "regions", "spacing": [2.0, 2.0, 2.0], "patch": [32, 32, 32], "postprocess": "none",
        "train": {"iterations": 6, "batch_cases": 1, "samples_per_case": 2, "lr": 0.01, "val_every": 6,
                  "checkpoint_every": 3, "crop": "classes", "augmentation": "nnunet", "deep_supervision": 1,
                  "sources": [{"cohort": str(cohort_yaml), "cases": "all"}]}}, sort_keys=False))
    torch.set_num_threads(1)
    return models.load_spec(spec_yaml), cohort_yaml


def test_folds_keep_a_patient_together_across_cohorts(cv_setup):
    spec, cohort_yaml = cv_setup
    src = train.sources_from_spec(spec)
    a = cv.fold_assignment(src, 3)
    assert sorted(a.values()) == [0, 0, 1, 2]       # 3 patients in 3 folds; P00 and P03 are one patient
    assert a[(src[0].cohort.name, "P00")] == a[(src[0].cohort.name, "P03")]
    # a second cohort holding the same patient puts its scan in that patient's fold
    other = train.TrainSource(io.Cohort("other", Path("."), [], pd.DataFrame({"case_id": ["X"], "patient_id": ["same"]}),
                                        (), None), ["X"])
    b = cv.fold_assignment([src[0], other], 3)
    assert b[("other", "X")] == a[(src[0].cohort.name, "P00")]
    assert cv.fold_assignment(src, 3) == a           # seeded
    with pytest.raises(SegmentationError, match="cannot fill 4 folds"):
        cv.fold_assignment(src, 4)


def test_cross_validation_predicts_every_case_once_resumes_and_ships_a_checked_ensemble(cv_setup, tmp_path):
    spec, _ = cv_setup
    out = tmp_path / "cv"
    # fold 1 alone first (as on another machine), then the whole command, which skips it
    cv.train_folds(spec, out, 2, device="cpu", progress=False, only=[1])
    first = (out / "fold1" / "weights.pt").stat().st_mtime_ns
    res = cv.cross_validate(spec, out, 2, device="cpu", progress=False)
    assert (out / "fold1" / "weights.pt").stat().st_mtime_ns == first
    table = cv.read_table(out, "oof_scores")
    plain = table[(table["variant"] == "plain") & (table["rule"] == "none")]
    assert sorted(plain["case_id"]) == ["P00", "P01", "P02", "P03"]          # every case once, out of fold
    folds = json.loads((out / "folds.json").read_text())["cases"]
    for r in folds:                                                           # predicted by the model that did not see it
        summ = json.loads((out / f"fold{r['fold']}" / "train_summary.json").read_text())
        assert f"{r['cohort']}/{r['case_id']}" in summ["held_out_cases"]
        assert f"{r['cohort']}/{r['case_id']}" not in summ["train_cases"]
    assert set(table["rule"]) == set(postprocess.brats_rules()) and set(table["variant"]) == {"plain", "tta"}
    assert res["rule"] in postprocess.brats_rules() and res["variant"] in ("plain", "tta")
    best = table[table["variant"] == res["variant"]].groupby("rule")["dice_mean"].mean()
    assert best[res["rule"]] == pytest.approx(best.max()) and best[res["rule"]] >= best["none"]
    summary = cv.read_table(out, "oof_summary")
    assert set(summary["region"]) == {"WT", "TC", "ET"} and (summary[summary["metric"] == "Dice"]["n"] == 4).all()
    # a changed fold split is refused
    with pytest.raises(SegmentationError, match="another fold split"):
        cv.train_folds(spec, out, 3, device="cpu", progress=False)

    # a cross-validation that is not shipped still gets its card (no weights, the spec left as it was)
    before = spec.path.read_text()
    unshipped = cards.write_unshipped_card(spec, out, "cmd").read_text()
    assert "**not shipped**" in unshipped and "## Training curve" in unshipped and "Out-of-fold metrics" in unshipped
    assert spec.path.read_text() == before and not list(spec.folder.glob("*.pt"))

    card = ship.ship(spec, out, "python -m glioma_nb segment-train --folds 2 --ship").read_text()
    assert "not shipped" not in card
    shipped = models.load_spec(spec.path)
    assert shipped.ensemble == 2 and shipped.postprocess == res["rule"]
    hashes = models.card_hashes(shipped.card_path)
    assert set(hashes) == {"toy-net.fold0.pt", "toy-net.fold1.pt"}
    assert hashes["toy-net.fold0.pt"] == models.sha256(out / "fold0" / "weights.pt")
    assert "Out-of-fold metrics" in card and "| fold | trained on |" in card and "--folds 2 --ship" in card
    # the training curve: each fold's held-out Dice at its validation, and the figure beside the card
    assert "## Training curve" in card and "| iteration | fold 0 | fold 1 | mean |" in card
    assert "![training curves](toy-net.curve.png)" in card and (shipped.folder / "toy-net.curve.png").stat().st_size > 5000
    net = models.load_model(shipped)
    assert models.is_ensemble(net) and len(net.members) == 2
    # the ensemble is the mean of the members' sigmoid probabilities
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        mean = (torch.sigmoid(net.members[0](x)) + torch.sigmoid(net.members[1](x))) / 2
        assert torch.allclose(torch.sigmoid(net(x)), mean.clamp(1e-7, 1 - 1e-7), atol=1e-5)
    # it segments a case, with the signature tapped from fold model 0
    seg = kinds.GliomaNbSegmenter(shipped, net)
    assert all(m.startswith("members.0.") for m in seg.stages().values())
    cohort = train.sources_from_spec(shipped)[0].cohort
    data = transforms.load_case(cohort, "P01", shipped)
    p = seg.run(data, list(seg.stages()), device="cpu")
    assert p.classes.shape == data["image"].shape[1:] and set(p.maps) == set(seg.stages())
    again = seg.stage_maps(p.image, list(seg.stages()))
    assert all(torch.allclose(again[s], p.maps[s], atol=1e-4) for s in p.maps)
    # a tampered fold file is refused
    raw = bytearray((shipped.folder / "toy-net.fold1.pt").read_bytes())
    raw[-50] ^= 0xFF
    (shipped.folder / "toy-net.fold1.pt").write_bytes(bytes(raw))
    with pytest.raises(SegmentationError, match="toy-net.fold1.pt has sha256"):
        models.load_model(shipped)


def test_the_cli_runs_a_partial_cross_validation_that_cannot_be_shipped(cv_setup, tmp_path):
    from glioma_nb import cli

    spec, _ = cv_setup
    out = tmp_path / "cli-cv"
    base = ["segment-train", "--model", str(spec.path), "--out", str(out), "--folds", "2", "--device", "cpu"]
    assert cli.main([*base, "--fold", "0"]) == 0
    assert (out / "fold0" / "weights.pt").exists() and not (out / "fold1").exists()
    res = json.loads((out / "cv.json").read_text())
    assert res["partial"] == [0] and res["n_cases"] == len(json.loads((out / "fold0" / "train_summary.json")
                                                                      .read_text())["held_out_cases"])
    with pytest.raises(SegmentationError, match="partial cross-validation"):
        ship.ship(spec, out, "cmd")
    assert cli.main([*base, "--fold", "2"]) != 0
    assert cli.main([*base, "--fold", "1", "--ship"]) != 0


@pytest.mark.parametrize("name", ["brats-4mod"])
def test_the_v1_specs_keep_the_v1_recipe_and_ship_beside_themselves(name):
    """The v1 cards' commands retrain v1: their specs resolve to the softmax, basic-augmentation recipe, and --ship
    would write into models/v1, never over the shipped v2 ensemble."""
    v1 = models.load_spec(models.MODELS_DIR / "v1" / f"{name}.yaml")
    s = train.TrainSettings.from_spec(v1)
    assert (v1.outputs, v1.ensemble, s.crop, s.augmentation, s.deep_supervision, s.bf16) == \
        ("labels", 0, "posneg", "basic", 0, False)
    assert v1.weights_path == models.MODELS_DIR / "v1" / f"{name}.pt" and v1.card_path.parent.name == "v1"
    assert f"--model glioma_nb/segment/models/v1/{name}.yaml" in v1.card_path.read_text()
    v2 = models.load_spec(name)
    assert v2.outputs == "regions" and v2.n_outputs == len(v2.regions)


def _log(rows):
    return pd.DataFrame(rows, columns=["iteration", "loss", "lr", "seconds", "val_dice_wt"])


def test_the_training_curve_averages_the_loss_between_validations_and_measures_the_last_gain(tmp_path):
    nan = float("nan")
    for f, vals in ((0, (0.4, 0.6)), (1, (0.5, 0.7))):
        (tmp_path / f"fold{f}").mkdir()
        _log([[10, 1.0, 0, 1, nan], [20, 0.8, 0, 2, vals[0]], [30, 0.6, 0, 3, nan], [40, 0.2, 0, 4, vals[1]]]
             ).to_csv(tmp_path / f"fold{f}" / "train_log.csv", index=False)
    (tmp_path / "fold2").mkdir()     # a fold still training: one validation so far
    _log([[10, 1.2, 0, 1, nan], [20, 1.0, 0, 2, 0.3]]).to_csv(tmp_path / "fold2" / "train_log.csv", index=False)
    curve = cv.training_curve(tmp_path)
    assert curve[curve["fold"] == 0][["iteration", "loss", "val_dice"]].to_numpy().ravel() == \
        pytest.approx([20, 0.9, 0.4, 40, 0.4, 0.6])
    assert sorted(curve["fold"].unique()) == [0, 1, 2]
    # the gain is over the iterations every fold has reached: fold 2 stops it at iteration 20 (one point)
    assert np.isnan(cv.curve_gain(curve)["gain"])
    g = cv.curve_gain(curve[curve["fold"] < 2])
    assert g["last"] == pytest.approx(0.65) and g["previous"] == pytest.approx(0.45) and g["gain"] == pytest.approx(0.2)
    assert g["iteration"] == 40 and g["previous_iteration"] == 20


def _fake_cv(out, dice, cohort="toy"):
    """A finished cross-validation folder as oof_per_case reads it: the chosen variant/rule and the OOF scores
    (a second rule with other values, which must not be used)."""
    out.mkdir(parents=True)
    (out / "cv.json").write_text(json.dumps({"variant": "plain", "rule": "largest"}))
    rows = [{"cohort": cohort, "case_id": c, "fold": i % 2, "variant": "plain", "rule": r, "dice_WT": d - (r == "none")}
            for i, (c, d) in enumerate(dice.items()) for r in ("largest", "none")]
    pd.DataFrame(rows).to_csv(out / "oof_scores.csv", index=False)


def _baseline(tmp_path, dice, cohort="toy"):
    """A shipped cross-validated baseline: its spec and out-of-fold table (what baseline_scores reads for one)."""
    d = tmp_path / "base"
    d.mkdir()
    (d / "base-net.yaml").write_text(yaml.safe_dump({
        "name": "base-net", "network": dict(TINY), "modalities": ["flair"], "classes": "wt", "spacing": [2, 2, 2],
        "patch": [32, 32, 32], "ensemble": 2}))
    pd.DataFrame([{"cohort": cohort, "case_id": c, "fold": 0, "variant": "plain", "rule": "none", "dice_WT": v}
                  for c, v in dice.items()]).to_csv(d / "base-net.oof.csv", index=False)
    return models.load_spec(d / "base-net.yaml")


def test_compare_pairs_the_cases_the_baseline_never_saw_and_bootstraps_the_difference(tmp_path):
    spec = models.ModelSpec(name="new-net", network=dict(TINY), modalities=("flair",), classes="wt",
                            spacing=(2, 2, 2), patch=(32, 32, 32))
    rng = np.random.default_rng(1)
    new = {f"C{i:02d}": round(float(v), 4) for i, v in enumerate(rng.uniform(0.5, 0.9, 12))}   # as oof.csv rounds
    out = tmp_path / "cv"
    _fake_cv(out, {**new, "ONLY_NEW": 0.99})
    # the baseline is 0.1 worse on every case it held out, and has a case the CV never predicted
    base = _baseline(tmp_path, {**{c: v - 0.1 for c, v in new.items()}, "ONLY_BASE": 0.0})
    summary, pairs = cv.compare_with(spec, out, base)
    assert sorted(pairs["case_id"]) == sorted(new)                      # the common cases only
    row = summary.iloc[0]
    assert row["n"] == 12 and row["new-net"] == pytest.approx(np.mean(list(new.values())))
    assert row["difference"] == pytest.approx(0.1) and row["ci_low"] == pytest.approx(0.1)
    assert row["ci_high"] == pytest.approx(0.1) and bool(row["better"]) and row["cases_better"] == 12
    assert (out / "compare_base-net.csv").exists() and (out / "compare_base-net_summary.csv").exists()
    assert "## Against base-net" in cards._compare_section(out) and "+0.100 [+0.100, +0.100]" in cards._compare_section(out)

    # a planted mixed result: better on half the cases by as much as worse on the others -> CI spans 0, not better
    mixed = {c: v + (0.2 if i % 2 else -0.2) for i, (c, v) in enumerate(new.items())}
    out2 = tmp_path / "cv2"
    _fake_cv(out2, new)
    (tmp_path / "base").rename(tmp_path / "base_old")
    summary2, _ = cv.compare_with(spec, out2, _baseline(tmp_path, mixed))
    r2 = summary2.iloc[0]
    assert r2["difference"] == pytest.approx(0.0, abs=1e-12) and r2["ci_low"] < 0 < r2["ci_high"] and not r2["better"]
    assert r2["p_bootstrap"] > 0.5
    with pytest.raises(SegmentationError, match="no per-case 'hd95_WT'"):
        cv.compare_with(spec, out2, models.load_spec(tmp_path / "base" / "base-net.yaml"), metric="hd95_WT")
    (tmp_path / "base").rename(tmp_path / "base_mixed")
    with pytest.raises(SegmentationError, match="no case of base-net"):
        cv.compare_with(spec, out2, _baseline(tmp_path, {"OTHER": 0.5}))
