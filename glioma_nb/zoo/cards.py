"""Model cards: the Markdown a shipped (or compared) network carries beside its weights, made from its training
summary, its held-out or out-of-fold tables and the choices of its cross-validation (nothing in it by hand).

``single_card``      one network trained on a split: recipe, training and held-out cases, held-out metrics
``ensemble_card``    a k-fold cross-validation shipped as its fold models: folds, rules, out-of-fold metrics,
                     ablation, training curve, the comparison with the model it would replace
``split_held_out`` / ``rewrite_oof_metrics``   a shipped card's metric tables made again (``segment-rescore``)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from glioma_nb import plotting, provenance
from glioma_nb.segment import metrics, models
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.zoo.cv import curve_gain, finished_cv, oof_per_case, read_table, training_curve


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (numbers to 3 decimals)."""
    fmt = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns),
                      *("| " + " | ".join(r) + " |" for r in fmt)])


def _case_lines(ids: list[str]) -> str:
    by: dict[str, list[str]] = {}
    for x in ids:
        cohort, cid = x.split("/", 1)
        by.setdefault(cohort, []).append(cid)
    return "\n".join(f"- {cohort} ({len(v)}): {', '.join(v)}" for cohort, v in by.items()) or "- none"


def held_out_section(spec: models.ModelSpec, per_case: pd.DataFrame, note: str = "") -> str:
    """The ``## Held-out metrics`` section of a model card (``per_case``: :func:`evaluate_held_out`): BraTS's
    metrics, global and lesion-wise, per cohort and post-processing, and the per-case table."""
    table = []
    for (cohort, rule), part in per_case.groupby(["cohort", "postprocess"], sort=False):
        for r in metrics.summarise(part).itertuples():
            label = f"lesion-wise {r.metric}" if r.level == "lesion-wise" else r.metric
            table.append(f"| {cohort} | {rule} | {r.region} | {label} | {r.mean:.3f} | [{r.ci_low:.3f}, "
                         f"{r.ci_high:.3f}] | {r.median:.3f} | {r.n} |")
    wide = per_case[[c for c in per_case.columns if c in ("cohort", "case_id")]
                    + metrics.score_columns(per_case.columns, metrics.CARD_METRICS)
                    + ["postprocess"]]
    if spec.postprocess != "none":   # one row per case: the raw scores and those with the rule
        raw, post = (wide[wide["postprocess"] == r].drop(columns="postprocess") for r in ("none", spec.postprocess))
        wide = raw.merge(post, on=["cohort", "case_id"], suffixes=("", f" ({spec.postprocess})"))
    else:
        wide = wide.drop(columns="postprocess")
    return f"""## Held-out metrics (original image space; sliding window, overlap 0.5, no TTA; 95% bootstrap CI over cases)
Rows `none` are the network's masks; rows with a rule are the same masks post-processed (what inference writes).
{note}
| cohort | post-processing | region | metric | mean | 95% CI | median | n |
|---|---|---|---|---|---|---|---|
{chr(10).join(table)}

Per case:

{markdown_table(wide)}
"""


def single_card(spec: models.ModelSpec, summary: dict[str, Any], per_case: pd.DataFrame, command: str,
                sha: str, size_mb: float) -> str:
    """The model card of one network trained on a split (``summary``: its ``train_summary.json``;
    ``per_case``: :func:`glioma_nb.zoo.evaluate.evaluate_held_out`, one row per case and rule)."""
    cv = spec.postprocess_cv
    post_line = (f"`{spec.postprocess}` (`postprocess` in the model spec)" +
                 (f", chosen by {cv.get('folds')}-fold cross-validation on {cv.get('cases')} training patients of "
                  f"{cv.get('cohort')} only (fold models of {cv.get('iterations')} iterations; the held-out patients "
                  f"were neither trained on nor predicted): mean out-of-fold WT Dice {cv.get('dice')}. "
                  f"Reproduce: `{cv.get('command')}`" if cv else ""))

    vers = provenance.package_versions(["torch", "monai"])
    return f"""# Model card: {spec.name}

{spec.description}

## Weights
- file: `glioma_nb/segment/models/{spec.name}.pt` ({size_mb:.1f} MB, float16 state dict, loaded as float32)
- sha256: {sha}
- network: `{spec.network}` ({summary['n_parameters']:,} parameters)
- inputs: {list(spec.modalities)} (channels in this order), resampled to {list(spec.spacing)} mm (RAS),
  cropped to non-zero voxels, z-scored per channel over non-zero voxels; patch {list(spec.patch)}
- outputs: {models.CLASS_SETS[spec.classes]} (softmax)

## Training data (../shared/data only)
{_case_lines(summary['train_cases'])}

## Held out (never trained on; scored for the log only, no checkpoint selection)
{_case_lines(summary['held_out_cases'])}

## Parameters
- {summary['iterations']} iterations, batch {summary['settings']['batch_cases']} case(s) x {summary['settings']['samples_per_case']} patches,
  AdamW lr {summary['settings']['lr']} (poly decay), weight decay {summary['settings']['weight_decay']}, Dice + cross-entropy, seed {summary['settings']['seed']}
- augmentation: label-balanced patches, flips on 3 axes, rotation/scaling (p 0.3), intensity scale/shift, noise
- trained on {summary['device']}{' (bf16 autocast)' if summary['bf16'] else ''} in {summary['seconds'] / 60:.1f} min; torch {vers.get('torch')}, monai {vers.get('monai')}

## Post-processing
{post_line}

{held_out_section(spec, per_case)}
## Reproduce
```
{command}
```
The run is seeded; on another machine (or on GPU) floating-point differences give slightly different
weights and a different sha256, with metrics within noise.
"""


