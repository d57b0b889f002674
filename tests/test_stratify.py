"""Stratification: known survival answers, clustering of planted structure, Cox recovery of a
simulated hazard ratio, cross-validated risk models, and clear refusals on bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from glioma_nb import records, reporting, synthetic
from glioma_nb.stratify import clustering, cox, risk, subgroups, survival

# Freireich et al. 1963 leukaemia remission times (weeks), the textbook log-rank example
# (Kleinbaum & Klein, Survival Analysis, ch. 2: log-rank chi-square 16.79, P < 0.0001).
SIX_MP = [(6, 1), (6, 1), (6, 1), (6, 0), (7, 1), (9, 0), (10, 1), (10, 0), (11, 0), (13, 1), (16, 1), (17, 0),
          (19, 0), (20, 0), (22, 1), (23, 1), (25, 0), (32, 0), (32, 0), (34, 0), (35, 0)]
PLACEBO = [(t, 1) for t in (1, 1, 2, 2, 3, 4, 4, 5, 5, 8, 8, 8, 8, 11, 11, 12, 12, 15, 17, 22, 23)]


def _leukaemia() -> pd.DataFrame:
    rows = [(t, e, "6-MP") for t, e in SIX_MP] + [(t, e, "placebo") for t, e in PLACEBO]
    return pd.DataFrame(rows, columns=["time", "event", "arm"])


def _exp_survival(n: int, beta: np.ndarray, X: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Exponential survival with hazard exp(X beta), uniform administrative censoring."""
    rng = np.random.default_rng(seed)
    t = rng.exponential(1 / np.exp(X @ beta))
    c = rng.uniform(0.5, 3.0, n)
    return pd.DataFrame({"time": np.minimum(t, c), "event": (t <= c).astype(int)})


# ------------------------------------------------------------------------------------ known answers
def test_km_median_and_logrank_match_the_textbook():
    d = _leukaemia()
    lr = survival.logrank(d, "arm")
    assert lr["test_statistic"] == pytest.approx(16.79, abs=0.01)
    assert lr["p_value"] < 1e-4
    km = survival.km_summary(d, "arm").set_index("group")
    assert km.loc["placebo", "median"] == 8        # Kleinbaum & Klein: median 8 weeks placebo
    assert km.loc["6-MP", "median"] == 23          # and 23 weeks 6-MP
    assert km.loc["6-MP", "events"] == 9


def test_km_by_hand():
    d = pd.DataFrame({"time": [1, 2, 3, 4, 5], "event": [1, 1, 0, 1, 1]})
    # S(1)=0.8, S(2)=0.6, S(4)=0.3: the median is 4
    assert survival.km_summary(d)["median"].iloc[0] == 4


def test_trend_test_sees_monotone_but_not_u_shaped_hazards():
    rng = np.random.default_rng(3)
    g = np.repeat([0, 1, 2], 80)
    mono = pd.DataFrame({"time": rng.exponential(1 / np.exp(0.5 * g)), "event": 1, "g": g})
    u = pd.DataFrame({"time": rng.exponential(1 / np.exp(np.where(g == 1, 1.2, 0.0))), "event": 1, "g": g})
    assert survival.logrank_trend(mono, "g")["p_value"] < 0.01
    assert survival.logrank(u, "g")["p_value"] < 0.01          # the groups differ...
    assert survival.logrank_trend(u, "g")["p_value"] > 0.05    # ...but not in order
    # the trend statistic is a 1-df projection of the k-1 df log-rank statistic
    assert survival.logrank_trend(mono, "g")["test_statistic"] <= survival.logrank(mono, "g")["test_statistic"] + 1e-9
    assert survival.logrank_trend(mono[mono.g < 2], "g") is None  # 2 groups: use the log-rank test


def test_time_is_converted_once_from_days():
    clin = pd.DataFrame({"case_id": ["a", "b"], "os_days": [365.25, 365.25 / 12], "os_event": [1, 0]})
    assert survival.survival_frame(clin, "years")["time"].tolist() == pytest.approx([1.0, 1 / 12])
    assert survival.survival_frame(clin, "months")["time"].tolist() == pytest.approx([12.0, 1.0])
    with pytest.raises(ValueError, match="unit"):
        survival.survival_frame(clin, "weeks")


