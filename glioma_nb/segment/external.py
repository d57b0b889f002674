"""External model kinds: nnU-Net v2 trained-model folders, MONAI bundles and TorchScript modules.

See :mod:`glioma_nb.segment.kinds` for the interface. Each class is built from a registered model's
spec (:mod:`glioma_nb.segment.registry`) and the folder that holds the user's files.
"""
from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np

from glioma_nb.segment import window
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.kinds import LABEL_PRESETS, Outputs, Pass, Segmenter, WindowSegmenter, meaning_of, monai_stages


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


def nnunet_outputs(dataset_json: Mapping[str, Any], given: Any = None) -> Outputs:
    """The label mapping of an nnU-Net dataset: ``given`` (a preset, ``1=necrosis,...``), or read from the
    names of ``dataset.json``'s labels. A region-based dataset (labels as lists, ``regions_class_order``)
    exports, for its i-th region, the value ``regions_class_order[i]`` where that region is the innermost
    one; with BraTS's nested regions (whole tumour > tumour core > enhancing) those values are oedema,
    necrosis / non-enhancing core and enhancing."""
    if given:
        return Outputs.parse(given)
    labels = dict(dataset_json.get("labels") or {})
    out: dict[int, str] = {}
    unknown = []
    regions = [(n, v) for n, v in labels.items() if n.lower() != "background"]
    if "regions_class_order" in dataset_json:
        for (name, _), value in zip(regions, dataset_json["regions_class_order"]):
            meaning = INNERMOST.get(region_of(name) or "")
            if meaning is None:
                unknown.append(name)
            else:
                out[int(value)] = meaning
        out[0] = "background"
    else:
        for name, value in labels.items():
            meaning = meaning_of(name)
            if meaning is None:
                unknown.append(name)
            else:
                out[int(value)] = meaning
    if unknown or not [v for v in out.values() if v != "background"]:
        raise SegmentationError(f"dataset.json labels {labels}: no label mapping for {unknown or 'any tumour class'}; "
                                "give one when importing (--labels brats2021, brats2018, wt or "
                                "value=meaning pairs such as 1=oedema,2=necrosis,3=enhancing)")
    return Outputs(labels=out)


def _predictor_class() -> Any:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class TappedPredictor(nnUNetPredictor):
        """nnUNetPredictor whose network calls also record the signature layers (see module docstring)."""

        tap_stages: dict[str, str] = {}

        def _internal_get_sliding_window_slicers(self, image_size: Any) -> Any:
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            self._tap_slicers, self._tap_size, self._tap_i = slicers, tuple(image_size), 0
            self._tap_sum: dict[str, Any] = {}
            self._tap_n: dict[str, Any] = {}
            return slicers

        def _internal_maybe_mirror_and_predict(self, x: Any) -> Any:
            import torch

            if not self.tap_stages:
                return super()._internal_maybe_mirror_and_predict(x)
            hooks = window.Hooks(self.network, self.tap_stages)
            try:
                # nnUNetPredictor._internal_maybe_mirror_and_predict, with the layer outputs averaged alike
                mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
                prediction = self.network(x)
                maps = {s: a.float().clone() for s, a in hooks.acts.items()}
                if mirror_axes is not None:
                    assert max(mirror_axes) <= x.ndim - 3, 'mirror_axes does not match the dimension of the input!'
                    mirror_axes = [m + 2 for m in mirror_axes]
                    axes_combinations = [c for i in range(len(mirror_axes))
                                         for c in itertools.combinations(mirror_axes, i + 1)]
                    for axes in axes_combinations:
                        prediction += torch.flip(self.network(torch.flip(x, axes)), axes)
                        for s, a in hooks.acts.items():
                            maps[s] += torch.flip(a.float(), axes)
                    prediction /= (len(axes_combinations) + 1)
                    for s in maps:
                        maps[s] /= (len(axes_combinations) + 1)
            finally:
                hooks.close()
            self._stitch(maps, x.shape[2:])
            return prediction

        def _stitch(self, maps: Mapping[str, Any], patch: Sequence[int]) -> None:
            """Place one patch's layer maps on each layer's grid (nearest stage voxel of the patch's start)."""
            import torch

            if self._tap_i == len(self._tap_slicers):   # nnU-Net redid the window (a GPU out of memory: on CPU)
                self._tap_i, self._tap_sum, self._tap_n = 0, {}, {}
            sl = self._tap_slicers[self._tap_i]
            self._tap_i += 1
            starts = [s.start for s in sl[1:]]
            for s, a in maps.items():
                a = a[0].cpu()
                f = [p / q for p, q in zip(patch, a.shape[1:])]
                if s not in self._tap_sum:
                    shape = [int(np.ceil(n / fi)) for n, fi in zip(self._tap_size, f)]
                    self._tap_sum[s] = torch.zeros((a.shape[0], *shape), dtype=torch.float32)
                    self._tap_n[s] = torch.zeros(shape, dtype=torch.float32)
                pos = [min(int(round(st / fi)), n - q) for st, fi, n, q in
                       zip(starts, f, self._tap_sum[s].shape[1:], a.shape[1:])]
                idx = tuple(slice(p, p + q) for p, q in zip(pos, a.shape[1:]))
                self._tap_sum[s][(slice(None), *idx)] += a
                self._tap_n[s][idx] += 1

        def tapped_maps(self, data_shape: Sequence[int], padded_revert: Sequence[Any]) -> dict[str, Any]:
            """The stitched maps, padding removed (scaled to each layer's grid)."""
            out = {}
            for s, total in self._tap_sum.items():
                m = total / self._tap_n[s].clamp(min=1)
                f = [n / q for n, q in zip(self._tap_size, m.shape[1:])]
                idx = tuple(slice(int(round((r.start or 0) / fi)), int(round((r.start or 0) / fi)) +
                                  max(1, int(round(n / fi)))) for r, n, fi in zip(padded_revert, data_shape, f))
                out[s] = m[(slice(None), *idx)]
            return out

    return TappedPredictor


def nnunet_stages(net: Any, name: str = "") -> dict[str, str]:
    """The default signature layers of nnU-Net's PlainConvUNet / ResidualEncoderUNet: every encoder stage (the
    deepest is the bottleneck) and every decoder stage (``dec1`` at full resolution)."""
    enc = getattr(getattr(net, "encoder", None), "stages", None)
    dec = getattr(getattr(net, "decoder", None), "stages", None)
    if enc is None or dec is None:
        raise SegmentationError(f"model {name}: no default signature layers for {type(net).__name__}; "
                                "list them with --layers (module names of the network)")
    n = len(enc)
    out = {f"enc{i + 1}": f"encoder.stages.{i}" for i in range(n - 1)}
    out["bottleneck"] = f"encoder.stages.{n - 1}"
    out.update({f"dec{len(dec) - j}": f"decoder.stages.{j}" for j in range(len(dec))})
    return out


class NnUNetSegmenter(Segmenter):
    """A trained nnU-Net v2 model folder run by nnunetv2's own predictor (see the module docstring of kinds)."""

    kind = "nnunet-v2"

    def __init__(self, name: str, folder: Path, modalities: Sequence[str], outputs: Outputs,
                 folds: Sequence[Any] | None = None, checkpoint: str = "checkpoint_final.pth", mirroring: bool = True,
                 tile_step_size: float = 0.5, layers: Sequence[str] | str = "default", device: str = "cpu",
                 **kw: Any) -> None:
        import torch

        folder = Path(folder)
        for f in ("dataset.json", "plans.json"):
            if not (folder / f).exists():
                raise SegmentationError(f"model {name}: {folder / f} is missing; an nnU-Net v2 trained-model folder "
                                        "holds dataset.json, plans.json and fold_*/checkpoint_final.pth")
        folds = list(folds) if folds else sorted(p.name[5:] for p in folder.glob("fold_*")
                                                 if (p / checkpoint).exists())
        missing = [str(folder / f"fold_{f}" / checkpoint) for f in folds if not (folder / f"fold_{f}" / checkpoint).exists()]
        if not folds or missing:
            raise SegmentationError(f"model {name}: checkpoint {missing[0] if missing else folder / 'fold_*' / checkpoint} "
                                    "not found; copy the trained fold folders (fold_<k>/" + checkpoint + ") into the "
                                    "model folder and import it again, or set folds / checkpoint in its spec")
        with contextlib.redirect_stdout(io.StringIO()):   # its notes on CPU use go to stdout
            self.predictor = _predictor_class()(tile_step_size=tile_step_size, use_gaussian=True,
                                                use_mirroring=mirroring, perform_everything_on_device=device != "cpu",
                                                device=torch.device(device), verbose=False, allow_tqdm=False)
            self.predictor.initialize_from_trained_model_folder(
                str(folder), [int(f) if str(f).isdigit() else f for f in folds], checkpoint_name=checkpoint)
        cm = self.predictor.configuration_manager
        super().__init__(name, modalities, outputs.classes, cm.spacing, layers=layers, **kw)
        self.outputs, self.folder, self.folds = outputs, folder, folds
        self.network_name = cm.network_arch_class_name.rsplit(".", 1)[-1]
        self.patch = tuple(int(p) for p in cm.patch_size)
        n_channels = len(self.predictor.dataset_json.get("channel_names") or self.predictor.dataset_json.get("modality", {}))
        if n_channels != len(self.modalities):
            raise SegmentationError(f"model {name}: {folder / 'dataset.json'} has {n_channels} channel(s) "
                                    f"{self.predictor.dataset_json.get('channel_names')} but the model declares "
                                    f"{len(self.modalities)} modalities {list(self.modalities)}; give one modality "
                                    "per channel, in channel order (--modalities)")

    def network(self) -> Any:
        return self.predictor.network

    def input_channels(self) -> int | None:
        return len(self.modalities)

    def default_stages(self) -> dict[str, str]:
        return nnunet_stages(self.predictor.network, self.name)

    def _axes(self) -> tuple[tuple[int, int], list[int]]:
        """The axial plane on the model grid: nnU-Net's arrays are (z, y, x) of the image, transposed by
        its plans' transpose_forward."""
        t = list(self.predictor.plans_manager.transpose_forward)
        axial = tuple(i for i, a in enumerate(t) if a in (1, 2))
        return (axial[0], axial[1]), t

    def _logits(self, data: Any, stages: Mapping[str, str] | None) -> tuple[Any, dict[str, Any]]:
        """nnUNetPredictor.predict_logits_from_preprocessed_data with the tap: per fold, then the mean."""
        import torch
        from acvl_utils.cropping_and_padding.padding import pad_nd_image

        pred = self.predictor
        pred.tap_stages = dict(stages or {})
        logits, maps = None, {}
        try:
            with torch.inference_mode():
                for params in pred.list_of_parameters:
                    pred.network.load_state_dict(params)
                    out = pred.predict_sliding_window_return_logits(data).to("cpu")
                    logits = out if logits is None else logits + out
                    if stages:
                        _, revert = pad_nd_image(data[:1], pred.configuration_manager.patch_size, "constant",
                                                 {"value": 0}, True, None)
                        for s, m in pred.tapped_maps(data.shape[1:], revert[1:]).items():
                            maps[s] = m if s not in maps else maps[s] + m
                k = len(pred.list_of_parameters)
                if k > 1:     # as predict_logits_from_preprocessed_data: the mean over folds
                    logits /= k
                    maps = {s: m / k for s, m in maps.items()}
        finally:
            pred.tap_stages = {}
        return logits, maps

    def _model_classes(self, logits: Any) -> np.ndarray:
        seg = self.predictor.label_manager.convert_logits_to_segmentation(logits)
        return self.outputs.from_labels(np.asarray(seg))

    def run(self, data: Mapping[str, Any], stages: Sequence[str] | None = None, *, overlap: float = 0.5,
            tta: bool = False, device: str = "cpu", amp: bool = False) -> Pass:
        """nnUNetPredictor.predict_single_npy_array on the case's arrays in SimpleITK's (z, y, x) order and
        spacing (what nnU-Net's default reader gives for the same files)."""
        import torch
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        pred = self.predictor
        image = np.asarray(data["image"], dtype=np.float32).transpose(0, 3, 2, 1)
        spacing = _spacing_of(data)
        props = {"spacing": [float(s) for s in spacing[::-1]]}
        ref = None
        if "label" in data:
            ref = np.asarray(data["label"], dtype=np.float32).transpose(0, 3, 2, 1)
        pre = pred.configuration_manager.preprocessor_class(verbose=False)
        pdata, pseg, props = pre.run_case_npy(image, ref, props, pred.plans_manager, pred.configuration_manager,
                                              pred.dataset_json)
        logits, maps = self._logits(torch.from_numpy(pdata), self.taps(stages))
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, pred.plans_manager, pred.configuration_manager, pred.label_manager, props)
        classes = self.outputs.from_labels(np.asarray(seg).transpose(2, 1, 0))
        axial, _ = self._axes()
        reference = np.clip(np.asarray(pseg[0]), 0, None).astype(np.uint8) if ref is not None else None
        return Pass(classes=classes, model_classes=self._model_classes(logits), maps=maps, image=pdata,
                    spacing=tuple(float(s) for s in pred.configuration_manager.spacing), axial=axial,
                    reference=reference,
                    notes=spacing_note(self.name, self.spacing, spacing))

    def stage_maps(self, image: np.ndarray, stages: Sequence[str], *, overlap: float = 0.5, tta: bool = False,
                   device: str = "cpu", amp: bool = False) -> dict[str, Any]:
        import torch

        _, maps = self._logits(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), self.taps(stages))
        return maps


