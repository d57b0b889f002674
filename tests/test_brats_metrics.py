"""Segmentation metrics as BraTS computes them: ours against the official package's values (brats-evaluation
0.0.10 on panoptica, config gli) on label maps that hit every edge case (tests/fixtures/brats_metrics_reference.py
made the fixture in a throwaway environment: panoptica pins numpy < 2.3)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from brats_metric_cases import CASES
from conftest import requires_shared

from glioma_nb.segment import metrics

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "brats_metrics_reference.json").read_text())
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}          # the 2023 convention: 1 NETC, 2 SNFH, 3 ET
TOLERANCE = {"hd95": 0.01, "lesion_hd95": 0.01}                # mm; Dice, NSD and counts: 1e-4


def _official(v):
    return float("nan") if v is None else float("inf") if v == "inf" else float(v)


def _agrees(ours: float, theirs: float, key: str) -> bool:
    if math.isnan(theirs) or math.isinf(theirs):
        return (math.isnan(ours) and math.isnan(theirs)) or ours == theirs
    return abs(ours - theirs) <= TOLERANCE.get(key, 1e-4)


@pytest.mark.parametrize("case", sorted(CASES()))
def test_every_metric_equals_the_official_brats_evaluation(case):
    ref, pred, spacing = CASES()[case]
    if case == "anisotropic":
        # the official package applies the header spacing (x, y, z) to SimpleITK's (z, y, x) array; ours keeps the
        # axes, so it is given the spacing the official one used, and differs with the true one (below)
        spacing = spacing[::-1]
    expected = FIXTURE["cases"][case]
    for region, labels in REGIONS.items():
        ours = metrics.brats_region_metrics(np.isin(pred, labels), np.isin(ref, labels), spacing)
        bad = {k: (ours[k], v) for k, v in expected[region].items() if not _agrees(ours[k], _official(v), k)}
        assert not bad, f"{case} {region}: ours vs official {bad}"


def test_the_edge_cases_are_the_officials():
    cases = CASES()
    # both empty (no enhancing tumour in an LGG): NaN throughout, no lesions
    et = metrics.brats_region_metrics(*(np.isin(x, (3,)) for x in cases["empty_et_both"][1::-1]), (1, 1, 1))
    assert all(math.isnan(et[k]) for k in ("dice", "nsd", "hd95", "lesion_dice", "lesion_hd95"))
    assert (et["lesion_tp"], et["lesion_fp"], et["lesion_fn"]) == (0, 0, 0)
    # an empty prediction: 0 and infinity, every reference lesion missed
    ref, pred, sp = cases["empty_prediction"]
    wt = metrics.brats_region_metrics(pred > 0, ref > 0, sp)
    assert (wt["dice"], wt["nsd"], wt["hd95"], wt["lesion_dice"], wt["lesion_hd95"]) == (0, 0, math.inf, 0, math.inf)
    assert wt["lesion_fn"] == 2 and wt["lesion_tp"] == 0
    # a false lesion does not lower the lesion-wise mean (over matched lesions) but is counted
    ref, pred, sp = cases["false_lesion"]
    wt = metrics.brats_region_metrics(pred > 0, ref > 0, sp)
    assert wt["lesion_dice"] == 1.0 and wt["lesion_fp"] == 1 and wt["dice"] < 0.9


def test_anisotropic_voxels_are_measured_in_millimetres_along_the_right_axes():
    ref, pred, spacing = CASES()["anisotropic"]
    true = metrics.brats_region_metrics(pred > 0, ref > 0, spacing)
    swapped = metrics.brats_region_metrics(pred > 0, ref > 0, spacing[::-1])
    assert true["lesion_hd95"] != pytest.approx(swapped["lesion_hd95"], abs=0.01)
    # a sphere against the same sphere shifted by one 3 mm slice: every distance is a multiple of the slice step
    ball = np.zeros((30, 30, 20), bool)
    g = np.indices(ball.shape)
    ball[((g[0] - 15) ** 2 + (g[1] - 15) ** 2 + ((g[2] - 10) * 3.0) ** 2) <= 81] = True
    moved = np.roll(ball, 1, axis=2)
    m = metrics.brats_region_metrics(moved, ball, (1.0, 1.0, 3.0))
    assert m["lesion_hd95"] == pytest.approx(3.0) and m["hd95"] == pytest.approx(1.0)   # mm vs the voxel grid
    assert m["lesion_tp"] == 1 and 0 < m["lesion_dice"] < 1


@requires_shared("brats18")
@pytest.mark.check
def test_the_shipped_models_brats18_masks_score_as_the_official_evaluation_scores_them(tmp_path):
    """(b) of the fixture: the 12 brats18 cases as the shipped brats-4mod segments them in notebook 01, scored
    against their expert labels (BraTS 2018 label 4 read as 2023's 3)."""
    import hashlib

    import nibabel as nib

    from glioma_nb import config, io
    from glioma_nb.segment import infer, registry

    fixture = json.loads((Path(__file__).parent / "fixtures" / "brats_metrics_brats18.json").read_text())["cases"]
    cohort = io.load_cohort(config.resolve_config("brats18-dev"), progress=False)
    assert sorted(fixture) == sorted(cohort.case_ids)
    infer.segment_cohort(cohort, registry.load("brats-4mod"), None, tmp_path, progress=False)
    checked = 0
    for case in cohort.cases:
        pred = np.asanyarray(nib.load(infer.mask_path(tmp_path, case.case_id)).dataobj).astype(np.uint8)
        ref = np.asanyarray(nib.load(case.label).dataobj).astype(np.uint8)
        pred[pred == 4], ref[ref == 4] = 3, 3
        expected = fixture[case.case_id]
        assert hashlib.sha256(np.ascontiguousarray(pred).tobytes()).hexdigest() == expected["pred_sha256"], (
            f"{case.case_id}: the shipped model's mask is not the one the fixture was made from; regenerate "
            "tests/fixtures/brats_metrics_brats18.json (tests/fixtures/brats_metrics_reference.py)")
        spacing = tuple(float(z) for z in nib.load(case.label).header.get_zooms()[:3])
        for region, labels in REGIONS.items():
            ours = metrics.brats_region_metrics(np.isin(pred, labels), np.isin(ref, labels), spacing)
            bad = {k: (ours[k], v) for k, v in expected[region].items() if not _agrees(ours[k], _official(v), k)}
            assert not bad, f"{case.case_id} {region}: ours vs official {bad}"
            checked += 1
    assert checked == 36


@requires_shared("brats18")
@pytest.mark.check
def test_the_shipped_out_of_fold_table_rescored_keeps_its_masks_and_takes_the_official_hd95(tmp_path, monkeypatch):
    """segment-rescore on a copy of brats-4mod: each case segmented again by its shipped fold model gives the
    same masks (every Dice as the shipped table's, to its 4 decimals), scored with every BraTS metric; the card's
    tables are rewritten, the rest of the card kept."""
    import shutil

    import pandas as pd

    from glioma_nb.segment import models
    from glioma_nb.zoo import ship

    shipped = models.load_spec("brats-4mod")
    for f in [shipped.path, shipped.card_path, shipped.folder / "brats-4mod.oof.csv", *shipped.weights_paths]:
        shutil.copy(f, tmp_path / f.name)
    spec = models.load_spec(tmp_path / "brats-4mod.yaml")
    old = pd.read_csv(tmp_path / "brats-4mod.oof.csv")
    new = ship.rescore(spec, tmp_path / "masks", device="cpu", progress=False)
    assert list(new["case_id"]) == list(old["case_id"]) and (new["fold"] == old["fold"]).all()
    for r in ("WT", "TC", "ET"):
        np.testing.assert_allclose(new[f"dice_{r}"], old[f"dice_{r}"], atol=1e-4)
        assert {f"lesion_dice_{r}", f"nsd_{r}", f"lesion_tp_{r}"} <= set(new.columns)
    card = (tmp_path / "brats-4mod.md").read_text()
    assert "| brats18-dev | ET | lesion-wise HD95 (mm) |" in card and "segment-rescore" in card
    assert card.count("## Reproduce") == 1 and "Ablation of the inference steps" in card
    assert (tmp_path / "brats-4mod.oof.csv").read_text() == new.to_csv(index=False)


@requires_shared("tcga-lgg")
@pytest.mark.check
def test_the_flair_wt_card_rescored_keeps_its_dice_and_takes_the_official_hd95(tmp_path):
    """segment-rescore on a copy of flair-wt (a held-out card): the shipped weights on the spec's held-out cases
    give the card's Dice again, case by case; the card's metric section is rewritten, the rest kept."""
    import shutil

    from glioma_nb.segment import models
    from glioma_nb.zoo import ship

    shipped = models.load_spec("flair-wt")
    for f in [shipped.path, shipped.card_path, *shipped.weights_paths]:
        shutil.copy(f, tmp_path / f.name)
    spec = models.load_spec(tmp_path / "flair-wt.yaml")
    before = spec.card_path.read_text()
    rows = [line.split("|") for line in before.split("Per case:")[1].splitlines() if line.startswith("| Brats18")
            or line.startswith("| TCGA")]
    old_dice = {r[1].strip(): float(r[2]) for r in rows}
    per_case = ship.rescore(spec, tmp_path / "masks", device="cpu", progress=False)
    raw = per_case[per_case["postprocess"] == "none"].set_index("case_id")
    assert set(raw.index) == set(old_dice)
    np.testing.assert_allclose([raw.loc[c, "dice_WT"] for c in old_dice], list(old_dice.values()), atol=5e-4)
    after = spec.card_path.read_text()
    assert "| tcga-lgg-dev | largest | WT | lesion-wise HD95 (mm) |" in after and "segment-rescore" in after
    assert after.split("## Held-out metrics")[0] == before.split("## Held-out metrics")[0]
    assert after.split("## Reproduce")[1] == before.split("## Reproduce")[1]
    # the held-out volumes 06 carries on a cohort without reference masks: the shipped table, made again
    vols = ship.card_volumes(spec, tmp_path / "volumes", device="cpu", progress=False)
    shipped_vols = pd.read_csv(shipped.folder / "flair-wt.volumes.csv")
    assert list(vols["case_id"]) == list(shipped_vols["case_id"]) and set(vols["case_id"]) == set(old_dice)
    np.testing.assert_allclose(vols["WT_ml_reference"], shipped_vols["WT_ml_reference"], atol=1e-3)
    np.testing.assert_allclose(vols["WT_ml_predicted"], shipped_vols["WT_ml_predicted"], rtol=1e-3)
