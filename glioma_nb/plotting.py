"""Plot functions: ``f(data, *, ax=None, **kw) -> Axes`` (or a Figure for multi-panel plots).

They never save or show; the notebook displays and ``StepContext.save_figure`` saves. Importing this module
changes nothing global: the house style (:data:`RC`) is applied by :func:`use_style` (``runner.open_step`` calls
it for every notebook) or within ``with style():`` where a figure is made outside a notebook.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from glioma_nb import io

PRETTY = {"who_grade": "WHO grade", "cluster": "cluster", "risk_group": "risk:", "molecular_subtype": "molecular subtype", "idh_mutant": "IDH mutant",
          "codel_1p19q": "1p/19q codeleted", "mgmt_methylated": "MGMT methylated", "site": "site", "vde_group": "VDE"}
REGION_COLOURS = {"WT": "#2ca02c", "TC": "#ffbf00", "ET": "#d62728"}
# one style for every figure: font sizes legible at print width (a panel of about 8 cm), 300 dpi when saved
RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
      "legend.fontsize": 7.5, "legend.title_fontsize": 7.5, "figure.titlesize": 11, "savefig.dpi": 300,
      "axes.spines.top": False, "axes.spines.right": False}


def use_style() -> None:
    """Apply the house style to this process's matplotlib (a notebook's figures)."""
    plt.rcParams.update(RC)


def style() -> Any:
    """The house style as a context (``with plotting.style(): ...``), leaving matplotlib as it was after."""
    return plt.rc_context(RC)


# a feature set keeps its colour and line style in every figure (the line style tells the sets apart in
# greyscale); a set not named here gets the next free colour of the default cycle
FEATURE_SET_STYLE = {
    "clinical": ("#7f7f7f", (0, (1, 1.5))), "volumetric": ("#1f77b4", (0, (5, 2))),
    "location": ("#8c564b", (0, (3, 1, 1, 1))), "signature": ("#d62728", "-"), "radiomics": ("#2ca02c", (0, (6, 1.5, 1, 1.5))),
    "volumetric+clinical": ("#17becf", (0, (5, 2, 1, 2))), "signature+clinical": ("#9467bd", (0, (8, 2))),
    "radiomics+clinical": ("#bcbd22", (0, (2, 1))), "all": ("#ff7f0e", (0, (4, 1, 1, 1, 1, 1)))}


def set_style(feature_set: str) -> tuple[str, Any]:
    """(colour, line style) of a feature set, the same in every figure."""
    if feature_set in FEATURE_SET_STYLE:
        return FEATURE_SET_STYLE[feature_set]
    free = [c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"]
            if c not in {v[0] for v in FEATURE_SET_STYLE.values()}] or ["#000000"]
    return free[sum(map(ord, feature_set)) % len(free)], "-"

MODALITY_TITLES = {"t1": "T1", "t1c": "T1 post-contrast", "t2": "T2", "flair": "FLAIR"}


def _radiological(axial: np.ndarray) -> np.ndarray:
    """An axial RAS slice as displayed: anterior up, patient right on the image's left."""
    return np.fliplr(np.rot90(axial))


def plot_case_overlay(cohort: io.Cohort, case_id: str, *, axes: Sequence[plt.Axes] | None = None,
                      show_labels: bool = True, mask_dir: Any = None) -> plt.Figure:
    """One axial slice per modality through the tumour's centre, with reference region contours.

    With ``mask_dir`` (predicted masks ``<case>.nii.gz``), the prediction is drawn solid and the
    reference dashed, and the slice goes through the predicted tumour's centre.

    Images are reordered to RAS with ``nilearn.image.reorder_img`` and shown in radiological
    convention (patient left on the right, anterior up), cropped to the head. Contours: WT green,
    TC amber, ET red (BraTS regions; binary labels show WT only). ``axes``: one per modality.
    """
    from nilearn.image import reorder_img

    mods = list(cohort.modalities)
    if axes is None:
        _, axes = plt.subplots(1, len(mods), figsize=(3.2 * len(mods), 3.4), squeeze=False)
        axes = axes[0]
    fig = axes[0].get_figure(root=True)
    lab = pred = pred_scheme = None
    label_img = cohort.load_label(case_id) if show_labels else None
    if label_img is not None and cohort.scheme is not None:
        lab = np.asanyarray(reorder_img(label_img, resample="nearest").dataobj)
    if mask_dir is not None:
        pimg = cohort.override(nib.load(Path(mask_dir) / f"{case_id}.nii.gz"), case_id)
        pred = np.asanyarray(reorder_img(pimg, resample="nearest").dataobj)
        pred_scheme = io.mask_scheme(Path(mask_dir), case_id, pred)
    imgs = {m: reorder_img(cohort.load_image(case_id, m), resample="continuous") for m in mods}
    vols = {m: np.asanyarray(img.dataobj) for m, img in imgs.items()}
    ref = vols[mods[0]]
    centre_of = pred if pred is not None and pred.any() else lab
    k = (int(round(ndimage.center_of_mass(centre_of > 0)[2])) if centre_of is not None and centre_of.any()
         else ref.shape[2] // 2)
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
                               linewidths=1.0, linestyles="dashed" if pred is not None else "solid")
        if pred is not None:
            for name, mask in io.region_masks(pred[x0:x1, y0:y1, k], pred_scheme).items():
                if mask.any():
                    ax.contour(_radiological(mask.astype(float)), levels=[0.5], colors=[REGION_COLOURS[name]],
                               linewidths=1.2)
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
            at_risk: bool = True, min_group: int = 2, ylabel: str = "overall survival probability",
            title: str | None = None) -> plt.Axes:
    """Kaplan-Meier curves (95 % CI bands) per group, with a compact at-risk table under the panel.

    The table is an inset axes hung under ``ax`` (so panels of one figure stay aligned and ``tight_layout``
    makes room for it): one row per group, labelled with the group's value in its curve's colour, the
    number at risk at each time tick and the cumulative events in brackets."""
    from lifelines import KaplanMeierFitter

    ax = ax or plt.gca()
    data = surv.dropna(subset=[time_col, event_col] + ([group] if group else []))
    groups = [("all", data)] if group is None else [(_value_label(k, group), g) for k, g in data.groupby(group)
                                                    if len(g) >= min_group]
    rows = []
    for i, (name, g) in enumerate(groups):
        shown = f"{PRETTY.get(group, group)} {name}" if group else name
        kmf = KaplanMeierFitter(label=f"{shown} (n={len(g)}, events={int(g[event_col].sum())})")
        kmf.fit(g[time_col], g[event_col].astype(int))
        colour = f"C{i}"
        kmf.plot_survival_function(ax=ax, ci_show=True, color=colour)
        rows.append((name, colour, g[time_col].to_numpy(float), g[event_col].to_numpy(int)))
    ax.set_ylabel(ylabel)
    ax.set_xlabel("")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(left=0)
    ax.set_title(title or (f"Kaplan-Meier by {PRETTY.get(group, group).rstrip(':')}" if group
                           else "Kaplan-Meier, whole cohort"))
    if rows:
        ax.legend(loc="best", framealpha=0.85)  # half-transparent: curves stay visible under it
    if at_risk and rows:
        _at_risk_table(ax, rows, time_unit)
    else:
        ax.set_xlabel(f"time ({time_unit})")
    return ax


