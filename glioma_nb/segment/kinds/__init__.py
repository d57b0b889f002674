"""Model kinds: every segmentation network behind one interface (:class:`Segmenter`, :mod:`.base`), one module
per kind, each registered by name:

- ``glioma-nb`` (:mod:`.native`): the shipped specs and their MONAI networks;
- ``nnunet-v2`` (:mod:`.nnunet`): nnU-Net v2 trained-model folders, run by nnunetv2's own predictor;
- ``monai-bundle`` (:mod:`.bundle`): MONAI bundles, run by their own configs;
- ``torchscript`` (:mod:`.torchscript`): scripted modules with a YAML.

A new kind is one module here with a :func:`register`-ed :class:`Segmenter` subclass (``detect``,
``import_entry``, ``from_entry``, ``example``, ``run``), and its import in this file: the registry
(:mod:`glioma_nb.segment.registry`), ``glioma-nb models import --kind`` and ``models example`` read the
kinds from :data:`REGISTRY`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.kinds.base import *  # noqa: F401,F403  the interface, re-exported
from glioma_nb.segment.kinds.base import REGISTRY, Segmenter
# the kinds (importing a module registers its kind)
from glioma_nb.segment.kinds.native import GliomaNbSegmenter  # noqa: F401
from glioma_nb.segment.kinds.nnunet import NnUNetSegmenter  # noqa: F401
from glioma_nb.segment.kinds.bundle import BundleSegmenter  # noqa: F401
from glioma_nb.segment.kinds.torchscript import TorchScriptSegmenter  # noqa: F401


def names() -> tuple[str, ...]:
    """Every registered kind."""
    return tuple(REGISTRY)


def importable() -> tuple[str, ...]:
    """The kinds ``glioma-nb models import`` takes (and ``models example`` makes)."""
    return tuple(k for k, cls in REGISTRY.items() if cls.importable)


def get(kind: str) -> type[Segmenter]:
    """The class of a kind, or an error listing the kinds."""
    if kind not in REGISTRY:
        raise SegmentationError(f"model kind {kind!r} is not one of {list(REGISTRY)}")
    return REGISTRY[kind]


def detect(path: Path) -> str:
    """The kind of a model folder or file: the first importable kind that recognises it."""
    hit = next((k for k in importable() if REGISTRY[k].detect(Path(path))), None)
    if hit is None:
        raise SegmentationError(f"{path}: not a model this can import: an nnU-Net v2 trained-model folder has "
                                "dataset.json and plans.json, a MONAI bundle has configs/inference.json, a TorchScript "
                                "model a YAML beside its module; or give --kind")
    return hit


def make_example(kind: str, out: Path, **options: Any) -> Path:
    """``glioma-nb models example``: one example model of ``kind`` in the new folder ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SegmentationError(f"{out} exists and is not empty; give a new folder")
    if kind not in importable():
        raise SegmentationError(f"kind {kind!r}: one of {list(importable())}")
    return get(kind).example(out, **options)
