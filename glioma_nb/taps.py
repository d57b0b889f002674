"""Network image signature (IS): the segmentation network's own activations pooled inside the tumour.

The one place of the signature's network side, below both stages that use it: 01_segment
(:mod:`glioma_nb.segment`) taps and pools it in its own pass and caches it per case
(:func:`signature_path`); 02_signature (:mod:`glioma_nb.signature`) reads the cached tables only
(:func:`load_signature`). Neither stage imports the other.

Forward hooks on the U-Net's encoder stages (``enc1`` .. ``encN``), its bottleneck and its decoder
stages (``decN`` .. ``dec2``; the last decoder stage is the class logits and is left out) record every
stage's output during the segmentation pass itself: the sliding window stitches each stage map at its
own resolution (MONAI ``sliding_window_inference`` with several outputs), so the IS costs no second
network run (:func:`glioma_nb.segment.infer.segment_cohort` with a :class:`Request`). Other model kinds
(nnU-Net, MONAI bundles, TorchScript; :mod:`glioma_nb.segment.kinds`) tap their own layers the same way
and hand the maps to the same pooling.

Each stage map is pooled inside every region of the model's classes (WT/TC/ET for a BraTS model, WT
for a whole-tumour model). The region mask lives on the model's grid (resampled, cropped; the
predicted mask, or the reference label map carried through the same preprocessing with nearest
neighbour) and is resampled to each stage's grid by area averaging: a stage voxel's weight is the
fraction of it inside the mask. Per channel: the weighted mean and standard deviation. Plus each
region's volume on the model grid (mL). Columns ``<region>__<stage>__c<channel>__<stat>`` and
``<region>__volume__ml``; the order is fixed by the network, so two runs give identical tables.

An empty whole tumour is an error for that case (:class:`SignatureError`, naming the case and the
mask); an empty subregion (no enhancement, say) gives NaN for that region's columns and volume 0.

Stability perturbations (``Request.perturbations``) are pooled in the same call: ``erode`` and
``dilate`` (the mask by one voxel on the model grid; in-plane only when the model's slices are more
than 1.5 times thicker than its in-plane voxels) reuse the pass; ``noise`` (Gaussian, 0.1 SD of
the z-scored image inside the brain) and ``rotate`` (image and mask by 5 degrees in the axial plane)
each run one more pass. Rows are indexed by perturbation (``none`` is the signature itself).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

STATS = ("mean", "sd")
PERTURBATIONS = ("erode", "dilate", "noise", "rotate")
NOISE_SD = 0.1        # of the z-scored image inside the brain
ROTATE_DEG = 5.0      # in the axial plane (voxel axes 0 and 1 of the RAS model grid)


class SignatureError(ValueError):
    """A case whose image signature cannot be computed (the message names the case and the fix)."""


@dataclass(frozen=True)
class Request:
    """What :func:`glioma_nb.segment.infer.segment_cohort` pools besides the mask."""

    mask: str = "predicted"                      # predicted | reference
    perturbations: tuple[str, ...] = ()          # subset of PERTURBATIONS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mask not in ("predicted", "reference"):
            raise ValueError(f"signature.mask must be predicted or reference, not {self.mask!r}")
        bad = [p for p in self.perturbations if p not in PERTURBATIONS]
        if bad:
            raise ValueError(f"unknown stability perturbations {bad}; known: {list(PERTURBATIONS)}")

    def key(self) -> dict[str, Any]:
        """What a cached signature was made with (``stitching`` 2: layers stitched by
        :class:`glioma_nb.segment.window.TapModule` itself, not by MONAI's multi-output window, whose carried
        importance map weighted some layers differently; a case cached before is run again)."""
        return {"mask": self.mask, "perturbations": list(self.perturbations), "seed": self.seed, "stitching": 2}


def stage_modules(net: Any) -> dict[str, Any]:
    """The hooked stages of a MONAI ``UNet`` or ``SegResNet``, in network order."""
    import torch
    from monai.networks.layers import SkipConnection
    from monai.networks.nets import SegResNet, UNet

    if isinstance(net, UNet):
        out, ups, seq, level = {}, [], net.model, 1
        while True:   # UNet.model = Sequential(down, SkipConnection(Sequential(down, Skip(...), up)), up)
            down, skip, up = seq[0], seq[1], seq[2]
            out[f"enc{level}"] = down
            ups.append((level, up))
            sub = skip.submodule
            if isinstance(sub, torch.nn.Sequential) and len(sub) == 3 and isinstance(sub[1], SkipConnection):
                seq, level = sub, level + 1
            else:
                out["bottleneck"] = sub
                break
        for lvl, up in reversed(ups):
            if lvl > 1:   # up-block 1 outputs the class logits: the prediction, not a feature stage
                out[f"dec{lvl}"] = up
        return out
    if isinstance(net, SegResNet):
        out = {f"enc{i + 1}": m for i, m in enumerate(net.down_layers[:-1])}
        out["bottleneck"] = net.down_layers[-1]
        n = len(net.up_layers)
        out.update({f"dec{n - i + 1}": m for i, m in enumerate(net.up_layers)})
        return out
    raise SignatureError(f"no image-signature stages are defined for {type(net).__name__}; "
                         "use a MONAI UNet or SegResNet")


def pool(act: Any, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and SD per channel of ``act`` (C, X, Y, Z) inside ``mask`` (a boolean array on the
    model grid), the mask area-averaged onto the stage grid. Raises when the mask is empty."""
    import torch
    import torch.nn.functional as F

    a = torch.as_tensor(act, dtype=torch.float32)
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    w = F.interpolate(m, size=tuple(a.shape[1:]), mode="area")[0, 0] if tuple(m.shape[2:]) != tuple(a.shape[1:]) else m[0, 0]
    total = float(w.sum())
    if total <= 0:
        raise SignatureError("the mask is empty")
    mean = (a * w).sum(dim=(1, 2, 3)) / total
    var = (w * (a - mean[:, None, None, None]) ** 2).sum(dim=(1, 2, 3)) / total
    return mean.numpy().astype(np.float64), np.sqrt(np.clip(var.numpy(), 0, None)).astype(np.float64)