def _value_label(value: Any, group: str) -> str:
    """A group's short name: yes/no for a 0/1 marker column (IDH mutant, 1p/19q codeleted, ...), 2 for 2.0, the
    value otherwise (a cluster keeps its number)."""
    marker = group in PRETTY and group.endswith(("_mutant", "_methylated", "_1p19q"))
    num = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    if marker and num in (0, 1):
        return "yes" if num == 1 else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _at_risk_table(ax: plt.Axes, rows: list[tuple[str, str, np.ndarray, np.ndarray]], time_unit: str) -> plt.Axes:
    """Numbers at risk (cumulative events) at ``ax``'s time ticks, one row per group, in an inset under ``ax``."""
    lo, hi = ax.get_xlim()
    ticks = [float(t) for t in ax.get_xticks() if lo <= t <= hi]
    height = 0.065 * len(rows)
    tab = ax.inset_axes((0.0, -0.13 - height, 1.0, height))
    tab.set_xlim(lo, hi)
    tab.set_ylim(0, len(rows))
    for i, (name, colour, time, event) in enumerate(rows):
        y = len(rows) - i - 0.5
        for t in ticks:
            tab.text(t, y, f"{int((time >= t).sum())} ({int(event[time <= t].sum())})", ha="center", va="center",
                     fontsize=plt.rcParams["font.size"] - 1.5)
        tab.text(-0.05, y / len(rows), name, transform=tab.transAxes, ha="right", va="center", color=colour,
                 fontsize=plt.rcParams["font.size"] - 1, fontweight="bold")
    tab.set_yticks([])
    tab.set_xticks(ticks)
    tab.tick_params(axis="x", length=0, labelbottom=False)
    for side in ("top", "right", "left", "bottom"):
        tab.spines[side].set_visible(False)
    tab.set_xlabel(f"time ({time_unit}); at risk (cumulative events)", labelpad=2)
    return tab


def plot_pca(features: pd.DataFrame, colour: pd.Series | None = None, *, ax: plt.Axes | None = None,
             title: str = "PCA of features") -> plt.Axes:
    """First two principal components of z-scored features, coloured by a label when given."""
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
    if z.shape[1] > 60:  # hundreds of radiomics columns: names would be unreadable
        kw.setdefault("xticklabels", False)
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


def plot_overlays(cohort: io.Cohort, case_ids: Sequence[str], mask_dir: Any = None) -> plt.Figure:
    """A row of :func:`plot_case_overlay` per case (with predicted masks from ``mask_dir`` when given)."""
    mods = len(cohort.modalities)
    if not case_ids:
        fig = plt.figure(figsize=(4, 2))
        fig.text(0.5, 0.5, "no cases", ha="center")
        return fig
    fig, axes = plt.subplots(len(case_ids), mods, figsize=(2.8 * max(mods, 2), 3.0 * len(case_ids)), squeeze=False)
    for row, cid in zip(axes, case_ids):
        plot_case_overlay(cohort, cid, axes=list(row), mask_dir=mask_dir)
    if cohort.scheme is not None or mask_dir is not None:
        names = {"WT": "whole tumour", "TC": "tumour core", "ET": "enhancing tumour"}
        from matplotlib.lines import Line2D
        regions = list(cohort.scheme.regions) if cohort.scheme is not None else ["WT", "TC", "ET"]
        handles = [Line2D([], [], color=REGION_COLOURS[r], label=f"{r}: {names[r]}") for r in regions]
        if mask_dir is not None:
            handles += [Line2D([], [], color="k", label="predicted (solid)"),
                        Line2D([], [], color="k", ls="--", label="reference (dashed)")]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
        fig.tight_layout(rect=(0, 0.4 / (3.0 * len(case_ids)), 1, 1))
    return fig


