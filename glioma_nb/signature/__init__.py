"""Image signature and radiomics features (notebook 02).

- the network image signature (IS), the segmentation network's activations pooled inside the tumour during
  01_segment's own pass, is :mod:`glioma_nb.taps` (below both stages); 02 reads its per-case cache;
- :mod:`handcrafted`: PyRadiomics features per region and modality (original, LoG, wavelet), in the
  predicted or the reference masks; :mod:`ibsi`: the IBSI-1 phantom check;
- :mod:`volumetric`: region volumes and robust intensity statistics (the baseline);
- :mod:`stability`: ICC(3,1) under perturbations and the :class:`~stability.StabilityFilter`;
- :mod:`step`: notebook 02's orchestration (:func:`step.step`).
"""
