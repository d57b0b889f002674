"""k-fold cross-validation of a model spec over all its training cases: fold models, out-of-fold masks and
scores, the post-processing rule chosen on them, and the ensemble that is shipped.

``segment-train --folds K`` (:func:`cross_validate`) splits every case of the spec's sources into ``K`` folds by
patient (:func:`fold_assignment`: ``patient_id`` of the clinical tables, so one patient's scans in two cohorts
share a fold), trains one model per fold on the other folds (``<out>/fold<i>``: checkpointed, resumed, skipped
once ``weights.pt`` exists, so a run stopped on one machine continues on another), segments the fold's own cases
without post-processing (``<out>/oof/<variant>/<cohort>``; ``plain`` and, with mirroring, ``tta``) and scores
every rule of :func:`postprocess.brats_rules` (BraTS models) or :data:`postprocess.RULES` on them. Every case thus
has exactly one out-of-fold prediction, from the model that never saw it; :func:`choose` picks the rule on those
alone (nnU-Net's way, Isensee et al. 2021).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from sklearn.model_selection import KFold

from glioma_nb import config, io, plotting, provenance, stats
from glioma_nb.segment import infer, metrics, models, postprocess, train
from glioma_nb.segment.errors import SegmentationError

VARIANTS = {"plain": False, "tta": True}   # out-of-fold masks without / with mirroring (8 flips)
TTA_MIN_GAIN = 0.005   # mirroring costs 8 passes: it is chosen only when it raises the mean out-of-fold Dice this much


def fold_assignment(sources: Sequence[train.TrainSource], k: int, seed: int = 0) -> dict[tuple[str, str], int]:
    """(cohort, case) -> fold for every training case of ``sources``. Source by source, the patients not yet seen
    are split by ``KFold(k, shuffle, seed)`` over their sorted ids; a patient already placed (by an earlier source)
    keeps its fold. Two specs whose first source is the same cohort therefore fold its patients the same way."""
    placed: dict[str, int] = {}
    out: dict[tuple[str, str], int] = {}
    for src in sources:
        pat = train.patients(src.cohort, src.train)
        new = sorted({p for p in pat.values() if p not in placed})
        if new:
            if len(new) < k:
                raise SegmentationError(f"cohort {src.cohort.name}: {len(new)} patients cannot fill {k} folds; "
                                        "use fewer --folds")
            for f, (_, te) in enumerate(KFold(k, shuffle=True, random_state=seed).split(new)):
                placed.update({new[i]: f for i in te})
        out.update({(src.cohort.name, c): placed[p] for c, p in pat.items()})
    return out


def fold_sources(sources: Sequence[train.TrainSource], assign: dict[tuple[str, str], int],
                 fold: int) -> list[train.TrainSource]:
    """The sources of fold ``fold``: train on the other folds' cases, hold out (and later predict) its own."""
    return [train.TrainSource(s.cohort, [c for c in s.train if assign[(s.cohort.name, c)] != fold],
                              [c for c in s.train if assign[(s.cohort.name, c)] == fold]) for s in sources]


def _check_assignment(out_dir: Path, assign: dict[tuple[str, str], int], k: int) -> None:
    path = out_dir / "folds.json"
    rows = [{"cohort": co, "case_id": c, "fold": f} for (co, c), f in sorted(assign.items())]
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("folds") != k or old.get("cases") != rows:
            raise SegmentationError(f"{path} holds another fold split ({old.get('folds')} folds); resume with the same "
                                    "model spec and --folds, or use a new --out folder")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"folds": k, "cases": rows}, indent=1))
    tmp.replace(path)


def train_folds(spec: models.ModelSpec, out_dir: Path, k: int, settings: train.TrainSettings | None = None,
                device: str = "auto", bf16: bool = False, progress: bool = True,
                only: Sequence[int] | None = None) -> tuple[list[train.TrainSource], dict[tuple[str, str], int]]:
    """Train the fold models that are not finished (``only``: these folds). Returns the sources and assignment."""
    sources = train.sources_from_spec(spec, progress=progress)
    assign = fold_assignment(sources, k, seed=int(spec.train.get("seed", 0)))
    out_dir = Path(out_dir)
    _check_assignment(out_dir, assign, k)
    s = settings or train.TrainSettings.from_spec(spec)
    for f in range(k):
        if only is not None and f not in only:
            continue
        fdir = out_dir / f"fold{f}"
        if (fdir / "weights.pt").exists():
            if progress:
                print(f"fold {f}: finished ({fdir / 'weights.pt'}), skipped", flush=True)
            continue
        train.train(spec, fold_sources(sources, assign, f), fdir, s, device=device, bf16=bf16, progress=progress)
    return sources, assign


