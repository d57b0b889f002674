"""The model workshop as plain functions (what ``glioma-nb segment-train | segment-compare | segment-rescore |
segment-postprocess-cv`` run, callable from a notebook): train a spec (or k-fold cross-validate it) and ship it,
compare a cross-validated spec with the shipped model it would replace, score a shipped model's card cases again,
choose a post-processing rule out of fold. Each prints what it did and returns its result."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from glioma_nb import paths
from glioma_nb.segment import metrics, models, postprocess, train
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.zoo import cards, cv, evaluate, postprocess_cv
from glioma_nb.zoo import ship as shipping


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """``glioma-nb segment-train ... --nproc N`` as the torchrun command that runs it in N processes (one machine;
    ``--nproc`` removed from the arguments each process gets)."""
    rest = [a for a in argv if not a.startswith("--nproc=")]
    if "--nproc" in rest:
        at = rest.index("--nproc")
        del rest[at:at + 2]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "glioma_nb", *rest]


def segment_train(model: str, out: str, iterations: int | None = None, device: str = "auto", bf16: bool | None = None,
                  ship: bool = False, argv: list[str] | None = None, nproc: int = 1, folds: int | None = None,
                  fold: list[int] | None = None) -> dict | int:
    """``glioma-nb segment-train``: train a model spec on its shared-data split; optionally ship it. ``nproc`` > 1
    runs the same command under torchrun in that many processes (DDP; see :func:`train.train`). ``folds``: k-fold
    cross-validation over all the spec's cases (:func:`cv.cross_validate`; ``fold``: train only these folds). ``bf16``:
    None (bfloat16 autocast where the CPU has it, said in the card), True, or False (float32)."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        cmd = torchrun_command(nproc, argv or [])
        print("running: " + " ".join(cmd[1:]), flush=True)
        return subprocess.run(cmd, check=False).returncode
    spec = models.load_spec(model)
    settings = train.TrainSettings.from_spec(spec, iterations=iterations)
    if folds:
        return _segment_train_cv(spec, Path(out), folds, settings, device, bf16, ship, fold, argv)
    sources = train.sources_from_spec(spec, progress=True)
    with train.ddp_session(device):
        summary = train.train(spec, sources, Path(out), settings, device=device, bf16=bf16)
        lead = train.world()[0] == 0
    if not lead:
        return summary
    print(f"trained {spec.name}: final loss {summary['final_loss']:.4f} in {summary['seconds'] / 60:.1f} min"
          + (f" on {summary['processes']} processes" if summary["processes"] > 1 else ""))
    if ship:
        dev = models.resolve_device(device)
        net = models.load_model(spec, Path(out) / "weights.pt", device=dev)
        per_case = evaluate.evaluate_held_out(spec, net, sources, Path(out), device=dev)
        per_case.to_csv(Path(out) / "held_out_scores.csv", index=False)
        command = "python -m glioma_nb " + " ".join(argv or [])
        card = shipping.ship(spec, Path(out), command, per_case=per_case)
        print(f"shipped {spec.weights_path.name} with model card {card.name}")
    return summary


def _segment_train_cv(spec: models.ModelSpec, out: Path, folds: int, settings: train.TrainSettings, device: str,
                      bf16: bool | None, ship: bool, only: list[int] | None, argv: list[str] | None) -> dict:
    if only is not None:
        bad = [f for f in only if not 0 <= f < folds]
        if bad:
            raise SegmentationError(f"--fold {bad}: folds are 0..{folds - 1}")
        if ship:
            raise SegmentationError("--ship needs every fold; leave out --fold")
    with train.ddp_session(device):
        if train.world()[1] > 1:      # torchrun: every process trains; rank 0 alone predicts and scores
            cv.train_folds(spec, out, folds, settings, device=models.resolve_device(device), bf16=bf16, only=only)
            if train.world()[0] != 0:
                return {"model": spec.name}
    res = cv.cross_validate(spec, out, folds, settings, device=device, bf16=bf16, only=only)
    summary = cv.read_table(out, "oof_summary")
    print(f"{spec.name}: {folds}-fold cross-validation, {res['n_cases']} cases out of fold"
          + (f" (folds {only} only)" if only is not None else "") + f"; chosen {res['variant']}, post-processing {res['rule']}")
    print(summary.round(3).to_string(index=False))
    if ship:
        card = shipping.ship(spec, out, "python -m glioma_nb " + " ".join(argv or []))
        print(f"shipped {folds} fold models of {spec.name} with model card {card.name}")
    return res


