"""The inputs: image bytes decoded to pixels (decode.py), labeled datasets and their records
(dataset.py), DICOM studies as ordered series (studies.py) and NIfTI volumes as slices (nifti.py)."""
