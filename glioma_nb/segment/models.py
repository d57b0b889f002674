"""Model specifications, the network registry and the shipped weights.

A model is declared by ``glioma_nb/segment/models/<name>.yaml``: the network (a name from
:data:`NETWORKS` and its arguments), the input modalities (= input channels, in order), the output
classes, the voxel size and patch size it works at, and the training recipe with the exact cases it
was trained on and those held out. The shipped weights ``<name>.pt`` (float16 state dict) sit beside
it with a model card ``<name>.md`` that records their sha256; :func:`load_model` refuses weights whose
hash differs from the card's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import yaml

from glioma_nb import config, io
from glioma_nb.provenance import sha256_file as sha256
from glioma_nb.segment import postprocess
from glioma_nb.segment.errors import SegmentationError

MODELS_DIR = Path(__file__).resolve().parent / "models"

# Output class sets: internal class index -> meaning. "brats": the three BraTS labels (written in the
# cohort's scheme, 1/2/4 or 1/2/3); "wt": whole tumour only (written as 1).
CLASS_SETS: dict[str, tuple[str, ...]] = {
    "brats": ("background", "necrosis / non-enhancing core", "oedema", "enhancing tumour"),
    "wt": ("background", "whole tumour"),
}
# Region outputs (``outputs: regions``): overlapping sigmoid channels, as nnU-Net's BraTS entries train them
# (Isensee et al. 2021, "nnU-Net for brain tumor segmentation"): the evaluated regions themselves.
REGION_SETS: dict[str, tuple[str, ...]] = {"brats": ("wt", "tc", "et"), "wt": ("wt",)}
OUTPUTS = ("labels", "regions")


def _unet(in_channels: int, out_channels: int, **kw: Any) -> Any:
    from monai.networks.nets import UNet

    kw.setdefault("channels", (16, 32, 64, 128, 256))
    kw.setdefault("strides", (2, 2, 2, 2))
    kw.setdefault("num_res_units", 2)
    strides = [tuple(s) if isinstance(s, (list, tuple)) else s for s in kw.pop("strides")]
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                channels=tuple(kw.pop("channels")), strides=strides, **kw)


def _segresnet(in_channels: int, out_channels: int, **kw: Any) -> Any:
    from monai.networks.nets import SegResNet

    kw.setdefault("init_filters", 16)
    return SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **kw)


NETWORKS: dict[str, Callable[..., Any]] = {"unet": _unet, "segresnet": _segresnet}


@dataclass
class ModelSpec:
    """What a segmentation model takes, gives and how it was trained (``models/<name>.yaml``)."""

    name: str
    network: dict[str, Any]
    modalities: tuple[str, ...]
    classes: str                      # a CLASS_SETS key
    spacing: tuple[float, float, float]
    patch: tuple[int, int, int]
    train: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    path: Path | None = None
    postprocess: str = "none"         # a glioma_nb.segment.postprocess rule, applied at inference
    postprocess_cv: dict[str, Any] = field(default_factory=dict)   # how the rule was chosen (for the card)
    outputs: str = "labels"           # labels (softmax over CLASS_SETS) | regions (sigmoid REGION_SETS channels)
    ensemble: int = 0                 # shipped as this many fold models <name>.fold<i>.pt (0: one <name>.pt)
    tta: bool = False                 # always mirror at inference (8 flips; chosen out of fold), whatever segment.tta

    def __post_init__(self) -> None:

        postprocess.parse_rule(self.postprocess)
        if self.outputs not in OUTPUTS:
            raise SegmentationError(f"model {self.name}: outputs must be one of {list(OUTPUTS)}, not {self.outputs!r}")

    @property
    def n_classes(self) -> int:
        return len(CLASS_SETS[self.classes])

    @property
    def regions(self) -> tuple[str, ...] | None:
        """The region channels (``outputs: regions``), else None."""
        return REGION_SETS[self.classes] if self.outputs == "regions" else None

    @property
    def n_outputs(self) -> int:
        """Output channels of the network."""
        return len(self.regions) if self.regions else self.n_classes

    @property
    def folder(self) -> Path:
        """Where the spec's weights and card live: beside its YAML (the package's models/ for shipped specs)."""
        return self.path.parent if self.path is not None else MODELS_DIR

    @property
    def weights_path(self) -> Path:
        return self.folder / f"{self.name}.pt"

    @property
    def weights_paths(self) -> list[Path]:
        """The shipped weight files: ``<name>.pt``, or one ``<name>.fold<i>.pt`` per fold of an ensemble."""
        if self.ensemble:
            return [self.folder / f"{self.name}.fold{i}.pt" for i in range(self.ensemble)]
        return [self.weights_path]

    @property
    def card_path(self) -> Path:
        return self.folder / f"{self.name}.md"

    def build(self) -> Any:
        """A freshly initialised network of this spec."""
        kw = dict(self.network)
        name = kw.pop("name", "unet")
        if name not in NETWORKS:
            raise SegmentationError(f"model {self.name}: unknown network {name!r}; known: {sorted(NETWORKS)}")
        return NETWORKS[name](len(self.modalities), self.n_outputs, **kw)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "description": self.description, "network": self.network,
               "modalities": list(self.modalities), "classes": self.classes, "spacing": list(self.spacing),
               "patch": list(self.patch), "train": self.train}
        if self.outputs != "labels":   # keeps the dict (and the checkpoints that record it) of label models as it was
            out["outputs"] = self.outputs
        return out


def available_models() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """The spec of a shipped model by name, or of a YAML file by path."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = MODELS_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        raise SegmentationError(f"no segmentation model {name_or_path!r}; shipped models: {available_models()}")
    raw = yaml.safe_load(p.read_text())
    missing = [k for k in ("name", "network", "modalities", "classes", "spacing", "patch") if k not in raw]
    if missing:
        raise SegmentationError(f"{p}: model spec lacks {missing}")
    if raw["classes"] not in CLASS_SETS:
        raise SegmentationError(f"{p}: classes must be one of {sorted(CLASS_SETS)}")
    try:
        return ModelSpec(name=raw["name"], network=dict(raw["network"]), modalities=tuple(raw["modalities"]),
                         classes=raw["classes"], spacing=tuple(float(s) for s in raw["spacing"]),
                         patch=tuple(int(s) for s in raw["patch"]), train=dict(raw.get("train") or {}),
                         description=raw.get("description", ""), path=p, postprocess=str(raw.get("postprocess", "none")),
                         postprocess_cv=dict(raw.get("postprocess_cv") or {}), outputs=str(raw.get("outputs", "labels")),
                         ensemble=int(raw.get("ensemble", 0) or 0), tta=bool(raw.get("tta", False)))
    except SegmentationError as exc:
        raise SegmentationError(f"{p}: {exc}") from None


