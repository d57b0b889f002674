"""Known answers for the analysis helpers available in the foundation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from glioma_nb.classify import nodes
from glioma_nb.signature import volumetric
from glioma_nb.stratify import survival


def test_km_median_textbook_and_logrank_matches_lifelines():
    from lifelines.statistics import logrank_test

    df = pd.DataFrame({"os_days": [1, 2, 3, 4, 5, 10, 20, 30, 40, 50],
                       "os_event": [1] * 10, "g": ["a"] * 5 + ["b"] * 5})
    surv = survival.survival_frame(df, unit="days")
    s = survival.km_summary(surv, "g").set_index("group")
    assert s.loc["a", "median"] == 3 and s.loc["b", "median"] == 30  # no censoring: the sample median
    ours = survival.logrank(surv, "g")
    ref = logrank_test(surv.time[:5], surv.time[5:], surv.event[:5], surv.event[5:])
    assert ours["p_value"] == pytest.approx(ref.p_value) and ours["p_value"] < 0.05


def test_survival_frame_converts_units_and_drops_missing():
    df = pd.DataFrame({"os_days": [365.25, np.nan, 730.5], "os_event": [1, 1, np.nan]})
    surv = survival.survival_frame(df, unit="years")
    assert surv["time"].tolist() == [1.0] and surv["event"].tolist() == [1]
    with pytest.raises(ValueError, match="unit"):
        survival.survival_frame(df, unit="weeks")


def test_logrank_none_without_two_groups():
    df = pd.DataFrame({"time": [1.0, 2.0], "event": [1, 0], "g": ["a", "a"]})
    assert survival.logrank(df, "g") is None


def test_node_label_table_respects_eligibility():
    clin = pd.DataFrame({"who_grade": [2, 3, 4, 4, 2], "idh_mutant": [1, 1, 0, 0, 1], "codel_1p19q": [1, 0, 0, 0, np.nan],
                         "tertp_mutant": [np.nan] * 5, "mgmt_methylated": [np.nan] * 5})
    t = nodes.node_label_table(clin, min_class_size=1).set_index("node")
    assert t.loc["codel_1p19q", "eligible"] == 3 and t.loc["codel_1p19q", "labelled"] == 2  # IDH-mutant only
    assert t.loc["grade_2_vs_3", "eligible"] == 3 and t.loc["grade_2_vs_3", "positive"] == 1
    assert t.loc["gbm_vs_lgg", "positive"] == 2 and t.loc["gbm_vs_lgg", "negative"] == 3
    assert not t.loc["tertp", "trainable"] and t.loc["idh", "trainable"]


def test_robust_normalise_maps_percentiles_and_keeps_background():
    x = np.zeros((10, 10, 10), np.float32)
    x[2:8, 2:8, 2:8] = np.linspace(100, 200, 216).reshape(6, 6, 6)
    y = volumetric.robust_normalise(x, (0, 100))
    assert y[x == 0].max() == 0 and y[x != 0].min() == pytest.approx(0) and y.max() == pytest.approx(1)


def test_volumetric_features_known_sphere(tiny_cohort):
    from conftest import SPHERE_RADIUS_MM

    from glioma_nb import config, io

    cohort = io.load_cohort(config.resolve_config(str(tiny_cohort)), progress=False)
    f = volumetric.cohort_features(cohort, progress=False)
    expected = 4 / 3 * np.pi * SPHERE_RADIUS_MM ** 3 / 1000
    assert f["WT__volume__ml"].to_numpy() == pytest.approx(expected, rel=0.15)
    # the tumour is 200 units brighter than the brain in every modality
    assert (f["WT__flair__mean"] > 0.6).all()
    assert list(f.index) == ["C00", "C01", "C02"]
