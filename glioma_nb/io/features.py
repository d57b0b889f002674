"""Feature sets: the clinical baseline and joins of the image feature tables (``a+b``, ``all``)."""
from __future__ import annotations

import pandas as pd


# ----------------------------------------------------------------------------------- feature sets
def clinical_features(clinical: pd.DataFrame, volumes: pd.DataFrame | None = None) -> pd.DataFrame:
    """The clinical baseline: age, sex (1 = male) and, when a volumetric table exists, tumour volume."""
    c = clinical.set_index("case_id")
    out = pd.DataFrame(index=c.index)
    if "age" in c:
        out["age"] = pd.to_numeric(c["age"], errors="coerce")
    if "sex" in c:
        out["sex_male"] = c["sex"].map({"M": 1.0, "F": 0.0})
    if volumes is not None:
        vol = [col for col in volumes.columns if col.startswith("WT__volume")]
        if vol:
            out["WT_volume_ml"] = volumes[vol[0]].reindex(out.index)
    return out.loc[:, out.notna().any()]


def assemble_feature_sets(sources: dict[str, pd.DataFrame], requested: list[str],
                          aliases: dict[str, str] | None = None) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Feature sets from named sources. ``"a+b"`` joins sources a and b; ``"all"`` joins every source
    except the column families (``table.family``) of a table already in it.

    Columns are prefixed ``<source>:`` so that sets mixing sources keep unique, traceable names.
    A set with a missing source is skipped, and a set identical to an earlier one is dropped; both
    come back as notes, and ``aliases`` (when given) receives dropped name -> the name kept.
    """
    notes: list[str] = []
    sets: dict[str, pd.DataFrame] = {}
    seen: dict[tuple[str, ...], str] = {}
    for name in requested:
        # all: every table; families (``table.family``, column subsets of a table) are not added again
        parts = sorted(s for s in sources if "." not in s) if name == "all" else name.split("+")
        if not parts:
            notes.append(f"feature set '{name}' skipped: no features in this run")
            continue
        missing = [p for p in parts if p not in sources]
        if missing:
            notes.append(f"feature set '{name}' skipped: no {', '.join(missing)} features in this run")
            continue
        key = tuple(sorted(parts))
        if key in seen:
            if aliases is not None:
                aliases[name] = seen[key]
            notes.append(f"feature set '{name}' is the same as '{seen[key]}' here (sources {list(key)}); shown once")
            continue
        seen[key] = name
        frames = [sources[p].add_prefix(f"{p}:") for p in parts]
        sets[name] = pd.concat(frames, axis=1, join="outer")
    return sets, notes
