"""Registration QC of a preprocessed case: checkerboards, template edges and the brain-mask outline."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage

from glioma_nb.io.labels import DEFAULT_FILES
from glioma_nb.preprocess import pipeline
from glioma_nb.preprocess import register as reg

NAMES = {"t1": "T1", "t1c": "T1c", "t2": "T2", "flair": "FLAIR"}


def _norm(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v = a[mask] if mask.any() else a.ravel()
    lo, hi = np.percentile(v, [1, 99]) if v.size else (0.0, 1.0)
    return np.clip((a - lo) / (hi - lo + 1e-6), 0, 1)


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate square tiles of two 2D images of the same shape (a at even tiles)."""
    yy, xx = np.indices(a.shape)
    sel = ((yy * tiles // a.shape[0]) + (xx * tiles // a.shape[1])) % 2 == 0
    return np.where(sel, a, b)


def _show(ax: Any, img: np.ndarray, title: str) -> None:
    ax.imshow(np.rot90(img), cmap="gray", vmin=0, vmax=1)   # BraTS i (L) / j (P): radiological display
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def case_figure(case_dirs: list[Path], modalities: list[str]) -> Any:
    """Two rows per case. Top: each modality in BraTS space at the axial slice through the brain's centre, the
    brain mask outlined (red) and the template's brain edge (cyan). Bottom: checkerboards of each modality with
    the reference (co-registration), and of the atlas image with the template (atlas registration)."""
    n = len(case_dirs)
    fig, axes = plt.subplots(2 * n, len(modalities), figsize=(2.6 * len(modalities), 5.8 * n), squeeze=False)
    for i, case_dir in enumerate(case_dirs):
        _case_rows(Path(case_dir), modalities, axes[2 * i], axes[2 * i + 1])
    fig.tight_layout()
    return fig


def _case_rows(case_dir: Path, modalities: list[str], top: Any, bottom: Any) -> None:
    import nibabel as nib

    rec = pipeline.read_record(case_dir)
    cid = rec["case_id"]
    mask = np.asarray(nib.load(case_dir / f"{cid}_brainmask.nii.gz").dataobj) > 0
    k = int(round(np.argwhere(mask)[:, 2].mean())) if mask.any() else reg.BRATS_SHAPE[2] // 2
    names = DEFAULT_FILES["brats"]
    img = {m: np.asarray(nib.load(case_dir / f"{cid}_{names[m]}.nii.gz").dataobj, dtype=np.float32) for m in modalities}
    tmpl, tmask = reg.template()
    t_arr, tm = reg.to_ijk(tmpl), reg.to_ijk(tmask) > 0
    edge = tm[:, :, k] ^ ndimage.binary_erosion(tm[:, :, k], iterations=1)
    outline = mask[:, :, k] ^ ndimage.binary_erosion(mask[:, :, k], iterations=1)
    ref, amod = rec["reference"], rec["atlas_image"]
    sim = rec["similarity"]
    status = rec["status"] + (f" ({len(rec['flags'])} flag(s))" if rec["flags"] else "")
    for c, m in enumerate(modalities):
        sl = _norm(img[m][:, :, k], mask[:, :, k])
        rgb = np.repeat(sl[..., None], 3, axis=2)
        rgb[outline] = (1, 0.1, 0.1)
        rgb[edge] = (0, 0.9, 0.9)
        top[c].imshow(np.rot90(rgb))
        top[c].set_title(f"{cid} {NAMES.get(m, m)}\nBraTS space, slice {k}" + (f", {status}" if c == 0 else ""),
                         fontsize=9)
        top[c].set_axis_off()
        if m == ref:
            _show(bottom[c], checkerboard(_norm(img[amod][:, :, k], mask[:, :, k]), _norm(t_arr[:, :, k], tm[:, :, k])),
                  f"{NAMES.get(amod, amod)} | template (corr {sim['atlas_correlation']:.2f})")
        else:
            _show(bottom[c], checkerboard(sl, _norm(img[ref][:, :, k], mask[:, :, k])),
                  f"{NAMES.get(m, m)} | {NAMES.get(ref, ref)} (MI {sim.get(f'coregister_mi_{m}', float('nan')):.2f})")


def native_figure(native: Any, mask_native: Any, brats: np.ndarray, mask_brats: np.ndarray, case_id: str,
                  colours: dict[int, str] | None = None) -> Any:
    """A predicted mask on the scanner's native image (left, its own voxels, reoriented only for display) and in
    BraTS space (right), each at the axial slice with the most tumour."""
    import nibabel as nib

    colours = colours or {1: "tab:red", 2: "tab:green", 4: "tab:blue", 3: "tab:blue"}
    # both shown in BraTS's voxel order (L, P, S), so that the two panels share one display orientation
    nat = np.asarray(nib.as_closest_canonical(native).dataobj, dtype=np.float32)[::-1, ::-1]
    mn = np.asarray(nib.as_closest_canonical(mask_native).dataobj)[::-1, ::-1]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    for ax, img, m, where in ((axes[0], nat, mn, "native"), (axes[1], brats, mask_brats, "BraTS / SRI24")):
        k = int(np.argmax((m > 0).sum(axis=(0, 1)))) if (m > 0).any() else img.shape[2] // 2
        ax.imshow(np.rot90(_norm(img[:, :, k], img[:, :, k] > 0)), cmap="gray", vmin=0, vmax=1)
        for v, col in colours.items():
            if (m[:, :, k] == v).any():
                ax.contour(np.rot90(m[:, :, k] == v), levels=[0.5], colors=col, linewidths=1)
        ax.set_title(f"{case_id}: {where} (slice {k} of {img.shape[2]})", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig
