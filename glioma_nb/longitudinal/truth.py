"""The planted truth of the synthetic serial cohort (``glioma_nb.synthetic.generate_longitudinal``) and how well
notebook 06 recovers it: VDE against the planted one (correlation, bias with its CI) from predicted and from
reference masks, to separate segmentation error from method error, and the transformation hazard ratios."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats


def serial_truth(cohort_root: Any) -> tuple[pd.DataFrame | None, dict[str, float] | None]:
    """The planted per-patient truth (``truth.csv``, index patient_id) and the log hazard ratios of
    transformation of a synthetic serial cohort; ``(None, None)`` for any other cohort."""
    root = Path(cohort_root)
    meta_file, truth_file = root / "cohort.json", root / "truth.csv"
    if not (meta_file.exists() and truth_file.exists()):
        return None, None
    meta = json.loads(meta_file.read_text())
    if "transformation_log_hazard_ratios" not in meta:
        return None, None
    return pd.read_csv(truth_file).set_index("patient_id"), dict(meta["transformation_log_hazard_ratios"])


def vde_recovery(measured: dict[str, pd.Series], planted: pd.Series, *, n_bootstrap: int = 1000,
                 random_state: int = 0) -> pd.DataFrame:
    """Per source of volumes (name -> VDE per patient): n, Pearson r (Fisher-z 95% CI), bias = mean(measured -
    planted) with its bootstrap 95% CI, mean absolute error and the slope of measured on planted."""
    rows = []
    rng = np.random.default_rng(random_state)
    for name, vde in measured.items():
        d = pd.concat([vde.rename("measured"), planted.rename("planted")], axis=1).dropna()
        n = len(d)
        if n < 4:
            rows.append({"volumes_from": name, "n": n})
            continue
        r = float(np.corrcoef(d["measured"], d["planted"])[0, 1])
        z, se = np.arctanh(np.clip(r, -0.999999, 0.999999)), 1 / np.sqrt(n - 3)
        diff = (d["measured"] - d["planted"]).to_numpy()
        boots = [diff[rng.integers(0, n, n)].mean() for _ in range(n_bootstrap)]
        rows.append({"volumes_from": name, "n": n, "pearson_r": r, "r_low": float(np.tanh(z - 1.96 * se)),
                     "r_high": float(np.tanh(z + 1.96 * se)), "bias_mm_per_year": float(diff.mean()),
                     "bias_low": float(np.percentile(boots, 2.5)), "bias_high": float(np.percentile(boots, 97.5)),
                     "mae_mm_per_year": float(np.abs(diff).mean()),
                     "slope_on_planted": float(stats.linregress(d["planted"], d["measured"]).slope)})
    return pd.DataFrame(rows)


def hazard_recovery(hazards: pd.DataFrame, log_hr: dict[str, float]) -> pd.DataFrame:
    """The Cox rows (model, covariate, hr, hr_low, hr_high) beside the planted HR, with whether the 95% CI
    covers it. Covariates are matched by name (``vde_mm_per_year`` <- ``vde_per_mm_per_year``)."""
    names = {"vde_mm_per_year": "vde_per_mm_per_year", "idh_wildtype": "idh_wildtype"}
    rows = []
    for r in hazards.itertuples(index=False):
        key = names.get(str(r.covariate))
        if key not in log_hr:
            continue
        planted = float(np.exp(log_hr[key]))
        rows.append({"model": r.model, "covariate": r.covariate, "planted_hr": planted, "hr": r.hr,
                     "hr_low": r.hr_low, "hr_high": r.hr_high, "covered": bool(r.hr_low <= planted <= r.hr_high),
                     "n": r.n, "events": r.events})
    return pd.DataFrame(rows)
