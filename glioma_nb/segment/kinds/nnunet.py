"""The ``nnunet-v2`` kind: an nnU-Net v2 trained-model folder run through nnunetv2's own predictor."""
from __future__ import annotations

import contextlib
import io
import itertools
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from glioma_nb import config, synthetic
from glioma_nb import io as cohort_io
from glioma_nb.segment import examples, window
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.kinds.base import (INNERMOST, Outputs, Pass, Segmenter, _spacing_of, meaning_of, modality_of,
                                          region_of, register, spacing_note, split_list)


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


@register
class NnUNetSegmenter(Segmenter):
    """A trained nnU-Net v2 model folder run by nnunetv2's own predictor (see the module docstring of kinds)."""

    kind = "nnunet-v2"
    importable = True

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        return p.is_dir() and (p / "plans.json").exists() and (p / "dataset.json").exists()

    @classmethod
    def import_entry(cls, src: Path, name: str, modalities: list[str] | None, labels: Any,
                     options: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], Path]:
        """The channels from ``dataset.json`` (or ``--modalities``), its labels or regions, the folds and
        checkpoint, nnUNetPredictor's defaults for mirroring and the tile step."""
        ds = json.loads((src / "dataset.json").read_text())
        channels = ds.get("channel_names") or ds.get("modality") or {}
        mods = modalities
        if mods is None:
            guessed = [modality_of(channels[k]) for k in sorted(channels, key=int)]
            if None in guessed:
                raise SegmentationError(f"{src / 'dataset.json'}: channel names {channels} are not all recognised "
                                        "modalities; give --modalities in channel order (e.g. t1,t1c,t2,flair)")
            mods = [str(m) for m in guessed]
        return {"outputs": nnunet_outputs(ds, labels).to_dict(),
                "nnunet": {"folds": split_list(options.get("folds")),
                           "checkpoint": options.get("checkpoint") or "checkpoint_final.pth",
                           "mirroring": True, "tile_step_size": 0.5}}, mods, src   # nnUNetPredictor's defaults

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], files: Path, outputs: Outputs, **common: Any) -> "NnUNetSegmenter":
        nn = entry.get("nnunet") or {}
        return cls(entry["name"], files, entry["modalities"], outputs, folds=nn.get("folds"),
                   checkpoint=nn.get("checkpoint", "checkpoint_final.pth"), mirroring=nn.get("mirroring", True),
                   tile_step_size=nn.get("tile_step_size", 0.5), **common)

    @classmethod
    def example(cls, out: Path, cohort: str = "synthetic", n_cases: int = 8, iterations: int = 300,
                spacing: str = "2,2,2", patch: str = "64,64,64", **_: Any) -> Path:
        """Planned by nnunetv2 on, and fitted to, the first ``n_cases`` labelled cases of ``cohort`` (named in
        ``out/trained_on.json``, which ``models import`` reads so those cases are not scored as unseen)."""
        cfg = config.resolve_config(cohort)
        synthetic.ensure_cohort_data(cfg, progress=False)
        ch = cohort_io.load_cohort(cfg, progress=False)
        if ch.scheme is None or not set(examples.CHANNEL_NAMES) <= set(ch.modalities):
            raise SegmentationError(f"cohort {cohort}: the nnU-Net example needs T1, T1c, T2, FLAIR and label maps")
        used = [c for c in ch.cases if c.label is not None][:n_cases]
        classes = "brats" if ch.scheme.brats else "wt"
        examples.nnunet_model(out, [{"images": c.images, "label": c.label} for c in used], tuple(examples.CHANNEL_NAMES),
                              classes=classes, scheme=ch.scheme.name, folds=(0,), features=(16, 32, 64, 128),
                              iterations=iterations, spacing=[float(v) for v in spacing.split(",")],
                              patch=[int(v) for v in patch.split(",")])
        (out / "trained_on.json").write_text(json.dumps({"cohort": cohort, "cases": [c.case_id for c in used]}, indent=1))
        return out

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
                for i, params in enumerate(pred.list_of_parameters):
                    pred.network.load_state_dict(params)
                    net = pred.network
                    pred.network = self.forward_module(net, stages, slot=f"fold {i}")   # the fold's OpenVINO stand-in
                    try:
                        out = pred.predict_sliding_window_return_logits(data).to("cpu")
                    finally:
                        pred.network = net
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
