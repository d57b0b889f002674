"""The WHO CNS5 integrated diagnosis from the markers (reference) and from the cross-validated node cascade."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from glioma_nb.classify.cv import fit_final
from glioma_nb.classify.nodes import NODES
from glioma_nb.classify.pipelines import FastStratifiedGroupKFold

# ------------------------------------------------------------------------------------ WHO CNS5 rules
CNS5_OLIGO = "Oligodendroglioma, IDH-mut, 1p/19q-codel"


CNS5_ASTRO = "Astrocytoma, IDH-mut"


CNS5_IDHMUT_NOS = "Glioma, IDH-mut, NOS (1p/19q unknown)"


CNS5_GBM = "Glioblastoma, IDH-wt"


CNS5_IDHWT_NOS = "Glioma, IDH-wt, NOS"


CNS5_UNKNOWN = "Unclassified (IDH unknown)"


#: WHO CNS5 (2021) integrated diagnosis from markers, first matching rule wins. Keys: idh (1 mutant),
#: codel (1 codeleted), tertp (1 mutant), gbm (1 = grade 4 / GBM histology); a key that is absent from a
#: rule matches anything; a rule value of None matches a missing marker.
CNS5_RULES: list[tuple[dict[str, int | None], str]] = [
    ({"idh": None}, CNS5_UNKNOWN),
    ({"idh": 1, "codel": 1}, CNS5_OLIGO),
    ({"idh": 1, "codel": 0}, CNS5_ASTRO),
    ({"idh": 1}, CNS5_IDHMUT_NOS),
    ({"idh": 0, "tertp": 1}, CNS5_GBM),
    ({"idh": 0, "gbm": 1}, CNS5_GBM),
    ({"idh": 0}, CNS5_IDHWT_NOS),
]


def cns5_diagnosis(idh: Any = None, codel: Any = None, tertp: Any = None, gbm: Any = None) -> str:
    """Integrated diagnosis from marker values (0/1, or missing) by :data:`CNS5_RULES`."""
    def norm(v: Any) -> int | None:
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else int(v)

    markers = {"idh": norm(idh), "codel": norm(codel), "tertp": norm(tertp), "gbm": norm(gbm)}
    for cond, diagnosis in CNS5_RULES:
        if all(markers[k] == v for k, v in cond.items()):
            return diagnosis
    raise AssertionError("CNS5_RULES must end with catch-all rules")  # pragma: no cover


def true_markers(clinical: pd.DataFrame) -> pd.DataFrame:
    """Reference markers (idh, codel, tertp, gbm) per case from the canonical clinical table."""
    c = clinical.set_index("case_id")
    num = lambda col: pd.to_numeric(c[col], errors="coerce") if col in c else pd.Series(np.nan, index=c.index)  # noqa: E731
    grade = num("who_grade")
    return pd.DataFrame({"idh": num("idh_mutant"), "codel": num("codel_1p19q"), "tertp": num("tertp_mutant"),
                         "gbm": (grade == 4).astype(float).where(grade.notna())})


#: node whose prediction gives each marker of the CNS5 rules
MARKER_NODES = {"idh": "idh", "codel": "codel_1p19q", "tertp": "tertp", "gbm": "gbm_vs_lgg"}


def cascade_cv(X: pd.DataFrame, clinical: pd.DataFrame, nodes: list[str], groups: pd.Series | None = None, *,
               outer_splits: int = 5, random_state: int = 0, **search_kw: Any) -> pd.DataFrame:
    """End-to-end CNS5 diagnosis with error propagation, cross-validated by patient.

    In each outer fold every node in ``nodes`` is tuned and fitted on its eligible, labelled
    training cases and then predicts *every* test case (so the 1p/19q model is applied to whoever
    the IDH model calls mutant). The predicted markers go through :data:`CNS5_RULES`; a marker
    whose node is not in ``nodes`` stays unknown. Returns per case: true and predicted markers
    and diagnoses.
    """
    ref = true_markers(clinical).reindex(X.index)
    groups = pd.Series(groups if groups is not None else X.index, index=X.index)
    ref["diagnosis"] = [cns5_diagnosis(**r) for r in ref[["idh", "codel", "tertp", "gbm"]].to_dict("records")]
    strat = ref["diagnosis"].astype("category").cat.codes
    pred = pd.DataFrame(np.nan, index=X.index, columns=list(MARKER_NODES))
    clin = clinical.set_index("case_id").reindex(X.index).rename_axis("case_id").reset_index()
    outer = FastStratifiedGroupKFold(n_splits=outer_splits, shuffle=True, random_state=random_state)
    for train, test in outer.split(X, strat, groups):
        for marker, node_name in MARKER_NODES.items():
            if node_name not in nodes:
                continue
            node = NODES[node_name]
            tr = X.index[train]
            clin_tr = clin.iloc[train]
            elig = node.eligible(clin_tr).fillna(False).to_numpy(dtype=bool)
            y_tr = node.target(clin_tr).set_axis(tr)[elig].dropna()
            if y_tr.nunique() < 2:
                continue
            inner = int(min(search_kw.get("inner_splits", 3), y_tr.value_counts().min()))
            if inner < 2:
                continue
            kw = {**search_kw, "inner_splits": inner}
            search = fit_final(X.loc[y_tr.index], y_tr.astype(int), groups.loc[y_tr.index],
                               random_state=random_state, **kw)
            pred.loc[X.index[test], marker] = (search.predict_proba(X.iloc[test])[:, 1] >= 0.5).astype(float)
    pred["diagnosis"] = [cns5_diagnosis(**r) for r in pred[list(MARKER_NODES)].to_dict("records")]
    return pd.concat([ref.add_prefix("true_"), pred.add_prefix("pred_")], axis=1)
