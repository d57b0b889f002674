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
    """Calls ``net`` and returns ``(logits, *tapped outputs)``, for MONAI's sliding window. ``net`` may
    return a tuple or list (deep supervision, or a scripted module's extra outputs): its first item is
    the logits, and ``outputs`` (stage name -> index) picks tapped outputs from it instead of hooks."""

    def __init__(self, net: Any, stages: Mapping[str, str], outputs: Mapping[str, int] | None = None) -> None:
        self.net, self.stages, self.outputs = net, dict(stages), dict(outputs or {})
        self.hooks = Hooks(net, {s: m for s, m in self.stages.items() if s not in self.outputs})

    def __call__(self, x: Any) -> tuple[Any, ...]:
        self.hooks.acts = {}
        out = self.net(x)
        items = list(out) if isinstance(out, (tuple, list)) else [out]
        acts = {s: items[i] for s, i in self.outputs.items()}
        acts.update(self.hooks.acts)
        return (items[0], *(acts[s] for s in self.stages))

    def close(self) -> None:
        self.hooks.close()


def sliding_window(net: Any, image: Any, patch: Sequence[int], overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False, stages: Mapping[str, str] | None = None,
                   activation: str = "softmax", outputs: Mapping[str, int] | None = None) -> Any:
    """Probabilities (C, X, Y, Z) of a preprocessed image (channels first, no batch): ``activation``
    (softmax | sigmoid | none) of the Gaussian-blended logits, averaged over the 8 mirrored copies with
    ``tta``. With ``stages``, returns ``(probabilities, {stage: map (C', X', Y', Z')})`` from the same pass."""
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
                out = sliding_window_inference(xi, roi_size=tuple(patch), sw_batch_size=2 if device == "cuda" else 1,
                                               predictor=tap or _first(net), overlap=overlap, mode="gaussian")
                outs = list(out) if isinstance(out, (tuple, list)) else [out]
                outs = [torch.flip(o.float(), f) if f else o.float() for o in outs]
                p = activate(outs[0], activation)
                total = p if total is None else total + p
                if tap is not None:
                    maps = outs[1:] if maps is None else [a + b for a, b in zip(maps, outs[1:])]
    finally:
        if tap is not None:
            tap.close()
    probs = (total / len(flips))[0].cpu()
    if tap is None:
        return probs
    return probs, {s: (m / len(flips))[0].cpu() for s, m in zip(tap.stages, maps)}


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
