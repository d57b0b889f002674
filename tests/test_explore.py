"""The exploration helpers of JupyterLab (glioma_nb.explore) on planted data: they show what was planted."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import planted_table

from glioma_nb import config, explore, io


def _ctx(clinical: pd.DataFrame, tables: dict | None = None, cohort=None, run_dir: Path | None = None):
    run_dir = run_dir or Path("/nonexistent")
    return SimpleNamespace(clinical=clinical, feature_tables=lambda: dict(tables or {}), config=config.base_config(),
                           cohort=cohort or SimpleNamespace(name="planted", modalities=()), run_dir=run_dir,
                           inputs=run_dir, output_dir=run_dir)


def test_feature_by_label_finds_the_planted_feature_and_its_difference():
    X, y = planted_table(n=80, p=20, signal=1.5, seed=1)
    clinical = pd.DataFrame({"case_id": y.index, "idh_mutant": y.values})
    fig = explore.feature_by_label(_ctx(clinical, {"radiomics": X}), label="idh_mutant")
    title = fig.axes[0].get_title()
    assert title.startswith("f0 by IDH mutant") and float(title.split("P = ")[1]) < 1e-4
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == [f"0\n(n={(y == 0).sum()})", f"1\n(n={(y == 1).sum()})"]
    null = explore.feature_by_label(_ctx(clinical, {"radiomics": X}), "f7", "idh_mutant").axes[0].get_title()
    assert null.startswith("f7 by") and float(null.split("P = ")[1]) > 0.01  # a null feature, named
    with pytest.raises(KeyError, match="no feature 'nope'"):
        explore.feature_by_label(_ctx(clinical, {"radiomics": X}), "nope")
    with pytest.raises(KeyError, match="no column 'kps'.*case_id, idh_mutant"):
        explore.feature_by_label(_ctx(clinical, {"radiomics": X}), "f0", "kps")
    plt.close("all")


def test_km_by_splits_a_number_at_its_median_and_finds_a_planted_hazard():
    rng = np.random.default_rng(0)
    n = 200
    age = rng.uniform(30, 80, n)
    hazard = np.where(age > np.median(age), 3.0, 1.0) / 365  # three times the hazard above the median age
    t = rng.exponential(1 / hazard)
    clinical = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "age": age, "sex": rng.choice(["F", "M"], n),
                             "os_days": np.minimum(t, 3000), "os_event": (t < 3000).astype(int)})
    fig = explore.km_by(_ctx(clinical), "age")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    cut = f"{np.median(age):g}"
    assert labels[0].startswith(f"age split <= {cut} (n=100") and labels[1].startswith(f"age split > {cut} (n=100")
    assert float(ax.get_title().split("P = ")[1].rstrip(")")) < 1e-4
    sex = explore.km_by(_ctx(clinical), "sex").axes[0]  # a category is used as it is; no planted effect
    assert [t.get_text().split(" (")[0] for t in sex.get_legend().get_texts()] == ["sex F", "sex M"]
    with pytest.raises(KeyError, match="no column 'grade'"):
        explore.km_by(_ctx(clinical), "grade")
    plt.close("all")


def test_show_case_draws_the_prediction_when_the_run_has_it(tiny_cohort, tmp_path):
    cfg = config.resolve_config(str(tiny_cohort))
    cohort = io.load_cohort(cfg, progress=False)
    ctx = _ctx(cohort.clinical, cohort=cohort, run_dir=tmp_path)
    ref_only = explore.show_case(ctx, "C01")
    assert "reference regions (no predicted mask)" in ref_only._suptitle.get_text()
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "C01.nii.gz").write_bytes((Path(cohort.root) / "C01" / "C01_seg.nii.gz").read_bytes())
    both = explore.show_case(ctx, "C01")
    assert "prediction solid, reference dashed" in both._suptitle.get_text()
    assert len(both.axes[0].collections) > len(ref_only.axes[0].collections)  # the predicted contours added
    with pytest.raises(KeyError, match="no case 'C09'.*C00, C01, C02"):
        explore.show_case(ctx, "C09")
    plt.close("all")