def test_c_index_of_perfect_and_reversed_order():
    t = np.arange(1, 21, dtype=float)
    oof = pd.DataFrame({"time": t, "event": 1, "risk": -t})
    m = survival.survival_metrics(oof, n_bootstrap=20)
    assert m["c_harrell"] == 1.0 and m["c_uno"] == pytest.approx(1.0)
    m = survival.survival_metrics(oof.assign(risk=t), n_bootstrap=20)
    assert m["c_harrell"] == 0.0


# ------------------------------------------------------------------------------------------ Cox
def test_cox_recovers_a_simulated_hazard_ratio():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, 400).astype(float)
    d = _exp_survival(400, np.array([np.log(2.0)]), x[:, None])
    fit = cox.fit_cox(d, pd.DataFrame({"x": x}))
    row = fit.table.set_index("covariate").loc["x"]
    assert row["hr_low"] < 2.0 < row["hr_high"]
    assert row["p"] < 0.01 and row["hr"] > 1.3


def test_cox_on_the_synthetic_hazard_model_covers_every_simulated_log_hr():
    df = synthetic.sample_clinical(600, np.random.default_rng(1))
    surv = survival.survival_frame(df, "months")
    design, _ = cox.cox_design(surv, None, ["age", "kps", "resection", "who_grade", "idh_mutant", "codel_1p19q"])
    design["risk_group"] = surv["risk_group"]
    design["mgmt_in_idhwt"] = surv["mgmt_methylated"] * (1 - surv["idh_mutant"])
    t = cox.fit_cox(surv, design).table.set_index("covariate")
    for cov, true in synthetic.HAZARD_LOG_HR.items():
        assert t.loc[cov, "coef_low"] <= true <= t.loc[cov, "coef_high"], cov


def test_cox_refuses_with_reasons_instead_of_crashing():
    d = pd.DataFrame({"time": np.arange(1, 13, dtype=float), "event": [1, 0] * 6})
    few = cox.fit_cox(d, pd.DataFrame({"a": np.arange(12.0), "b": np.arange(12.0) ** 2}))
    assert few.table.empty and "too few events" in few.notes[-1]
    no_events_in_level = cox.fit_cox(d, pd.DataFrame({"g": [0, 1] * 6}, dtype=float),
                                          min_events_per_variable=1)
    assert no_events_in_level.table.empty and "no events where g = 1" in no_events_in_level.notes[-1]
    assert "no covariate" in cox.fit_cox(d, pd.DataFrame(index=d.index)).notes[-1]
    # every death of group 1 comes after the last follow-up of group 0: the likelihood has no maximum
    sep = pd.DataFrame({"time": [1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15.0], "event": [1] * 12})
    mono = cox.fit_cox(sep, pd.DataFrame({"g": [1.0] * 6 + [0.0] * 6}), min_events_per_variable=1)
    assert mono.table.empty and "quasi-complete separation" in mono.notes[-1]
    a = np.random.default_rng(0).normal(size=12)
    collinear = cox.fit_cox(d.assign(event=1), pd.DataFrame({"a": a, "b": 2 * a}), min_events_per_variable=1)
    assert collinear.table.empty and "did not converge" in collinear.notes[-1]


def test_cluster_survival_notes_a_cluster_without_events():
    d = pd.DataFrame({"time": np.arange(1, 21, dtype=float), "event": [1] * 10 + [0] * 10,
                      "cluster": [0] * 10 + [1] * 10})
    out = clustering.cluster_survival(d, "cluster", [], horizon=10)
    assert any("have no events" in n for n in out["notes"])
    assert out["cox_unadjusted"].table.empty
    assert out["logrank"]["p_value"] < 0.001


# ----------------------------------------------------------------------------------- clustering
def test_consensus_clustering_finds_two_blobs_and_not_noise():
    X, y = make_blobs(60, n_features=8, centers=2, cluster_std=1.0, random_state=0)
    blobs = clustering.ConsensusClustering(k_max=4, n_resamples=25).fit(pd.DataFrame(X))
    assert blobs.best_k_ == 2
    assert blobs.pac_[2] < 0.05 and blobs.stability_[2] > 0.95
    assert adjusted_rand_score(y, blobs.labels_) == 1.0
    noise = clustering.ConsensusClustering(k_max=4, n_resamples=25).fit(
        pd.DataFrame(np.random.default_rng(0).normal(size=(60, 8))))
    assert min(noise.pac_.values()) > 0.3
    assert max(noise.stability_.values()) < 0.8


