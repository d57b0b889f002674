"""Validation (notebook 05): models locked in a training run, applied unchanged to an independent cohort.

``reference``  the settings a validation run locks from its reference run; compatibility of the cohort
``overlap``    the patient-overlap guard (patient id, image fingerprint)
``harmonise``  site shift (SMD, KS) and ComBat to the training cohort
``apply``      locked classifiers, CNS5 diagnosis, clusters and Cox models on the validation cohort
``study``      the summary of a training run and its validation runs
``step``       notebook 05's one call: :func:`step.step` -> :class:`step.ValidateResult`

Reference runs themselves (finding one, checking its model hashes) are run folders as data:
:mod:`glioma_nb.runs`.
"""
