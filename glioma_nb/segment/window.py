"""MONAI sliding-window inference with forward-hook taps, and the way back to the case's grid.

:func:`sliding_window` returns class probabilities of a preprocessed image and, with ``stages`` (stage
name -> module name), every tapped module's output stitched at its own resolution in the same pass
(MONAI ``sliding_window_inference`` with several outputs). :func:`to_original` carries probabilities
on the model grid back to the case's voxel grid with ``Invertd``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from glioma_nb.segment.errors import SegmentationError

MIRRORS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


class Hooks:
    """Forward hooks on named modules recording their outputs (``acts``); removed on close."""

    def __init__(self, net: Any, stages: Mapping[str, str]) -> None:
        mods = dict(net.named_modules())
        self.acts: dict[str, Any] = {}
        self.handles = [mods[m].register_forward_hook(self._hook(s)) for s, m in stages.items()]

    def _hook(self, name: str) -> Any:
        def fn(_module: Any, _inputs: Any, output: Any) -> None:
            self.acts[name] = output[0] if isinstance(output, (tuple, list)) else output
        return fn

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class TapModule:
    """The network for MONAI's sliding window, recording the signature layers: called as ``tap(x)`` or, as
    MONAI calls a ``with_coord`` predictor, ``tap(x, coords)``, it returns the logits only, so MONAI stitches
    one output. The tapped layer outputs are stitched here, each on its own grid: a window's output goes at
    the window's coordinates scaled to that grid, weighted by MONAI's importance map of the window resized to
    that grid from the full-resolution map, and divided by the summed weights, as MONAI stitches an output.
    (MONAI stitches several outputs of different resolution in one pass, but it carries the importance map
    it resized for one output on to the next: a full-resolution output after a coarser one fails, and a
    coarse one after another coarse one gets a resampled resample.) The padding MONAI adds to an image
    smaller than the window is cut off again (:meth:`maps`).

    ``net`` may return a tuple or list (deep supervision, or a scripted module's extra outputs): its first
    item is the logits, and ``outputs`` (stage name -> index) picks tapped outputs from it instead of hooks.
    Without window coordinates (a whole-image inferer), one call records the layers of the whole image."""

    def __init__(self, net: Any, stages: Mapping[str, str], outputs: Mapping[str, int] | None = None) -> None:
        self.net, self.stages, self.outputs = net, dict(stages), dict(outputs or {})
        self.hooks = Hooks(net, {s: m for s, m in self.stages.items() if s not in self.outputs})
        self.begin(None, None)

    def begin(self, image_shape: Sequence[int] | None, roi_size: Sequence[int] | None, mode: str = "gaussian",
              sigma_scale: Any = 0.125) -> "TapModule":
        """Start a sliding-window pass over an image of spatial ``image_shape`` with MONAI's ``roi_size``,
        ``mode`` and ``sigma_scale`` (those of the ``sliding_window_inference`` call), or a whole-image pass."""
        self.sums: dict[str, Any] = {}
        self.weights: dict[str, Any] = {}
        self.whole: dict[str, Any] | None = None
        self.image_shape, self.roi, self.importance = None, None, None
        if image_shape is None:
            return self
        from monai.data.utils import compute_importance_map, get_valid_patch_size
        from monai.utils import ensure_tuple_rep, fall_back_tuple

        shape = tuple(int(n) for n in image_shape)
        roi = tuple(int(r) for r in fall_back_tuple(ensure_tuple_rep(roi_size, len(shape)), shape))
        padded = tuple(max(n, r) for n, r in zip(shape, roi))        # MONAI pads an image smaller than the window
        self.image_shape, self.roi, self.padded = shape, roi, padded
        self.pad_lo = tuple((r - n) // 2 if r > n else 0 for n, r in zip(shape, roi))
        self.importance = compute_importance_map(get_valid_patch_size(padded, roi), mode=mode, sigma_scale=sigma_scale,
                                                 device="cpu")[None, None].float()
        return self

    def __call__(self, x: Any, coords: Any = None) -> Any:
        self.hooks.acts = {}
        out = self.net(x)
        items = list(out) if isinstance(out, (tuple, list)) else [out]
        acts = {s: items[i] for s, i in self.outputs.items()}
        acts.update(self.hooks.acts)
        if coords is None:
            if self.whole is not None or self.image_shape is not None:
                raise SegmentationError("the signature taps were called on windows without their coordinates; run the "
                                        "network through MONAI's SlidingWindowInferer (with_coord) or a whole-image "
                                        "inferer")
            self.whole = {s: acts[s][0].float().cpu() for s in self.stages}
        else:
            for s in self.stages:
                self._stitch(s, acts[s].float().cpu(), coords)
        return items[0]

    def _stitch(self, stage: str, act: Any, coords: Sequence[Any]) -> None:
        import torch
        import torch.nn.functional as F

        shape = act.shape[2:]
        scale = [q / r for q, r in zip(shape, self.roi)]
        if stage not in self.sums:
            grid = [int(n * z) for n, z in zip(self.padded, scale)]
            self.sums[stage] = torch.zeros((act.shape[1], *grid), dtype=torch.float32)
            self.weights[stage] = torch.zeros(grid, dtype=torch.float32)
        w = self.importance[0, 0] if tuple(shape) == self.roi else \
            F.interpolate(self.importance, tuple(shape), mode="nearest-exact")[0, 0]
        total, weight = self.sums[stage], self.weights[stage]
        for b, c in enumerate(coords):
            idx = tuple(slice(min(int(sl.start * z), n - q), min(int(sl.start * z), n - q) + q)
                        for sl, z, n, q in zip(c[2:], scale, weight.shape, shape))
            total[(slice(None), *idx)] += act[b] * w
            weight[idx] += w

    def maps(self) -> dict[str, Any]:
        """Each tapped layer (C, ...) on its grid over the image (the window padding cut off)."""
        if self.whole is not None:
            return dict(self.whole)
        out = {}
        for s in self.stages:
            if s not in self.sums:
                raise SegmentationError(f"signature layer {s} ({self.stages[s]}) was never called by the network's "
                                        "forward pass; list layers the network runs (--layers)")
            m = self.sums[s] / self.weights[s].clamp(min=1e-12)
            scale = [q / p for q, p in zip(m.shape[1:], self.padded)]
            idx = tuple(slice(int(round(lo * z)), int(round((lo + n) * z)))
                        for lo, n, z in zip(self.pad_lo, self.image_shape, scale))
            out[s] = m[(slice(None), *idx)]
        return out

    def close(self) -> None:
        self.hooks.close()


def sliding_window(net: Any, image: Any, patch: Sequence[int], overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False, stages: Mapping[str, str] | None = None,
                   activation: str = "softmax", outputs: Mapping[str, int] | None = None) -> Any:
    """Probabilities (C, X, Y, Z) of a preprocessed image (channels first, no batch): ``activation``
    (softmax | sigmoid | none) of the Gaussian-blended logits, averaged over the 8 mirrored copies with
    ``tta``. With ``stages``, returns ``(probabilities, {stage: map (C', X', Y', Z')})`` from the same pass
    (see :class:`TapModule`)."""
    import torch
    from monai.inferers import sliding_window_inference

    tap = TapModule(net, stages, outputs) if stages is not None else None
    x = torch.as_tensor(image).unsqueeze(0).to(device)
    flips = MIRRORS if tta else MIRRORS[:1]
    total, maps = None, None
    half = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    try:
        with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=half, enabled=amp and device == "cuda"):
            for f in flips:
                xi = torch.flip(x, f) if f else x
                if tap is not None:
                    tap.begin(xi.shape[2:], patch, "gaussian")
                out = sliding_window_inference(xi, roi_size=tuple(patch), sw_batch_size=2 if device == "cuda" else 1,
                                               predictor=tap or _first(net), overlap=overlap, mode="gaussian",
                                               with_coord=tap is not None)
                p = activate(torch.flip(out.float(), f) if f else out.float(), activation)
                total = p if total is None else total + p
                if tap is not None:
                    fm = {s: torch.flip(m[None], f)[0] if f else m for s, m in tap.maps().items()}
                    maps = fm if maps is None else {s: maps[s] + fm[s] for s in maps}
    finally:
        if tap is not None:
            tap.close()
    probs = (total / len(flips))[0].cpu()
    if tap is None:
        return probs
    return probs, {s: maps[s] / len(flips) for s in tap.stages}


def _first(net: Any) -> Any:
    """``net`` returning only its first output (a network returning a tuple or list of outputs)."""
    def fn(x: Any) -> Any:
        out = net(x)
        return out[0] if isinstance(out, (tuple, list)) else out
    return fn


def activate(logits: Any, activation: str) -> Any:
    import torch

    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "none":
        return logits
    raise SegmentationError(f"unknown output activation {activation!r}; softmax, sigmoid or none")


def to_original(pre: Any, d: Mapping[str, Any], probs: Any, data: Mapping[str, Any]) -> np.ndarray:
    """Probabilities on the model grid -> probabilities (C, X, Y, Z) on the case's own grid (``Invertd``)."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    d = {"image": d["image"], "pred": MetaTensor(probs, meta=dict(d["image"].meta))}
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)(d)
    p = np.asarray(inv["pred"], dtype=np.float32)
    if p.shape[1:] != tuple(data["image"].shape[1:]):  # pragma: no cover - Invertd restores the grid
        raise SegmentationError(f"case {data.get('case_id')}: inverted prediction has shape {p.shape[1:]}, "
                                f"the image {tuple(data['image'].shape[1:])}")
    return p