def plot_segmentation_scores(scores: pd.DataFrame, out_of_fold: pd.DataFrame | None = None) -> plt.Figure:
    """Dice and HD95 per region, one point per case; cases the weights were trained on are grey. With
    ``out_of_fold`` (a cross-validated model's scores of these cases, each by the fold model that never saw it:
    ``case_id``, ``dice_<R>``, ``hd95_<R>``), those are drawn beside them in orange, and boxed when no case of the
    cohort is unseen by the shipped model."""
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.9))
    regions = [r for r in ("WT", "TC", "ET") if f"dice_{r}" in scores]
    trained = scores["trained_on"] if "trained_on" in scores else pd.Series(False, index=scores.index)
    oof = out_of_fold if out_of_fold is not None and len(out_of_fold) else None
    kinds = {"not trained on": "#1f77b4", "trained on": "#aaaaaa"}
    if oof is not None:
        kinds["out of fold (CV)"] = "#ff7f0e"
    for ax, metric, label in zip(axes, ("dice", "hd95"), ("Dice", "HD95 (mm)")):
        cols = [f"{metric}_{r}" for r in regions]
        frames = [scores.assign(kind=trained.map({True: "trained on", False: "not trained on"}))]
        if oof is not None:
            frames.append(oof.assign(kind="out of fold (CV)"))
        long = pd.concat([f[["case_id", "kind", *[c for c in cols if c in f]]] for f in frames], ignore_index=True) \
            .melt(id_vars=["case_id", "kind"], value_vars=cols, var_name="region", value_name=label).dropna()
        long["region"] = long["region"].str.split("_").str[1]
        n_inf = int(np.isinf(long[label]).sum())
        if n_inf:   # a region missed or invented entirely: drawn where the official parser puts it
            long[label] = long[label].replace(np.inf, 373.0)
        boxed = "out of fold (CV)" if oof is not None and not (long["kind"] == "not trained on").any() else \
            "not trained on"
        present = [k for k in kinds if (long["kind"] == k).any()]
        held = long[long["kind"] == boxed]
        if len(held):       # in the same dodge slot as its points
            sns.boxplot(data=held, x="region", y=label, hue="kind", hue_order=present, ax=ax, showfliers=False,
                        order=regions, dodge=oof is not None, legend=False,
                        palette={k: "#cfe2f3" if k == "not trained on" else "#fde0c5" for k in present})
        sns.stripplot(data=long, x="region", y=label, hue="kind", ax=ax, size=5, alpha=0.8, order=regions,
                      palette=kinds, hue_order=present, dodge=oof is not None)
        ax.set_title(f"{label} per region (box: {'cases not trained on' if boxed == 'not trained on' else 'out of fold'})"
                     + (f"\n{n_inf} infinite (missed or spurious region) drawn at 373 mm" if n_inf else ""), fontsize=9)
        if metric == "dice":
            ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, loc="lower left" if metric == "dice" else "upper left")
    fig.tight_layout()
    return fig


