"""Participant flow (TRIPOD+AI item 20a, the CONSORT-style diagram): for each analysis, the cases that came in,
each case left out with the first reason that applies, and the cases analysed.

A step lists its analysis's cases and its exclusion criteria in the order it applies them; :func:`analysis_flow`
assigns every case to exactly one row, so ``analysed + excluded = in`` holds by construction, and a case that
is neither excluded by a named reason nor among the analysed ones is reported as :data:`UNEXPLAINED` rather
than silently lost (a test plants gaps and checks that this reason never appears).

A flow table has one row per analysis and stage: ``stage`` is ``in``, ``excluded`` (one row per reason) or
``analysed``, ``n`` the number of cases and ``case_ids`` them, ``;``-separated (the cohort's own ids).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

COLUMNS = ["analysis", "stage", "reason", "n", "case_ids"]
UNEXPLAINED = "not analysed, no reason recorded"


def analysis_flow(analysis: str, cases: Iterable[str], exclusions: Sequence[tuple[str, Iterable[str]]],
                  analysed: Iterable[str]) -> pd.DataFrame:
    """The flow of one analysis: ``cases`` in, each ``(reason, case ids)`` of ``exclusions`` applied in order
    (a case counts under its first reason only), ``analysed`` out. A case of ``analysed`` that an exclusion
    names is counted as excluded (the exclusion is the step's own statement); one in neither becomes
    :data:`UNEXPLAINED`; an analysed case that never came in is an error (the step's bookkeeping is wrong)."""
    came = [str(c) for c in dict.fromkeys(cases)]
    done = {str(c) for c in analysed}
    stray = sorted(done - set(came))
    if stray:
        raise ValueError(f"flow of {analysis}: analysed cases that did not come in: {stray[:5]}")
    rows = [_row(analysis, "in", "", came)]
    left = list(came)
    for reason, ids in exclusions:
        ids = {str(c) for c in ids}
        out = [c for c in left if c in ids]
        if out:
            rows.append(_row(analysis, "excluded", reason, out))
            left = [c for c in left if c not in ids]
    unexplained = [c for c in left if c not in done]
    if unexplained:
        rows.append(_row(analysis, "excluded", UNEXPLAINED, unexplained))
    rows.append(_row(analysis, "analysed", "", [c for c in left if c in done]))
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(analysis: str, stage: str, reason: str, ids: list[str]) -> dict[str, object]:
    return {"analysis": analysis, "stage": stage, "reason": reason, "n": len(ids), "case_ids": ";".join(ids)}


def combine(*tables: pd.DataFrame) -> pd.DataFrame:
    """Several flow tables as one (an empty table with the columns when there are none)."""
    parts = [t for t in tables if t is not None and len(t)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def balance(table: pd.DataFrame) -> pd.DataFrame:
    """Per analysis: in, excluded, analysed and whether ``analysed + excluded == in`` (``balanced``)."""
    if table.empty:
        return pd.DataFrame(columns=["analysis", "in", "excluded", "analysed", "balanced"])
    n = table.pivot_table(index="analysis", columns="stage", values="n", aggfunc="sum", fill_value=0, sort=False)
    n = n.reindex(columns=["in", "excluded", "analysed"], fill_value=0)
    n["balanced"] = n["analysed"] + n["excluded"] == n["in"]
    return n.reset_index()


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """The flow as a reader's table: one row per analysis with in, each reason's count and analysed."""
    rows = []
    for analysis, t in table.groupby("analysis", sort=False):
        reasons = "; ".join(f"{r.reason}: {r.n}" for r in t[t["stage"] == "excluded"].itertuples()) or "none"
        rows.append({"analysis": analysis, "in": int(t.loc[t["stage"] == "in", "n"].sum()),
                     "excluded (reason: n)": reasons, "analysed": int(t.loc[t["stage"] == "analysed", "n"].sum())})
    return pd.DataFrame(rows)
