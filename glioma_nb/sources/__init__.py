"""Where a cohort's raw scans come from, below the stages: public collections (the NCI Imaging Data Commons,
:mod:`glioma_nb.sources.idc`), their download (:mod:`glioma_nb.sources.download`) and their DICOM objects
(:mod:`glioma_nb.sources.dicomseg`: SEG reference labels, header checks)."""