def columns(regions: Sequence[str], stage_channels: Mapping[str, int]) -> list[str]:
    """The documented column order: per region, the volume, then stage by stage, channel, statistic."""
    cols = []
    for r in regions:
        cols.append(f"{r}__volume__ml")
        for stage, n in stage_channels.items():
            cols.extend(f"{r}__{stage}__c{c:03d}__{s}" for c in range(n) for s in STATS)
    return cols


def case_row(stage_maps: Mapping[str, Any], masks: Mapping[str, np.ndarray], voxel_ml: float,
             case_id: str, mask_desc: str) -> dict[str, float]:
    """One case's signature: ``masks`` by region (the first is the whole tumour), on the model grid."""
    regions = list(masks)
    if not np.asarray(masks[regions[0]]).any():
        raise SignatureError(f"case {case_id}: the {mask_desc} has no {regions[0]} voxels, so there is no tumour to "
                             "describe; look at this case in 01_segment (flags), or use signature.mask: reference")
    row: dict[str, float] = {}
    chans = {s: int(m.shape[0]) for s, m in stage_maps.items()}
    for r in regions:
        m = np.asarray(masks[r], dtype=bool)
        row[f"{r}__volume__ml"] = float(m.sum()) * voxel_ml
        for stage, act in stage_maps.items():
            if m.any():
                mean, sd = pool(act, m)
            else:
                mean = sd = np.full(chans[stage], np.nan)
            for c in range(chans[stage]):
                row[f"{r}__{stage}__c{c:03d}__mean"] = float(mean[c])
                row[f"{r}__{stage}__c{c:03d}__sd"] = float(sd[c])
    return row


def erode_dilate(mask: np.ndarray, kind: str, in_plane_axes: tuple[int, int] | None = None) -> np.ndarray:
    """The mask eroded or dilated by one voxel (6-connected; 4-connected in the plane of voxel axes
    ``in_plane_axes``, for thick slices where one voxel across that plane is a whole slice)."""
    struct = ndimage.generate_binary_structure(3, 1)
    if in_plane_axes is not None:
        through = next(a for a in range(3) if a not in in_plane_axes)
        idx = [slice(None)] * 3
        for end in (0, 2):
            idx[through] = end
            struct[tuple(idx)] = False
    fn = ndimage.binary_erosion if kind == "erode" else ndimage.binary_dilation
    return fn(np.asarray(mask, dtype=bool), structure=struct)


def rotate(arr: np.ndarray, order: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Rotation by :data:`ROTATE_DEG` in the plane of spatial axes ``axes`` (the axial plane of the model
    grid) of (C, X, Y, Z) or (X, Y, Z)."""
    shift = 1 if arr.ndim == 4 else 0
    return ndimage.rotate(arr, ROTATE_DEG, axes=(axes[0] + shift, axes[1] + shift), reshape=False, order=order,
                          mode="constant", cval=0)


def add_noise(image: np.ndarray, seed: int | np.random.Generator, sd: float = NOISE_SD) -> np.ndarray:
    """Gaussian noise (SD ``sd``; :data:`NOISE_SD` suits a z-scored image) added to the non-zero
    (brain) voxels. ``seed`` may be a Generator, whose stream then continues."""
    rng = np.random.default_rng(seed)
    img = np.asarray(image, dtype=np.float32)
    return np.where(img != 0, img + rng.normal(0, sd, img.shape).astype(np.float32), 0).astype(np.float32)


def signature_path(out_dir: Path, case_id: str) -> Path:
    """Where 01_segment caches one case's signature (every perturbation's row): ``<case>.signature.parquet``."""
    return Path(out_dir) / f"{case_id}.signature.parquet"


def write_signature(table: pd.DataFrame, path: Path) -> None:
    """One case's signature rows (index ``perturbation``) as Parquet, whole or not at all, stored transposed:
    a ``feature`` column and one column per perturbation (a Parquet file of thousands of columns takes half a
    second per case to write; :func:`read_signature` turns it back)."""
    t = table.T
    t.index = t.index.astype(str).rename("feature")
    t.columns = t.columns.astype(str)
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    t.reset_index().to_parquet(tmp, index=False)
    tmp.replace(path)


def read_signature(path: Path) -> pd.DataFrame:
    """One case's signature rows, index ``perturbation``, columns in the network's order (:func:`write_signature`)."""
    t = pd.read_parquet(path)
    if "feature" not in t.columns:      # written by pandas as rows (a cache of an earlier version)
        return t
    out = t.set_index("feature").T
    out.index.name, out.columns.name = "perturbation", None
    return out.astype(np.float64)


def load_signature(out_dir: Path, case_ids: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cached network signatures of ``case_ids``: (the signature, one row per case, index case_id;
    every row of every case in long form with a ``perturbation`` level). Cases without one are left out."""
    parts = {cid: read_signature(signature_path(out_dir, cid)) for cid in case_ids
             if signature_path(out_dir, cid).exists()}
    if not parts:
        return pd.DataFrame(), pd.DataFrame()
    long = pd.concat(parts, names=["case_id", "perturbation"])
    main = long.xs("none", level="perturbation")
    return main, long