def split_held_out(spec: models.ModelSpec) -> tuple[str, str]:
    """A shipped single-network card cut around its ``## Held-out metrics`` section: (what comes before, what
    comes from ``## Reproduce`` on); a card of another layout is refused before anything is scored."""
    text = spec.card_path.read_text()
    head, sep, rest = text.partition("## Held-out metrics")
    _, sep2, tail = rest.partition("\n## Reproduce")
    if not (sep and sep2):
        raise SegmentationError(f"{spec.card_path.name} has not the layout zoo.cards.single_card writes; "
                                "regenerate it with --ship")
    return head, "\n## Reproduce" + tail


def card_summary_rows(summ: pd.DataFrame) -> pd.DataFrame:
    """The out-of-fold summary as a model card shows it (lesion-wise rows named so)."""
    s_rows = summ.assign(ci=[f"[{a:.3f}, {b:.3f}]" for a, b in zip(summ["ci_low"], summ["ci_high"])])
    s_rows["metric"] = [f"{lv} {m}" if lv == "lesion-wise" else m
                        for lv, m in zip(s_rows.get("level", pd.Series("global", index=s_rows.index)), s_rows["metric"])]
    return s_rows[["cohort", "region", "metric", "mean", "ci", "median", "n", "n_missing"]]


def card_per_case(per_case: pd.DataFrame) -> pd.DataFrame:
    """The per-case out-of-fold table of a model card: global Dice/HD95 and lesion-wise Dice/HD95 per region."""
    keep = metrics.score_columns(per_case.columns, metrics.CARD_METRICS)
    return per_case[["cohort", "case_id", "fold", *keep]]


def _curve_section(spec: models.ModelSpec, out_dir: Path) -> str:
    """The card's training curve: each fold model's held-out Dice at every validation (a table and the figure
    :func:`write_curve_figure` writes beside the card), and how much the fold mean still rose over the last interval."""
    curve = training_curve(out_dir)
    if curve.empty:
        return ""
    wide = curve.pivot(index="iteration", columns="fold", values="val_dice")
    wide.columns = [f"fold {c}" for c in wide.columns]
    wide["mean"] = wide.mean(axis=1)
    g = curve_gain(curve)
    fig = spec.folder / f"{spec.name}.curve.png"
    return (f"## Training curve\nHeld-out Dice of each fold model (its own fold's cases, model space, no "
            f"post-processing) during training; the fold mean rose {g['gain']:+.3f} over the last interval "
            f"({g['previous']:.3f} at {g['previous_iteration']:.0f} -> {g['last']:.3f} at "
            f"{g['iteration']:.0f} iterations).\n\n{markdown_table(wide.reset_index())}\n\n"
            + (f"![training curves]({fig.name})\n\n" if fig.exists() else ""))


def _compare_section(out_dir: Path) -> str:
    """The card's comparison with the model it would replace (:func:`compare_with`), when one was made."""
    parts = []
    for path in sorted(Path(out_dir).glob("compare_*_summary.csv")):
        t = pd.read_csv(path)
        base = path.name[len("compare_"):-len("_summary.csv")]
        t["difference [95% CI]"] = [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in
                                    zip(t["difference"], t["ci_low"], t["ci_high"])]
        keep = [c for c in t.columns if c not in ("difference", "ci_low", "ci_high")]
        parts.append(f"## Against {base} (on the cases {base} never saw)\nEach case scored by this model's out-of-fold "
                     f"prediction and by {base} as shipped; paired bootstrap over cases (`glioma-nb segment-compare`).\n\n"
                     f"{markdown_table(t[keep])}\n\n")
    return "".join(parts)


