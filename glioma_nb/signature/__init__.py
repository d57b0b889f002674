"""Image signature and radiomics features (notebook 02).

- :mod:`network`: the network image signature (IS), the segmentation U-Net's stage activations pooled
  inside the tumour during 01_segment's own pass;
- :mod:`handcrafted`: PyRadiomics features per region and modality (original, LoG, wavelet), in the
  predicted or the reference masks; :mod:`ibsi`: the IBSI-1 phantom check;
- :mod:`volumetric`: region volumes and robust intensity statistics (the baseline);
- :mod:`stability`: ICC(3,1) under perturbations and the :class:`~stability.StabilityFilter`;
- :mod:`step`: notebook 02's orchestration (:func:`step.step`).
"""