def segment_compare(model: str, out: str, against: str, metric: str = "dice_WT", device: str = "auto",
                    card: bool = False, argv: list[str] | None = None) -> Any:
    """``glioma-nb segment-compare``: a cross-validated spec (its CV folder ``out``) against a shipped model on the
    cases the shipped model never saw (:func:`cv.compare_with`); prints the paired comparison and the curve."""
    spec, base = models.load_spec(model), models.load_spec(against)
    summary, _ = cv.compare_with(spec, Path(out), base, metric=metric, device=models.resolve_device(device))
    g = cv.curve_gain(cv.training_curve(Path(out)))
    print(f"{spec.name} (out of fold) vs {base.name} (as shipped), {metric}, on the cases {base.name} never saw:")
    print(summary.round(4).to_string(index=False))
    print(f"training curve: fold-mean held-out Dice {g['previous']:.3f} -> {g['last']:.3f} over the "
          f"last interval (gain {g['gain']:+.3f} at {g['iteration']:.0f} iterations)")
    if card:
        path = cards.write_unshipped_card(spec, Path(out), "python -m glioma_nb " + " ".join(argv or []))
        print(f"wrote {paths.terminal_path(path)} (not shipped: no weights copied)")
    return summary


def segment_postprocess_cv(model: str, out: str, folds: int = 2, cohort: str | None = None, iterations: int | None = None,
                       device: str = "auto", argv: list[str] | None = None) -> str:
    """``glioma-nb segment-postprocess-cv``: the out-of-fold Dice of every post-processing rule and the
    rule chosen (``<out>/oof_scores.csv``, ``<out>/postprocess_choice.json``)."""
    spec = models.load_spec(model)
    oof = postprocess_cv.cross_validate_rules(spec, Path(out), folds=folds, cohort=cohort, iterations=iterations, device=device)
    rule, summary = postprocess.choose(oof)
    meta = {"model": spec.name, "folds": folds, "iterations": iterations or spec.train.get("iterations"),
            "cases": int(oof["case_id"].nunique()), "command": "python -m glioma_nb " + " ".join(argv or [])}
    path = postprocess.write_choice(Path(out), rule, summary, meta)
    print(summary.round(4).to_string())
    print(f"chosen: {rule} (set postprocess: {rule} in the model spec); {path}")
    return rule


def segment_rescore(model: str, out: str = "train/rescore", device: str = "auto") -> pd.DataFrame:
    """``glioma-nb segment-rescore``: a shipped model's card cases scored again with today's metrics (a
    cross-validated ensemble's out-of-fold cases, each by its fold model; or a single network's held-out cases);
    rewrites the card's metric tables and ``<name>.volumes.csv`` (predicted and reference whole-tumour volumes of
    the same cases). Returns the per-case scores."""
    spec = models.load_spec(model)
    dev = models.resolve_device(device)
    new = shipping.rescore(spec, Path(out) / spec.name, device=dev)
    vols = shipping.card_volumes(spec, Path(out) / "volumes", device=dev)
    print(f"{spec.name}: whole-tumour volumes of {len(vols)} card cases written to {spec.name}.volumes.csv")
    if spec.ensemble:
        print(f"{spec.name}: {len(new)} out-of-fold cases scored again; wrote {spec.name}.oof.csv and its card")
    else:
        print(f"{spec.name}: {new['case_id'].nunique()} held-out cases scored again; rewrote its card")
    for keys, part in new.groupby(["cohort", *(["postprocess"] if "postprocess" in new else [])], sort=False):
        print(keys)
        print(metrics.summary_table(metrics.summarise(part)).to_string(index=False))
    return new