# ------------------------------------------------------------------------------------------------ MONAI bundle


def outputs_text(outputs: Outputs) -> str:
    """``outputs`` as a ``--labels`` argument (a preset name where it is one)."""
    if outputs.regions is not None:
        return "regions:" + ",".join(outputs.regions)
    preset = next((k for k, v in LABEL_PRESETS.items() if v == outputs.labels), None)
    return preset or ",".join(f"{k}={v}" for k, v in sorted((outputs.labels or {}).items()) if v != "background")


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
            why = f"region channels need one output channel per region, and its postprocessing makes a label map"
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


class BundleSegmenter(Segmenter):
    """A MONAI bundle folder: its inference config's network, preprocessing, inferer and postprocessing."""

    kind = "monai-bundle"

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
        tap = window.TapModule(self.net, stages) if stages else None
        windowed = isinstance(self.inferer, SlidingWindowInferer)
        if tap is not None and windowed:      # MONAI passes each window's coordinates to the tap (with_coord)
            tap.begin(x.shape[2:], self.inferer.roi_size, self.inferer.mode, self.inferer.sigma_scale)
        with_coord = getattr(self.inferer, "with_coord", False)
        try:
            if windowed:
                self.inferer.with_coord = tap is not None
            with torch.inference_mode():
                out = self.inferer(x, tap or self.net)
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


class TorchScriptSegmenter(WindowSegmenter):
    """A scripted module with a YAML (see :func:`glioma_nb.segment.registry.load`): MONAI transforms, sliding
    window; its signature layers are the extra outputs the module returns after the logits."""

    kind = "torchscript"

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