def ensemble_card(spec: models.ModelSpec, out_dir: Path, files: Sequence[tuple[str, float, str]], command: str) -> str:
    """The model card of a cross-validated, ensemble-shipped spec."""
    out_dir = Path(out_dir)
    res = json.loads((out_dir / "cv.json").read_text())
    summ = read_table(out_dir, "oof_summary")
    abl = read_table(out_dir, "oof_ablation")
    folds = json.loads((out_dir / "folds.json").read_text())["cases"]
    fm = res["fold_models"]
    st = fm[0]["settings"]
    variant, rule = res["variant"], res["rule"]
    vers = provenance.package_versions(["torch", "monai"])
    outputs = (f"{len(spec.regions or ())} sigmoid channels {list(spec.regions or ())} (overlapping regions, each > 0.5), "
               "written as labels: ET enhancing, TC without ET necrosis / non-enhancing core, WT without TC oedema"
               if spec.regions else f"{models.CLASS_SETS[spec.classes]} (softmax)")
    weights = "\n".join(f"- `{n}`: {s:.1f} MB (float16 state dict, loaded as float32), sha256 {h}" for n, s, h in files) \
        or ("- **not shipped**: the fold models stay in the training folder (see the comparison with the shipped "
            "model below); this card records the cross-validation")
    by_fold: dict[int, list[str]] = {}
    for r in folds:
        by_fold.setdefault(r["fold"], []).append(f"{r['cohort']}/{r['case_id']}")
    fold_lines = "\n".join(f"- fold {f} ({len(v)}): {', '.join(v)}" for f, v in sorted(by_fold.items()))
    fold_rows = pd.DataFrame([{"fold": x["fold"], "trained on": f"{x['device']}" + (" bf16" if x["bf16"] else "")
                               + (f" x{x['processes']}" if x["processes"] > 1 else ""),   # no host name in a card
                               "minutes": x["minutes"], "iterations": x["iterations"], "train cases": x["n_train"],
                               "predicted cases": x["n_val"]} for x in fm])
    fold_rows["minutes"] = [f"{m:.1f}" for m in fold_rows["minutes"]]
    s_rows = card_summary_rows(summ)
    per_case = card_per_case(oof_per_case(out_dir))
    ch = res["choice"]["variants"]
    rules = pd.DataFrame(ch[variant]["summary"]).sort_values("mean", ascending=False).head(8)
    n_cases = res["n_cases"]
    text = f"""# Model card: {spec.name}

{spec.description}

## Weights (an ensemble of {res['folds']} fold models)
{weights}
- network: `{spec.network}` ({fm[0]['n_parameters']:,} parameters per fold model)
- inputs: {list(spec.modalities)} (channels in this order), resampled to {list(spec.spacing)} mm (RAS),
  cropped to non-zero voxels, z-scored per channel over non-zero voxels; patch {list(spec.patch)}
- outputs: {outputs}
- ensemble: the mean of the fold models' sigmoid/softmax probabilities (nnU-Net's fold ensemble); the network
  image signature is tapped from fold model 0 alone (the folds' channels do not correspond)
- loading checks every file's sha256 against this card

## Training data (../shared/data only): {n_cases} cases, {res['folds']}-fold cross-validation by patient
Every case was predicted once by the fold model that never saw it (out of fold); the figures below are those
predictions. The shipped ensemble has seen every case: score it only on other data.
{fold_lines}

## Recipe
- {st['iterations']} iterations per fold, batch {st['batch_cases']} case(s) x {st['samples_per_case']} patches,
  AdamW lr {st['lr']} (poly decay, exponent 0.9), weight decay {st['weight_decay']}, seed {st['seed']}
- loss: {'batch soft Dice + binary cross-entropy on the region channels' if spec.regions else 'Dice + cross-entropy'}
  {f"with deep supervision at {st['deep_supervision']} lower decoder resolutions (weights 1, 1/2, 1/4 normalised; heads dropped after training)" if st.get('deep_supervision') else ''}
- patches: {'centre class drawn uniformly among the classes present (background, necrosis/core, oedema, enhancing)' if st.get('crop') == 'classes' else 'two thirds centred on tumour'}
- augmentation: {'nnU-Net default (rotation, scaling, noise, blur, brightness, contrast, simulated low resolution, gamma, mirroring)' if st.get('augmentation') == 'nnunet' else 'flips, rotation/scaling, intensity scale/shift, noise'}
- {'bfloat16 autocast' if st.get('bf16') else 'float32'}; torch {vers.get('torch')}, monai {vers.get('monai')}

{markdown_table(fold_rows)}

## Inference and post-processing (chosen on the out-of-fold predictions only)
- test-time mirroring (8 flips): {'on (`tta: true` in the model spec: inference always mirrors)' if variant == 'tta' else 'off (`segment.tta: true` turns it on)'}; out-of-fold mean Dice over regions
  {', '.join(f"{v} {ch[v]['none']:.3f}" for v in ch)} (no rule)
- post-processing `{rule}` (`postprocess` in the model spec): the best of {len(ch[variant]['summary'])} rules by mean
  out-of-fold Dice over regions; a rule is kept only when it beats `none`. Top rules:

{markdown_table(rules[['rule', 'mean', 'median', 'improved', 'worsened', 'n']])}

## Out-of-fold metrics ({variant}, `{rule}`; original image space; 95% bootstrap CI over cases)
{markdown_table(s_rows)}

Ablation of the inference steps (mean out-of-fold Dice):

{markdown_table(abl)}

Per case:

{markdown_table(per_case)}

{_curve_section(spec, out_dir)}{_compare_section(out_dir)}## Reproduce
```
{command}
```
Fold models are checkpointed and skipped once finished, so the command resumes, and folds may be trained on
other machines (`--fold i`) and copied into the folder. On another machine (or on GPU) floating-point
differences give slightly different weights and sha256s, with metrics within noise.
"""
    return text


