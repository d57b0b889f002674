"""Prognostic subgroups as declarative queries on the canonical clinical table."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from glioma_nb.io import CLINICAL_COLUMNS
from glioma_nb.stratify.survival import survival_frame

# ---------------------------------------------------------------------------------------------- subgroups
#: Declarative subgroup queries on the canonical clinical table (pandas ``DataFrame.query`` syntax).
SUBGROUPS: dict[str, str] = {
    "all": "",
    "lgg": "who_grade in [2, 3]",
    "gbm": "who_grade == 4",
    "idhwt_lgg": "idh_mutant == 0 and who_grade in [2, 3]",
    "idhmut": "idh_mutant == 1",
    "triple_negative_gbm": "idh_mutant == 0 and codel_1p19q == 0 and tertp_mutant == 0 and who_grade == 4",
}


@dataclass
class Subgroup:
    """Cases of a subgroup, with its survival size and any reason it cannot be analysed."""

    name: str
    query: str
    case_ids: list[str]
    n: int
    events: int
    problems: list[str] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([{"subgroup": self.name, "query": self.query or "(all cases)", "n_cases": self.n,
                              "events": self.events, "problems": "; ".join(self.problems)}])


def select_subgroup(clinical: pd.DataFrame, subgroup: str = "all") -> Subgroup:
    """Cases matching a preset name of :data:`SUBGROUPS` or a query string on canonical columns.

    A query naming a column this cohort does not have, or has no values for (TCGA has no TERTp),
    gives an empty subgroup with the reason in ``problems``, not an error.
    """
    query = SUBGROUPS.get(subgroup, subgroup)
    surv = survival_frame(clinical, "days")
    problems: list[str] = []
    if not query:
        ids = clinical["case_id"].astype(str).tolist()
    else:
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query))
        used = sorted(w for w in words if w in CLINICAL_COLUMNS or w in clinical.columns)
        empty = [c for c in used if c not in clinical.columns or clinical[c].isna().all()]
        if empty:
            problems.append(f"subgroup '{subgroup}' needs {', '.join(empty)}, which this cohort does not record")
            ids = []
        else:
            try:
                ids = clinical.query(query, engine="python")["case_id"].astype(str).tolist()
            except Exception as exc:  # pandas raises many types for a bad query
                raise ValueError(f"subgroup query {query!r} failed ({exc}); use canonical clinical column "
                                 f"names, e.g. {SUBGROUPS['idhwt_lgg']!r}") from exc
            n_missing = int(clinical[used].isna().any(axis=1).sum())
            if n_missing:
                problems.append(f"{n_missing} cases lack one of {', '.join(used)} and cannot be placed in the subgroup")
    in_surv = surv[surv["case_id"].astype(str).isin(ids)]
    if ids and not len(in_surv):
        problems.append("no case of the subgroup has survival data (os_days, os_event)")
    return Subgroup(name=subgroup, query=query, case_ids=ids, n=len(ids), events=int(in_surv["event"].sum()),
                    problems=problems)


def subgroup_table(clinical: pd.DataFrame, subgroups: Sequence[str]) -> pd.DataFrame:
    """Size and event count of each subgroup, with the reasons a subgroup cannot be analysed."""
    if not subgroups:
        return pd.DataFrame(columns=["subgroup", "query", "n_cases", "events", "problems"])
    return pd.concat([select_subgroup(clinical, s).summary() for s in subgroups], ignore_index=True)