def test_centroid_assignment_reproduces_training_labels_and_assigns_new_cases():
    X, y = make_blobs(80, n_features=6, centers=3, cluster_std=0.8, random_state=1)
    train, new = pd.DataFrame(X[:60]).add_prefix("f"), pd.DataFrame(X[60:]).add_prefix("f")
    m = clustering.ConsensusClustering(k=3, n_resamples=20).fit(train)
    assert (m.predict(train) == m.labels_).all() and m.self_assignment_ == 1.0
    assert adjusted_rand_score(y[60:], m.predict(new[train.columns[::-1]])) == 1.0  # columns by name
    with pytest.raises(KeyError, match="missing"):
        m.predict(new.drop(columns=["f0"]))


def test_cluster_subgroups_finds_planted_prognostic_groups_and_skips_small_subgroups():
    rng = np.random.default_rng(4)
    n = 60
    group = np.repeat([0, 1], n // 2)
    feats = pd.DataFrame(rng.normal(size=(n, 6)) + 2.5 * group[:, None],
                         index=[f"c{i}" for i in range(n)]).add_prefix("f")
    t = rng.exponential(1 / np.exp(1.2 * group)) * 365.25
    clin = pd.DataFrame({"case_id": feats.index, "os_days": t, "os_event": 1, "who_grade": [4] * 57 + [2] * 3,
                         "idh_mutant": 0, "age": rng.normal(60, 10, n)})
    res = clustering.cluster_subgroups(clin, feats, ["all", "idhwt_lgg", "triple_negative_gbm"], n_resamples=20,
                                     adjust_for=["age"])
    r = res["all"]
    assert r.model.best_k_ == 2 and adjusted_rand_score(group, r.labels) == 1.0
    assert r.survival["logrank"]["p_value"] < 0.01
    hr = r.survival["cox_unadjusted"].table.set_index("covariate")["hr"]
    high = int(pd.Series(r.labels.to_numpy()).groupby(group).mean()[1])  # label of the planted high-hazard group
    assert (hr.iloc[0] > 1) == (high == 1)                            # HR in the planted direction
    assert "fewer than 2k" in res["idhwt_lgg"].notes[-1]
    assert not any("handful" in n for n in r.notes)
    assert "tertp_mutant" in res["triple_negative_gbm"].notes[0]
    table = clustering.cluster_table(res)
    assert table.set_index("subgroup").loc["all", "k"] == 2


def test_subgroup_presets_and_queries():
    clin = pd.DataFrame({"case_id": list("abcdef"), "idh_mutant": [0, 0, 1, 0, np.nan, 0],
                         "who_grade": [2, 3, 2, 4, 3, 4], "codel_1p19q": [0, 0, 1, 0, np.nan, 0],
                         "os_days": [100] * 6, "os_event": [1, 0, 1, 1, 0, 0]})
    sg = subgroups.select_subgroup(clin, "idhwt_lgg")
    assert sg.case_ids == ["a", "b"] and sg.events == 1
    assert "1 cases lack" in sg.problems[0]
    assert subgroups.select_subgroup(clin, "who_grade == 4").case_ids == ["d", "f"]
    tn = subgroups.select_subgroup(clin, "triple_negative_gbm")
    assert tn.n == 0 and "tertp_mutant" in tn.problems[0]
    with pytest.raises(ValueError, match="canonical clinical column"):
        subgroups.select_subgroup(clin, "idh_mutant ==")


# ---------------------------------------------------------------------------------- risk models
def test_cv_risk_model_finds_a_planted_signal_and_not_noise():
    rng = np.random.default_rng(5)
    n = 150
    X = pd.DataFrame(rng.normal(size=(n, 8)), index=[f"c{i}" for i in range(n)]).add_prefix("f")
    surv = _exp_survival(n, np.array([1.0] + [0.0] * 7), X.to_numpy(), seed=6).set_index(X.index)
    signal = risk.cv_risk_model(X, surv, repeats=1, n_bootstrap=100, horizons=[0.5, 1.0, 99.0])
    assert signal.metrics["c_harrell_low"] > 0.6
    assert signal.metrics["auc_t1"] > 0.6 and signal.metrics["ibs"] < signal.metrics["ibs_km_reference"]
    assert any("outside the follow-up" in n for n in signal.notes)
    assert signal.oof["risk"].notna().all() and len(signal.survival) == n
    _, table, _ = risk.evaluate_risk_models(
        {"all": X.add_prefix("volumetric:").assign(**{"resection:gtr": 1.0 * (X["f1"] > 0)}),
         "image": X.add_prefix("volumetric:")}, surv, repeats=1, n_bootstrap=20)
    assert table.set_index("feature_set")["variant"].to_dict() == {"all": "post-operative", "image": "pre-operative"}
    noise = risk.cv_risk_model(X.drop(columns=["f0"]), surv, repeats=1, n_bootstrap=100)
    assert noise.metrics["c_harrell_low"] < 0.5 < noise.metrics["c_harrell_high"] + 0.05


def test_tuned_coxnet_is_a_scikit_learn_estimator():
    """clone / get_params / set_params as for any estimator; score is Harrell's C of predict (scikit-survival's)."""
    from sklearn.base import clone
    from sksurv.metrics import concordance_index_censored
    from sksurv.util import Surv

    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 4))
    surv = _exp_survival(80, np.array([1.0, 0, 0, 0]), X, seed=4)
    y = Surv.from_arrays(surv["event"].astype(bool), surv["time"])
    est = risk.TunedCoxnet(l1_ratio=0.9, inner_splits=3, random_state=2)
    twin = clone(est).set_params(inner_splits=4)
    assert twin.get_params()["l1_ratio"] == 0.9 and twin.get_params()["inner_splits"] == 4
    assert not hasattr(twin, "best_alpha_") and est.get_params()["inner_splits"] == 3
    est.fit(X, y)
    c = concordance_index_censored(surv["event"].astype(bool), surv["time"], est.predict(X))[0]
    assert est.score(X, y) == pytest.approx(c) and c > 0.65
    assert np.array_equal(clone(est).fit(X, y).predict(X), est.predict(X))      # same params, same model


