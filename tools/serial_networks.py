"""Which network to trust for growth: the VDE and hazard-ratio recovery and the Dice of runs on serial scans grown
from real ones (``glioma-nb synth --serial-from``), side by side, as Markdown.

    python tools/serial_networks.py LABEL=RUN_FOLDER [LABEL=RUN_FOLDER ...] [--json OUT]

Each run is a ``glioma-nb run`` on a grown cohort (01 then 06). Per run: VDE from predicted masks against the
planted one (Pearson r with its CI, bias with its CI, slope), the hazard ratio of transformation per mm/year of VDE
from predicted masks with its CI beside the planted one, and the whole-tumour Dice against the planted masks on the
real first scans and on the grown ones (the check that the networks see the grown scans as they see real ones),
split by whether the network trained on the source case.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def _ci(x: pd.Series, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    x = x.dropna().to_numpy(float)
    if len(x) == 0:
        return (np.nan, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    boots = [x[rng.integers(0, len(x), len(x))].mean() for _ in range(n_boot)]
    return float(x.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def _table(run: Path, name: str) -> pd.DataFrame:
    """A table of the run, or of the run it builds on (a 06 run on an earlier run's 01)."""
    path = run / "tables" / f"{name}.csv"
    if not path.exists():
        up = json.loads((run / "manifest.json").read_text()).get("upstream")
        if up:
            return _table(run.parent.parent / up["run_dir"], name)
        return pd.DataFrame()
    return pd.read_csv(path)


def summarise(label: str, run: Path) -> dict:
    vde = _table(run, "vde_recovery").set_index("volumes_from")
    hz = _table(run, "hazard_recovery")
    scores = _table(run, "segmentation_scores")
    scans = _table(run, "segmentation_cases")
    out = {"run": label, "folder": run.name, "patients": int(vde.loc["predicted", "n"]),
           "scans": int(len(scans))}
    p = vde.loc["predicted"]
    out.update(vde_r=p.pearson_r, vde_r_low=p.r_low, vde_r_high=p.r_high, bias=p.bias_mm_per_year,
               bias_low=p.bias_low, bias_high=p.bias_high, slope=p.slope_on_planted, mae=p.mae_mm_per_year)
    if len(hz):
        row = hz[hz["model"].str.startswith("predicted masks") & (hz["covariate"] == "vde_mm_per_year")]
        if len(row):
            r = row.iloc[0]
            out.update(hr_model=r.model, hr=r.hr, hr_low=r.hr_low, hr_high=r.hr_high, planted_hr=r.planted_hr,
                       events=int(r.events))
        ref = hz[hz["model"].str.startswith("reference masks") & (hz["covariate"] == "vde_mm_per_year")]
        if len(ref):
            out.update(hr_reference=ref.iloc[0].hr, hr_reference_low=ref.iloc[0].hr_low,
                       hr_reference_high=ref.iloc[0].hr_high)
    scores["first"] = scores["case_id"].str.endswith("_s0")
    for seen in (False, True):
        part = scores[scores["trained_on"] == seen]
        key = "seen" if seen else "unseen"
        out[f"n_{key}_patients"] = int(part.loc[part["first"], "case_id"].nunique())
        for region in ("WT", "TC", "ET"):
            col = f"dice_{region}"
            if col not in part:
                continue
            out[f"dice_{region}_{key}_real"] = _ci(part.loc[part["first"], col])
            out[f"dice_{region}_{key}_grown"] = _ci(part.loc[~part["first"], col])
    return out


def _fmt(v: tuple[float, float, float]) -> str:
    return "n/a" if v is None or np.isnan(v[0]) else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def markdown(rows: list[dict]) -> str:
    lines = ["| run | patients (scans) | VDE r [95% CI] | bias mm/y [95% CI] | slope | HR per mm/y of VDE "
             "[95% CI] (planted) | HR from reference masks |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        hr = (f"{r['hr']:.2f} [{r['hr_low']:.2f}, {r['hr_high']:.2f}] ({r['planted_hr']:.2f}; {r['events']} events)"
              if "hr" in r else "not estimable")
        ref = (f"{r['hr_reference']:.2f} [{r['hr_reference_low']:.2f}, {r['hr_reference_high']:.2f}]"
               if "hr_reference" in r else "n/a")
        lines.append(f"| {r['run']} | {r['patients']} ({r['scans']}) | {r['vde_r']:.2f} [{r['vde_r_low']:.2f}, "
                     f"{r['vde_r_high']:.2f}] | {r['bias']:+.2f} [{r['bias_low']:+.2f}, {r['bias_high']:+.2f}] | "
                     f"{r['slope']:.2f} | {hr} | {ref} |")
    lines += ["", "| run | source cases | n | WT Dice, real first scans | WT Dice, grown scans | "
                  "TC Dice real / grown | ET Dice real / grown |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for key, words in (("unseen", "not trained on"), ("seen", "trained on")):
            if not r.get(f"n_{key}_patients"):
                continue
            tc = (f"{_fmt(r[f'dice_TC_{key}_real'])} / {_fmt(r[f'dice_TC_{key}_grown'])}"
                  if f"dice_TC_{key}_real" in r else "n/a")
            et = (f"{_fmt(r[f'dice_ET_{key}_real'])} / {_fmt(r[f'dice_ET_{key}_grown'])}"
                  if f"dice_ET_{key}_real" in r else "n/a")
            lines.append(f"| {r['run']} | {words} | {r[f'n_{key}_patients']} | {_fmt(r[f'dice_WT_{key}_real'])} | "
                         f"{_fmt(r[f'dice_WT_{key}_grown'])} | {tc} | {et} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_FOLDER")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    rows = [summarise(*(lambda lab, path: (lab, Path(path)))(*item.split("=", 1))) for item in a.runs]
    print(markdown(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
