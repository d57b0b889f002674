"""Plot functions: ``f(data, *, ax=None, **kw) -> Axes`` (or a Figure for multi-panel plots).

They never save or show; the notebook displays and ``StepContext.save_figure`` saves.
"""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from glioma_nb import io

PRETTY = {"who_grade": "WHO grade", "molecular_subtype": "molecular subtype", "idh_mutant": "IDH mutant",
          "codel_1p19q": "1p/19q codeleted", "mgmt_methylated": "MGMT methylated", "site": "site"}
REGION_COLOURS = {"WT": "#2ca02c", "TC": "#ffbf00", "ET": "#d62728"}
MODALITY_TITLES = {"t1": "T1", "t1c": "T1 post-contrast", "t2": "T2", "flair": "FLAIR"}


def _radiological(axial: np.ndarray) -> np.ndarray:
    """An axial RAS slice as displayed: anterior up, patient right on the image's left."""
    return np.fliplr(np.rot90(axial))


def plot_case_overlay(cohort: io.Cohort, case_id: str, *, axes: Sequence[plt.Axes] | None = None,
                      show_labels: bool = True) -> plt.Figure:
    """One axial slice per modality through the tumour's centre, with reference region contours.

    Images are reordered to RAS with ``nilearn.image.reorder_img`` and shown in radiological
    convention (patient left on the right, anterior up), cropped to the head. Contours: WT green,
    TC amber, ET red (BraTS regions; binary labels show WT only). ``axes``: one per modality.
    """
    from nilearn.image import reorder_img
    from scipy import ndimage

    mods = list(cohort.modalities)
    if axes is None:
        _, axes = plt.subplots(1, len(mods), figsize=(3.2 * len(mods), 3.4), squeeze=False)
        axes = axes[0]
    fig = axes[0].get_figure(root=True)
    lab = None
    label_img = cohort.load_label(case_id) if show_labels else None
    if label_img is not None and cohort.scheme is not None:
        lab = np.asanyarray(reorder_img(label_img, resample="nearest").dataobj)
    imgs = {m: reorder_img(cohort.load_image(case_id, m), resample="continuous") for m in mods}
    vols = {m: np.asanyarray(img.dataobj) for m, img in imgs.items()}
    ref = vols[mods[0]]
    k = int(round(ndimage.center_of_mass(lab > 0)[2])) if lab is not None and lab.any() else ref.shape[2] // 2
    head = np.argwhere(ref[:, :, k] > np.percentile(ref[:, :, k], 5))
    (x0, y0), (x1, y1) = (head.min(0), head.max(0) + 1) if len(head) else ((0, 0), ref.shape[:2])
    zooms = imgs[mods[0]].header.get_zooms()[:3]  # after reordering (and any geometry override)
    aspect = float(zooms[1] / zooms[0])
    for ax, mod in zip(axes, mods):
        sl = vols[mod][x0:x1, y0:y1, k]
        lo, hi = np.percentile(sl[sl > 0], (1, 99.5)) if (sl > 0).any() else (0, 1)
        ax.imshow(_radiological(sl), cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        if lab is not None:
            for name, mask in io.region_masks(lab[x0:x1, y0:y1, k], cohort.scheme).items():
                if mask.any():
                    ax.contour(_radiological(mask.astype(float)), levels=[0.5], colors=[REGION_COLOURS[name]],
                               linewidths=1.0)
        ax.set_title(f"{case_id}\n{MODALITY_TITLES.get(mod, mod)}", fontsize=8)
        ax.set_axis_off()
    return fig


def plot_region_volumes(case_table: pd.DataFrame, *, ax: plt.Axes | None = None, hue: str | None = None,
                        regions: Sequence[str] = ("WT", "TC", "ET")) -> plt.Axes:
    """Box + strip plot of reference region volumes (mL) per region, optionally split by ``hue``."""
    import seaborn as sns

    cols = [f"{r}_ml" for r in regions if f"{r}_ml" in case_table]
    ax = ax or plt.gca()
    if not cols:
        ax.text(0.5, 0.5, "no label volumes", ha="center", va="center", transform=ax.transAxes)
        return ax
    idv = ["case_id"] + ([hue] if hue and hue in case_table else [])
    long = case_table[idv + cols].melt(id_vars=idv, var_name="region", value_name="volume_ml")
    long["region"] = long["region"].str.replace("_ml", "", regex=False)
    use_hue = hue if hue and hue in case_table and case_table[hue].notna().any() else None
    sns.boxplot(data=long, x="region", y="volume_ml", hue=use_hue, ax=ax, showfliers=False)
    sns.stripplot(data=long, x="region", y="volume_ml", hue=use_hue, ax=ax, dodge=use_hue is not None,
                  color="k" if use_hue is None else None, size=3, alpha=0.6, legend=False)
    ax.set_xlabel("region")
    ax.set_ylabel("reference volume (mL)")
    ax.set_title("Tumour region volumes from the reference labels")
    return ax


def plot_km(surv: pd.DataFrame, group: str | None = None, *, ax: plt.Axes | None = None,
            time_col: str = "time", event_col: str = "event", time_unit: str = "months",
            at_risk: bool = True, min_group: int = 2) -> plt.Axes:
    """Kaplan-Meier curves (95 % CI bands) per group with an at-risk table underneath."""
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    ax = ax or plt.gca()
    data = surv.dropna(subset=[time_col, event_col] + ([group] if group else []))
    groups = [("all", data)] if group is None else [(str(k), g) for k, g in data.groupby(group) if len(g) >= min_group]
    fitters = []
    for name, g in groups:
        shown = f"{PRETTY.get(group, group)} {name}" if group else name
        kmf = KaplanMeierFitter(label=f"{shown} (n={len(g)}, events={int(g[event_col].sum())})")
        kmf.fit(g[time_col], g[event_col].astype(int))
        kmf.plot_survival_function(ax=ax, ci_show=True)
        fitters.append(kmf)
    ax.set_xlabel(f"time ({time_unit})")
    ax.set_ylabel("overall survival probability")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Kaplan-Meier by {PRETTY.get(group, group)}" if group else "Kaplan-Meier, whole cohort")
    if at_risk and fitters:
        add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk", "Events"])
    return ax


def plot_pca(features: pd.DataFrame, colour: pd.Series | None = None, *, ax: plt.Axes | None = None,
             title: str = "PCA of features") -> plt.Axes:
    """First two principal components of z-scored features, coloured by a label when given."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    ax = ax or plt.gca()
    x = StandardScaler().fit_transform(features.fillna(features.median()))
    pca = PCA(n_components=2, random_state=0).fit(x)
    z = pca.transform(x)
    if colour is None or colour.isna().all():
        ax.scatter(z[:, 0], z[:, 1], s=18)
    else:
        for val in sorted(colour.dropna().unique(), key=str):
            m = (colour == val).fillna(False).to_numpy(dtype=bool)
            ax.scatter(z[m, 0], z[m, 1], s=18, label=str(val))
        if colour.isna().any():
            m = colour.isna().to_numpy(dtype=bool)
            ax.scatter(z[m, 0], z[m, 1], s=18, c="lightgrey", label="unknown")
        ax.legend(title=colour.name, fontsize=8)
    ev = pca.explained_variance_ratio_ * 100
    ax.set_xlabel(f"PC1 ({ev[0]:.0f} % variance)")
    ax.set_ylabel(f"PC2 ({ev[1]:.0f} % variance)")
    ax.set_title(title)
    return ax


def plot_feature_heatmap(features: pd.DataFrame, **kw: Any) -> Any:
    """Clustered heatmap of z-scored features (rows: cases); returns seaborn's ClusterGrid."""
    import seaborn as sns

    z = (features - features.mean()) / features.std(ddof=0).replace(0, np.nan)
    z = z.dropna(axis=1, how="all").fillna(0.0)
    g = sns.clustermap(z, cmap="vlag", center=0, vmin=-3, vmax=3, figsize=kw.pop("figsize", (10, 7)),
                       cbar_kws={"label": "z-score"}, **kw)
    g.ax_heatmap.set_xlabel("feature")
    g.ax_heatmap.set_ylabel("case")
    return g


def select_cases(case_table: pd.DataFrame, n: int, by: str = "WT_ml") -> list[str]:
    """``n`` case ids spread over the range of ``by`` (smallest to largest tumour by default)."""
    if n <= 0 or case_table.empty:
        return []
    if by not in case_table or case_table[by].isna().all():
        return case_table["case_id"].head(n).tolist()
    ordered = case_table.sort_values(by)["case_id"].tolist()
    idx = np.unique(np.linspace(0, len(ordered) - 1, min(n, len(ordered))).round().astype(int))
    return [ordered[i] for i in idx]


def plot_overlays(cohort: io.Cohort, case_ids: Sequence[str]) -> plt.Figure:
    """A row of :func:`plot_case_overlay` per case."""
    mods = len(cohort.modalities)
    if not case_ids:
        fig = plt.figure(figsize=(4, 2))
        fig.text(0.5, 0.5, "no cases", ha="center")
        return fig
    fig, axes = plt.subplots(len(case_ids), mods, figsize=(2.8 * max(mods, 2), 3.0 * len(case_ids)), squeeze=False)
    for row, cid in zip(axes, case_ids):
        plot_case_overlay(cohort, cid, axes=list(row))
    if cohort.scheme is not None:
        names = {"WT": "whole tumour", "TC": "tumour core", "ET": "enhancing tumour"}
        from matplotlib.lines import Line2D
        handles = [Line2D([], [], color=REGION_COLOURS[r], label=f"{r}: {names[r]}") for r in cohort.scheme.regions]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
        fig.tight_layout(rect=(0, 0.4 / (3.0 * len(case_ids)), 1, 1))
    return fig


def plot_node_counts(table: pd.DataFrame, *, ax: plt.Axes | None = None) -> plt.Axes:
    """Stacked bars of labelled positives/negatives per classification node."""
    ax = ax or plt.gca()
    y = np.arange(len(table))
    ax.barh(y, table["negative"], color="#4c72b0", label="negative class")
    ax.barh(y, table["positive"], left=table["negative"], color="#dd8452", label="positive class")
    ax.set_yticks(y, [f"{n}{'' if t else '  (not trainable)'}" for n, t in zip(table["node"], table["trainable"])])
    ax.invert_yaxis()
    ax.set_xlabel("labelled cases")
    ax.set_title("Labelled cases per classification node")
    ax.legend(loc="lower right", fontsize=8)
    return ax


def plot_km_panels(surv: pd.DataFrame, groups: Sequence[str | None], *, time_unit: str = "months") -> plt.Figure:
    """One Kaplan-Meier panel (with at-risk table) per grouping; a note where a grouping has no data."""
    panels = list(groups) or [None]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 5.5 * len(panels)), squeeze=False)
    for ax, g in zip(axes[:, 0], panels):
        usable = surv if g is None else surv.dropna(subset=[g]) if g in surv else surv.iloc[0:0]
        if len(usable) < 2 or usable["event"].sum() == 0:
            ax.text(0.5, 0.5, f"not enough survival data{'' if g is None else f' for {g}'}\n"
                    f"({len(usable)} cases, {int(usable['event'].sum()) if len(usable) else 0} events)",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        plot_km(usable, g, ax=ax, time_unit=time_unit)
    fig.tight_layout()
    return fig
