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

from glioma_nb import stats
from glioma_nb.segment import infer, metrics, models, postprocess, train
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.zoo import evaluate

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
                device: str = "auto", bf16: bool | None = False, progress: bool = True,
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
                   device: str = "auto", bf16: bool | None = False, progress: bool = True,
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
    per_case = evaluate.evaluate_held_out(baseline, net, sources, Path(out_dir), device=device, progress=progress)
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


def finished_cv(out_dir: Path, before: str) -> dict[str, Any]:
    """``cv.json`` of a cross-validation every fold of which was run; a partial one (``--fold``) is refused with
    the command that finishes it (``before``: what needs it, e.g. "--ship")."""
    res = json.loads((Path(out_dir) / "cv.json").read_text())
    if res.get("partial"):
        raise SegmentationError(f"{out_dir} holds a partial cross-validation (folds {res['partial']}); run every fold "
                                f"(segment-train --folds without --fold) before {before}")
    return res


def oof_per_case(out_dir: Path) -> pd.DataFrame:
    """The out-of-fold scores of the chosen variant and rule, one row per case (shipped as ``<name>.oof.csv``)."""
    res = json.loads((Path(out_dir) / "cv.json").read_text())
    table = read_table(out_dir, "oof_scores")
    chosen = table[(table["variant"] == res["variant"]) & (table["rule"] == res["rule"])]
    cols = metrics.score_columns(chosen.columns)
    return chosen[["cohort", "case_id", "fold", "variant", "rule", *cols]].round(4).reset_index(drop=True)