def test_risk_model_refuses_too_few_events():
    X = pd.DataFrame({"a": np.arange(30.0)}, index=[f"c{i}" for i in range(30)])
    surv = pd.DataFrame({"time": np.arange(1, 31.0), "event": [1] * 8 + [0] * 22}, index=X.index)
    with pytest.raises(ValueError, match="too few events"):
        risk.cv_risk_model(X, surv)
    results, table, notes = risk.evaluate_risk_models({"a": X}, surv)
    assert not results and table.empty and "too few events" in notes[0]


def test_survival_sources_leave_out_what_the_cohort_lacks():
    clin = pd.DataFrame({"case_id": ["a", "b", "c"], "age": [50, 60, 70], "sex": ["M", "F", "M"],
                         "who_grade": [2, 3, 4], "idh_mutant": [1, 0, 0], "resection": [np.nan] * 3})
    src = risk.survival_sources(clin, {"volumetric": pd.DataFrame({"v": [1.0, 2.0]}, index=["a", "c"])})
    assert set(src) == {"age", "clinical", "molecular", "volumetric"}     # no resection values: no source
    assert list(src["molecular"].columns) == ["grade3", "grade4", "idh_wildtype"]
    assert np.isnan(src["volumetric"].loc["b", "v"])


def test_saved_models_predict_identically(tmp_path):
    rng = np.random.default_rng(7)
    X = pd.DataFrame(rng.normal(size=(60, 3)), index=[f"c{i}" for i in range(60)]).add_prefix("f")
    surv = _exp_survival(60, np.array([1.0, 0, 0]), X.to_numpy()).set_index(X.index)
    search = risk.fit_final_risk(X, surv)
    rec = risk.final_risk_record(X, surv, name="risk__x", feature_set="x")
    records.save(rec, tmp_path / "r.joblib")
    again = records.load(tmp_path / "r.joblib")
    assert again.kind == "risk" and again.meta["feature_set"] == "x" and again.meta["events"] == int(surv["event"].sum())
    assert np.allclose(again.predict(X[X.columns[::-1]]), search.predict(X.to_numpy()))
    assert again.meta["training_risk_median"] == pytest.approx(float(np.median(search.predict(X.to_numpy()))))
    with pytest.raises(FileExistsError):
        records.save(rec, tmp_path / "r.joblib")


