"""Lung and lesion workflows: the segmentation network's training and the finding's calibration
(training.py), its maps of any slice (maps.py, summary.py), and its agreement with radiologists
(evaluate.py)."""
