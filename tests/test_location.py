"""Location and shape features of masks in SRI24 / BraTS space: known lobes, the midline, a sphere's shape."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from glioma_nb import io
from glioma_nb.signature import location

BRATS_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])  # BraTS files are LPS: voxel i grows to the left, j to the back
BRATS_AFFINE[:3, 3] = [0.0, 239.0, 0.0]


def _sphere(centre_ras: tuple[int, int, int], radius: float, value: int = 1) -> nib.Nifti1Image:
    """A ball at a RAS voxel position of the atlas, written in BraTS (LPS) voxel order as BraTS files are."""
    grid = np.indices(location.ATLAS_SHAPE).astype(np.float32)
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre_ras)) <= radius ** 2
    data = (ball * value).astype(np.uint8)[::-1, ::-1, :]   # RAS -> LPS voxel order
    return nib.Nifti1Image(data, BRATS_AFFINE)


def _deep_inside(region: str, radius: int) -> tuple[int, int, int]:
    """A voxel of an atlas region at least ``radius`` voxels from its edge (on one side of the midline)."""
    atlas = location.load_atlas()
    r = list(location.ATLAS_REGIONS).index(region)
    m = ((atlas.bits >> r) & 1).astype(bool)
    m[int(atlas.midline_x) - radius - 2:, ...] = False          # the left hemisphere only (RAS: x < midline)
    depth = ndimage.distance_transform_edt(m)
    return tuple(int(v) for v in np.unravel_index(np.argmax(depth), m.shape))  # type: ignore[return-value]


@pytest.mark.parametrize("region, name", [("frontal_lobe", "frontal"), ("occipital", "occipital"),
                                          ("temporal", "temporal")])
def test_a_ball_inside_a_lobe_is_located_there(region, name):
    centre = _deep_inside(region, 4)
    feats = location.location_features(_sphere(centre, 4), io.LABEL_SCHEMES["binary"], "ball")
    assert feats[f"WT__loc__frac_{name}"] == pytest.approx(1.0)
    others = [n for n in ("frontal", "temporal", "parietal", "occipital") if n != name]
    assert all(feats[f"WT__loc__frac_{o}"] < 0.05 for o in others), feats
    assert feats["WT__loc__frac_left"] == 1.0 and feats["WT__loc__crosses_midline"] == 0.0
    assert feats["WT__loc__dist_midline_mm"] > 4 and feats["WT__loc__n_foci"] == 1.0


def test_midline_ventricles_and_foci():
    atlas = location.load_atlas()
    vent = _deep_inside("ventricles", 1)
    across = (int(atlas.midline_x), vent[1], vent[2])
    feats = location.location_features(_sphere(across, 6), io.LABEL_SCHEMES["binary"])
    assert feats["WT__loc__crosses_midline"] == 1.0 and feats["WT__loc__dist_midline_mm"] == 0.0
    assert 0.3 < feats["WT__loc__frac_left"] < 0.7
    # two separate balls of 1 mL: two foci; a lone ball 20 mm lateral of the midline is that far from it
    a = _sphere(_deep_inside("frontal_lobe", 7), 6).get_fdata() + _sphere(_deep_inside("occipital", 7), 6).get_fdata()
    two = location.location_features(nib.Nifti1Image(a.astype(np.uint8), BRATS_AFFINE), io.LABEL_SCHEMES["binary"])
    assert two["WT__loc__n_foci"] == 2.0


def test_sphere_shape_features_are_a_spheres():
    r = 10.0
    feats = location.shape_features(_sphere((120, 120, 77), r), io.LABEL_SCHEMES["binary"])
    assert feats["WT__shape__MeshVolume"] == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.03)
    # a voxelised ball's marching-cubes surface is a little rough: sphericity about 0.91, not 1
    assert feats["WT__shape__Sphericity"] > 0.88 and feats["WT__shape__Elongation"] == pytest.approx(1, abs=0.02)
    assert feats["WT__shape__Maximum3DDiameter"] == pytest.approx(2 * r, rel=0.05)


def test_regions_of_a_brats_label_map_and_an_empty_core():
    img = _sphere((100, 120, 77), 8, value=2)      # oedema only: WT but no tumour core, no ET
    feats = {**location.location_features(img, io.LABEL_SCHEMES["brats2018"]),
             **location.shape_features(img, io.LABEL_SCHEMES["brats2018"])}
    assert np.isfinite(feats["WT__loc__frac_frontal"]) and np.isnan(feats["TC__loc__frac_frontal"])
    assert feats["TC__loc__crosses_midline"] == 0.0 and np.isnan(feats["ET__shape__MeshVolume"])


def test_a_mask_off_the_atlas_grid_and_a_missing_atlas_are_named_errors(monkeypatch):
    small = nib.Nifti1Image(np.ones((64, 64, 40), np.uint8), np.eye(4))
    with pytest.raises(location.LocationError, match=r"case c7: mask grid \(64, 64, 40\).*register the scans to SRI24"):
        location.location_features(small, io.LABEL_SCHEMES["binary"], "c7")
    monkeypatch.setattr(location.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(location.LocationError, match="requirements-data.txt"):
        location.atlas_dir()
