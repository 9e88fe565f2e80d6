"""Lesion workflows: the lesion head's training and its maps of any slice (maps.py), and its
agreement with radiologists (evaluate.py)."""
