"""Classical segmentation for the pooled features' crops, made before any model is trained: the lung crop
(crop.py) and the body crop (body.py), each with its version constant, part of the identity of the
features it changes; and right and left of a radiologist's lung mask (sides.py). The lungs a model
measures are its segmentation network's (feature_extractor/segmentation/)."""
