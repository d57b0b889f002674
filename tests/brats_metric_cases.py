"""Synthetic label-map pairs (BraTS 2023 convention: 1 NETC, 2 SNFH, 3 ET) that hit every edge case of BraTS's
lesion-wise evaluation; the official package's values on them are tests/fixtures/brats_metrics_reference.json."""
from __future__ import annotations

import numpy as np

SHAPE = (48, 48, 32)


def _ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    g = np.indices(shape).astype(float)
    d = sum(((g[i] - centre[i]) * spacing[i]) ** 2 for i in range(3))
    return d <= radius ** 2


def _tumour(shape, centre, r, spacing=(1.0, 1.0, 1.0)):
    """Oedema shell, enhancing rim, necrotic centre (radii r, 0.6 r, 0.3 r mm)."""
    lab = np.zeros(shape, np.uint8)
    lab[_ball(shape, centre, r, spacing)] = 2
    lab[_ball(shape, centre, 0.6 * r, spacing)] = 3
    lab[_ball(shape, centre, 0.3 * r, spacing)] = 1
    return lab


def CASES() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """name -> (reference, prediction, voxel spacing in mm)."""
    s = SHAPE
    one = (1.0, 1.0, 1.0)
    a, b, c = _tumour(s, (14, 14, 10), 8), _tumour(s, (34, 32, 20), 7), _tumour(s, (14, 36, 22), 5)
    shifted = lambda lab, d: np.roll(lab, d, axis=(0, 1, 2))          # noqa: E731
    cases = {}
    # two lesions, both found, one shifted and one grown
    cases["two_lesions"] = (np.maximum(a, b), np.maximum(shifted(a, (1, 0, 1)), _tumour(s, (34, 32, 20), 8)), one)
    # three lesions in the reference, one missed (FN)
    cases["missed_lesion"] = (np.maximum(np.maximum(a, b), c), np.maximum(shifted(a, (0, 2, 0)), b), one)
    # a false lesion in the prediction (FP)
    cases["false_lesion"] = (a.copy(), np.maximum(a, c), one)
    # no enhancing tumour in either (an LGG): ET empty in both
    noet = np.where(a == 3, 1, a).astype(np.uint8)
    cases["empty_et_both"] = (noet, np.where(shifted(a, (1, 1, 0)) == 3, 1, shifted(a, (1, 1, 0))).astype(np.uint8), one)
    # the prediction is empty
    cases["empty_prediction"] = (np.maximum(a, b), np.zeros(s, np.uint8), one)
    # ET predicted where the reference has none
    cases["et_only_predicted"] = (noet, a.copy(), one)
    # one lesion split in two by the prediction, and a small satellite
    split = a.copy()
    split[13:16] = 0
    sat = _ball(s, (40, 8, 6), 2)
    cases["split_and_satellite"] = (a.copy(), np.where(sat, 2, split).astype(np.uint8), one)
    # anisotropic voxels (1 x 1 x 3 mm): distances in millimetres
    sp = (1.0, 1.0, 3.0)
    ta = _tumour(s, (20, 20, 8), 10, sp)
    cases["anisotropic"] = (ta, _tumour(s, (22, 19, 8), 9, sp), sp)
    return cases
