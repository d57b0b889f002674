"""One saved-model record for every fitted object of a run.

Classifiers (03), consensus cluster models and Cox risk models (04), stability filters (02) and segmentation
networks trained in a run (01) are all written through :func:`save` as a :class:`ModelRecord`: its kind, name,
the features it reads (by name, in order), the library versions it was fitted with, the sha256 of its
training data, the fitted object itself (``payload``) and free metadata. :func:`load` reads it back (and
converts the plain dictionaries of runs written before records existed); :meth:`ModelRecord.predict` is the
one prediction path; :func:`find` lists a run's models by kind, so a validation run never guesses a model's
kind from its file name.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import joblib
import numpy as np
import pandas as pd

from glioma_nb import provenance

KINDS: tuple[str, ...] = ("classifier", "clusters", "risk", "stability_filter", "segmentation")
#: libraries whose version is stored with every record (a different scikit-learn warns on load)
RECORD_PACKAGES: tuple[str, ...] = ("glioma-nb", "numpy", "pandas", "scikit-learn", "scikit-survival", "lifelines",
                                    "torch", "monai")
#: file-name prefixes of runs written before records existed: the kind of their plain bundles
_LEGACY_PREFIXES = {"signature_filter__": "stability_filter", "clusters__": "clusters", "risk__": "risk"}


@dataclass
class ModelRecord:
    """A fitted object with what it needs to be used and audited elsewhere.

    ``payload`` is the fitted object (a scikit-learn pipeline or search, a cluster model, a Coxnet, a
    stability filter, a segmentation spec); ``features`` the columns it reads; ``meta`` what its kind adds
    (classifier: node, feature_set, best_params, cv_metrics...; risk: training_risk_median...).
    """

    kind: str
    name: str
    payload: Any
    features: list[str] = field(default_factory=list)
    training_data_sha256: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model record {self.name!r}: unknown kind {self.kind!r}; known: {list(KINDS)}")

    def select(self, X: pd.DataFrame, what: str | None = None) -> pd.DataFrame:
        """The columns the model was fitted on, by name and in its order; a clear error when any is missing."""
        missing = [f for f in self.features if f not in X.columns]
        if missing:
            raise KeyError(f"{what or f'{self.kind} {self.name}'} needs {len(missing)} features missing from the "
                           f"table, e.g. {missing[:5]}; extract them with the training run's settings")
        return X[self.features]

    def predict(self, X: pd.DataFrame) -> pd.Series:
        """The model's output for the cases of ``X``: probability of the positive class (classifier), risk
        score, higher = worse (risk), assigned cluster (clusters)."""
        Xf = self.select(X)
        if self.kind == "classifier":
            return pd.Series(self.payload.predict_proba(Xf)[:, 1], index=X.index, name="prob")
        if self.kind == "risk":
            return pd.Series(self.payload.predict(Xf.to_numpy(dtype=float)), index=X.index, name="risk")
        if self.kind == "clusters":
            return pd.Series(self.payload.predict(Xf), index=X.index, name="cluster")
        raise TypeError(f"a {self.kind} record ({self.name}) does not predict; use its payload")

    def __repr__(self) -> str:
        return (f"ModelRecord(kind={self.kind!r}, name={self.name!r}, features={len(self.features)}, "
                f"payload={type(self.payload).__name__}, sha256={str(self.training_data_sha256)[:12]})")


def data_hash(X: pd.DataFrame, y: pd.Series | None = None) -> str:
    """sha256 of a training table (case ids, feature names, values and, when given, the labels or
    outcomes), independent of row and column order."""
    Xs = X.sort_index().sort_index(axis=1)
    h = hashlib.sha256()
    h.update("\x1f".join(map(str, Xs.index)).encode())
    h.update("\x1f".join(map(str, Xs.columns)).encode())
    h.update(np.ascontiguousarray(Xs.to_numpy(dtype=float)).tobytes())
    if y is not None:
        h.update(np.ascontiguousarray(pd.Series(y).reindex(Xs.index).to_numpy(dtype=float)).tobytes())
    return h.hexdigest()


def safe_name(name: str) -> str:
    """A feature-set or model name as part of a record name (and its file name): runs of anything but letters,
    digits, ``_ . -`` become one ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def make(kind: str, name: str, payload: Any, *, X: pd.DataFrame | None = None, y: pd.Series | None = None,
         features: Iterable[str] | None = None, **meta: Any) -> ModelRecord:
    """A record of ``payload`` fitted on ``X`` (and ``y``): features and training-data hash from the table,
    library versions from this environment."""
    feats = list(features) if features is not None else (list(X.columns) if X is not None else [])
    return ModelRecord(kind, name, payload, feats, data_hash(X, y) if X is not None else None,
                       provenance.package_versions(RECORD_PACKAGES), dict(meta))


def save(record: ModelRecord, path: str | Path) -> Path:
    """Write a record (joblib) atomically; an existing file is never overwritten."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; models of a run are never overwritten")
    tmp = path.with_name(path.name + ".part")
    joblib.dump(record, tmp)
    tmp.replace(path)
    return path


def from_legacy(obj: Any, path: str | Path) -> ModelRecord:
    """A record for a model written before records existed (a plain dict bundle, or a bare filter)."""
    name = Path(path).name
    kind = next((k for p, k in _LEGACY_PREFIXES.items() if name.startswith(p)), "classifier")
    if not isinstance(obj, dict):
        return ModelRecord(kind, Path(path).stem, obj)
    meta = {k: v for k, v in obj.items() if k not in ("model", "features", "training_data_sha256", "sklearn_version")}
    return ModelRecord(kind, Path(path).stem, obj.get("model"), list(obj.get("features") or []),
                       obj.get("training_data_sha256"), {"scikit-learn": obj.get("sklearn_version")}, meta)


def load(path: str | Path) -> ModelRecord:
    """Read a record written by :func:`save` (warns when it was fitted with another scikit-learn)."""
    obj = joblib.load(path)
    record = obj if isinstance(obj, ModelRecord) else from_legacy(obj, path)
    saved, now = record.versions.get("scikit-learn"), provenance.package_versions(["scikit-learn"])["scikit-learn"]
    if saved and saved != now:
        warnings.warn(f"{Path(path).name} was saved with scikit-learn {saved}, this is {now}; predictions may differ",
                      stacklevel=2)
    return record


def find(models_dir: str | Path, kind: str) -> list[Path]:
    """The record files of ``kind`` in a run's ``models/`` folder, sorted by name."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {list(KINDS)}")
    return [p for p in sorted(Path(models_dir).glob("*.joblib")) if load(p).kind == kind]
