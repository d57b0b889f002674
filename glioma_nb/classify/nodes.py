"""The seed paper's tree of binary classification nodes: who is eligible for each node and what its label is."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from glioma_nb import flow


@dataclass(frozen=True)
class Node:
    """A binary classification task on the clinical table. A new node is one entry of :data:`NODES`; the
    clinical columns it reads are canonical columns (:data:`glioma_nb.io.clinical.CLINICAL_COLUMNS`)."""

    name: str
    description: str
    target: Callable[[pd.DataFrame], pd.Series]
    eligible: Callable[[pd.DataFrame], pd.Series]
    kind: str                        # histology | molecular
    columns: tuple[str, ...]         # the canonical clinical columns its target and eligibility read
    not_eligible: str = "not eligible"   # the participant flow's reason for the cases it leaves out


def _binary(col: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda df: pd.to_numeric(df[col], errors="coerce")


def _all(df: pd.DataFrame) -> pd.Series:
    return pd.Series(True, index=df.index)


NODES: dict[str, Node] = {
    "gbm_vs_lgg": Node("gbm_vs_lgg", "grade 4 (GBM) vs lower-grade glioma (grade 2-3)",
                       lambda df: (pd.to_numeric(df["who_grade"], errors="coerce") == 4).astype("Int64")
                       .where(df["who_grade"].notna()), _all, "histology", ("who_grade",)),
    "grade_2_vs_3": Node("grade_2_vs_3", "grade 3 vs grade 2 (lower-grade glioma only)",
                         lambda df: (pd.to_numeric(df["who_grade"], errors="coerce") == 3).astype("Int64")
                         .where(df["who_grade"].isin([2, 3])),
                         lambda df: df["who_grade"].isin([2, 3]), "histology", ("who_grade",),
                         "not eligible: not grade 2 or 3"),
    "idh": Node("idh", "IDH mutant vs wild-type", _binary("idh_mutant"), _all, "molecular", ("idh_mutant",)),
    "codel_1p19q": Node("codel_1p19q", "1p/19q codeleted vs retained (IDH-mutant only)", _binary("codel_1p19q"),
                        lambda df: pd.to_numeric(df["idh_mutant"], errors="coerce") == 1, "molecular",
                        ("codel_1p19q", "idh_mutant"), "not eligible: not IDH-mutant"),
    "tertp": Node("tertp", "TERT promoter mutant vs wild-type", _binary("tertp_mutant"), _all, "molecular",
                  ("tertp_mutant",)),
    "mgmt": Node("mgmt", "MGMT promoter methylated vs unmethylated", _binary("mgmt_methylated"), _all, "molecular",
                 ("mgmt_methylated",)),
}


def node_columns() -> list[str]:
    """Every clinical column some node reads, in the order of :data:`NODES`."""
    return list(dict.fromkeys(c for node in NODES.values() for c in node.columns))


def with_node_columns(clinical: pd.DataFrame) -> pd.DataFrame:
    """``clinical`` with every column a node reads (missing ones empty), ``case_id`` first."""
    return clinical.reindex(columns=list(dict.fromkeys(["case_id", *clinical.columns, *node_columns()])))


def node_label_table(clinical: pd.DataFrame, min_class_size: int = 5) -> pd.DataFrame:
    """Per node: eligible cases, labelled cases, class counts, and whether it can be trained.

    A node is trainable when both classes have at least ``min_class_size`` labelled cases.
    """
    rows = []
    clinical = with_node_columns(clinical)
    for node in NODES.values():
        elig = node.eligible(clinical).fillna(False).astype(bool)
        y = node.target(clinical)[elig].dropna()
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        rows.append({"node": node.name, "kind": node.kind, "question": node.description,
                     "eligible": int(elig.sum()), "labelled": int(len(y)), "positive": n_pos, "negative": n_neg,
                     "trainable": min(n_pos, n_neg) >= min_class_size})
    return pd.DataFrame(rows)


def node_flow(analysis: str, clinical: pd.DataFrame, node_name: str, feature_set: str | None,
              with_features: Iterable[str], analysed: Iterable[str], *,
              before: Sequence[tuple[str, Iterable[str]]] = (), why_not: str = "") -> pd.DataFrame:
    """The participant flow (:mod:`glioma_nb.flow`) of one node: every case of ``clinical`` in; left out, in this
    order, by ``before`` (e.g. the overlap guard), not eligible for the node, label missing, no ``feature_set``
    features (``with_features``: the cases the set has), and, when the node could not be evaluated, ``why_not``."""
    node = NODES[node_name]
    ids = clinical["case_id"].astype(str)
    try:
        elig = node.eligible(clinical).fillna(False).astype(bool).to_numpy()
        target = node.target(clinical).to_numpy(dtype=float)
    except KeyError as exc:
        return flow.analysis_flow(analysis, ids, [*before, (f"no {exc} column in the clinical table", ids)], [])
    has = {str(c) for c in with_features}
    exclusions = [*before, (node.not_eligible, ids[~elig]),
                  ("label missing", ids[elig & np.isnan(target)])]
    if feature_set:
        exclusions.append((f"no {feature_set} features", [c for c in ids if c not in has]))
    if why_not:
        exclusions.append((f"node not evaluated: {why_not}", ids))
    return flow.analysis_flow(analysis, ids, exclusions, analysed)
