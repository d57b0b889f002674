"""Model kinds: every segmentation network behind one interface, with the signature taps of each.

A :class:`Segmenter` loads a model, preprocesses a case (:func:`glioma_nb.segment.transforms.load_case`:
channels in the model's modality order, the cohort's geometry applied), runs the network with forward
hooks on its signature layers, and returns a :class:`Pass`: the internal class map on the case's own
grid (0 background, 1 necrosis / non-enhancing core, 2 oedema, 3 enhancing; or 0/1 whole tumour), the
same on the model's grid, every tapped layer's activation stitched on the model's grid, and the
preprocessed image (for the noise and rotation perturbations, :meth:`Segmenter.stage_maps`).

Kinds:

- ``glioma-nb``: the specs of ``glioma_nb/segment/models`` (MONAI UNet / SegResNet, our transforms,
  MONAI sliding window).
- ``nnunet-v2``: a trained-model folder (``dataset.json``, ``plans.json``, ``fold_*/checkpoint_*.pth``),
  run through nnunetv2's own :class:`nnUNetPredictor`: its preprocessing (crop to non-zero,
  normalisation, resampling of its plans), its Gaussian sliding window, mirroring and fold ensemble,
  and its export back to the input grid. The tap subclasses the predictor: each network call's layer
  outputs are un-mirrored and averaged as nnU-Net averages the logits, placed at the patch's position
  on each layer's grid (averaged where patches overlap), per fold; the folds' maps are then averaged.
- ``monai-bundle``: a bundle folder read with ``monai.bundle.ConfigParser`` (``network_def``,
  ``preprocessing``, ``inferer``, ``postprocessing`` of ``configs/inference.json|yaml``, weights
  ``models/model.pt``). The bundle's preprocessing runs on the case's files as the bundle would load
  them; its inferer calls the network through the tap; its postprocessing (without ``SaveImaged``)
  gives the mask.
- ``torchscript``: a scripted module plus a YAML (channels, spacing, orientation, normalisation,
  patch, outputs). TorchScript modules take no Python hooks, so signature layers are extra outputs
  the exported module returns after the logits (``feature_outputs`` in the YAML).

Outputs are mapped to the internal classes by :class:`Outputs`: label values with a meaning each
(BraTS 2018 1/2/4, BraTS 2021 1/2/3, whole tumour 1, or any mapping), or region channels (WT/TC/ET
sigmoids, in any order).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from glioma_nb.segment import models, transforms, window
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.models import ModelSpec
from glioma_nb.signature import network as sig_network

MEANINGS = ("background", "necrosis", "oedema", "enhancing", "tumour")
INTERNAL = {"background": 0, "necrosis": 1, "oedema": 2, "enhancing": 3, "tumour": 1}
# label-value presets of the common schemes (value -> meaning)
LABEL_PRESETS: dict[str, dict[int, str]] = {
    "brats2018": {0: "background", 1: "necrosis", 2: "oedema", 4: "enhancing"},
    "brats2021": {0: "background", 1: "necrosis", 2: "oedema", 3: "enhancing"},
    "wt": {0: "background", 1: "tumour"},
}
REGIONS = ("wt", "tc", "et")
_ALIASES = {
    "background": ("background", "bg", "healthy", "normal"),
    "necrosis": ("necrosis", "necrotic", "ncr", "net", "ncr/net", "non-enhancing", "nonenhancing", "non enhancing",
                 "necrotic core", "non-enhancing tumor core", "non-enhancing tumour core", "netc", "core",
                 "non-enhancing tumor", "non-enhancing tumour", "nonenhancing tumor", "necrotic tumor core",
                 "necrotic and non-enhancing tumor core", "necrotic tumour core"),
    "oedema": ("oedema", "edema", "ed", "peritumoral edema", "peritumoral oedema", "snfh", "flair"),
    "enhancing": ("enhancing", "enhancing tumor", "enhancing tumour", "et", "enhancement", "gd-enhancing tumor"),
    "tumour": ("tumour", "tumor", "whole tumor", "whole tumour", "wt", "lesion", "foreground"),
}


def meaning_of(name: str) -> str | None:
    """The internal meaning of a label name (``edema`` -> ``oedema``), or None when not recognised."""
    key = str(name).strip().lower().replace("_", " ")
    return next((m for m, names in _ALIASES.items() if key in names), None)


@dataclass
class Outputs:
    """How a model's output becomes internal classes: ``labels`` (value -> meaning) or ``regions``
    (channel order of overlapping WT/TC/ET masks)."""

    labels: dict[int, str] | None = None
    regions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (self.labels is None) == (self.regions is None):
            raise SegmentationError("a model's outputs need exactly one of labels (value: meaning) or regions "
                                    "(channel order of wt/tc/et)")
        if self.labels is not None:
            self.labels = {int(k): str(v) for k, v in self.labels.items()}
            bad = {k: v for k, v in self.labels.items() if v not in MEANINGS}
            if bad:
                raise SegmentationError(f"output labels {bad}: each meaning must be one of {list(MEANINGS)}")
            fg = {v for v in self.labels.values() if v != "background"}
            if not fg:
                raise SegmentationError("output labels map no value to a tumour class; give the label mapping "
                                        "(e.g. --labels brats2021 or 1=necrosis,2=oedema,3=enhancing)")
            if "tumour" in fg and fg != {"tumour"}:
                raise SegmentationError(f"output labels {self.labels}: mix tumour with subregions; a model is "
                                        "either whole-tumour (tumour) or BraTS subregions")
        else:
            self.regions = tuple(str(r).lower() for r in self.regions or ())
            bad = [r for r in self.regions if r not in REGIONS]
            if bad or not self.regions or len(set(self.regions)) != len(self.regions):
                raise SegmentationError(f"output regions {list(self.regions)}: each must be one of {list(REGIONS)}, once")

    @property
    def classes(self) -> str:
        """``brats`` (subregions) or ``wt`` (whole tumour only)."""
        if self.regions is not None:
            return "brats" if {"tc", "et"} & set(self.regions) else "wt"
        return "wt" if set(self.labels.values()) <= {"background", "tumour"} else "brats"

    def from_labels(self, values: np.ndarray) -> np.ndarray:
        """Internal classes of a label map in the model's values (unmapped values are background)."""
        v = np.asarray(values)
        out = np.zeros(v.shape, dtype=np.uint8)
        for value, meaning in (self.labels or {}).items():
            out[v == value] = INTERNAL[meaning]
        return out

    def from_regions(self, masks: np.ndarray) -> np.ndarray:
        """Internal classes of binary region channels (R, ...): ET enhancing, TC without ET necrosis, WT
        without TC oedema (a whole-tumour model: WT tumour)."""
        m = {r: np.asarray(masks[i]) > 0 for i, r in enumerate(self.regions or ())}
        shape = next(iter(m.values())).shape
        out = np.zeros(shape, dtype=np.uint8)
        if self.classes == "wt":
            out[m["wt"]] = 1
            return out
        wt = m.get("wt", np.zeros(shape, bool)) | m.get("tc", False) | m.get("et", False)
        tc = m.get("tc", np.zeros(shape, bool)) | m.get("et", False)
        out[wt] = 2
        out[tc] = 1
        out[m.get("et", np.zeros(shape, bool))] = 3
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels} if self.labels is not None else {"regions": list(self.regions or ())}

    @classmethod
    def parse(cls, raw: Any) -> "Outputs":
        """From a spec entry (``{labels: {...}}`` / ``{regions: [...]}``), a preset name, or ``1=necrosis,...``."""
        if isinstance(raw, Outputs):
            return raw
        if isinstance(raw, Mapping):
            if "labels" in raw:
                labels = raw["labels"]
                return cls(labels=dict(LABEL_PRESETS[labels]) if isinstance(labels, str) and labels in LABEL_PRESETS
                           else dict(labels))
            if "regions" in raw:
                return cls(regions=tuple(raw["regions"]))
            raise SegmentationError(f"outputs {dict(raw)} names neither labels nor regions")
        text = str(raw or "").strip()
        if text in LABEL_PRESETS:
            return cls(labels=dict(LABEL_PRESETS[text]))
        if text.startswith("regions:"):
            return cls(regions=tuple(t.strip() for t in text[len("regions:"):].split(",") if t.strip()))
        pairs = [p for p in text.split(",") if p.strip()]
        if not pairs or not all("=" in p for p in pairs):
            raise SegmentationError(f"label mapping {text!r} is not understood; give a preset "
                                    f"({', '.join(LABEL_PRESETS)}), value=meaning pairs (1=necrosis,2=oedema,"
                                    "3=enhancing) or regions:wt,tc,et")
        labels = {}
        for p in pairs:
            k, v = p.split("=", 1)
            meaning = meaning_of(v) or v.strip()
            labels[int(k)] = meaning
        return cls(labels=labels)


