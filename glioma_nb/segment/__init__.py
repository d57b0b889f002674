"""Tumour segmentation: MONAI 3D networks, training, cohort inference and overlap metrics.

``models``      model specifications (``models/<name>.yaml``), the network registry, shipped weights
``transforms``  MONAI dictionary transforms: load a case, orient, resample, crop, normalise, augment
``train``       Dice + cross-entropy training with checkpoint/resume and a loss/Dice log
``infer``       sliding-window inference with Gaussian blending, masks in the original image space,
                per-case caching and sanity flags
``metrics``     Dice and HD95 per region (MONAI metrics), per case and with bootstrap CIs
``postprocess`` post-processing rules of a predicted mask, chosen by CV on the training patients
"""
from __future__ import annotations


class SegmentationError(ValueError):
    """A case or a model cannot be used for segmentation; the message names the case, file and fix."""


def train_cli(model: str, out: str, iterations: int | None = None, device: str = "auto", bf16: bool = False,
              ship: bool = False, argv: list[str] | None = None) -> dict:
    """``glioma-nb segment-train``: train a model spec on its shared-data split; optionally ship it."""
    from pathlib import Path

    from glioma_nb.segment import models, train

    spec = models.load_spec(model)
    sources = train.sources_from_spec(spec, progress=True)
    settings = train.TrainSettings.from_spec(spec, iterations=iterations)
    summary = train.train(spec, sources, Path(out), settings, device=device, bf16=bf16)
    print(f"trained {spec.name}: final loss {summary['final_loss']:.4f} in {summary['seconds'] / 60:.1f} min")
    if ship:
        dev = models.resolve_device(device)
        net = models.load_model(spec, Path(out) / "weights.pt", device=dev)
        per_case = train.evaluate_held_out(spec, net, sources, Path(out), device=dev)
        per_case.to_csv(Path(out) / "held_out_scores.csv", index=False)
        command = "python -m glioma_nb " + " ".join(argv or [])
        card = train.ship(spec, Path(out), per_case, command)
        print(f"shipped {spec.weights_path.name} with model card {card.name}")
    return summary


def postprocess_cv_cli(model: str, out: str, folds: int = 2, cohort: str | None = None, iterations: int | None = None,
                       device: str = "auto", argv: list[str] | None = None) -> str:
    """``glioma-nb segment-postprocess-cv``: the out-of-fold Dice of every post-processing rule and the
    rule chosen (``<out>/oof_scores.csv``, ``<out>/postprocess_choice.json``)."""
    from pathlib import Path

    from glioma_nb.segment import models, postprocess

    spec = models.load_spec(model)
    oof = postprocess.cross_validate(spec, Path(out), folds=folds, cohort=cohort, iterations=iterations, device=device)
    rule, summary = postprocess.choose(oof)
    meta = {"model": spec.name, "folds": folds, "iterations": iterations or spec.train.get("iterations"),
            "cases": int(oof["case_id"].nunique()), "command": "python -m glioma_nb " + " ".join(argv or [])}
    path = postprocess.write_choice(Path(out), rule, summary, meta)
    print(summary.round(4).to_string())
    print(f"chosen: {rule} (set postprocess: {rule} in the model spec); {path}")
    return rule
