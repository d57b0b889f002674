"""Serial scans (notebook 06): tumour growth and malignant transformation (after Rauch et al. 2023).

``growth``          per-scan volumes and mean tumour diameter (MTD = (2V)^(1/3), Mandonnet et al. 2003); per
                    patient the velocity of diametric expansion (VDE, mm/year) with its CI, and the volume
                    doubling time
``transformation``  the malignant-transformation event of a patient (new enhancement, a grade upgrade, either or
                    both), dated at the first scan that shows it, censored at the last scan otherwise
``truth``           recovery of the planted growth and hazards of the synthetic serial cohort
``step``            notebook 06's one call (:func:`glioma_nb.longitudinal.step.step`)
"""