@dataclass
class Pass:
    """One case through a model (see the module docstring). Spatial axes of the model grid are the
    model's own (nnU-Net: its transposed (z, y, x) order)."""

    classes: np.ndarray                       # internal classes on the case's own grid (X, Y, Z)
    model_classes: np.ndarray                 # internal classes on the model grid
    maps: dict[str, Any]                      # layer -> activation (C, ...) on its grid
    image: np.ndarray                         # the preprocessed image (C, ...) on the model grid
    spacing: tuple[float, ...]                # model grid voxel size (mm) per axis
    axial: tuple[int, int] = (0, 1)           # spatial axes of the axial plane on the model grid
    reference: np.ndarray | None = None       # the reference label (internal classes) on the model grid
    notes: list[str] = field(default_factory=list)


class Segmenter:
    """One interface over every model kind (see the module docstring)."""

    kind = ""

    def __init__(self, name: str, modalities: Sequence[str], classes: str, spacing: Sequence[float],
                 postprocess: str = "none", description: str = "", layers: Sequence[str] | str = "default") -> None:
        self.name, self.modalities, self.classes = name, tuple(modalities), classes
        self.spacing = tuple(float(s) for s in spacing)
        self.postprocess, self.postprocess_cv, self.description = postprocess, {}, description
        self.layers = layers
        self.path: Path | None = None
        self.weights_note = ""
        self.trained_on: dict[str, Any] | None = None   # registered models: {cohort, cases} the weights saw
        self.fingerprint = ""                             # registered models: sha256 over their files' hashes
        self.network_name = ""
        self.patch: tuple[int, ...] = ()

    def modules(self) -> dict[str, Any]:
        """Every tappable layer by name (``named_modules`` of the network)."""
        return dict(self.network().named_modules())

    def network(self) -> Any:
        raise NotImplementedError

    def default_stages(self) -> dict[str, str]:
        """The architecture family's signature layers: stage name -> module name."""
        raise NotImplementedError

    def stages(self) -> dict[str, str]:
        """The signature layers of this model: stage name (column part) -> module name. An explicit
        ``layers`` list is checked against the network's modules; an unknown name is an error listing them."""
        if isinstance(self.layers, str) and self.layers == "default":
            return self.default_stages()
        mods = self.modules()
        names = [self.layers] if isinstance(self.layers, str) else list(self.layers)
        unknown = [n for n in names if n not in mods]
        if unknown:
            cands = [n for n in mods if n][:60]
            raise SegmentationError(f"model {self.name}: unknown signature layer(s) {unknown} in "
                                    f"{self._spec_file()}; the network's modules are: {cands}"
                                    + (" ..." if len(mods) > 61 else ""))
        return {stage_name(n): n for n in names}

    def taps(self, stages: Sequence[str] | None) -> dict[str, str] | None:
        """The module names of the signature stages ``stages`` (None: no tap)."""
        if not stages:
            return None
        known = self.stages()
        return {s: known[s] for s in stages}

    def _spec_file(self) -> str:
        return str(self.path) if self.path else self.name

    def check_channels(self) -> None:
        """A model whose network takes another number of input channels than its modalities: an error."""
        n = self.input_channels()
        if n is not None and n != len(self.modalities):
            raise SegmentationError(f"model {self.name} ({self._spec_file()}): the network takes {n} input channel(s) "
                                    f"but the model declares {len(self.modalities)} modalities {list(self.modalities)}; "
                                    "fix the modalities (one per input channel, in the training order)")

    def input_channels(self) -> int | None:
        return first_conv_channels(self.network())

    def run(self, data: Mapping[str, Any], stages: Sequence[str] | None = None, *, overlap: float = 0.5,
            tta: bool = False, device: str = "cpu", amp: bool = False) -> Pass:
        raise NotImplementedError

    def stage_maps(self, image: np.ndarray, stages: Sequence[str], *, overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False) -> dict[str, Any]:
        """The tapped layers of a (perturbed) preprocessed image on the model grid."""
        raise NotImplementedError


