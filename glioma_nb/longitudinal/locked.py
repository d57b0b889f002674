"""Locked models of serial cohorts: the time-to-transformation and OS models that notebook 06 of a training run
refitted on every patient (``models/transformation__<set>.joblib``, ``models/os__<set>.joblib``), applied
unchanged to another serial cohort (``longitudinal.reference_run``): Harrell and Uno C-index with bootstrap CIs,
and risk groups cut at the *training* median risk with the log-rank test."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from glioma_nb import provenance, records
from glioma_nb.io import features
from glioma_nb.stratify import survival

#: the outcomes notebook 06 fits models of (the ``outcome`` of a record's meta)
OUTCOMES = ("transformation", "os")


def locked_models(run_dir: Path) -> list[tuple[Path, records.ModelRecord]]:
    """Notebook 06's locked risk models in a run folder (records of kind ``risk`` with an ``outcome``)."""
    return [(p, rec) for p in records.find(Path(run_dir) / "models", "risk")
            for rec in [records.load(p)] if rec.meta.get("outcome") in OUTCOMES]


def apply_locked(models: list[tuple[Path, records.ModelRecord]], sources: Mapping[str, pd.DataFrame],
                 outcomes: Mapping[str, pd.DataFrame], *, n_bootstrap: int = 500, random_state: int = 0
                 ) -> tuple[pd.DataFrame, list[str]]:
    """Each locked model on this cohort's patients: its feature set assembled from ``sources`` as in training,
    risks predicted, C-index (bootstrap CIs) against the outcome (``outcomes[o]``: time, event by patient),
    risk groups at the training median risk. A model this cohort cannot feed is skipped with the reason."""
    rows, notes = [], []
    for path, rec in models:
        o, fs = rec.meta["outcome"], rec.meta["feature_set"]
        surv = outcomes.get(o)
        sets, set_notes = features.assemble_feature_sets(dict(sources), [fs])
        if fs not in sets or surv is None or surv.empty:
            notes.append(f"locked {o} model {fs}: not applicable here ({'; '.join(set_notes) or 'no outcome'})")
            continue
        X = sets[fs].loc[lambda d: d.index.isin(surv.index)]
        try:
            risk = rec.predict(X)
        except KeyError as exc:
            notes.append(f"locked {o} model {fs}: {exc.args[0]}")
            continue
        d = surv.join(risk, how="inner").dropna(subset=["risk"])
        row = {"outcome": o, "feature_set": fs, "model": path.name, "sha256": provenance.sha256_file(path)[:16],
               "n": len(d), "events": int(d["event"].sum()),
               "training_c_harrell": (rec.meta.get("cv_metrics") or {}).get("c_harrell")}
        if d["event"].sum() >= 2 and len(d) >= 4:
            row.update({k: v for k, v in survival.survival_metrics(
                d, n_bootstrap=n_bootstrap, random_state=random_state).items() if k.startswith("c_")})
            cut = rec.meta.get("training_risk_median")
            if cut is not None:
                g = d.assign(risk_group=(d["risk"] > cut).astype(int))
                lr = survival.logrank(g, "risk_group")
                row.update(training_median_risk=cut, risk_groups_low_high="/".join(
                    str(int((g["risk_group"] == k).sum())) for k in (0, 1)), logrank_p=lr["p_value"] if lr else np.nan)
        else:
            notes.append(f"locked {o} model {fs}: {len(d)} patients, {row['events']} events here: no C-index")
        rows.append(row)
    return pd.DataFrame(rows), notes
