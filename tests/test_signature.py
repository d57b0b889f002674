"""Signature: network image signature (hooks, pooling, caching), ICC and the stability filter, IBSI-1."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED, requires_shared
from test_segment import _cohort, _spec

from glioma_nb import taps
from glioma_nb.segment import infer
from glioma_nb.signature import ibsi, stability

TINY3 = dict(name="unet", channels=[4, 8, 16, 32], strides=[2, 2, 2], num_res_units=1)


def _net(spec):
    torch.manual_seed(0)
    return spec.build().eval()


def test_stages_of_the_shipped_unet_layout():
    net = _net(_spec(network=TINY3))
    assert list(taps.stage_modules(net)) == ["enc1", "enc2", "enc3", "bottleneck", "dec3", "dec2"]


def test_network_signature_is_deterministic_and_has_the_documented_columns(tmp_path):
    cohort = _cohort(tmp_path / "c", n=2)
    spec = _spec(network=TINY3)
    net = _net(spec)
    req = taps.Request(mask="reference", perturbations=("erode", "dilate", "noise", "rotate"))
    out1, out2 = tmp_path / "m1", tmp_path / "m2"
    infer.segment_cohort(cohort, spec, net, out1, progress=False, signature=req)
    infer.segment_cohort(cohort, spec, net, out2, progress=False, signature=req)
    main1, long1 = taps.load_signature(out1, cohort.case_ids)
    main2, _ = taps.load_signature(out2, cohort.case_ids)
    pd.testing.assert_frame_equal(main1, main2)       # deterministic, bit for bit
    chans = {"enc1": 4, "enc2": 8, "enc3": 16, "bottleneck": 32, "dec3": 8, "dec2": 4}
    assert list(main1.columns) == taps.columns(["WT"], chans)
    assert list(main1.index) == ["case0", "case1"] and main1.notna().all().all()
    assert set(long1.index.get_level_values("perturbation")) == {"none", "erode", "dilate", "noise", "rotate"}
    # erosion shrinks and dilation grows the pooled region; noise leaves the mask alone
    vol = long1["WT__volume__ml"].unstack()
    assert (vol["erode"] < vol["none"]).all() and (vol["dilate"] > vol["none"]).all()
    assert (vol["noise"] == vol["none"]).all()
    # the reference volume on the model grid is close to the sphere's (radius 8 and 10 voxels of 1 x 1 x 3 mm)
    lab = [np.asarray(nib.load(c.label).dataobj).sum() * 3 / 1000 for c in cohort.cases]
    assert np.allclose(vol["none"], lab, rtol=0.15)
    # cached: a second call reuses the signature; another request reruns the case
    again = infer.segment_cohort(cohort, spec, net, out1, progress=False, signature=req)
    assert (again["status"] == "cached").all()
    other = infer.segment_cohort(cohort, spec, net, out1, progress=False, signature=taps.Request(mask="reference"))
    assert (other["status"] == "predicted").all()
    # a signature cached before the tap stitched its own layers (no "stitching" in its key) is made again
    rec = json.loads((out1 / "case0.json").read_text())
    assert rec["signature"].pop("stitching") == 2
    (out1 / "case0.json").write_text(json.dumps(rec))
    redo = infer.segment_cohort(cohort, spec, net, out1, progress=False, signature=taps.Request(mask="reference"))
    assert redo.set_index("case_id")["status"].to_dict() == {"case0": "predicted", "case1": "cached"}


def test_pooling_a_constant_activation_in_a_known_mask():
    mask = np.zeros((16, 16, 8), bool)
    mask[4:12, 4:8, 2:6] = True
    act = torch.full((3, 8, 8, 4), 2.5)          # a stage at half the resolution
    mean, sd = taps.pool(act, mask)
    assert np.allclose(mean, 2.5) and np.allclose(sd, 0, atol=1e-6)
    # planted: 7 inside the (downsampled) mask, -1 outside -> the mean inside is 7
    act = torch.full((1, 8, 8, 4), -1.0)
    act[:, 2:6, 2:4, 1:3] = 7.0
    mean, sd = taps.pool(act, mask)
    assert mean[0] == pytest.approx(7.0) and sd[0] == pytest.approx(0.0, abs=1e-6)
    # a mask covering half of a stage voxel weighs it by one half
    half = np.zeros((2, 2, 2), bool)
    half[0, :, :] = True
    m, _ = taps.pool(torch.tensor([[[[4.0]]]]), half)
    assert m[0] == pytest.approx(4.0)


def test_an_empty_mask_is_a_clear_error_for_that_case_not_nan_rows(tmp_path):
    cohort = _cohort(tmp_path / "c", n=2)
    empty = cohort.cases[1].label
    img = nib.load(empty)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), empty)
    with pytest.raises(taps.SignatureError, match=r"case case1: the reference label map .* has no WT voxels"):
        taps.case_row({"enc1": torch.zeros(2, 4, 4, 4)}, {"WT": np.zeros((8, 8, 8), bool)}, 0.008, "case1",
                         "reference label map (tiny grid)")
    spec = _spec(network=TINY3)
    out = tmp_path / "m"
    table = infer.segment_cohort(cohort, spec, _net(spec), out, progress=False,
                                 signature=taps.Request(mask="reference")).set_index("case_id")
    assert table.loc["case0", "signature_error"] == ""
    assert "case case1" in table.loc["case1", "signature_error"] and "no WT voxels" in table.loc["case1", "signature_error"]
    assert json.loads((out / "case1.json").read_text())["signature_error"]
    main, _ = taps.load_signature(out, cohort.case_ids)
    assert list(main.index) == ["case0"] and main.notna().all().all()


def test_icc31_known_answers():
    # Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; ICC(3,1) = 0.71
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)
    assert stability.icc31(ratings.T[:, :, None])[0] == pytest.approx(0.715, abs=0.005)
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 3))
    same = np.stack([base] * 4)                                   # unperturbed: ICC 1
    assert np.allclose(stability.icc31(same), 1.0)
    noise = rng.normal(size=(4, 200, 3))                          # pure noise: ICC near 0
    assert np.all(np.abs(stability.icc31(noise)) < 0.1)
    shifted = np.stack([base + k for k in range(4)])              # consistency: a constant shift keeps ICC(3,1) = 1
    assert np.allclose(stability.icc31(shifted), 1.0)
    with_nan = same.copy()
    with_nan[1, 5, 0] = np.nan                                    # computed over the complete cases
    assert stability.icc31(with_nan)[0] == pytest.approx(1.0)


def _features(rng, n, shift=0.0):
    signal = rng.normal(size=n)
    return pd.DataFrame({"stable": signal + shift, "copy": 2 * signal + 0.001 * rng.normal(size=n),
                         "unstable": rng.normal(size=n), "constant": np.ones(n),
                         "other": rng.normal(size=n)}, index=[f"c{i}" for i in range(n)])


def test_stability_filter_fitted_on_one_cohort_transforms_another():
    rng = np.random.default_rng(1)
    train = _features(rng, 60)
    reps = {}
    for k in ("erode", "dilate"):
        r = train.copy()
        r["unstable"] = rng.normal(size=60)                       # re-extraction gives unrelated values
        r["other"] = train["other"] + 0.05 * rng.normal(size=60)
        reps[k] = r
    f = stability.StabilityFilter().fit(train, replicates=reps)
    assert f.report_.loc["unstable", "removed"] == "icc"
    assert f.report_.loc["constant", "removed"] == "near-constant"
    assert {f.report_.loc["stable", "removed"], f.report_.loc["copy", "removed"]} == {"", "correlated"}
    assert "other" in f.selected_ and len(f.selected_) == 2
    valid = _features(np.random.default_rng(2), 25, shift=3.0)[list(reversed(train.columns))]
    out = f.transform(valid)
    assert list(out.columns) == f.selected_ and list(out.index) == list(valid.index)
    with pytest.raises(ValueError, match="lacks 1 feature"):
        f.transform(valid.drop(columns=["other"]))
    assert f.counts().to_dict() == {"missing": 0, "near-constant": 1, "icc": 1, "correlated": 1, "kept": 2}


@requires_shared("ibsi/ibsi1")
def test_ibsi1_phantom_matches_the_reference_except_the_listed_deviations():
    table = ibsi.compare(SHARED / "ibsi" / "ibsi1")
    counts = table["status"].value_counts()
    print("\nIBSI-1 digital phantom:", counts.to_dict())
    assert counts.get("deviation", 0) == 0, table[table["status"] == "deviation"].to_string()
    deviating = set(table.loc[table["status"] == "expected deviation", "feature"])
    assert deviating == set(ibsi.EXPECTED_DEVIATIONS), "the deviation table must list exactly the deviations"
    assert counts["match"] == len(ibsi.IBSI_TAGS) - len(ibsi.EXPECTED_DEVIATIONS) == 99
    kurt = table.set_index("feature").loc["firstorder_Kurtosis"]
    assert kurt["value"] - 3 == pytest.approx(kurt["reference"], abs=0.001)     # the reason given holds


def test_ibsi_matching_rule():
    assert ibsi.matches(556.3, 556, 4) and not ibsi.matches(561, 556, 4)
    assert ibsi.matches(0.30304, 0.303, 0) and not ibsi.matches(0.3036, 0.303, 0)
    assert ibsi.matches(1494.6, 1490, 0) and not ibsi.matches(1496, 1490, 0)


def test_erosion_is_in_plane_for_thick_slices():
    mask = np.zeros((9, 9, 3), bool)
    mask[2:7, 2:7, :] = True                     # 3 thick slices: a 3D erosion would keep only the middle one
    assert taps.erode_dilate(mask, "erode").sum() == 9
    assert taps.erode_dilate(mask, "erode", in_plane_axes=(0, 1)).sum() == 27
    assert taps.erode_dilate(mask, "dilate", in_plane_axes=(0, 1))[:, :, 0].sum() == 45