def rules_for(spec: Any) -> tuple[str, ...]:
    """The post-processing rules tried out of fold: with the ET thresholds for BraTS-subregion models."""
    return postprocess.brats_rules() if spec.classes == "brats" else postprocess.RULES


def predict_out_of_fold(spec: models.ModelSpec, out_dir: Path, sources: Sequence[train.TrainSource],
                        assign: dict[tuple[str, str], int], k: int, device: str = "cpu", variants: Sequence[str] = tuple(VARIANTS),
                        progress: bool = True, only: Sequence[int] | None = None) -> None:
    """Segment each fold's cases with the fold model that never saw them, without post-processing, into
    ``<out>/oof/<variant>/<cohort>`` (a per-case cache: finished cases are not redone)."""
    out_dir = Path(out_dir)
    for f in (range(k) if only is None else only):
        net = models.load_model(spec, out_dir / f"fold{f}" / "weights.pt", device=device)
        for src in fold_sources(sources, assign, f):
            for v in variants:
                infer.segment_cohort(src.cohort, spec, net, out_dir / "oof" / v / src.cohort.name, case_ids=src.held_out,
                                     tta=VARIANTS[v], device=device, progress=progress, postprocess="none")


def score_out_of_fold(spec: models.ModelSpec, out_dir: Path, sources: Sequence[train.TrainSource],
                      assign: dict[tuple[str, str], int], variants: Sequence[str] = tuple(VARIANTS),
                      only: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per case, variant and rule: Dice of every region (HD95 for ``none`` only: :func:`add_hd95` adds the
    chosen rule's), the case's fold, ``dice_mean`` over regions."""
    rows = []
    rules = {r: r == "none" for r in rules_for(spec)}
    for src in sources:
        ids = [c for c in src.train if only is None or assign[(src.cohort.name, c)] in only]
        for v in variants:
            t = metrics.rule_scores(src.cohort, Path(out_dir) / "oof" / v / src.cohort.name, ids, rules)
            rows.append(t.assign(cohort=src.cohort.name, variant=v))
    table = pd.concat(rows, ignore_index=True)
    table["fold"] = [assign[(co, c)] for co, c in zip(table["cohort"], table["case_id"])]
    dice = [c for c in table.columns if c.startswith("dice_")]
    table["dice_mean"] = table[dice].mean(axis=1)
    return table


def add_hd95(table: pd.DataFrame, out_dir: Path, sources: Sequence[train.TrainSource], variant: str,
             rule: str) -> pd.DataFrame:
    """``table`` with the HD95 of the rows of one variant and rule filled in."""
    if rule == "none":
        return table
    table = table.copy()
    for src in sources:
        t = metrics.rule_scores(src.cohort, Path(out_dir) / "oof" / variant / src.cohort.name, src.train, {rule: True})
        for r in t.itertuples():
            at = ((table["cohort"] == src.cohort.name) & (table["case_id"] == r.case_id) & (table["variant"] == variant)
                  & (table["rule"] == rule))
            for col in metrics.score_columns(t.columns, [k for k in metrics.BRATS_COLUMNS if k != "dice"]):
                table.loc[at, col] = getattr(r, col)
    return table


def choose(table: pd.DataFrame, metric: str = "dice_mean") -> dict[str, Any]:
    """The variant (plain / tta) and the rule with the highest mean out-of-fold ``metric`` over every case of every
    cohort; a rule other than ``none`` only when it beats ``none`` of that variant (nnU-Net's criterion), mirroring
    only when it beats no mirroring by :data:`TTA_MIN_GAIN` (it costs eight passes per case)."""
    out: dict[str, Any] = {"metric": metric, "variants": {}}
    for v, part in table.groupby("variant"):
        rule, summary = postprocess.choose(part.assign(case_id=part["cohort"] + "/" + part["case_id"]), metric)
        out["variants"][v] = {"rule": rule, "mean": float(summary.loc[rule, "mean"]),
                              "none": float(summary.loc["none", "mean"]),
                              "summary": summary.reset_index(names="rule").to_dict("records")}
    best = "plain" if "plain" in out["variants"] else next(iter(out["variants"]))
    if "tta" in out["variants"] and out["variants"]["tta"]["mean"] >= out["variants"][best]["mean"] + TTA_MIN_GAIN:
        best = "tta"
    out["variant"], out["rule"] = best, out["variants"][best]["rule"]
    return out


def summarise(table: pd.DataFrame, variant: str, rule: str) -> pd.DataFrame:
    """Mean, 95% bootstrap CI, median and n of every region's Dice and HD95, per cohort, for one variant and rule."""
    part = table[(table["variant"] == variant) & (table["rule"] == rule)]
    keep = metrics.score_columns(part.columns)
    return pd.concat([metrics.summarise(g[keep]).assign(cohort=co) for co, g in part.groupby("cohort", sort=False)],
                     ignore_index=True)


def ablation(table: pd.DataFrame, choice: dict[str, Any]) -> pd.DataFrame:
    """Mean out-of-fold Dice per cohort and region of the inference-time steps: no TTA/no rule, the rule alone,
    TTA alone, both (the choice)."""
    rows = []
    rule = choice["rule"]
    for v in sorted(table["variant"].unique()):
        for r in dict.fromkeys(["none", rule, choice["variants"][v]["rule"]]):
            part = table[(table["variant"] == v) & (table["rule"] == r)]
            for co, g in part.groupby("cohort", sort=False):
                rows.append({"cohort": co, "variant": v, "rule": r, "n": len(g),
                             **{c: round(float(g[c].mean()), 4) for c in g.columns if c.startswith("dice_")}})
    return pd.DataFrame(rows)


def cross_validate(spec: models.ModelSpec, out_dir: Path, k: int, settings: train.TrainSettings | None = None,
                   device: str = "auto", bf16: bool = False, progress: bool = True,
                   variants: Sequence[str] = tuple(VARIANTS), only: Sequence[int] | None = None) -> dict[str, Any]:
    """``segment-train --folds K``: train the unfinished fold models, predict and score out of fold, choose the
    variant and rule. Writes ``oof_scores.csv``, ``oof_summary.csv``, ``oof_ablation.csv`` and ``cv.json`` (the
    choice, fold minutes and devices) into ``out_dir``; returns ``cv.json``'s content. ``only``: these folds
    alone (a partial cross-validation over their cases, e.g. an ablation; it cannot be shipped)."""
    out_dir = Path(out_dir)
    dev = models.resolve_device(device)
    sources, assign = train_folds(spec, out_dir, k, settings, device=dev, bf16=bf16, progress=progress, only=only)
    predict_out_of_fold(spec, out_dir, sources, assign, k, device=dev, variants=variants, progress=progress, only=only)
    table = score_out_of_fold(spec, out_dir, sources, assign, variants, only=only)
    choice = choose(table)
    table = add_hd95(table, out_dir, sources, choice["variant"], choice["rule"])
    summary = summarise(table, choice["variant"], choice["rule"])
    abl = ablation(table, choice)
    for name, df in (("oof_scores", table), ("oof_summary", summary), ("oof_ablation", abl)):
        df.to_csv(out_dir / f"{name}.csv", index=False)
    folds = []
    for f in (range(k) if only is None else only):
        summ = json.loads((out_dir / f"fold{f}" / "train_summary.json").read_text())
        folds.append({"fold": f, "device": summ["device"], "processes": summ.get("processes", 1),
                      "bf16": summ.get("bf16"), "minutes": round(summ["seconds"] / 60, 1),
                      "iterations": summ["iterations"], "n_train": len(summ["train_cases"]),
                      "n_val": len(summ["held_out_cases"]), "weights_sha256": summ.get("weights_sha256"),
                      "n_parameters": summ["n_parameters"], "settings": summ["settings"],
                      "host": summ.get("host", "")})
    result = {"model": spec.name, "folds": k, "n_cases": int(table[["cohort", "case_id"]].drop_duplicates().shape[0]),
              "partial": None if only is None else sorted(only), "variant": choice["variant"],
              "rule": choice["rule"], "choice": choice, "fold_models": folds}
    tmp = out_dir / "cv.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=float))
    tmp.replace(out_dir / "cv.json")
    return result


def training_curve(out_dir: Path) -> pd.DataFrame:
    """Held-out Dice of every fold model at each validation of its training (``fold<i>/train_log.csv``, the rows
    with a ``val_dice_*`` value), with the mean training loss over the iterations since the previous validation:
    one row per fold and validation (``fold``, ``iteration``, ``loss``, ``val_dice``)."""
    rows = []
    for log_path in sorted(Path(out_dir).glob("fold*/train_log.csv"), key=lambda q: int(q.parent.name[4:])):
        log = pd.read_csv(log_path)
        val_col = next((c for c in log.columns if c.startswith("val_dice")), None)
        if val_col is None:
            continue
        window = log["iteration"].searchsorted(log.loc[log[val_col].notna(), "iteration"], side="right")
        start = 0
        for end in window:
            part = log.iloc[start:end]
            rows.append({"fold": int(log_path.parent.name[4:]), "iteration": int(part["iteration"].iloc[-1]),
                         "loss": float(part["loss"].mean()), "val_dice": float(part[val_col].iloc[-1])})
            start = end
    return pd.DataFrame(rows, columns=["fold", "iteration", "loss", "val_dice"])


def curve_gain(curve: pd.DataFrame) -> dict[str, float]:
    """How far the fold-mean held-out Dice still rose over the last validation interval (folds that reached the
    last validation only): ``last``, ``previous``, ``gain`` and the iterations they were taken at."""
    last_it = curve.groupby("fold")["iteration"].max().min()
    done = curve[curve["iteration"] <= last_it]
    mean = done.groupby("iteration")["val_dice"].mean()
    if len(mean) < 2:
        return {"iteration": float(last_it), "last": float(mean.iloc[-1]) if len(mean) else float("nan"),
                "previous_iteration": float("nan"), "previous": float("nan"), "gain": float("nan")}
    return {"iteration": float(mean.index[-1]), "last": float(mean.iloc[-1]), "previous_iteration": float(mean.index[-2]),
            "previous": float(mean.iloc[-2]), "gain": float(mean.iloc[-1] - mean.iloc[-2])}


def baseline_scores(baseline: models.ModelSpec, out_dir: Path, device: str = "cpu", progress: bool = True) -> pd.DataFrame:
    """Per-case scores of a shipped model on the cases it never saw, as it segments them (its own rule): a single
    network's held-out cases (segmented again here into ``out_dir``), or a cross-validated ensemble's out-of-fold
    table (``<name>.oof.csv``). Columns ``cohort``, ``case_id`` and the metric columns."""
    if baseline.ensemble:
        path = baseline.folder / f"{baseline.name}.oof.csv"
        if not path.exists():
            raise SegmentationError(f"model {baseline.name} has no out-of-fold table {path.name} to compare with")
        return pd.read_csv(path)
    sources = train.sources_from_spec(baseline, progress=progress)
    if not any(s.held_out for s in sources):
        raise SegmentationError(f"model {baseline.name} held out no case (train.sources held_out in its spec): "
                                "there is nothing it never saw to compare on")
    net = models.load_model(baseline, None, device=device)
    per_case = train.evaluate_held_out(baseline, net, sources, Path(out_dir), device=device, progress=progress)
    return per_case[per_case["postprocess"] == baseline.postprocess].drop(columns="postprocess").reset_index(drop=True)


def compare_with(spec: models.ModelSpec, out_dir: Path, baseline: models.ModelSpec, metric: str = "dice_WT",
                 device: str = "cpu", n_boot: int = 2000, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cross-validation in ``out_dir`` against a shipped ``baseline`` on the cases the baseline never saw
    (:func:`baseline_scores`), each scored for ``spec`` by its out-of-fold prediction (chosen variant and rule):
    per cohort, both means of ``metric``, the paired difference (spec - baseline) with its paired bootstrap 95% CI
    and P (cases resampled, both means recomputed; :func:`glioma_nb.stats.paired_bootstrap_difference`) and
    ``better``: the CI above 0. Writes ``compare_<baseline>.csv`` (per case) and ``compare_<baseline>_summary.csv``
    into ``out_dir``; returns (summary, per case)."""
    out_dir = Path(out_dir)
    oof = oof_per_case(out_dir)
    base = baseline_scores(baseline, out_dir / "compare" / baseline.name, device=device, progress=progress)
    for name, t in ((f"{spec.name} out of fold", oof), (baseline.name, base)):
        if metric not in t.columns:
            raise SegmentationError(f"{name} has no per-case {metric!r}; metrics there: {metrics.score_columns(t.columns)}")
    pairs = oof[["cohort", "case_id", "fold", metric]].merge(base[["cohort", "case_id", metric]], on=["cohort", "case_id"],
                                                            suffixes=("", "_baseline"))
    pairs = pairs.rename(columns={metric: spec.name, f"{metric}_baseline": baseline.name})
    if pairs.empty:
        raise SegmentationError(f"no case of {baseline.name}'s held-out set is in the cross-validation of {spec.name}")
    rows = []
    for cohort, g in pairs.groupby("cohort", sort=False):
        g = g.dropna(subset=[spec.name, baseline.name])
        a, b = g[spec.name].to_numpy(float), g[baseline.name].to_numpy(float)
        r = stats.paired_bootstrap_difference(lambda idx: (a[idx].mean(), b[idx].mean()), len(a), n_boot=n_boot)
        rows.append({"cohort": cohort, "metric": metric, "n": len(a), spec.name: r["a"], baseline.name: r["b"],
                     "difference": r["difference"], "ci_low": r["difference_low"], "ci_high": r["difference_high"],
                     "p_bootstrap": r["p_bootstrap"], "better": bool(r["difference_low"] > 0),
                     "cases_better": int((a > b).sum()), "cases_worse": int((a < b).sum())})
    summary = pd.DataFrame(rows)
    pairs.to_csv(out_dir / f"compare_{baseline.name}.csv", index=False)
    summary.to_csv(out_dir / f"compare_{baseline.name}_summary.csv", index=False)
    return summary, pairs


def read_table(out_dir: Path, name: str) -> pd.DataFrame:
    """One of the tables :func:`cross_validate` writes (``oof_scores``, ``oof_summary``, ``oof_ablation``)."""
    return pd.read_csv(Path(out_dir) / f"{name}.csv")



def _set_yaml_key(path: Path, key: str, value: str, comment: str) -> None:
    """Rewrite the top-level line ``key: ...`` of a spec YAML (appended when absent), keeping the rest as written."""
    lines = path.read_text().splitlines()
    new = f"{key}: {value}" + (f"     # {comment}" if comment else "")
    at = [i for i, ln in enumerate(lines) if ln.startswith(f"{key}:")]
    if at:
        lines[at[0]] = new
    else:
        lines.insert(next((i for i, ln in enumerate(lines) if ln.startswith("train:")), len(lines)), new)
    path.write_text("\n".join(lines) + "\n")


def finished_cv(out_dir: Path, before: str) -> dict[str, Any]:
    """``cv.json`` of a cross-validation every fold of which was run; a partial one (``--fold``) is refused with
    the command that finishes it (``before``: what needs it, e.g. "--ship")."""
    res = json.loads((Path(out_dir) / "cv.json").read_text())
    if res.get("partial"):
        raise SegmentationError(f"{out_dir} holds a partial cross-validation (folds {res['partial']}); run every fold "
                                f"(segment-train --folds without --fold) before {before}")
    return res


def ship(spec: models.ModelSpec, out_dir: Path, command: str) -> Path:
    """Copy the fold models of ``out_dir`` into the package as ``<name>.fold<i>.pt``, write the chosen rule and the
    ensemble size into the spec YAML and the whole model card beside it (from ``cv.json`` and the out-of-fold
    tables; nothing in it is written by hand)."""
    import shutil

    out_dir = Path(out_dir)
    res = finished_cv(out_dir, "--ship")
    k = int(res["folds"])
    files = []
    for f in range(k):
        src = out_dir / f"fold{f}" / "weights.pt"
        dst = spec.folder / f"{spec.name}.fold{f}.pt"
        size = src.stat().st_size / 1e6
        if size > 20:
            raise SegmentationError(f"{src} is {size:.1f} MB; shipped weights must stay under 20 MB per fold")
        shutil.copyfile(src, dst)
        files.append((dst.name, size, models.sha256(dst)))
    for old in [spec.weights_path, *spec.folder.glob(f"{spec.name}.fold*.pt")]:
        if old.exists() and old.name not in {f[0] for f in files}:
            old.unlink()
    assert spec.path is not None
    _set_yaml_key(spec.path, "postprocess", res["rule"], "chosen out of fold by segment-train --folds --ship")
    _set_yaml_key(spec.path, "ensemble", str(k), "fold models shipped by segment-train --folds --ship")
    _set_yaml_key(spec.path, "tta", "true" if res["variant"] == "tta" else "false",
                  "mirroring at inference, chosen out of fold by segment-train --folds --ship")
    spec = models.load_spec(spec.path)
    oof_per_case(out_dir).to_csv(spec.folder / f"{spec.name}.oof.csv", index=False)
    _write_curve_figure(spec, out_dir)
    spec.card_path.write_text(card(spec, out_dir, files, command))
    return spec.card_path


def _write_curve_figure(spec: models.ModelSpec, out_dir: Path) -> None:
    """``<name>.curve.png`` beside the card: the folds' training curves (:func:`training_curve`)."""
    import matplotlib.pyplot as plt

    curve = training_curve(out_dir)
    if len(curve):
        fig = plotting.plot_fold_curves(curve)
        fig.savefig(spec.folder / f"{spec.name}.curve.png", dpi=120)
        plt.close(fig)


def write_unshipped_card(spec: models.ModelSpec, out_dir: Path, command: str) -> Path:
    """The card of a finished cross-validation that is not shipped (the comparison went against it): written
    beside the spec YAML as ``<name>.md`` with its curve figure, no weights copied and the spec left as it is."""
    finished_cv(out_dir, "its card")
    _write_curve_figure(spec, out_dir)
    spec.card_path.write_text(card(spec, out_dir, [], command))
    return spec.card_path


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


def rewrite_card_metrics(spec: models.ModelSpec, oof: pd.DataFrame) -> None:
    """Replace the out-of-fold metric tables of a shipped card (from ``## Out-of-fold metrics`` to the ablation,
    and the per-case table) with those of ``oof`` (:func:`rescore_shipped`), made by the code :func:`card` uses;
    the rest of the card (recipe, choice, ablation, reproduce) is left as it was made."""
    text = spec.card_path.read_text()
    head, _, rest = text.partition("## Out-of-fold metrics")
    title, _, rest = rest.partition("\n")
    _, sep, rest = rest.partition("Ablation of the inference steps")
    ablation, _, tail = rest.partition("Per case:")
    _, _, tail = tail.partition("\n## ")
    if not (sep and tail):
        raise SegmentationError(f"{spec.card_path.name} has not the layout cv.card writes; regenerate it with --ship")
    summ = pd.concat([metrics.summarise(g.drop(columns=["cohort", "case_id", "fold", "variant", "rule"]))
                      .assign(cohort=co) for co, g in oof.groupby("cohort", sort=False)], ignore_index=True)
    note = ("Scored again with BraTS's official metrics (`glioma-nb segment-rescore --model "
            f"{spec.name}`: the shipped fold models, the same masks; HD95 as brats-evaluation computes it).")
    spec.card_path.write_text(
        f"{head}## Out-of-fold metrics{title}\n{note}\n\n{train.markdown_table(card_summary_rows(summ))}\n\n"
        f"Ablation of the inference steps{ablation}Per case:\n\n"
        f"{train.markdown_table(card_per_case(oof.drop(columns=['variant', 'rule'])))}\n\n## {tail}")


def oof_per_case(out_dir: Path) -> pd.DataFrame:
    """The out-of-fold scores of the chosen variant and rule, one row per case (shipped as ``<name>.oof.csv``)."""
    res = json.loads((Path(out_dir) / "cv.json").read_text())
    table = read_table(out_dir, "oof_scores")
    chosen = table[(table["variant"] == res["variant"]) & (table["rule"] == res["rule"])]
    cols = metrics.score_columns(chosen.columns)
    return chosen[["cohort", "case_id", "fold", "variant", "rule", *cols]].round(4).reset_index(drop=True)


def rescore_shipped(spec: models.ModelSpec, out_dir: Path, device: str = "cpu", progress: bool = True) -> pd.DataFrame:
    """Score a shipped cross-validated model's out-of-fold cases again with today's metrics: each case of
    ``<name>.oof.csv`` segmented anew by the shipped fold model that never saw it (its ``fold``), with the chosen
    variant and rule, into ``out_dir`` (a per-case cache); returns the new table and writes it over
    ``<name>.oof.csv`` (git keeps the old one). The masks are those of the original cross-validation, up to
    floating point: the fold weights are the ones shipped."""
    path = spec.folder / f"{spec.name}.oof.csv"
    if not spec.ensemble or not path.exists():
        raise SegmentationError(f"model {spec.name} has no shipped out-of-fold table ({path.name}): it was not shipped "
                                "from a cross-validation")
    old = pd.read_csv(path)
    rows = []
    for cohort_name, part in old.groupby("cohort", sort=False):
        cohort = io.load_cohort(config.resolve_config(cohort_name), progress=False)
        for (fold, variant, rule), g in part.groupby(["fold", "variant", "rule"], sort=True):
            net = models.load_model(spec, spec.weights_paths[int(fold)], device=device)
            mask_dir = Path(out_dir) / variant / cohort_name
            infer.segment_cohort(cohort, spec, net, mask_dir, case_ids=list(g["case_id"]), tta=VARIANTS[variant],
                                 device=device, progress=progress, postprocess="none")
            s = metrics.cohort_scores(cohort, mask_dir, list(g["case_id"]), postprocess=rule)
            rows.append(s.assign(cohort=cohort_name, fold=int(fold), variant=variant, rule=rule))
    new = pd.concat(rows, ignore_index=True)
    cols = metrics.score_columns(new.columns)
    new = new[["cohort", "case_id", "fold", "variant", "rule", *cols]].round(4)
    new = new.set_index(["cohort", "case_id"]).loc[list(zip(old["cohort"], old["case_id"]))].reset_index()
    new.to_csv(path, index=False)
    rewrite_card_metrics(spec, new)
    return new


def _curve_section(spec: models.ModelSpec, out_dir: Path) -> str:
    """The card's training curve: each fold model's held-out Dice at every validation (a table and the figure
    :func:`ship` writes beside the card), and how much the fold mean still rose over the last interval."""
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
            f"{g['iteration']:.0f} iterations).\n\n{train.markdown_table(wide.reset_index())}\n\n"
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
                     f"{train.markdown_table(t[keep])}\n\n")
    return "".join(parts)


def card(spec: models.ModelSpec, out_dir: Path, files: Sequence[tuple[str, float, str]], command: str) -> str:
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

{train.markdown_table(fold_rows)}

## Inference and post-processing (chosen on the out-of-fold predictions only)
- test-time mirroring (8 flips): {'on (`tta: true` in the model spec: inference always mirrors)' if variant == 'tta' else 'off (`segment.tta: true` turns it on)'}; out-of-fold mean Dice over regions
  {', '.join(f"{v} {ch[v]['none']:.3f}" for v in ch)} (no rule)
- post-processing `{rule}` (`postprocess` in the model spec): the best of {len(ch[variant]['summary'])} rules by mean
  out-of-fold Dice over regions; a rule is kept only when it beats `none`. Top rules:

{train.markdown_table(rules[['rule', 'mean', 'median', 'improved', 'worsened', 'n']])}

## Out-of-fold metrics ({variant}, `{rule}`; original image space; 95% bootstrap CI over cases)
{train.markdown_table(s_rows)}

Ablation of the inference steps (mean out-of-fold Dice):

{train.markdown_table(abl)}

Per case:

{train.markdown_table(per_case)}

{_curve_section(spec, out_dir)}{_compare_section(out_dir)}## Reproduce
```
{command}
```
Fold models are checkpointed and skipped once finished, so the command resumes, and folds may be trained on
other machines (`--fold i`) and copied into the folder. On another machine (or on GPU) floating-point
differences give slightly different weights and sha256s, with metrics within noise.
"""
    return text
