"""The ``glioma-nb`` kind: the shipped specs (:mod:`glioma_nb.segment.models`) and their MONAI networks."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from glioma_nb.segment import models, window
from glioma_nb.segment.models import ModelSpec
from glioma_nb.segment.kinds.base import LABEL_PRESETS, Outputs, Pass, WindowSegmenter, monai_stages, register


@register
class GliomaNbSegmenter(WindowSegmenter):
    """The shipped specs (:class:`~glioma_nb.segment.models.ModelSpec`) and their MONAI networks."""

    kind = "glioma-nb"

    def __init__(self, spec: ModelSpec, net: Any, weights_note: str = "") -> None:
        if spec.regions:
            outputs = Outputs(regions=spec.regions)
        else:
            outputs = Outputs(labels=dict(LABEL_PRESETS["brats2021" if spec.classes == "brats" else "wt"]))
        super().__init__(spec.name, spec.modalities, outputs, spec.spacing, spec.patch, net, spec,
                         postprocess=spec.postprocess, description=spec.description)
        self.activation = "sigmoid" if spec.regions else "softmax"
        self.spec = spec
        self.postprocess_cv = spec.postprocess_cv
        self.path, self.weights_note = spec.path, weights_note
        self.network_name = str(spec.network.get("name", "unet"))

    def run(self, data: Mapping[str, Any], stages: Sequence[str] | None = None, *, overlap: float = 0.5,
            tta: bool = False, device: str = "cpu", amp: bool = False) -> Pass:
        """As :meth:`WindowSegmenter.run`, mirrored whenever the spec says so (``tta: true``, chosen out of fold)."""
        return super().run(data, stages, overlap=overlap, tta=tta or self.spec.tta, device=device, amp=amp)

    def default_stages(self) -> dict[str, str]:
        if models.is_ensemble(self.net):   # the first fold model's layers (see models.Ensemble)
            return {s: f"members.0.{m}" for s, m in monai_stages(self.net.members[0], self.name).items()}
        return monai_stages(self.net, self.name)

    def stage_maps(self, image: np.ndarray, stages: Sequence[str], *, overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False) -> dict[str, Any]:
        """As :meth:`WindowSegmenter.stage_maps`; an ensemble runs only the member whose layers are tapped."""
        tta = tta or self.spec.tta
        if not models.is_ensemble(self.net):
            return super().stage_maps(image, stages, overlap=overlap, tta=tta, device=device, amp=amp)
        import torch

        taps = {s: m.removeprefix("members.0.") for s, m in (self.taps(stages) or {}).items()}
        _, maps = window.sliding_window(self.forward_module(self.net.members[0], taps, slot="fold 0"),
                                        torch.from_numpy(np.ascontiguousarray(image)), self.patch,
                                        stages=taps, activation=self.activation, overlap=overlap, tta=tta,
                                        device=device, amp=amp)
        return maps
