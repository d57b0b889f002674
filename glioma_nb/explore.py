"""Exploration helpers for JupyterLab: one call, one figure, on a step context's run.

The numbered notebooks end with them, and they work the same in a notebook of your own after
``ctx = runner.open_step(...)``:

- :func:`show_case`: one case's modalities with its predicted (solid) and reference (dashed) regions;
- :func:`feature_by_label`: one image feature's distribution by a clinical label, with the Mann-Whitney P;
- :func:`km_by`: Kaplan-Meier curves by any clinical column (numbers split at the median), with the log-rank P.

They only read: masks and feature tables come from the run the step builds on (``ctx.inputs``).
"""
from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from glioma_nb import plotting
from glioma_nb.stratify import survival


def _message(text: str) -> plt.Figure:
    fig = plt.figure(figsize=(7, 1.2))
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def show_case(ctx: Any, case_id: str | None = None) -> plt.Figure:
    """One case (default: the first) through its tumour centre: every modality, with the mask 01_segment
    predicted (solid, when the run has it) and the reference label map (dashed, when the cohort has one)."""
    cohort = ctx.cohort
    if not cohort.modalities:
        return _message(f"cohort {cohort.name} has no images (layout: table): nothing to show")
    case_id = case_id or cohort.case_ids[0]
    if case_id not in cohort.case_ids:
        raise KeyError(f"no case {case_id!r} in cohort {cohort.name}; cases: {', '.join(cohort.case_ids[:10])}"
                       + (" ..." if len(cohort.case_ids) > 10 else ""))
    masks = [d for d in (ctx.run_dir / "masks", ctx.inputs / "masks") if (d / f"{case_id}.nii.gz").exists()]
    fig = plotting.plot_overlays(cohort, [case_id], mask_dir=masks[0] if masks else None)
    fig.suptitle(f"{case_id}: " + ("prediction solid, reference dashed" if masks else "reference regions (no predicted mask)"),
                 fontsize=10, y=1.06)
    return fig


def _label_values(clinical: pd.DataFrame, label: str) -> pd.Series:
    if label not in clinical:
        raise KeyError(f"no column {label!r} in the cohort's clinical table; columns: {', '.join(clinical.columns)}")
    return clinical.set_index("case_id")[label].dropna()


def feature_by_label(ctx: Any, feature: str | None = None, label: str = "idh_mutant", source: str | None = None
                     ) -> plt.Figure:
    """Distribution of one image feature by a clinical ``label`` (box and points, n per group), with the
    two-sided Mann-Whitney P for two groups (Kruskal-Wallis for more).

    ``feature`` is a column of the feature table ``source`` (default: the first table that has it); when it
    is None, the feature with the largest absolute rank-biserial separation of the label's first two groups
    is shown, which is exploration, not a test: its P is not corrected for that choice.
    """
    tables = ctx.feature_tables()
    if not tables:
        return _message("no feature tables in this run or its upstream: run 02_signature first")
    y = _label_values(ctx.clinical, label)
    y.index = y.index.astype(str)
    if source is not None and source not in tables:
        raise KeyError(f"no feature table {source!r}; tables: {', '.join(tables)}")
    candidates = [source] if source else list(tables)
    if feature is None:
        best = (-1.0, "", "")
        groups = sorted(y.unique(), key=str)[:2]
        if len(groups) < 2:
            return _message(f"{label} has one value here: nothing to separate")
        for name in candidates:
            X = tables[name].reindex(y.index).select_dtypes("number")
            a, b = X[y == groups[0]], X[y == groups[1]]
            if len(a) < 2 or len(b) < 2:
                continue
            u = stats.mannwhitneyu(a, b, axis=0, nan_policy="omit").statistic
            sep = pd.Series(np.abs(2 * u / (a.count().to_numpy() * b.count().to_numpy()) - 1), index=X.columns).dropna()
            if len(sep) and sep.max() > best[0]:
                best = (float(sep.max()), name, str(sep.idxmax()))
        if not best[2]:
            return _message(f"no feature separates {label} here (fewer than 2 cases in a group)")
        _, source, feature = best
    else:
        source = next((n for n in candidates if feature in tables[n]), None)
        if source is None:
            raise KeyError(f"no feature {feature!r} in the tables {', '.join(candidates)}")
    x = pd.to_numeric(tables[source][feature], errors="coerce")
    x.index = x.index.astype(str)
    data = pd.DataFrame({"x": x, "y": y}).dropna()
    levels = sorted(data["y"].unique(), key=str)
    samples = [data.loc[data["y"] == v, "x"].to_numpy() for v in levels]
    p = np.nan
    if len(levels) == 2 and min(map(len, samples)) >= 1:
        p = stats.mannwhitneyu(*samples, alternative="two-sided").pvalue
    elif len(levels) > 2:
        p = stats.kruskal(*samples).pvalue
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(levels) + 2), 4))
    ax.boxplot(samples, showfliers=False)
    rng = np.random.default_rng(0)
    for i, s in enumerate(samples, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(s)), s, s=12, alpha=0.7)
    ax.set_xticks(range(1, len(levels) + 1), [f"{v}\n(n={len(s)})" for v, s in zip(levels, samples)])
    ax.set_xlabel(plotting.PRETTY.get(label, label))
    ax.set_ylabel(f"{feature}\n({source})", fontsize=8)
    test = "Mann-Whitney" if len(levels) == 2 else "Kruskal-Wallis"
    ax.set_title(f"{feature[:60]} by {plotting.PRETTY.get(label, label)}" + (f"\n{test} P = {p:.3g}" if p == p else ""),
                 fontsize=9)
    fig.tight_layout()
    return fig


def km_by(ctx: Any, column: str, time_unit: str | None = None) -> plt.Figure:
    """Kaplan-Meier curves of the cohort by any clinical ``column`` (a number with more than six values is
    split at its median), with at-risk counts and the log-rank P."""
    unit = time_unit or ctx.config["stratify"]["time_unit_report"]
    surv = survival.survival_frame(ctx.clinical, unit)
    if surv.empty:
        return _message(f"cohort {ctx.cohort.name} records no overall survival: no Kaplan-Meier")
    if column not in surv:
        raise KeyError(f"no column {column!r} in the cohort's clinical table; columns: {', '.join(ctx.clinical.columns)}")
    values = surv[column]
    group = column
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().sum() == values.notna().sum() and numeric.nunique() > 6:
        cut = float(numeric.median())
        group = f"{column} split"
        surv = surv.assign(**{group: np.where(numeric.isna(), None, np.where(numeric > cut, f"> {cut:g}", f"<= {cut:g}"))})
    fig, ax = plt.subplots(figsize=(8, 5.5))
    plotting.plot_km(surv, group, ax=ax, time_unit=unit)
    lr = survival.logrank(surv.dropna(subset=[group]), group)
    if lr:
        ax.set_title(f"{ax.get_title()} (log-rank P = {lr['p_value']:.3g})")
    return fig
