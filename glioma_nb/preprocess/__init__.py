"""Raw scans in (notebook 00, cohorts with ``source: raw``): DICOM series or native NIfTI to BraTS / SRI24 space.

``dicom``     DICOM series found under a patient folder, checked (2D, localiser, non-uniform slices) and
              named by SeriesDescription / ProtocolName; refusals name the patient, the series and the fix
``register``  N4, Mattes-MI rigid/affine registration, the SRI24 T1 template on the BraTS grid, deepbet masks
``pipeline``  one case to BraTS space (cached, written atomically), the raw cohort, masks back to native space
``qc``        registration QC figures (checkerboards, template edge, brain-mask outline), native vs BraTS view
``step``      notebook 00's one call: every case of the raw cohort, status / seconds / similarity tables
"""
