"""Image signature and radiomics features.

``volumetric``: region volumes and robust intensity statistics from label maps (the baseline
available before the network signature and handcrafted radiomics exist).
"""