def plot_train_log(log: pd.DataFrame, *, ax: plt.Axes | None = None) -> plt.Axes:
    """Training loss and held-out whole-tumour Dice (model space) against iterations."""
    ax = ax or plt.gca()
    ax.plot(log["iteration"], log["loss"], color="#1f77b4", label="loss (Dice + CE)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    val = log.dropna(subset=["val_dice_wt"])
    if len(val):
        ax2 = ax.twinx()
        ax2.plot(val["iteration"], val["val_dice_wt"], "o-", color="#d62728", label="held-out WT Dice")
        ax2.set_ylabel("held-out WT Dice (model space)")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Training log")
    return ax


def plot_fold_curves(curve: pd.DataFrame) -> plt.Figure:
    """Cross-validation training curves (:func:`glioma_nb.zoo.cv.training_curve`): the training loss and the
    held-out Dice of each fold model against iterations, with the mean over folds in black."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.0, 3.2), layout="constrained")
    for f, g in curve.groupby("fold"):
        a.plot(g["iteration"], g["loss"], lw=1, alpha=0.8, label=f"fold {f}")
        b.plot(g["iteration"], g["val_dice"], "o-", ms=3, lw=1, alpha=0.8, label=f"fold {f}")
    m = curve.groupby("iteration")[["loss", "val_dice"]].mean().reset_index()
    a.plot(m["iteration"], m["loss"], color="black", lw=2, label="mean")
    b.plot(m["iteration"], m["val_dice"], "o-", color="black", ms=4, lw=2, label="mean")
    a.set(xlabel="iteration", ylabel="training loss (mean since the last validation)", title="Training loss")
    b.set(xlabel="iteration", ylabel="held-out Dice (model space)", ylim=(0, 1), title="Fold validation Dice")
    b.legend(loc="lower right")
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
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 4.6 * len(panels)), squeeze=False)
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


# ------------------------------------------------------------------------------- classification plots
def _node_grid(n: int, width: float = 4.2, height: float = 4.0) -> tuple[plt.Figure, np.ndarray]:
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_axis_off()
    return fig, axes.ravel()


def plot_roc_panels(bands: pd.DataFrame, results: pd.DataFrame) -> plt.Figure:
    """One ROC panel per node: a curve per feature set, AUC [CI] in the legend; the bootstrap 95 % band is drawn
    for the node's headline set only (its highest AUC, drawn solid and on top), the others as lines in their
    own colour and dash (:func:`set_style`), so the curves stay apart in greyscale.

    ``bands``: long frame (node, feature_set, fpr, tpr, tpr_lo, tpr_hi), from :func:`classify.cv.roc_bands`.
    """
    nodes = list(dict.fromkeys(results["node"]))
    fig, axes = _node_grid(len(nodes), width=3.6, height=5.0)
    for ax, node in zip(axes, nodes):
        rows = results[results["node"] == node].sort_values("auc", ascending=False)
        for rank, r in enumerate(rows.itertuples()):
            band = bands[(bands["node"] == node) & (bands["feature_set"] == r.feature_set)]
            colour, dash = set_style(r.feature_set)
            headline = rank == 0
            ax.plot(band["fpr"], band["tpr"], color=colour, ls="-" if headline else dash, lw=2.0 if headline else 1.2,
                    zorder=3 if headline else 2,
                    label=f"{r.feature_set}: {r.auc:.2f} [{r.auc_lo:.2f}-{r.auc_hi:.2f}]" + (" *" if headline else ""))
            if headline:
                ax.fill_between(band["fpr"], band["tpr_lo"], band["tpr_hi"], color=colour, alpha=0.18, lw=0, zorder=1)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
        n = int(rows["n"].max())
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{node} (n={n})", xlim=(0, 1), ylim=(0, 1.01),
               aspect="equal")
        ax.legend(title="AUC [95% CI]; * shaded: its 95% CI", loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  handlelength=2.6, borderpad=0.3, labelspacing=0.25, frameon=False)
    fig.tight_layout()
    return fig


def plot_calibration_panels(curves: pd.DataFrame, best: pd.DataFrame) -> plt.Figure:
    """Reliability curve (quantile bins) of each node's best feature set, with slope and intercept.

    ``curves``: long frame (node, feature_set, mean_predicted, fraction_positive), from
    :func:`classify.cv.calibration_curves`."""
    fig, axes = _node_grid(len(best))
    for ax, (_, r) in zip(axes, best.iterrows()):
        d = curves[(curves["node"] == r["node"]) & (curves["feature_set"] == r["feature_set"])]
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="ideal")
        ax.plot(d["mean_predicted"], d["fraction_positive"], "o-", label=f"slope {r['calibration_slope']:.2f}, "
                                                                         f"intercept {r['calibration_intercept']:+.2f}")
        ax.set(xlabel="predicted probability", ylabel="observed fraction positive", xlim=(0, 1), ylim=(0, 1),
               title=f"{r['node']} ({r['feature_set']})")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_decision_panels(curves: pd.DataFrame, best: pd.DataFrame) -> plt.Figure:
    """Decision curves (net benefit) of each node's best set and the baseline, vs treat all / none.

    ``curves``: long frame (node, curve, threshold, net_benefit, prevalence) with curve = a feature set or
    ``treat all``, from :func:`classify.cv.decision_curves`."""
    fig, axes = _node_grid(len(best))
    for ax, (_, r) in zip(axes, best.iterrows()):
        d = curves[curves["node"] == r["node"]]
        for i, (name, c) in enumerate((n, c) for n, c in d.groupby("curve", sort=False) if n != "treat all"):
            ax.plot(c["threshold"], c["net_benefit"], color=f"C{i}", label=name)
        everyone = d[d["curve"] == "treat all"]
        if len(everyone):
            ax.plot(everyone["threshold"], everyone["net_benefit"], color="grey", ls="--", label="treat all")
            ax.axhline(0, color="black", lw=0.8, label="treat none")
            ax.set_ylim(-0.05, max(0.1, float(everyone["prevalence"].iloc[0]) * 1.1))
        ax.set(xlabel="threshold probability", ylabel="net benefit", title=r["node"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_confusion_panels(best: pd.DataFrame) -> plt.Figure:
    """Confusion matrix at probability 0.5 of each node's best feature set."""
    fig, axes = _node_grid(len(best), width=3.4, height=3.2)
    for ax, (_, r) in zip(axes, best.iterrows()):
        m = np.array([[r["tn"], r["fp"]], [r["fn"], r["tp"]]], dtype=int)
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
        ax.set_xticks([0, 1], ["pred. 0", "pred. 1"])
        ax.set_yticks([0, 1], ["true 0", "true 1"])
        ax.set_title(f"{r['node']} ({r['feature_set']})\nbal. acc. {r['balanced_accuracy']:.2f}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_diagnosis_confusion(cascade: pd.DataFrame, *, ax: plt.Axes | None = None) -> plt.Axes:
    """True vs predicted WHO CNS5 diagnosis (counts), from the end-to-end cascade."""
    ax = ax or plt.gca()
    tab = pd.crosstab(cascade["true_diagnosis"], cascade["pred_diagnosis"])
    ax.imshow(tab.to_numpy(), cmap="Greens")
    top = tab.to_numpy().max()
    for (i, j), v in np.ndenumerate(tab.to_numpy()):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_xticks(range(tab.shape[1]), [t.replace(", ", ",\n") for t in tab.columns], fontsize=7, rotation=30,
                  ha="right")
    ax.set_yticks(range(tab.shape[0]), [t.replace(", ", ",\n") for t in tab.index], fontsize=7)
    ax.set_xlabel("predicted diagnosis (from predicted markers)")
    ax.set_ylabel("reference diagnosis (from reference markers)")
    ax.set_title("WHO CNS5 integrated diagnosis, cross-validated end to end")
    return ax


def plot_top_features(tops: dict[str, pd.DataFrame]) -> plt.Figure:
    """Horizontal bars of the selected features' weights in each node's final model."""
    fig, axes = _node_grid(len(tops), width=5.0, height=3.6)
    for ax, (title, df) in zip(axes, tops.items()):
        df = df.iloc[::-1]
        ax.barh(range(len(df)), df["weight"], color=np.where(df["weight"] >= 0, "#dd8452", "#4c72b0"))
        ax.set_yticks(range(len(df)), [f[:45] for f in df["feature"]], fontsize=7)
        ax.axvline(0, color="black", lw=0.8)
        ax.xaxis.set_major_locator(plt.MaxNLocator(4))
        ax.set_xlabel(df["kind"].iloc[0] if len(df) else "")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ stratification plots
def _message_figure(text: str) -> plt.Figure:
    """A small figure that says why there is nothing to plot."""
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    return fig


def plot_consensus(results: dict[str, Any]) -> plt.Figure:
    """Per clustered subgroup: the consensus matrix of the chosen k (cases ordered by cluster), the
    consensus CDF for every k, and PAC / stability against k."""
    done = {n: r for n, r in results.items() if r.model is not None}
    if not done:
        return _message_figure("no subgroup could be clustered (see the notes above)")
    fig, axes = plt.subplots(len(done), 3, figsize=(15, 4.4 * len(done)), squeeze=False)
    for row, (name, r) in zip(axes, done.items()):
        m = r.model
        order = np.argsort(m.labels_, kind="stable")
        im = row[0].imshow(m.consensus_[m.best_k_][np.ix_(order, order)], cmap="Blues", vmin=0, vmax=1,
                           interpolation="nearest")
        bounds = np.cumsum(np.bincount(m.labels_))[:-1] - 0.5
        for b in bounds:
            row[0].axhline(b, color="k", lw=0.8)
            row[0].axvline(b, color="k", lw=0.8)
        row[0].set_title(f"{name}: consensus matrix, k={m.best_k_} (n={len(m.labels_)})")
        row[0].set_xlabel("cases (ordered by cluster)")
        row[0].set_ylabel("cases (ordered by cluster)")
        fig.colorbar(im, ax=row[0], fraction=0.046, label="fraction clustered together")
        for k in m.ks_:
            x, y = m.cdf(k)
            row[1].step(x, y, where="post", label=f"k={k}", lw=2.2 if k == m.best_k_ else 1.2)
        row[1].set_xlabel("consensus index")
        row[1].set_ylabel("CDF")
        row[1].set_title("consensus CDF (flat middle = clean clusters)")
        row[1].legend(fontsize=8)
        s = m.summary()
        row[2].plot(s["k"], s["pac"], "o-", label="PAC (lower is better)")
        row[2].plot(s["k"], s["stability_ari"], "s-", label="stability (mean ARI)")
        row[2].axvline(m.best_k_, color="grey", ls=":", label="chosen k")
        row[2].set_xlabel("k")
        row[2].set_ylim(-0.05, 1.05)
        row[2].set_xticks(s["k"])
        row[2].set_title("choice of k")
        row[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cluster_km(results: dict[str, Any], *, time_unit: str = "months") -> plt.Figure:
    """Kaplan-Meier by consensus cluster (with at-risk tables) per subgroup, log-rank P in the title."""
    done = {n: r for n, r in results.items() if r.survival is not None}
    if not done:
        return _message_figure("no clustered subgroup has survival data with events")
    fig, axes = plt.subplots(len(done), 1, figsize=(7, 4.6 * len(done)), squeeze=False)
    for ax, (name, r) in zip(axes[:, 0], done.items()):
        plot_km(r.survival["surv"], "cluster", ax=ax, time_unit=time_unit)
        lr = r.survival["logrank"]
        ax.set_title(f"{name}: survival by consensus cluster"
                     + (f" (log-rank P = {lr['p_value']:.3g})" if lr else " (log-rank not possible)"))
    fig.tight_layout()
    return fig


def plot_forest(table: pd.DataFrame, *, ax: plt.Axes | None = None, title: str = "Cox hazard ratios") -> plt.Axes:
    """Hazard ratios with 95% CIs (log scale), one row per model and covariate."""
    if table.empty:
        ax = ax or plt.gca()
        ax.text(0.5, 0.5, "no Cox model could be fitted (see the notes)", ha="center", va="center")
        ax.set_axis_off()
        return ax
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.45 * len(table) + 1.5))
    y = np.arange(len(table))[::-1]
    # near-separation gives HRs of 1e6 or CIs to infinity: draw them at the axis limits 1e-3 / 1e3
    hr = np.clip(table["hr"].to_numpy(dtype=float), 1e-3, 1e3)
    lo = np.minimum(np.clip(table["hr_low"].to_numpy(dtype=float), 1e-3, 1e3), hr)
    hi = np.maximum(np.clip(table["hr_high"].to_numpy(dtype=float), 1e-3, 1e3), hr)
    ax.errorbar(hr, y, xerr=[hr - lo, hi - hr], fmt="s", color="k", ecolor="grey", capsize=3)
    ax.axvline(1, color="red", ls="--", lw=1)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y)
    ax.set_yticklabels([f"{m}: {c}" for m, c in zip(table["model"], table["covariate"])], fontsize=8)
    ax.set_xlabel("hazard ratio (95% CI), log scale; > 1 = worse survival")
    ax.set_title(title)
    return ax