def stage_name(module_name: str) -> str:
    """A module path as a column part: dots become hyphens (``encoder.stages.0`` -> ``encoder-stages-0``)."""
    return module_name.replace(".", "-").replace("__", "_")


def first_conv_channels(net: Any) -> int | None:
    """Input channels of the first convolution of a network (None when there is none)."""
    import torch

    for mod in net.modules():
        if isinstance(mod, (torch.nn.Conv3d, torch.nn.Conv2d)):
            return int(mod.in_channels)
    return None


def monai_stages(net: Any, name: str = "") -> dict[str, str]:
    """The default signature layers of a MONAI UNet / SegResNet (:func:`glioma_nb.signature.network.stage_modules`)
    as stage name -> module name."""
    names = {id(m): n for n, m in net.named_modules()}
    try:
        return {s: names[id(m)] for s, m in sig_network.stage_modules(net).items()}
    except sig_network.SignatureError:
        raise SegmentationError(f"model {name}: no default signature layers for {type(net).__name__} "
                                "(MONAI UNet and SegResNet have them); list them in the model's layers") from None


def probs_to_classes(probs: Any, activation: str, outputs: Outputs) -> np.ndarray:
    """Internal classes of per-channel probabilities: region channels above 0.5 (sigmoid), else the
    argmax index read as a label value."""
    p = np.asarray(probs)
    if outputs.regions is not None:
        return outputs.from_regions(p > (0.5 if activation == "sigmoid" else 0.0))
    return outputs.from_labels(p.argmax(0))