def choose_model(modalities: tuple[str, ...] | list[str], requested: str = "auto") -> str | None:
    """The model for a cohort: ``requested`` unless ``auto``; auto picks the shipped model whose
    modalities the cohort has, the one with most inputs first (brats-4mod, then flair-wt)."""
    if requested not in ("auto", "", None):
        return requested
    have = set(modalities)
    best = None
    for name in available_models():
        spec = load_spec(name)
        if set(spec.modalities) <= have and (best is None or len(spec.modalities) > len(best.modalities)):
            best = spec
    return best.name if best else None


def card_volumes(name: str) -> pd.DataFrame | None:
    """A shipped model's held-out (or out-of-fold) whole-tumour volumes, predicted and reference, per case
    (``<name>.volumes.csv``, written by ``glioma-nb segment-rescore``); None for a model without them."""
    if name not in available_models():
        return None
    spec = load_spec(name)
    path = spec.folder / f"{spec.name}.volumes.csv"
    return pd.read_csv(path) if path.exists() else None


def card_sha256(card: Path) -> str | None:
    """The weights sha256 recorded in a model card (the first line ``sha256: <hex>``)."""
    if not card.exists():
        return None
    m = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", card.read_text())
    return m.group(1) if m else None


def card_hashes(card: Path) -> dict[str, str]:
    """Weight file name -> sha256 of the lines ``- `<file>.pt`: ... sha256 <hex>`` of a model card."""
    if not card.exists():
        return {}
    return dict(re.findall(r"`([\w.-]+\.pt)`[^\n]*?sha256[^0-9a-f\n]*([0-9a-f]{64})", card.read_text()))


def save_weights(model: Any, path: Path) -> str:
    """Write a float16 state dict (half the size; loaded back as float32); returns its sha256."""
    import torch

    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return sha256(path)


_ENSEMBLE: list[type] = []


def _ensemble_class() -> type:
    """:class:`Ensemble`, defined on first use (torch is imported lazily in this package)."""
    if _ENSEMBLE:
        return _ENSEMBLE[0]
    import torch

    class Ensemble(torch.nn.Module):
        """Fold models averaged as nnU-Net averages them: the mean of the members' probabilities (``activation``:
        softmax or sigmoid), returned as logits whose activation is exactly that mean (log for softmax, logit for
        sigmoid), so the sliding window, mirroring and thresholds treat it as one network. Signature layers are
        the first member's (``members.0.*``): the members' channels do not correspond, so their activations
        cannot be averaged."""

        def __init__(self, members: list[Any], activation: str) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(members)
            self.activation = activation

        def forward(self, x: Any) -> Any:
            probs = None
            for m in self.members:
                out = m(x).float()
                p = torch.softmax(out, 1) if self.activation == "softmax" else torch.sigmoid(out)
                probs = p if probs is None else probs + p
            mean = (probs / len(self.members)).clamp(1e-7, 1 - 1e-7)
            return torch.log(mean) if self.activation == "softmax" else torch.logit(mean)

    Ensemble.__module__, Ensemble.__qualname__ = __name__, "Ensemble"   # pickled by reference (Dask workers)
    _ENSEMBLE.append(Ensemble)
    return Ensemble


