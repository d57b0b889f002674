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

from glioma_nb import taps
from glioma_nb.segment import backend, transforms, window
from glioma_nb.segment.errors import SegmentationError

MEANINGS = ("background", "necrosis", "oedema", "enhancing", "tumour")
INTERNAL = {"background": 0, "necrosis": 1, "oedema": 2, "enhancing": 3, "tumour": 1}
# label-value presets of the common schemes (value -> meaning)
LABEL_PRESETS: dict[str, dict[int, str]] = {
    "brats2018": {0: "background", 1: "necrosis", 2: "oedema", 4: "enhancing"},
    "brats2021": {0: "background", 1: "necrosis", 2: "oedema", 3: "enhancing"},
    "brats2023": {0: "background", 1: "necrosis", 2: "oedema", 3: "enhancing"},
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
    """One interface over every model kind (see the module docstring). A kind is a subclass in its own module of
    :mod:`glioma_nb.segment.kinds`, registered by name with :func:`register`; besides running, it says how a
    folder of its kind is recognised (:meth:`detect`), what ``glioma-nb models import`` records of it
    (:meth:`import_entry`), how it is built from that record (:meth:`from_entry`) and how its example is made
    (:meth:`example`)."""

    kind = ""
    importable = False     # glioma-nb models import takes this kind (the shipped specs are not imported)

    @classmethod
    def detect(cls, path: Path) -> bool:
        """Is ``path`` (a folder or a file) a model of this kind?"""
        return False

    @classmethod
    def import_entry(cls, src: Path, name: str, modalities: list[str] | None, labels: Any,
                     options: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], Path]:
        """What ``glioma-nb models import`` records of a model of this kind: (its entry's fields besides the
        common ones, its modalities in channel order, the folder whose files are copied). ``options``: the
        import's ``folds``, ``checkpoint``, ``spacing``."""
        raise SegmentationError(f"models of kind {cls.kind!r} are not imported")

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], files: Path, outputs: "Outputs", **common: Any) -> "Segmenter":
        """A registered model of this kind, from its entry (``model.yaml``) and the folder of its files."""
        raise SegmentationError(f"models of kind {cls.kind!r} are not registered models")

    @classmethod
    def example(cls, out: Path, **options: Any) -> Path:
        """A small example model of this kind in the new folder ``out`` (``glioma-nb models example``)."""
        raise SegmentationError(f"there is no example model of kind {cls.kind!r}")

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
        self.backend = "torch"                            # the network's forward pass: torch | openvino (backend)
        self._accelerated: dict[tuple[str, tuple[str, ...]], Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for a Dask worker without the OpenVINO stand-ins (each process converts or reads the cache)."""
        state = dict(self.__dict__)
        state["_accelerated"] = {}
        return state

    def forward_module(self, net: Any, taps: Mapping[str, str] | None = None, slot: str = "net") -> Any:
        """What to call for the torch module ``net`` (``slot`` names it among the model's networks: a fold, a
        member): ``net`` itself, or with ``backend`` openvino its OpenVINO stand-in (:func:`backend.accelerate`)
        whose modules ``taps`` (stage -> module name) fire forward hooks; one stand-in per slot and taps."""
        if self.backend != "openvino":
            return net
        key = (slot, tuple(sorted(set((taps or {}).values()))))
        if key not in self._accelerated:
            self._accelerated[key] = backend.accelerate(net, key[1], f"model {self.name} ({slot})")
        return self._accelerated[key]

    def backend_used(self) -> str:
        """What the network ran in so far: ``torch``, ``openvino``, or ``torch (why OpenVINO was not used)``."""
        if self.backend != "openvino":
            return self.backend
        return backend.describe([s for a in self._accelerated.values() for s in backend.statuses(a)]) or "openvino"

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
    """The default signature layers of a MONAI UNet / SegResNet (:func:`glioma_nb.taps.stage_modules`)
    as stage name -> module name."""
    names = {id(m): n for n, m in net.named_modules()}
    try:
        return {s: names[id(m)] for s, m in taps.stage_modules(net).items()}
    except taps.SignatureError:
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
        hooked = {s: m for s, m in (stages or {}).items() if s not in self.feature_outputs}
        return window.sliding_window(self.forward_module(self.net, hooked), image, self.patch, stages=stages,
                                     activation=self.activation,
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


def _spacing_of(data: Mapping[str, Any]) -> np.ndarray:
    """Voxel sizes (mm) along the image's voxel axes (X, Y, Z) from the loaded case's affine."""
    return np.linalg.norm(np.asarray(data["image"].affine)[:3, :3], axis=0)


def spacing_note(name: str, model_spacing: Sequence[float], image_spacing: Sequence[float]) -> list[str]:
    """A note when the case's voxel size differs from the model's (the model's preprocessing resamples); the
    case is named by the record it goes into (``masks/<case>.json``), so notes of many cases can be counted."""
    m, i = np.sort(np.asarray(model_spacing, float)), np.sort(np.asarray(image_spacing, float))
    if len(m) == len(i) and np.allclose(m, i, rtol=0.05):
        return []
    return [f"voxel size {' x '.join(f'{v:.2g}' for v in image_spacing)} mm differs from model "
            f"{name}'s {' x '.join(f'{v:.2g}' for v in model_spacing)} mm; resampled by the model's preprocessing"]


# ------------------------------------------------------------------------------------------------ nnU-Net v2


# BraTS's nested regions (whole tumour > tumour core > enhancing) by name, for region-based nnU-Net datasets and
# bundles with region channels; INNERMOST: the class a region's value means where it is the innermost region
_CORE_NAMES = ("tumor core", "tumour core", "tc", "core")
_REGION_BY_MEANING = {"tumour": "wt", "necrosis": "tc", "enhancing": "et"}
INNERMOST = {"wt": "oedema", "tc": "necrosis", "et": "enhancing"}


def region_of(name: Any) -> str | None:
    """The BraTS region (wt, tc, et) a label or channel name means (``Tumor core`` -> tc, ``whole tumour`` -> wt,
    ``enhancing tumor`` -> et), or None."""
    if str(name).strip().lower().replace("_", " ") in _CORE_NAMES:
        return "tc"
    return _REGION_BY_MEANING.get(meaning_of(name) or "")


def outputs_text(outputs: Outputs) -> str:
    """``outputs`` as a ``--labels`` argument (a preset name where it is one)."""
    if outputs.regions is not None:
        return "regions:" + ",".join(outputs.regions)
    preset = next((k for k, v in LABEL_PRESETS.items() if v == outputs.labels), None)
    return preset or ",".join(f"{k}={v}" for k, v in sorted((outputs.labels or {}).items()) if v != "background")


# --------------------------------------------------------------------------------------------- the registry
#: model kind -> its Segmenter class (filled by :func:`register` as the kind modules are imported)
REGISTRY: dict[str, type[Segmenter]] = {}


def register(cls: type[Segmenter]) -> type[Segmenter]:
    """Class decorator: ``cls`` is the model kind named ``cls.kind``."""
    if not cls.kind or cls.kind in REGISTRY:
        raise ValueError(f"{cls.__name__}: kind {cls.kind!r} is empty or registered twice")
    REGISTRY[cls.kind] = cls
    return cls


# modality names as models spell them (dataset.json channel names, metadata.json channel_def, --modalities)
MODALITY_ALIASES = {
    "t1": ("t1", "t1n", "t1w", "t1-native", "t1 native", "native t1", "t1_pre", "t1pre"),
    "t1c": ("t1c", "t1ce", "t1gd", "t1-gd", "t1-ce", "t1 contrast", "t1post", "t1_post", "t1-post", "t1c+", "t1wce"),
    "t2": ("t2", "t2w", "t2-weighted"),
    "flair": ("flair", "t2f", "t2-flair", "t2 flair", "t2flair"),
}


def modality_of(name: str) -> str | None:
    key = str(name).strip().lower().replace("_", "-")
    return next((m for m, names in MODALITY_ALIASES.items() if key in names or key.replace("-", " ") in names), None)


def normalised_modalities(mods: list[str] | None) -> list[str] | None:
    """Modality names in the registry's spelling (``T1c``, ``T1ce``, ``FLAIR`` -> t1c, t1c, flair); unknown ones kept."""
    return None if mods is None else [modality_of(m) or m for m in mods]


def split_list(text: Any) -> list[str] | None:
    """A comma-separated text or a list as a list of strings (None for nothing)."""
    if text is None or text == "":
        return None
    return [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t) for t in text]
