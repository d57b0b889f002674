"""What a validation run takes from its reference (training) run: the locked settings, and the check that
the validation cohort can feed the reference run's models."""
from __future__ import annotations

import copy
import json
from typing import Any, Mapping

import pandas as pd

from glioma_nb import paths, runs
from glioma_nb.runs import Reference, ValidationError
from glioma_nb.segment import registry as seg_registry

#: steps of a validation run: nothing is refitted, so 03_classify and 04_stratify do not run
VALIDATION_STEPS = ("01_segment", "02_signature", "05_validate")


#: settings a validation run takes from its reference run (the models only make sense with them)
LOCKED_KEYS = ("segment.model", "segment.weights", "segment.overlap", "segment.tta",
               "signature.intensity_percentiles", "signature.mask", "signature.network", "signature.radiomics",
               "signature.location_features",
               "classify.diagnosis_features", "stratify.time_unit_report", "stratify.risk_split",
               "stratify.calibration_years", "stratify.horizons_years", "stratify.adjust_for")


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    sec, key = dotted.split(".", 1)
    return cfg[sec][key]


def lock_config(cfg: dict[str, Any], ref: Reference) -> tuple[dict[str, Any], pd.DataFrame]:
    """The validation run's config with the reference run's locked settings; and a table of them.

    ``segment.model`` becomes the model the reference actually used (``auto`` resolved); a model the
    reference trained in its own run is used from its ``models/``. The stability filters come from the
    reference (``signature.filter_from``). Differences from what the validation cohort's own config
    said are listed (``overridden`` True): the reference run's value wins.
    """
    out = copy.deepcopy(cfg)
    seg = ref.metrics("01_segment")
    values = {k: _get(ref.config, k) for k in LOCKED_KEYS}
    if seg.get("model"):
        values["segment.model"] = seg["model"]
    if ref.config["segment"].get("train"):
        found = ref.models_of("segmentation")  # runs written before model records: the weights' usual place
        w = ref.run_dir / (found[0][1].meta["weights"] if found else f"models/segment__{seg.get('model')}/weights.pt")
        if not w.exists():
            raise ValidationError(f"reference run {ref.run_id} trained its segmentation model but {paths.display_path(w)} "
                                  "is missing; rerun the training cohort")
        values["segment.weights"] = str(w)
        values["segment.train"] = False
    values["signature.filter_from"] = str(ref.run_dir)
    rows = []
    for k, v in values.items():
        before = _get(cfg, k)
        sec, key = k.split(".", 1)
        out[sec][key] = v
        rows.append({"setting": k, "value": json.dumps(v, default=str), "validation_cohort_config": json.dumps(before, default=str),
                     "overridden": before != v and k != "signature.filter_from"})
    out["validate"]["reference_run"] = str(ref.run_dir)
    table = pd.DataFrame(rows)
    table["value"] = table["value"].map(lambda s: runs.scrub_text(s))
    table["validation_cohort_config"] = table["validation_cohort_config"].map(lambda s: runs.scrub_text(s))
    return out, table


def check_compatible(cfg: Mapping[str, Any], ref: Reference) -> None:
    """Refuse a validation cohort that cannot take the reference run's models: a modality the
    segmentation model needs is absent, or the reference extracted features the cohort cannot give."""
    name = cfg["segment"]["model"]
    have = list(cfg["cohort"]["modalities"])
    who = f"validation cohort {cfg['cohort']['name']}"
    if name not in (None, "none", "auto", ""):
        used = ref.metrics("01_segment").get("model_fingerprint")
        if used and seg_registry.is_registered(name):
            entry, folder = seg_registry.read_entry(name)
            if seg_registry.fingerprint(entry) != used:
                raise ValidationError(
                    f"the registered model {name} ({paths.display_path(folder)}) holds other files than when the reference "
                    f"run {ref.run_id} used it; register the files the reference used (under a new name, and rerun the "
                    "training cohort with it) or rerun the training cohort with the model as it is now")
        spec = seg_registry.describe(name)        # a shipped or a registered model
        lacking = [m for m in spec["modalities"] if m not in have]
        if lacking:
            raise ValidationError(
                f"{who} lacks {', '.join(lacking)}, which the reference run's segmentation model {name} needs "
                f"(it reads {', '.join(spec['modalities'])}; the cohort has {', '.join(have) or 'no images'}). "
                f"Validate against a reference run whose model this cohort can feed (e.g. a training run with "
                f"--set segment.model=flair-wt), or add the missing modalities to the cohort")
