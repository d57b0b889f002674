"""The ``monai-bundle`` kind: a MONAI bundle folder read with its own ``ConfigParser``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np

from glioma_nb.segment import examples, window
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.kinds.base import (INNERMOST, LABEL_PRESETS, Outputs, Pass, Segmenter, _spacing_of, meaning_of,
                                          modality_of, monai_stages, outputs_text, region_of, register, spacing_note,
                                          split_list)


def returns_text(probe: Mapping[str, Any]) -> str:
    if probe["channels"] == 1:
        return f"one channel with values {probe['values']}"
    return f"{probe['channels']} channels"


def bundle_outputs(probe: Mapping[str, Any], output_names: Sequence[str] | None) -> Outputs | None:
    """The label mapping of a MONAI bundle, read from what a test run returned (:meth:`BundleSegmenter.probe`)
    and the output ``channel_def`` of its ``metadata.json``; None when they do not settle it.

    A one-channel output is a label map: the value each network channel becomes when it alone is high
    means that channel's class (region channels WT/TC/ET: oedema, necrosis / non-enhancing core and
    enhancing, where each is the innermost region, as the model zoo's brats_mri_segmentation maps TC/WT/ET
    to BraTS 2018 labels 1/2/4). Without channel names, values 1/2/4 are BraTS 2018 and a lone 1 is whole
    tumour. Several channels that pass the network's channels through are region masks or classes, named
    by ``channel_def``."""
    names = list(output_names or [])
    n, lit = probe["network_channels"], {int(k): v for k, v in probe["lit"].items()}
    regions = [region_of(x) for x in names] if len(names) == n else []
    meanings = [meaning_of(x) for x in names] if len(names) == n else []
    as_regions = bool(regions) and None not in regions and bool({"wt", "tc"} & set(regions))
    if probe["channels"] == 1:
        value = {c: lit[c][0] for c in range(n)}
        if as_regions:
            if set(regions) == {"wt"}:
                return Outputs(labels={0: "background", value[regions.index("wt")]: "tumour"})
            return Outputs(labels={0: "background", **{value[c]: INNERMOST[r] for c, r in enumerate(regions)}})
        if meanings and None not in meanings:
            labels = {value[c]: m for c, m in enumerate(meanings)}
            return Outputs(labels={0: "background", **labels})
        seen = set(probe["values"] or []) - {0}
        if seen and seen <= {1, 2, 4} and 4 in seen:
            return Outputs(labels=dict(LABEL_PRESETS["brats2018"]))
        if seen == {1}:
            return Outputs(labels=dict(LABEL_PRESETS["wt"]))
        return None
    passes = probe["channels"] == n and all(lit[c] == [int(i == c) for i in range(n)] for c in range(n))
    if not passes:
        return None
    if as_regions:
        return Outputs(regions=tuple(regions))
    if meanings and None not in meanings:
        return Outputs(labels=dict(enumerate(meanings)))
    return None


def check_bundle_outputs(name: str, folder: Path, given: Outputs, probe: Mapping[str, Any],
                         fitting: Outputs | None) -> None:
    """Refuse a label mapping that cannot fit what the bundle returns, naming the one that fits."""
    why = ""
    if probe["channels"] == 1:
        if given.regions is not None:
            why = "region channels need one output channel per region, and its postprocessing makes a label map"
        else:
            unmapped = sorted(set(probe["values"] or []) - set(given.labels or {}) - {0})   # 0: background
            if unmapped:
                why = f"its value(s) {unmapped} have no meaning in it"
    elif given.regions is not None and len(given.regions) != probe["channels"]:
        why = f"it names {len(given.regions)} region channel(s)"
    elif given.labels is not None and max(given.labels) >= probe["channels"]:
        why = (f"the channel index (argmax) of {probe['channels']} channels is never "
               f"{[k for k in given.labels if k >= probe['channels']]}")
    if why:
        hint = (f"--labels {outputs_text(fitting)} fits (read from its metadata.json and a test run)" if fitting else
                "give the meaning of each value (--labels 1=necrosis,2=oedema,4=enhancing) or region channel "
                "(--labels regions:tc,wt,et)")
        raise SegmentationError(f"model {name}: bundle {folder} returns {returns_text(probe)} after its postprocessing, "
                                f"so --labels {outputs_text(given)} cannot fit: {why}; {hint}")



_SAVERS = ("SaveImaged", "SaveImage")
_INVERTERS = ("Invertd",)


def _compose_without(compose: Any, names: Sequence[str]) -> Any:
    from monai.transforms import Compose

    return Compose([t for t in getattr(compose, "transforms", [compose]) if type(t).__name__ not in names])


@register
class BundleSegmenter(Segmenter):
    """A MONAI bundle folder: its inference config's network, preprocessing, inferer and postprocessing."""

    kind = "monai-bundle"
    importable = True

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        return p.is_dir() and any((p / "configs" / f"inference.{e}").exists() for e in ("json", "yaml", "yml"))

    @classmethod
    def import_entry(cls, src: Path, name: str, modalities: list[str] | None, labels: Any,
                     options: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], Path]:
        """The channels from ``metadata.json`` and the label mapping from a test run (:func:`bundle_entry`)."""
        mods, outputs, settings = bundle_entry(src, name, modalities, labels, options.get("spacing"))
        return {"outputs": outputs, "bundle": settings}, mods, src

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], files: Path, outputs: Outputs, **common: Any) -> "BundleSegmenter":
        b = entry.get("bundle") or {}
        return cls(entry["name"], files, entry["modalities"], outputs, config=b.get("config"),
                   weights=b.get("weights", "models/model.pt"), spacing=b.get("spacing"), **common)

    @classmethod
    def example(cls, out: Path, **_: Any) -> Path:
        """Importable by name alone: its ``metadata.json`` names its channels."""
        return examples.bundle_model(out, 4, 4, inputs=[examples.CHANNEL_NAMES[m] for m in ("t1", "t1c", "t2", "flair")],
                                     outputs=("background", "necrosis", "edema", "enhancing"))

    def __init__(self, name: str, folder: Path, modalities: Sequence[str], outputs: Outputs,
                 config: str | None = None, weights: str = "models/model.pt", spacing: Sequence[float] | None = None,
                 layers: Sequence[str] | str = "default", device: str = "cpu", **kw: Any) -> None:
        import torch
        from monai.bundle import ConfigParser

        folder = Path(folder)
        cfg = Path(folder / config) if config else next(
            (folder / "configs" / f"inference.{e}" for e in ("json", "yaml", "yml")
             if (folder / "configs" / f"inference.{e}").exists()), folder / "configs" / "inference.json")
        if not cfg.exists():
            raise SegmentationError(f"model {name}: bundle config {cfg} not found; a MONAI bundle holds "
                                    "configs/inference.json (or .yaml) and models/model.pt")
        wpath = folder / weights
        if not wpath.exists():
            raise SegmentationError(f"model {name}: checkpoint {wpath} not found; put the bundle's trained weights "
                                    "there (models/model.pt) or set weights in its spec")
        parser = ConfigParser()
        parser.read_config(str(cfg))
        parser["bundle_root"] = str(folder)
        for key in ("network_def", "preprocessing", "inferer"):
            if key not in parser:
                raise SegmentationError(f"model {name}: {cfg} has no {key!r}; glioma-nb needs network_def, "
                                        "preprocessing and inferer (and optionally postprocessing)")
        self.parser = parser
        self.net = parser.get_parsed_content("network_def")
        state = torch.load(wpath, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
            state = state["model"]
        self.net.load_state_dict(state)
        self.net = self.net.to(device).eval()
        self.pre = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        self.post = parser.get_parsed_content("postprocessing") if "postprocessing" in parser else None
        self.image_key = next((k for k in getattr(self.pre.transforms[0], "keys", ("image",))), "image")
        super().__init__(name, modalities, outputs.classes, spacing or (1.0, 1.0, 1.0), layers=layers, **kw)
        self.outputs, self.folder, self.config_path, self.device = outputs, folder, cfg, device
        self.network_name = type(self.net).__name__
        self.patch = tuple(int(p) for p in getattr(self.inferer, "roi_size", ()) or ())

    def network(self) -> Any:
        return self.net

    def default_stages(self) -> dict[str, str]:
        return monai_stages(self.net, self.name)

    def _infer(self, image: Any, stages: Mapping[str, str] | None) -> tuple[Any, dict[str, Any]]:
        """The bundle's inferer on one preprocessed image: its logits, and the tapped layers (see
        :class:`glioma_nb.segment.window.TapModule`; a sliding-window inferer hands the tap each window's place)."""
        import torch
        from monai.inferers import SlidingWindowInferer

        x = torch.as_tensor(image)[None].to(self.device)
        net = self.forward_module(self.net, stages)
        tap = window.TapModule(net, stages) if stages else None
        windowed = isinstance(self.inferer, SlidingWindowInferer)
        if tap is not None and windowed:      # MONAI passes each window's coordinates to the tap (with_coord)
            tap.begin(x.shape[2:], self.inferer.roi_size, self.inferer.mode, self.inferer.sigma_scale)
        with_coord = getattr(self.inferer, "with_coord", False)
        try:
            if windowed:
                self.inferer.with_coord = tap is not None
            with torch.inference_mode():
                out = self.inferer(x, tap or net)
            maps = tap.maps() if tap is not None else {}
        finally:
            if windowed:
                self.inferer.with_coord = with_coord
            if tap is not None:
                tap.close()
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out[0].float().cpu(), maps

    def _post_raw(self, d: dict[str, Any], invert: bool) -> np.ndarray:
        """What the bundle's postprocessing returns (C, ...) (without saving; without ``Invertd`` unless ``invert``)."""
        if self.post is not None:
            post = _compose_without(self.post, _SAVERS if invert else (*_SAVERS, *_INVERTERS))
            d = post(d)
        return np.asarray(d["pred"])

    def _postprocess(self, d: dict[str, Any], invert: bool) -> np.ndarray:
        """The bundle's postprocessing -> internal classes."""
        p = self._post_raw(d, invert)
        if p.shape[0] == 1 and self.outputs.regions is None:
            return self.outputs.from_labels(np.rint(p[0]).astype(np.int64))
        if self.outputs.regions is not None:
            return self.outputs.from_regions(p > 0.5)
        return self.outputs.from_labels(p.argmax(0))

    def probe(self, n_channels: int, work: Path) -> dict[str, Any]:
        """Run the bundle once on a small synthetic case written to ``work`` (``n_channels`` NIfTI files):
        its preprocessing, inferer and postprocessing (with ``Invertd``, without saving), then its
        postprocessing alone on network outputs with one channel lit at a time. Returns what it gives:
        ``network_channels``, ``channels`` (after postprocessing), ``values`` (of a one-channel output:
        every value seen) and ``lit`` (network channel -> the postprocessed value of each output channel
        where only that network channel was high)."""
        import torch
        from monai.data import MetaTensor

        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        shape = (64, 64, 48)                      # divisible by 16: a whole-image inferer runs it as well
        grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij"))
        brain = (grid ** 2 / np.array([28, 28, 21]).reshape(3, 1, 1, 1) ** 2).sum(0) < 1
        lesion = ((grid - np.array([6, -4, 3]).reshape(3, 1, 1, 1)) ** 2).sum(0) < 9 ** 2
        files = []
        for c in range(n_channels):
            img = np.where(brain, 100 + 20 * c + rng.normal(0, 5, shape), 0) + np.where(lesion, 60 - 30 * (c % 2), 0)
            files.append(work / f"probe_{c}.nii.gz")
            nib.save(nib.Nifti1Image(img.astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0])), files[-1])
        try:
            d0 = self.pre({self.image_key: [str(f) for f in files] if n_channels > 1 else str(files[0])})
            img = d0[self.image_key]
            logits, _ = self._infer(img, None)
            meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
            full = self._post_raw({**d0, "pred": MetaTensor(logits, affine=getattr(img, "affine", None), meta=meta)},
                                  invert=True)
        except Exception as e:
            raise SegmentationError(f"model {self.name}: the bundle {self.config_path} failed on a small synthetic "
                                    f"{n_channels}-channel case ({type(e).__name__}: {e}); check that its "
                                    "preprocessing reads one NIfTI file per input channel") from e
        lit = {}
        centre = tuple(n // 2 for n in logits.shape[1:])
        box = tuple(slice(max(0, c - 4), c + 4) for c in centre)
        for c in range(int(logits.shape[0])):
            z = torch.full_like(logits, -20.0)
            z[(c, *box)] = 20.0
            out = self._post_raw({**d0, "pred": MetaTensor(z, affine=getattr(img, "affine", None), meta=meta)},
                                 invert=False)
            lit[c] = [int(round(float(v))) for v in out[(slice(None), *centre)]]
        values = sorted({int(v) for v in np.unique(np.rint(full))} | {v[0] for v in lit.values()}) \
            if full.shape[0] == 1 else None
        return {"network_channels": int(logits.shape[0]), "channels": int(full.shape[0]), "values": values,
                "lit": lit}

    def run(self, data: Mapping[str, Any], stages: Sequence[str] | None = None, *, overlap: float = 0.5,
            tta: bool = False, device: str = "cpu", amp: bool = False) -> Pass:
        """The bundle's preprocessing on the case's files (channel order of the model's modalities), its
        inferer through the tap, its postprocessing (``Invertd`` included when it has one) for the mask."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd, ResampleToMatch

        files = [str(f) for f in data["files"]]
        header = nib.load(files[0]).affine
        if not np.allclose(header, np.asarray(data["image"].affine), atol=1e-3):
            raise SegmentationError(f"case {data.get('case_id')}: the cohort's geometry override changes the voxel size or "
                                    f"orientation of {Path(files[0]).name}, but a MONAI bundle reads the files itself; "
                                    "write the corrected geometry into the NIfTI headers, or use another model kind")
        d0 = self.pre({self.image_key: files if len(files) > 1 else files[0]})
        img = d0[self.image_key]
        logits, maps = self._infer(img, self.taps(stages))
        meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
        pred = MetaTensor(logits, affine=getattr(img, "affine", None), meta=meta)
        model_classes = self._postprocess({**d0, "pred": pred.clone()}, invert=False)
        full = self._postprocess({**d0, "pred": pred.clone()}, invert=True)
        shape = tuple(data["image"].shape[1:])
        if full.shape != shape:   # the bundle does not invert: carry the model-grid mask back ourselves
            inv = Invertd(keys="pred", transform=self.pre, orig_keys=self.image_key, nearest_interp=True)(
                {**d0, "pred": MetaTensor(model_classes[None].astype(np.float32), affine=img.affine, meta=meta)})
            full = np.rint(np.asarray(inv["pred"][0])).astype(np.uint8)
        if full.shape != shape:
            raise SegmentationError(f"case {data.get('case_id')}: bundle {self.name} returned a mask of shape "
                                    f"{full.shape}, the images {shape}; add Invertd to its postprocessing")
        reference = None
        if "label" in data:
            lab = MetaTensor(np.asarray(data["label"], dtype=np.float32), affine=data["label"].affine)
            reference = np.rint(np.asarray(ResampleToMatch(mode="nearest")(lab, img_dst=img)[0])).astype(np.uint8)
        model_spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0))
        return Pass(classes=full, model_classes=model_classes, maps=maps, image=np.asarray(img, dtype=np.float32),
                    spacing=model_spacing, axial=(0, 1), reference=reference,
                    notes=spacing_note(self.name, model_spacing, _spacing_of(data))
                    if self.spacing != (1.0, 1.0, 1.0) else [])

    def stage_maps(self, image: np.ndarray, stages: Sequence[str], *, overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False) -> dict[str, Any]:
        return self._infer(np.ascontiguousarray(image), self.taps(stages))[1]


# ------------------------------------------------------------------------------------------------ TorchScript


def bundle_metadata(folder: Path) -> tuple[list[str] | None, list[str] | None]:
    """The input and output channel names of a MONAI bundle (``network_data_format`` of
    ``configs/metadata.json``, ``channel_def`` in channel order); None where it does not say."""
    meta = Path(folder) / "configs" / "metadata.json"
    fmt = (json.loads(meta.read_text()) if meta.exists() else {}).get("network_data_format") or {}

    def names(part: str) -> list[str] | None:
        first = next(iter((fmt.get(part) or {}).values()), {}) or {}
        ch = first.get("channel_def") or {}
        return [str(ch[k]) for k in sorted(ch, key=int)] if ch else None
    return names("inputs"), names("outputs")


def bundle_entry(src: Path, name: str, mods: list[str] | None, labels: Any,
                  spacing: Any) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """A MONAI bundle's modalities, label mapping and settings: the input channels from its ``metadata.json``
    (or ``--modalities``, which must agree with it), and the mapping from a test run of the bundle
    (:meth:`BundleSegmenter.probe`) with its output channel names: chosen when ``labels`` is not
    given, else checked (a mapping that cannot fit is refused, naming the one that fits)."""
    import tempfile

    inputs, outputs = bundle_metadata(src)
    meta = src / "configs" / "metadata.json"
    read = [modality_of(n) for n in inputs or []]
    if mods is None:
        if not inputs or None in read:
            raise SegmentationError(f"{meta}: " + (f"input channel names {inputs} are not all recognised modalities"
                                                   if inputs else "no input channel_def under network_data_format")
                                    + "; give --modalities in channel order (e.g. t1c,t1,t2,flair)")
        mods = [str(m) for m in read]
    elif inputs and None not in read and mods != read:
        raise SegmentationError(f"--modalities {','.join(mods)} disagrees with {meta}, whose input channels are "
                                f"{', '.join(inputs)}; leave --modalities out to use them, or correct metadata.json")
    settings = {"config": None, "weights": "models/model.pt",
                "spacing": [float(s) for s in split_list(spacing)] if spacing else None}
    given = Outputs.parse(labels) if labels is not None else None
    seg = BundleSegmenter(name, src, mods,
                                   given or Outputs(labels=LABEL_PRESETS["brats2021"]),
                                   config=None, weights=settings["weights"], spacing=settings["spacing"])
    seg.check_channels()
    with tempfile.TemporaryDirectory(prefix="glioma-nb-probe-") as work:
        probe = seg.probe(len(mods), Path(work))
    fitting = bundle_outputs(probe, outputs)
    if given is None:
        if fitting is None:
            raise SegmentationError(f"model {name}: bundle {src} returns {returns_text(probe)} after its "
                                    f"postprocessing, and the output channel names in {meta} "
                                    f"({outputs or 'none: no channel_def'}) do not say what they mean; give --labels "
                                    "(a preset: brats2018, brats2021, "
                                    "wt; value=meaning pairs such as 1=necrosis,2=oedema,4=enhancing; or "
                                    "regions:tc,wt,et)")
        given = fitting
    else:
        check_bundle_outputs(name, src, given, probe, fitting)
    settings["probe"] = probe
    return mods, given.to_dict(), settings
