"""Dense features for lesion maps: slices prepared for them (slices.py), hypercolumns of a frozen
backbone (hypercolumns.py), and the radiologists' lesion data they are trained on (lesion_data.py)."""