class WindowSegmenter(Segmenter):
    """A network run by MONAI's sliding window after MONAI transforms (orientation, spacing, foreground crop,
    z-score): the glioma-nb kind and the TorchScript kind."""

    activation = "softmax"

    def __init__(self, name: str, modalities: Sequence[str], outputs: Outputs, spacing: Sequence[float],
                 patch: Sequence[int], net: Any, preprocess_spec: Any, feature_outputs: Mapping[str, int] | None = None,
                 **kw: Any) -> None:
        super().__init__(name, modalities, outputs.classes, spacing, **kw)
        self.outputs, self.net, self.patch = outputs, net, tuple(int(p) for p in patch)
        self.pre_spec = preprocess_spec
        self.feature_outputs = dict(feature_outputs or {})

    def network(self) -> Any:
        return self.net

    def _window(self, image: Any, stages: Mapping[str, str] | None, **kw: Any) -> Any:
        return window.sliding_window(self.net, image, self.patch, stages=stages, activation=self.activation,
                                     outputs={s: i for s, i in self.feature_outputs.items() if stages and s in stages},
                                     **kw)

    def run(self, data: Mapping[str, Any], stages: Sequence[str] | None = None, *, overlap: float = 0.5,
            tta: bool = False, device: str = "cpu", amp: bool = False) -> Pass:
        reference = "label" in data
        pre = transforms.preprocess(self.pre_spec, with_label=reference)
        d = pre({k: data[k] for k in (("image", "label") if reference else ("image",))})
        kw = dict(overlap=overlap, tta=tta, device=device, amp=amp)
        taps = self.taps(stages)
        probs, maps = (self._window(d["image"], taps, **kw) if taps else (self._window(d["image"], None, **kw), {}))
        orig = window.to_original(pre, d, probs, data)
        return Pass(classes=probs_to_classes(orig, self.activation, self.outputs),
                    model_classes=probs_to_classes(probs, self.activation, self.outputs), maps=maps,
                    image=np.asarray(d["image"], dtype=np.float32), spacing=self.spacing, axial=(0, 1),
                    reference=np.asarray(d["label"][0], dtype=np.uint8) if reference else None)

    def stage_maps(self, image: np.ndarray, stages: Sequence[str], *, overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False) -> dict[str, Any]:
        import torch

        _, maps = self._window(torch.from_numpy(np.ascontiguousarray(image)), self.taps(stages),
                               overlap=overlap, tta=tta, device=device, amp=amp)
        return maps


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
        _, maps = window.sliding_window(self.net.members[0], torch.from_numpy(np.ascontiguousarray(image)), self.patch,
                                        stages=taps, activation=self.activation, overlap=overlap, tta=tta,
                                        device=device, amp=amp)
        return maps