def write_curve_figure(spec: models.ModelSpec, out_dir: Path) -> None:
    """``<name>.curve.png`` beside the card: the folds' training curves (:func:`training_curve`)."""
    import matplotlib.pyplot as plt

    curve = training_curve(out_dir)
    if len(curve):
        with plotting.style():
            fig = plotting.plot_fold_curves(curve)
            fig.savefig(spec.folder / f"{spec.name}.curve.png", dpi=120)
        plt.close(fig)


def write_unshipped_card(spec: models.ModelSpec, out_dir: Path, command: str) -> Path:
    """The card of a finished cross-validation that is not shipped (the comparison went against it): written
    beside the spec YAML as ``<name>.md`` with its curve figure, no weights copied and the spec left as it is."""
    finished_cv(out_dir, "its card")
    write_curve_figure(spec, out_dir)
    spec.card_path.write_text(ensemble_card(spec, out_dir, [], command))
    return spec.card_path


def rewrite_oof_metrics(spec: models.ModelSpec, oof: pd.DataFrame) -> None:
    """Replace the out-of-fold metric tables of a shipped card (from ``## Out-of-fold metrics`` to the ablation,
    and the per-case table) with those of ``oof`` (:func:`glioma_nb.zoo.ship.rescore`), made by the code
    :func:`ensemble_card` uses; the rest of the card (recipe, choice, ablation, reproduce) is left as it was made."""
    text = spec.card_path.read_text()
    head, _, rest = text.partition("## Out-of-fold metrics")
    title, _, rest = rest.partition("\n")
    _, sep, rest = rest.partition("Ablation of the inference steps")
    ablation, _, tail = rest.partition("Per case:")
    _, _, tail = tail.partition("\n## ")
    if not (sep and tail):
        raise SegmentationError(f"{spec.card_path.name} has not the layout zoo.cards.ensemble_card writes; "
                                "regenerate it with --ship")
    summ = pd.concat([metrics.summarise(g.drop(columns=["cohort", "case_id", "fold", "variant", "rule"]))
                      .assign(cohort=co) for co, g in oof.groupby("cohort", sort=False)], ignore_index=True)
    note = ("Scored again with BraTS's official metrics (`glioma-nb segment-rescore --model "
            f"{spec.name}`: the shipped fold models, the same masks; HD95 as brats-evaluation computes it).")
    spec.card_path.write_text(
        f"{head}## Out-of-fold metrics{title}\n{note}\n\n{markdown_table(card_summary_rows(summ))}\n\n"
        f"Ablation of the inference steps{ablation}Per case:\n\n"
        f"{markdown_table(card_per_case(oof.drop(columns=['variant', 'rule'])))}\n\n## {tail}")
