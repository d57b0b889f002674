"""Survival stratification (notebook 04): subgroups, consensus clusters and their survival, Cox models,
cross-validated penalised Cox risk models.

``survival``    survival frames, Kaplan-Meier, log-rank (and trend), RMST, C-indices, td-AUC, IBS
``subgroups``   prognostic subgroups as queries on the canonical clinical table
``cox``         Cox fits that turn "cannot be estimated" into notes; hazard-ratio tables
``clustering``  Monti consensus clustering per subgroup and the survival of its clusters
``risk``        Coxnet risk models: tuned, cross-validated, refitted and locked as model records
``truth``       the planted truth of synthetic cohorts
``step``        notebook 04's one call: :func:`step.step` -> :class:`step.StratifyResult`

Libraries do the statistics: lifelines (Kaplan-Meier, log-rank, Cox with the proportional-hazards test,
RMST), scikit-survival (Coxnet, Harrell/Uno C-index, time-dependent AUC, integrated Brier score),
scikit-learn (PCA, k-means, Ward, ARI). Written here is only what none of them has: Monti-style consensus
clustering with PAC and resampling stability, the log-rank test for trend, and the bookkeeping that turns
every "cannot be estimated" into a message instead of a crash or a silent NaN.
"""