def plot_survival_calibration(calib: pd.DataFrame, *, ax: plt.Axes | None = None, title: str = "",
                              time_unit: str = "months") -> plt.Axes:
    """Predicted vs Kaplan-Meier observed survival at a horizon, by groups of predicted risk."""
    ax = ax or plt.gca()
    err = [calib["observed"] - calib["observed_low"], calib["observed_high"] - calib["observed"]]
    ax.errorbar(calib["predicted"], calib["observed"], yerr=err, fmt="o", capsize=4)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(f"predicted survival at {calib['horizon'].iloc[0]:.1f} {time_unit} (mean out-of-fold)")
    ax.set_ylabel("observed survival (Kaplan-Meier, 95% CI)")
    ax.set_title(title or "survival calibration by risk group")
    ax.legend(fontsize=8)
    return ax


def plot_risk_panels(groups: pd.DataFrame | None, calibration: pd.DataFrame | None = None, *, name: str = "",
                     logrank_p: float | None = None, split: str = "median", horizon: float = 24.0,
                     time_unit: str = "months") -> plt.Figure:
    """Kaplan-Meier of out-of-fold risk groups (log-rank P) beside the survival calibration at ``horizon``.

    ``groups``: cases with time, event and ``risk_group``; ``calibration``: from
    :func:`stratify.risk.survival_calibration`; both None when no risk model was fitted."""
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    if groups is None:
        for ax in axes:
            ax.text(0.5, 0.5, "no risk model could be fitted", ha="center", va="center")
            ax.set_axis_off()
        return fig
    plot_km(groups, "risk_group", ax=axes[0], time_unit=time_unit)
    axes[0].set_title(f"{name}: out-of-fold risk groups ({split})"
                      + (f", log-rank P = {logrank_p:.3g}" if logrank_p is not None else ""))
    plot_survival_calibration(calibration, ax=axes[1], time_unit=time_unit,
                              title=f"{name}: calibration by risk tertile near {horizon:.0f} {time_unit}")
    fig.tight_layout()
    return fig