def __getattr__(name: str) -> Any:
    if name == "Ensemble":
        return _ensemble_class()
    raise AttributeError(name)


def is_ensemble(net: Any) -> bool:
    return bool(_ENSEMBLE) and isinstance(net, _ENSEMBLE[0])


def _load_state(spec: ModelSpec, path: Path) -> Any:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    net = spec.build()
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net


def fold_weights(folder: Path) -> list[Path]:
    """The fold models of a cross-validation folder (``fold<i>/weights.pt``), in fold order."""
    found = sorted(Path(folder).glob("fold*/weights.pt"), key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    return found


def load_model(spec: ModelSpec, weights: str | Path | None = None, device: str = "cpu") -> Any:
    """The network of ``spec`` with weights loaded, in eval mode on ``device``.

    ``weights=None`` loads the shipped weights (one file, or every fold of an ``ensemble`` spec as an
    :class:`Ensemble`) and checks each file's sha256 against the model card; a file path loads a checkpoint (a
    state dict, or a training checkpoint with a ``model`` entry); a cross-validation folder
    (``segment-train --folds``) loads its fold models as an ensemble.
    """
    if weights is None:
        paths = spec.weights_paths
        hashes = card_hashes(spec.card_path)
        for path in paths:
            if not path.exists():
                raise SegmentationError(f"model {spec.name}: weights {path} not found; train them with "
                                        f"`python -m glioma_nb segment-train --model {spec.name} --ship` or set "
                                        "segment.weights")
            expected = hashes.get(path.name) or (card_sha256(spec.card_path) if len(paths) == 1 else None)
            actual = sha256(path)
            if expected != actual:
                raise SegmentationError(f"model {spec.name}: {path.name} has sha256 {actual[:12]}..., the model card "
                                        f"{spec.card_path.name} says {str(expected)[:12]}...; the weights are not "
                                        "the ones the card describes (reinstall the package or retrain)")
    else:
        p = Path(weights)
        paths = fold_weights(p) if p.is_dir() else [p]
        if not paths or not paths[0].exists():
            raise SegmentationError(f"model {spec.name}: weights {p} not found (a weights file, or a cross-validation "
                                    "folder with fold*/weights.pt); train them with "
                                    f"`python -m glioma_nb segment-train --model {spec.name}` or set segment.weights")
    nets = [_load_state(spec, path) for path in paths]
    net = nets[0] if len(nets) == 1 else _ensemble_class()(nets, "sigmoid" if spec.regions else "softmax")
    return net.to(device).eval()


def weights_note(spec: ModelSpec, weights: str | Path | None = None) -> str:
    """``shipped (sha256 ...)`` of the weights ``load_model`` reads (an ensemble: its folds' hashes)."""
    if weights is None:
        paths = spec.weights_paths
    else:
        paths = fold_weights(Path(weights)) if Path(weights).is_dir() else [Path(weights)]
    hashes = ", ".join(sha256(p)[:12] for p in paths)
    what = "shipped" if weights is None else str(weights)
    return f"{what} ({len(paths)}-fold ensemble, sha256 {hashes})" if len(paths) > 1 else f"{what} (sha256 {hashes})"


def resolve_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SegmentationError("project.device is cuda but no CUDA device is available; use auto or cpu")
    return requested


def _cohort_data_root(cohort_name: str) -> Path | None:
    """The resolved data folder of a cohort configuration (None when it cannot be resolved here)."""
    try:
        return io.cohort_root(config.resolve_config(cohort_name)).resolve()
    except Exception:  # a missing config or unset variable: compare by name only
        return None


def same_data(cohort_name: str, root: Path | None) -> bool:
    """Whether the cohort configuration ``cohort_name`` reads the data folder ``root``."""
    return root is not None and _cohort_data_root(cohort_name) == Path(root).resolve()


def training_cases(sources: Sequence[Mapping[str, Any]], cohort_name: str, case_ids: list[str],
                   root: Path | None = None) -> set[str]:
    """Which of ``case_ids`` (of cohort ``cohort_name``, data in ``root``) the training ``sources`` cover (a spec's
    ``train.sources``, or a registered model's ``trained_on``: ``{cohort, cases, held_out}``). A cohort is the
    training cohort when it has its name or reads the same data folder (e.g. a site subset that ``extends`` it);
    ``cases: all`` means every case but the held-out ones. :func:`glioma_nb.segment.registry.trained_on` asks it
    for any model."""
    out: set[str] = set()
    for src in sources:
        same = src.get("cohort") == cohort_name or (
            root is not None and _cohort_data_root(src.get("cohort", "")) == Path(root).resolve())
        if not same:
            continue
        cases = src.get("cases", [])
        held = set(src.get("held_out", []))
        out |= {c for c in case_ids if c not in held} if cases in ("all", "all-others") else set(cases) & set(case_ids)
    return out