def test_clinical_cox_uses_what_the_cohort_records():
    df = synthetic.sample_clinical(300, np.random.default_rng(2))
    surv = survival.survival_frame(df.drop(columns=["kps"]), "months")
    fit = cox.clinical_cox(surv)
    assert "kps is not recorded" in fit.notes[0]
    t = fit.table.set_index("covariate")
    assert {"age_per_10y", "idh_wildtype", "grade4", "gtr"} <= set(t.index) and "kps_per_10" not in t.index
    assert t.loc["idh_wildtype", "hr"] > 1 and t.loc["age_per_10y", "hr"] > 1
    assert "apparent (in-sample) concordance" in reporting.fit_sentence(fit)


def test_k_is_never_chosen_with_clusters_smaller_than_min_cluster_size():
    rng = np.random.default_rng(0)
    X = pd.DataFrame(np.vstack([rng.normal(0, 0.5, (8, 4)), rng.normal(8, 0.5, (8, 4)), rng.normal(4, 0.3, (2, 4))]))
    m = clustering.ConsensusClustering(k_max=4, n_resamples=20).fit(X)
    assert m.pac_[3] < m.pac_[2]                     # PAC alone would split off the pair in between...
    assert m.best_k_ == 2 and np.bincount(m.labels_).min() >= 3   # ...but clusters of 2 say nothing
    assert clustering.ConsensusClustering(k_max=4, n_resamples=20, min_cluster_size=2).fit(X).best_k_ == 3


def test_forest_plot_draws_extreme_hazard_ratios_at_the_axis_limits():
    import matplotlib

    matplotlib.use("Agg")
    from glioma_nb import plotting

    t = pd.DataFrame({"model": ["m", "m"], "covariate": ["a", "b"], "hr": [2e6, 0.5], "hr_low": [3.0, 0.2],
                      "hr_high": [np.inf, 1.1]})
    ax = plotting.plot_forest(t)
    assert len(ax.get_yticklabels()) == 2 and ax.get_xscale() == "log"


def test_paired_comparison_of_risk_models_finds_the_informative_one():
    """Survival times driven by x: a risk equal to x beats a random risk (C difference CI above 0)."""
    from glioma_nb.stratify import survival

    rng = np.random.default_rng(11)
    n = 150
    x = rng.normal(size=n)
    t = rng.exponential(np.exp(-x)) * 365
    c = rng.exponential(2, n) * 365
    oof = pd.DataFrame({"time": np.minimum(t, c), "event": (t <= c).astype(int)}, index=[f"p{i}" for i in range(n)])
    oofs = {"x": oof.assign(risk=x), "noise": oof.assign(risk=rng.normal(size=n)), "other": oof.assign(risk=x)}
    table = survival.compare_risks(oofs, [("x", "noise"), ("x", "missing")], n_bootstrap=200)
    assert len(table) == 1 and table.loc[0, "n"] == n   # a pair with an absent model is left out
    r = table.iloc[0]
    assert r["c_harrell_a"] > 0.65 and r["c_harrell_difference_low"] > 0 and r["c_uno_difference_low"] > 0
    same = survival.compare_risks(oofs, [("x", "other")], n_bootstrap=50).iloc[0]
    assert same["c_harrell_difference"] == 0 and same["c_harrell_p"] == 1.0


def test_vectorised_c_indices_equal_scikit_survival():
    """Harrell and Uno C (and the resampled Harrell C of the bootstrap) are scikit-survival's, ties included."""
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw

    from glioma_nb.stratify import survival

    rng = np.random.default_rng(5)
    for _ in range(30):
        n = int(rng.integers(8, 80))
        t = np.round(rng.exponential(10, n)) + 1            # tied times
        e = rng.random(n) < 0.6
        r = np.round(rng.normal(size=n), 1)                # tied risks
        if e.sum() < 2:
            continue
        tau = float(np.percentile(t[e], 90))
        y = survival._structured(t, e)
        assert survival.harrell_c(t, e, r) == pytest.approx(concordance_index_censored(e, t, r)[0], abs=1e-12)
        assert survival.uno_c(t, e, r, tau) == pytest.approx(concordance_index_ipcw(y, y, r, tau=tau)[0], abs=1e-12)
        resample = survival.HarrellResampler(t, e, r)
        idx = rng.integers(0, n, n)
        if e[idx].any():
            assert resample(idx) == pytest.approx(concordance_index_censored(e[idx], t[idx], r[idx])[0], abs=1e-12)