def plot_family_counts(counts: pd.DataFrame) -> plt.Figure:
    """Features per family before and after the stability filter, one panel per source."""
    sources = list(dict.fromkeys(counts["source"])) if not counts.empty else []
    if not sources:
        return _message_figure("no filtered feature source (network signature or radiomics)")
    fig, axes = plt.subplots(1, len(sources), figsize=(6.5 * len(sources), 4.2), squeeze=False)
    for ax, src in zip(axes[0], sources):
        part = counts[counts["source"] == src].set_index("family")[["unfiltered", "kept"]]
        part.plot.barh(ax=ax, color=["lightgrey", "tab:blue"], width=0.8)
        ax.set_xscale("symlog")
        ax.set_xlabel("features (log scale)")
        ax.set_ylabel("family")
        ax.set_title(f"{src}: {int(part['unfiltered'].sum())} -> {int(part['kept'].sum())} features")
        ax.invert_yaxis()
    fig.tight_layout()
    return fig


def plot_icc(filters: Mapping[str, Any], *, threshold: float | None = None) -> plt.Figure:
    """Distribution of ICC(3,1) per source (features with an ICC), with the keep threshold."""
    items = [(n, f.report_["icc"].dropna()) for n, f in filters.items() if f.report_["icc"].notna().any()]
    if not items:
        return _message_figure("no ICC: the filters were fitted without perturbed re-extractions")
    fig, axes = plt.subplots(1, len(items), figsize=(5.5 * len(items), 3.8), squeeze=False)
    for ax, (name, icc) in zip(axes[0], items):
        ax.hist(icc.clip(-1, 1), bins=np.linspace(-1, 1, 41), color="tab:blue")
        thr = threshold if threshold is not None else filters[name].icc_threshold
        ax.axvline(thr, color="k", ls="--", label=f"threshold {thr:g}")
        ax.set_xlabel("ICC(3,1) across perturbations")
        ax.set_ylabel("features")
        ax.set_title(f"{name}: {int((icc >= thr).sum())} of {len(icc)} features stable")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_feature_map(image: np.ndarray, mask: np.ndarray, fmap: np.ndarray, *, title: str = "",
                     label: str = "feature value") -> plt.Figure:
    """An axial slice with the tumour contour and a voxel-wise feature map over it."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for ax in axes:
        ax.imshow(_radiological(image), cmap="gray")
        ax.contour(_radiological(mask.astype(float)), levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_axis_off()
    axes[0].set_title("image, tumour contour")
    im = axes[1].imshow(_radiological(np.ma.masked_invalid(fmap)), cmap="magma", alpha=0.85)
    axes[1].set_title("voxel-wise map")
    fig.colorbar(im, ax=axes[1], fraction=0.046, label=label)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------- validation
HARMONISATION_STYLE = {"none": ("C1", "-"), "combat": ("C2", "--")}


def plot_shift(shift: Mapping[tuple[str, str], pd.DataFrame], threshold: float = 0.5) -> plt.Figure:
    """Histogram of |standardised mean difference| (validation - training) per feature table, one
    panel per table, before and after harmonisation; the dotted line marks ``threshold``."""
    sources = list(dict.fromkeys(s for s, _ in shift))
    if not sources:
        return _message_figure("no feature table shared by the training and validation runs")
    fig, axes = _node_grid(len(sources), 4.6, 3.6)
    for ax, src in zip(axes, sources):
        for (s, harm), t in shift.items():
            if s != src or t.empty:
                continue
            v = t["smd"].abs().clip(upper=5).to_numpy()
            colour, _ = HARMONISATION_STYLE.get(harm, ("C0", "-"))
            ax.hist(v, bins=np.linspace(0, 5, 41), alpha=0.55, color=colour,
                    label=f"{harm}: median {np.median(v):.2f}, {np.mean(v > threshold):.0%} > {threshold:g}")
        ax.axvline(threshold, ls=":", color="grey")
        ax.set(xlabel="|standardised mean difference| (clipped at 5)", ylabel="features",
               title=f"{src} ({len(shift.get((src, 'none'), []))} features)")
        ax.legend(fontsize=7, title="harmonisation", title_fontsize=7)
    fig.suptitle("Site shift of the validation cohort against the training cohort", y=1.02)
    fig.tight_layout()
    return fig


def plot_shifted_features(train: pd.DataFrame, val: pd.DataFrame, harmonised: pd.DataFrame | None,
                          shift: pd.DataFrame, n: int = 4) -> plt.Figure:
    """The ``n`` most shifted features: training, validation and harmonised validation values."""
    top = shift.reindex(shift["smd"].abs().sort_values(ascending=False).index).head(n)
    if top.empty:
        return _message_figure("no shared features")
    fig, axes = plt.subplots(1, len(top), figsize=(3.4 * len(top), 3.6), squeeze=False)
    for ax, r in zip(axes[0], top.itertuples()):
        data = [train[r.feature].dropna(), val[r.feature].dropna()]
        labels = ["training", "validation"]
        if harmonised is not None and r.feature in harmonised:
            data.append(harmonised[r.feature].dropna())
            labels.append("validation\nComBat")
        ax.boxplot(data, showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.plot(np.random.default_rng(i).normal(i, 0.05, len(d)), d, ".", alpha=0.5, ms=4)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
        name = r.feature if len(r.feature) <= 38 else r.feature[:18] + "…" + r.feature[-18:]
        ax.set_title(f"{name}\nSMD {r.smd:+.2f}", fontsize=8)
    fig.tight_layout()
    return fig


def _chosen_panels(chosen: pd.DataFrame) -> tuple[plt.Figure, list[tuple[Any, str, str, pd.DataFrame]]]:
    """One panel per node of a training-chosen table: (figure, [(ax, node, feature set, its rows)])."""
    nodes = list(dict.fromkeys(chosen["node"])) if len(chosen) else []
    if not nodes:
        return _message_figure("no node has labelled validation cases of both classes"), []
    fig, axes = _node_grid(len(nodes))
    return fig, [(ax, n, chosen.loc[chosen["node"] == n, "feature_set"].iloc[0], chosen[chosen["node"] == n])
                 for ax, n in zip(axes, nodes)]


def plot_validation_roc(curves: pd.DataFrame, chosen: pd.DataFrame) -> plt.Figure:
    """Per node (its training-chosen feature set): ROC of the training cross-validation (out-of-fold)
    and of the locked model on the validation cohort, raw and harmonised, with AUCs.

    ``curves``: long frame (node, source, n, auc, fpr, tpr) with source ``training CV`` or a
    harmonisation, from :func:`validate.apply.validation_roc_curves`."""
    fig, panels = _chosen_panels(chosen)
    for ax, node, fs, _ in panels:
        for source, d in curves[curves["node"] == node].groupby("source", sort=False):
            colour, ls = ("C0", "-") if source == "training CV" else HARMONISATION_STYLE.get(source, ("C3", "-"))
            label = source if source == "training CV" else f"validation, {source}"
            ax.plot(d["fpr"], d["tpr"], color=colour, ls=ls, label=f"{label} (n={int(d['n'].iloc[0])}): "
                                                                   f"{d['auc'].iloc[0]:.2f}")
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{node} ({fs})", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(title="AUC", fontsize=7, title_fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_validation_calibration(curves: pd.DataFrame, chosen: pd.DataFrame) -> plt.Figure:
    """Reliability of the locked models on the validation cohort (quantile bins), raw and harmonised.

    ``curves``: long frame (node, harmonisation, mean_predicted, fraction_positive), from
    :func:`validate.apply.validation_calibration_curves`."""
    fig, panels = _chosen_panels(chosen)
    for ax, node, fs, c in panels:
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="ideal")
        for r in c.itertuples():
            d = curves[(curves["node"] == node) & (curves["harmonisation"] == r.harmonisation)]
            if d.empty:
                continue
            colour, ls = HARMONISATION_STYLE.get(r.harmonisation, ("C3", "-"))
            slope = getattr(r, "calibration_slope", np.nan)
            ax.plot(d["mean_predicted"], d["fraction_positive"], "o", color=colour, ls=ls,
                    label=f"{r.harmonisation}: slope {slope:.2f}")
        ax.set(xlabel="predicted probability", ylabel="observed fraction positive", xlim=(0, 1), ylim=(0, 1),
               title=f"{node} ({fs}), validation")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_study_forest(table: pd.DataFrame, *, ax: plt.Axes | None = None) -> plt.Axes:
    """Training CV and validation estimates (95% CI) of the Dice, AUC and C-index rows of a headline table."""
    t = table[table["metric"].str.startswith(("AUC", "C-index", "Dice"))].reset_index(drop=True)
    ax = ax or plt.subplots(figsize=(8, 0.5 * max(len(t), 2) + 1.5))[1]
    if t.empty:
        ax.text(0.5, 0.5, "no AUC, C-index or Dice to show", ha="center")
        ax.set_axis_off()
        return ax
    y = np.arange(len(t))[::-1]
    for off, (col, colour, label) in zip((0.15, -0.15), (("train_cv", "C0", "training run (CV; Dice: its held-out cases)"),
                                                          ("validation", "C1", "validation"))):
        v, lo, hi = (t[col].to_numpy(float), t[f"{col}_lo"].to_numpy(float), t[f"{col}_hi"].to_numpy(float))
        err = np.vstack([v - lo, hi - v])
        ax.errorbar(v, y + off, xerr=np.where(np.isfinite(err), err, 0), fmt="o", color=colour, label=label, capsize=3)
    ax.axvline(0.5, ls=":", color="grey", lw=1)
    labels = [f"{m} [{h}]" if h != "none" else m for m, h in zip(t["metric"], t["harmonisation"])]
    if "validation_cohort" in t:
        labels = [f"{lab} - {c}" for lab, c in zip(labels, t["validation_cohort"])]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set(xlabel="estimate (95% CI); dotted: chance for AUC and C-index", xlim=(0, 1.02))
    ax.legend(fontsize=8, loc="lower left")
    return ax


def plot_flow(table: pd.DataFrame, *, title: str = "") -> plt.Figure:
    """The participant flow of each analysis (a :mod:`glioma_nb.flow` table) as CONSORT-style boxes: cases in,
    excluded by first reason, analysed; one panel per analysis."""
    import textwrap

    analyses = list(dict.fromkeys(table["analysis"])) if len(table) else []
    if not analyses:
        return _message_figure("no analysis with a participant flow")
    cols = min(len(analyses), 3)
    rows = int(np.ceil(len(analyses) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    main = dict(boxstyle="round,pad=0.45", fc="#eef2f7", ec="#3b4a5a", lw=0.8)
    side = dict(boxstyle="round,pad=0.45", fc="#fbf3e6", ec="#8a6d3b", lw=0.8)
    for ax, analysis in zip(axes.ravel(), analyses):
        t = table[table["analysis"] == analysis]
        n_in = int(t.loc[t["stage"] == "in", "n"].sum())
        n_out = int(t.loc[t["stage"] == "analysed", "n"].sum())
        excl = t[t["stage"] == "excluded"]
        ax.set(xlim=(0, 1), ylim=(0, 1))
        x = 0.2
        ax.text(x, 0.86, f"in\nn = {n_in}", ha="center", va="center", bbox=main)
        ax.text(x, 0.12, f"analysed\nn = {n_out}", ha="center", va="center", bbox=main, fontweight="bold")
        ax.annotate("", xy=(x, 0.24), xytext=(x, 0.74), arrowprops=dict(arrowstyle="-|>", color="#3b4a5a", lw=1))
        lines = [textwrap.fill(f"{r.reason}: {r.n}", 36, subsequent_indent="  ") for r in excl.itertuples()]
        ax.annotate("excluded (first reason)\n" + ("\n".join(lines) if lines else "none"), xy=(x, 0.49),
                    xytext=(0.42, 0.49), ha="left", va="center", fontsize=plt.rcParams["font.size"] - 1.5, bbox=side,
                    arrowprops=dict(arrowstyle="<|-", color="#8a6d3b", lw=0.8))
        ax.set_title(textwrap.fill(analysis, 46), fontsize=plt.rcParams["axes.titlesize"] - 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------- serial scans
def plot_growth(scans: pd.DataFrame, patients: pd.DataFrame, *, cut: float = 8.0, ax: plt.Axes | None = None,
                time_unit: str = "years") -> plt.Axes:
    """Spaghetti plot: mean tumour diameter of each patient's scans over time, coloured by VDE group, with the
    scan that first showed malignant transformation marked (x)."""
    ax = ax or plt.subplots(figsize=(7.5, 4.8))[1]
    colours = {}
    groups = patients.get("vde_group", pd.Series(dtype=object))
    per_year = {"days": 365.25, "months": 12.0, "years": 1.0}[time_unit]
    for pid, g in scans.groupby("patient_id"):
        grp = groups.get(pid)
        name = grp if isinstance(grp, str) else "no VDE (one scan)"
        colour = colours.setdefault(name, {"slow": "#1f77b4", "fast": "#d62728"}.get(name.split(" ")[0], "grey"))
        g = g.sort_values("days")
        t = g["years"] * per_year
        ax.plot(t, g["mtd_mm"], "-o", color=colour, lw=0.9, ms=2.5, alpha=0.75)
        if pid in patients.index and patients.loc[pid, "event"] == 1:
            hit = g[g["days"] == patients.loc[pid, "scan_days"]]
            ax.plot(hit["years"] * per_year, hit["mtd_mm"], "x", color="k", ms=7, mew=1.6)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", ms=3, label=f"{n} (n={int((groups == n).sum())})")
               for n, c in colours.items()]
    handles.append(Line2D([], [], color="k", marker="x", ls="", ms=7, label="malignant transformation"))
    ax.legend(handles=handles, loc="upper left", framealpha=0.85)
    ax.set_xlabel(f"time from the first scan ({time_unit})")
    ax.set_ylabel("mean tumour diameter (mm), (2V)^(1/3)")
    ax.set_title(f"Tumour growth per patient, coloured by velocity of diametric expansion (cut {cut:g} mm/year)")
    return ax


def plot_vde_recovery(pairs: dict[str, pd.DataFrame]) -> plt.Figure:
    """Measured against planted VDE (one panel per source of volumes: predicted, reference masks), identity line."""
    fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(4.2 * max(len(pairs), 1), 4.0), squeeze=False)
    for ax, (name, d) in zip(axes[0], pairs.items()):
        ax.scatter(d["planted"], d["measured"], s=14, alpha=0.8)
        lim = [0, float(np.nanmax([d["planted"].max(), d["measured"].max(), 1.0])) * 1.05]
        ax.plot(lim, lim, "k--", lw=1, label="identity")
        ax.set_xlim(lim)
        ax.set_ylim(min(0, float(d["measured"].min()) * 1.05), lim[1])
        ax.set_xlabel("planted VDE (mm/year)")
        ax.set_ylabel("measured VDE (mm/year)")
        ax.set_title(f"VDE from {name} masks (n={len(d)})")
        ax.legend(loc="upper left")
    fig.tight_layout()
    return fig
