"""Handcrafted radiomics (PyRadiomics): geometry hand-over to SimpleITK, known shape values, settings."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from conftest import AFFINE, SPHERE_RADIUS_MM, sphere_label

from glioma_nb import config, io
from glioma_nb.signature import handcrafted


def test_to_sitk_maps_voxels_to_the_same_world_points():
    img = nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), AFFINE)
    s = handcrafted.to_sitk(img)
    assert s.GetSize() == (5, 6, 7)
    for ijk in [(0, 0, 0), (4, 1, 6), (2, 5, 3)]:
        ras = AFFINE[:3, :3] @ np.array(ijk) + AFFINE[:3, 3]
        lps = np.array(s.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(lps, ras * [-1, -1, 1], atol=1e-6)


def test_sphere_shape_and_region_columns(tiny_cohort):
    cohort = io.load_cohort(config.resolve_config(str(tiny_cohort)), progress=False)
    settings = handcrafted.load_settings("mri-3d")
    row = handcrafted.case_features(cohort, "C00", settings)
    voxel_mm3 = float(abs(np.linalg.det(AFFINE[:3, :3])))
    lab = sphere_label()
    assert row["WT__shape__VoxelVolume"] == pytest.approx((lab > 0).sum() * voxel_mm3)
    assert row["WT__shape__MeshVolume"] == pytest.approx(4 / 3 * math.pi * SPHERE_RADIUS_MM ** 3, rel=0.15)
    assert row["WT__shape__Sphericity"] > 0.85
    # every region x modality has texture, and shape once per region
    for region in ("WT", "TC", "ET"):
        assert f"{region}__shape__Sphericity" in row
        for mod in ("t1", "t1c", "t2", "flair"):
            assert f"{region}__{mod}__glcm_Contrast" in row and f"{region}__{mod}__firstorder_Mean" in row
    # the tumour is 200 units brighter than brain in every modality: its mean on the 0-100 brain scale is high
    assert row["WT__flair__firstorder_Mean"] > 60


def test_unknown_settings_name_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="known: .*mri-3d"):
        handcrafted.settings_path("mri-4d")


def test_perturbed_re_extractions_and_predicted_masks(tiny_cohort, tmp_path):
    cohort = io.load_cohort(config.resolve_config(str(tiny_cohort)), progress=False)
    settings = handcrafted.load_settings("mri-3d")
    settings["featureClass"] = {"shape": None, "firstorder": None}
    base = handcrafted.case_features(cohort, "C00", settings, regions=["WT"])
    vol = {p: handcrafted.case_features(cohort, "C00", settings, regions=["WT"], perturbation=p)["WT__shape__VoxelVolume"]
           for p in ("erode", "dilate", "noise", "rotate")}
    assert vol["erode"] < base["WT__shape__VoxelVolume"] < vol["dilate"]
    assert vol["noise"] == base["WT__shape__VoxelVolume"]
    assert vol["rotate"] == pytest.approx(base["WT__shape__VoxelVolume"], rel=0.05)
    # the predicted-mask source: a missing mask names the case and the fix
    masks = handcrafted.MaskSource.predicted(cohort, tmp_path)
    with pytest.raises(ValueError, match=r"case C00: no predicted mask .*run 01_segment"):
        handcrafted.case_features(cohort, "C00", settings, masks_from=masks)
    # a predicted mask identical to the reference gives the reference's features
    lab = cohort.load_label("C00")
    nib.save(nib.Nifti1Image(np.asanyarray(lab.dataobj).astype(np.uint8), lab.affine), tmp_path / "C00.nii.gz")
    (tmp_path / "C00.json").write_text('{"scheme": "brats2018"}')
    pred = handcrafted.case_features(cohort, "C00", settings, regions=["WT"], masks_from=masks)
    assert pred == pytest.approx(base)


def test_a_region_of_exactly_the_minimum_roi_size_is_left_out_not_an_error(tiny_cohort):
    """PyRadiomics refuses a mask of at most minimumROISize voxels (20 in mri-3d); such a region (a predicted ET of
    20 voxels) has no features instead of failing the case."""
    cohort = io.load_cohort(config.resolve_config(str(tiny_cohort)), progress=False)
    lab_path = cohort.case("C00").label
    img = nib.load(lab_path)
    lab = np.asarray(img.dataobj).copy()
    lab[lab == 4] = 1
    et = np.argwhere(lab > 0)[:20]
    lab[tuple(et.T)] = 4
    nib.save(nib.Nifti1Image(lab, img.affine), lab_path)
    settings = handcrafted.load_settings("mri-3d")
    assert settings["setting"]["minimumROISize"] == 20
    row = handcrafted.case_features(cohort, "C00", settings)
    assert not any(k.startswith("ET__") for k in row) and "TC__shape__VoxelVolume" in row
