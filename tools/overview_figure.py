"""The README's and the docs home page's figure (docs/assets/overview.png): two figures of a completed synthetic
run stacked (the ROC curves of 03's classifier tree, the cross-validated risk groups of 04), downscaled.

    .venv/bin/python tools/overview_figure.py reports/synthetic/<run_id>
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

PANELS = (("03_classify__roc.png", "03 Classify: ROC curves of each node of the classifier tree, per feature set"),
          ("04_stratify__risk_groups.png", "04 Stratify: cross-validated Cox risk groups and calibration"))


def main(run: str, out: str = "docs/assets/overview.png") -> None:
    figs = Path(run) / "figures"
    imgs = [Image.open(figs / name) for name, _ in PANELS]
    heights = [im.height / im.width for im in imgs]
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(10, 10 * sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights})
    for ax, img, (_, title) in zip(axes, imgs, PANELS):
        img.thumbnail((2000, 2000))
        ax.imshow(img)
        ax.set_title(title, fontsize=11)
        ax.set_axis_off()
    fig.suptitle(f"glioma-nb on the built-in synthetic cohort (run {Path(run).name})", fontsize=12)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"{out}: {Path(out).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main(*sys.argv[1:])
