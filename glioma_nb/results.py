"""The shape every stage step returns: named tables, figures, model records and metrics, saved in one call.

A notebook opens the run context, calls its stage's ``step(ctx, **params)`` once, then only displays what the
result holds (``res.tables[...]``, ``res.figures[...]``, ``res.text[...]``) and calls ``res.save(ctx)``.
Figures are drawn by :mod:`glioma_nb.plotting` from precomputed frames and closed at once, so that a notebook
shows each where its cell displays it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

import matplotlib.pyplot as plt
import pandas as pd

from glioma_nb import compute, records


class StepContext(Protocol):
    """What a stage's ``step(ctx, **params)`` reads and writes of its run; the runner's
    :class:`glioma_nb.runner.StepContext` (what a notebook opens) is the one that exists."""

    step: str
    run_dir: Path
    config: dict[str, Any]
    cohort: Any                      # io.Cohort; 00_preprocess: the raw cohort
    case_table: pd.DataFrame
    problems: pd.DataFrame
    params: dict[str, Any]
    upstream: Path | None
    metrics: dict[str, Any]

    @property
    def seed(self) -> int:
        """The run's seed (``project.seed``)."""
        ...

    @property
    def executor(self) -> compute.Executor:
        """Where per-case work runs (``compute.executor``)."""
        ...

    @property
    def clinical(self) -> pd.DataFrame:
        """The cohort's canonical clinical table."""
        ...

    @property
    def inputs(self) -> Path:
        """The run whose tables this step reads (itself, or an interactive run's upstream)."""
        ...

    @property
    def output_dir(self) -> Path:
        """Where this step writes (the run, or a scratch folder when the run is read-only here)."""
        ...

    def path(self, kind: str, name: str) -> Path: ...

    def save_table(self, df: pd.DataFrame, name: str, index: bool = False) -> Path: ...

    def save_feature_tables(self, tables: Mapping[str, pd.DataFrame]) -> None: ...

    def feature_tables(self) -> dict[str, pd.DataFrame]: ...


class NamedTables(dict):
    """A dict of tables that names each data frame it holds (``df.attrs["table"]``): a notebook that displays one
    shows the caption of that name (:func:`glioma_nb.reporting.table_html`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.update(*args, **kwargs)

    def __setitem__(self, name: str, table: Any) -> None:
        if isinstance(table, pd.DataFrame) and "table" not in table.attrs:
            table.attrs["table"] = name
        super().__setitem__(name, table)

    def update(self, *args: Any, **kwargs: Any) -> None:   # dict.update does not call __setitem__
        for name, table in dict(*args, **kwargs).items():
            self[name] = table

    def setdefault(self, name: str, table: Any = None) -> Any:
        if name not in self:
            self[name] = table
        return self[name]


@dataclass
class StepResult:
    """What a stage step produced.

    ``tables`` are written as ``tables/<name>.csv`` (and parquet), ``figures`` as
    ``figures/<step>__<name>.png``, ``models`` as ``models/<name>.joblib`` (a :class:`records.ModelRecord`
    each), ``frames`` are shown but not saved, ``metrics`` into ``metrics/<step>.json``; ``text`` holds the markdown the notebook shows and
    ``notes`` everything that could not be estimated, with the reason.
    """

    tables: dict[str, pd.DataFrame] = field(default_factory=NamedTables)
    figures: dict[str, Any] = field(default_factory=dict)
    models: dict[str, records.ModelRecord] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] = field(default_factory=NamedTables)   # shown, not saved
    text: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:   # tables given to the constructor are named too
        self.tables, self.frames = NamedTables(self.tables), NamedTables(self.frames)

    def add_figure(self, name: str, fig: Any) -> None:
        """Keep a drawn figure (closed, so that it is shown only where a notebook cell displays it)."""
        fig = getattr(fig, "figure", fig)  # an Axes or a seaborn grid -> its figure
        plt.close(fig)
        self.figures[name] = fig

    def save(self, ctx: Any) -> None:
        """Write every table, model record and figure into the run folder and record the metrics; nothing
        existing is overwritten (the run context refuses)."""
        for name, table in self.tables.items():
            ctx.save_table(table, name)
        for name, rec in self.models.items():
            records.save(rec, ctx.path("models", f"{name}.joblib"))
        for name, fig in self.figures.items():
            ctx.save_figure(fig, name)
        ctx.record(**self.metrics)

    def notes_markdown(self) -> str:
        """The notes as a markdown list ("None." when there are none)."""
        return "\n".join(f"- {n}" for n in self.notes) or "None."

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(tables={list(self.tables)}, figures={list(self.figures)}, "
                f"models={len(self.models)}, notes={len(self.notes)})")
