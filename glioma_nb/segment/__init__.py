"""Tumour segmentation: MONAI 3D networks, training, cohort inference and overlap metrics.

``models``      model specifications (``models/<name>.yaml``), the network registry, shipped weights
``kinds``       every model kind behind one interface, one module per kind registered by name (glioma-nb,
                nnunet-v2, monai-bundle, torchscript); ``registry``: the user's registered models
``transforms``  MONAI dictionary transforms: load a case, orient, resample, crop, normalise, augment
``train``       Dice + cross-entropy training with checkpoint/resume and a loss/Dice log
``infer``       sliding-window inference with Gaussian blending, masks in the original image space,
                per-case caching and sanity flags
``metrics``     Dice and HD95 per region (MONAI metrics), per case and with bootstrap CIs
``postprocess`` post-processing rules of a predicted mask, chosen by CV on the training patients
``errors``      :class:`SegmentationError`
``step``        notebook 01's one call: segment a run's cohort (shipped or in-run trained weights)
"""
from __future__ import annotations

from glioma_nb.segment.errors import SegmentationError  # noqa: F401  (re-exported)
