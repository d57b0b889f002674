"""The ``torchscript`` kind: a scripted module and its YAML (signature layers as extra outputs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from glioma_nb.segment import examples, window
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.kinds.base import (Outputs, Pass, WindowSegmenter, _spacing_of, normalised_modalities, register,
                                          spacing_note)


@register
class TorchScriptSegmenter(WindowSegmenter):
    """A scripted module with a YAML (see :func:`glioma_nb.segment.registry.load`): MONAI transforms, sliding
    window; its signature layers are the extra outputs the module returns after the logits."""

    kind = "torchscript"
    importable = True

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        return p.suffix in (".yaml", ".yml") or (p.is_dir() and bool(list(p.glob("*.y*ml"))))

    @classmethod
    def import_entry(cls, src: Path, name: str, modalities: list[str] | None, labels: Any,
                     options: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], Path]:
        """The YAML beside the module (``PATH`` itself or the one YAML in the folder ``PATH``)."""
        yml = torchscript_yaml(src)
        raw = yaml.safe_load(yml.read_text()) or {}
        missing = [k for k in ("module", "spacing", "patch") if k not in raw]
        if missing or ("modalities" not in raw and modalities is None) or ("outputs" not in raw and labels is None):
            raise SegmentationError(f"{yml}: a TorchScript model's YAML needs module, spacing, patch, modalities and "
                                    f"outputs (missing {missing + [k for k in ('modalities', 'outputs') if k not in raw]}); "
                                    "see `glioma-nb models --help`")
        mods = modalities or normalised_modalities(list(raw["modalities"]))
        return {"outputs": Outputs.parse(labels if labels is not None else raw["outputs"]).to_dict(),
                "torchscript": {k: raw[k] for k in ("module", "spacing", "patch", "orientation", "normalise",
                                                    "activation", "feature_outputs") if k in raw}}, mods, yml.parent

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], files: Path, outputs: Outputs, **common: Any) -> "TorchScriptSegmenter":
        t = dict(entry.get("torchscript") or {})
        return cls(entry["name"], files / t.pop("module"), entry["modalities"], outputs, **t, **common)

    @classmethod
    def example(cls, out: Path, **_: Any) -> Path:
        return examples.torchscript_model(out, ("t1", "t1c", "t2", "flair"), 4)

    def __init__(self, name: str, module: Path, modalities: Sequence[str], outputs: Outputs, spacing: Sequence[float],
                 patch: Sequence[int], activation: str = "softmax", orientation: str = "RAS",
                 normalise: str = "zscore-nonzero", feature_outputs: Sequence[str] = (),
                 layers: Sequence[str] | str = "default", device: str = "cpu", **kw: Any) -> None:
        import warnings

        import torch

        if not Path(module).exists():
            raise SegmentationError(f"model {name}: TorchScript module {module} not found; export it with "
                                    "torch.jit.script(net).save(path) and import the folder again")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(module), map_location=device).eval()
        pre = _PreSpec(name, tuple(float(s) for s in spacing), orientation, normalise)
        window.activate(torch.zeros(1, 1, 1, 1, 1), activation)   # checks the name
        super().__init__(name, modalities, outputs, spacing, patch, net, pre,
                         feature_outputs={f: i + 1 for i, f in enumerate(feature_outputs)}, layers=layers, **kw)
        self.activation, self.module_path = activation, Path(module)
        self.network_name = "TorchScript"

    def default_stages(self) -> dict[str, str]:
        if not self.feature_outputs:
            raise SegmentationError(f"model {self.name}: a TorchScript module takes no forward hooks, so its signature "
                                    f"layers are extra outputs: export a module returning (logits, feature1, ...) and "
                                    f"name them in feature_outputs of {self._spec_file()}; or set signature.network: false")
        return {f: f for f in self.feature_outputs}

    def stages(self) -> dict[str, str]:
        if isinstance(self.layers, str) and self.layers == "default":
            return self.default_stages()
        names = [self.layers] if isinstance(self.layers, str) else list(self.layers)
        unknown = [n for n in names if n not in self.feature_outputs]
        if unknown:
            raise SegmentationError(f"model {self.name}: unknown signature layer(s) {unknown} in {self._spec_file()}; "
                                    f"this TorchScript module's feature outputs are {list(self.feature_outputs)}")
        return {n: n for n in names}

    def input_channels(self) -> int | None:
        for name, p in self.net.named_parameters():
            if p.ndim == 5:
                return int(p.shape[1])
        return None

    def run(self, data: Mapping[str, Any], stages: Sequence[str] | None = None, **kw: Any) -> Pass:
        out = super().run(data, stages, **kw)
        out.notes = spacing_note(self.name, self.spacing, _spacing_of(data))
        return out


class _PreSpec:
    """What :func:`glioma_nb.segment.transforms.preprocess` reads of a model."""

    def __init__(self, name: str, spacing: tuple[float, ...], orientation: str, normalise: str) -> None:
        self.name, self.spacing, self.orientation, self.normalise = name, spacing, orientation, normalise


def torchscript_yaml(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(path.glob("*.y*ml"))
    if len(found) != 1:
        raise SegmentationError(f"{path}: a TorchScript model folder needs exactly one YAML (found {[f.name for f in found]})")
    return found[0]
