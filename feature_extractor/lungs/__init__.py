"""Classical lung and body segmentation: the lung crop (crop.py), the body crop (body.py) and the
lung mask lesion measurements stand on (mask.py). Each algorithm carries its version constant,
part of the identity of the features it changes."""