def test_rmst_second_moment_is_the_exact_integral_of_the_kaplan_meier_step_function():
    """2 * integral_0^tau t S(t) dt in closed form, against a dense numerical integral of the same step function;
    lifelines' quad of the same integral is within half a percent (it warns on the steps)."""
    import warnings

    from lifelines import KaplanMeierFitter
    from lifelines.utils import restricted_mean_survival_time

    from glioma_nb.stratify.survival import km_second_moment, rmst

    rng = np.random.default_rng(0)
    T = np.round(rng.exponential(20, 40), 1)
    E = rng.random(40) < 0.7
    kmf = KaplanMeierFitter().fit(T, E)
    tau = float(np.percentile(T, 80))
    grid = np.linspace(0, tau, 2_000_001)
    sf = kmf.survival_function_.iloc[:, 0]
    dense = 2 * np.trapezoid(grid * sf.to_numpy()[np.searchsorted(sf.index.to_numpy(), grid, side="right") - 1], grid)
    exact = km_second_moment(kmf, tau)
    assert exact == pytest.approx(dense, rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean, var = restricted_mean_survival_time(kmf, t=tau, return_variance=True)
    assert exact == pytest.approx(var + mean ** 2, rel=5e-3)
    table = rmst(pd.DataFrame({"time": T, "event": E, "g": "all"}), "g", tau)
    assert table["rmst"].iloc[0] == pytest.approx(mean, rel=1e-12)
    assert table["rmst_se"].iloc[0] == pytest.approx(np.sqrt(exact - mean ** 2), rel=1e-12)


def test_a_cox_fit_with_too_few_events_per_covariate_says_the_rule_and_what_would_fit():
    rng = np.random.default_rng(0)
    surv = pd.DataFrame({"time": rng.uniform(1, 100, 40), "event": [1] * 21 + [0] * 19},
                        index=[f"c{i}" for i in range(40)])
    design = pd.DataFrame(rng.normal(size=(40, 9)), index=surv.index, columns=[f"x{j}" for j in range(9)])
    fit = cox.fit_cox(surv, design, min_events_per_variable=5)
    assert fit.table.empty and fit.events == 21
    assert any("21 events for 9 covariates (need 5 per covariate, min_events_per_variable: at least 45 events, or "
               "at most 4 covariates)" in n for n in fit.notes), fit.notes
    assert not cox.fit_cox(surv, design.iloc[:, :4], min_events_per_variable=5).table.empty


def test_td_auc_and_ibs_carry_bootstrap_cis_that_cover_the_estimate():
    """Every headline number of a risk model has its 95% CI: Harrell/Uno C, time-dependent AUC, IBS."""
    rng = np.random.default_rng(0)
    n = 120
    x = rng.normal(size=n)
    t = rng.exponential(1000 * np.exp(-0.7 * x))
    c = rng.uniform(200, 3000, n)
    oof = pd.DataFrame({"time": np.minimum(t, c), "event": t <= c, "risk": x})
    grid = np.linspace(50, 2500, 30)
    surv = pd.DataFrame(np.exp(-np.outer(np.exp(0.7 * x), grid) / 1000), columns=grid)
    m = survival.survival_metrics(oof, surv, horizons=[365.25], n_bootstrap=100)
    for k in ("c_harrell", "auc_t365.25", "ibs"):
        assert m[f"{k}_low"] < m[k] < m[f"{k}_high"], (k, m)
    assert m["auc_t365.25_low"] > 0.5            # the planted risk (log HR 0.7) is found at one year
    assert m["ibs_high"] - m["ibs_low"] < 0.15
    shown = reporting.risk_table(pd.DataFrame([{**m, "feature_set": "x", "variant": "all", "n": n, "events": 1,
                                                "n_features": 1}]))
    assert shown.loc[0, "td-AUC at 365.25"] == f"{m['auc_t365.25']:.3f} [{m['auc_t365.25_low']:.3f}-{m['auc_t365.25_high']:.3f}]"
    assert "IBS" in shown and "auc_t365.25_low" not in shown


def test_a_displayed_table_has_its_caption_and_columns_in_words():
    from glioma_nb.results import StepResult

    res = StepResult()
    res.tables["km_summary"] = pd.DataFrame({"group": ["a"], "median": [10.0], "median_ci_low": [8.0], "ph_p": [0.3],
                                             "auc_t730.5": [0.7], "dice_WT_n": [3], "hd95_ET": [4.0]})
    html = reporting.table_html(res.tables["km_summary"])
    assert "<caption" in html and "Kaplan-Meier per group" in html
    for words in ("median 95% CI low", "PH test P (Schoenfeld)", "time-dependent AUC at t = 730.5", "n (Dice WT)",
                  "HD95 ET (mm)"):
        assert f"<th>{words}</th>" in html, words
    assert list(res.tables["km_summary"].columns)[2] == "median_ci_low"   # the saved table keeps its names
    res.frames.update(anything_new=pd.DataFrame({"a_b": [1]}))
    assert "Anything new." in reporting.table_html(res.frames["anything_new"])
    assert "<caption" not in reporting.table_html(pd.DataFrame({"x": [1]}))  # a frame nobody named


def test_the_bootstrap_replicates_equal_scikit_survivals_own_calls_resample_by_resample():
    """td-AUC and IBS CIs come from all resamples at once; each replicate is what scikit-survival returns on that
    resample (its refusals are NaN here), ties in the risk scores included."""
    from sksurv.metrics import cumulative_dynamic_auc, integrated_brier_score

    from glioma_nb.stats import bootstrap_indices

    rng = np.random.default_rng(4)
    n = 60
    x = np.round(rng.normal(size=n), 1)                       # rounded: tied risk scores
    t = np.round(rng.exponential(900 * np.exp(-0.6 * x)) + 1)
    c = rng.uniform(100, 2500, n)
    time, event = np.minimum(t, c), t <= c
    y = survival._structured(time, event)
    grid = np.linspace(np.quantile(time, 0.1), np.quantile(time, 0.8), 12)
    surv = np.exp(-np.outer(np.exp(0.6 * x), grid) / 900)
    boots = bootstrap_indices(n, 40, 3)
    counts = np.stack([np.bincount(i, minlength=n) for i in boots])
    h = float(np.quantile(time, 0.5))
    auc_rep = survival.td_auc_replicates(y, x, h, counts)
    ibs_rep = survival.ibs_replicates(y, surv, grid, counts)
    checked = 0
    for k, idx in enumerate(boots):
        try:
            ref = cumulative_dynamic_auc(y, y[idx], x[idx], [h])[0][0]
        except ValueError:
            assert np.isnan(auc_rep[k])
            continue
        assert auc_rep[k] == pytest.approx(ref, abs=1e-12)
        assert ibs_rep[k] == pytest.approx(integrated_brier_score(y, y[idx], surv[idx], grid), abs=1e-12)
        checked += 1
    assert checked >= 35


def test_c_index_replicates_equal_scikit_survivals_calls_resample_by_resample():
    """Harrell's and Uno's C of every resample at once (notebook 04's CIs): each equals scikit-survival's
    concordance_index_censored / concordance_index_ipcw on that resample (Uno's censoring distribution refitted
    on it), tied times and risks included; the resamples scikit-survival refuses (fewer than 2 events, a zero
    censoring probability) are NaN."""
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw

    from glioma_nb.stats import bootstrap_indices

    checked, refused = 0, 0
    for seed, n in ((0, 12), (1, 30), (2, 45)):
        rng = np.random.default_rng(seed)
        t = np.round(rng.exponential(10, n)) + 1                 # rounded: tied times
        e = rng.random(n) < 0.6
        x = np.round(rng.normal(size=n), 1)                      # tied risks
        tau = survival.uno_tau(t, e)
        boots = bootstrap_indices(n, 60, seed)
        counts = np.stack([np.bincount(i, minlength=n) for i in boots])
        harrell = survival.c_index_replicates(t, e, x, counts)
        uno = survival.c_index_replicates(t, e, x, counts, tau=tau)
        for k, idx in enumerate(boots):
            y = survival._structured(t[idx], e[idx])
            try:
                if e[idx].sum() < 2:
                    raise ValueError("fewer than 2 events")
                ref_h = concordance_index_censored(e[idx], t[idx], x[idx])[0]
                ref_u = concordance_index_ipcw(y, y, x[idx], tau)[0]
            except ValueError:
                assert np.isnan(uno[k])
                refused += 1
                continue
            assert harrell[k] == pytest.approx(ref_h, abs=1e-12) and uno[k] == pytest.approx(ref_u, abs=1e-12)
            checked += 1
    assert checked >= 150 and refused >= 1
