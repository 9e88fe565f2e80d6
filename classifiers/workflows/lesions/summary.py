"""A slice's lesion map and its summary (records/lesion_summary.py) computed from its probabilities
and lungs: the lesion is where the probability reaches the head's threshold inside the lungs."""
from __future__ import annotations

import numpy as np

from feature_extractor.dense.slices import DenseSlice
from feature_extractor.imaging.decode import resize_map
from feature_extractor.lungs.sides import LEFT, RIGHT, lung_sides

from ...records.lesion_summary import LesionMap, LesionSummary


def summarize(probability: np.ndarray, lungs: np.ndarray, threshold: float, fallback: bool = False) -> LesionSummary:
    """A slice's lesion summary from its full-size probability map and lung mask (``fallback``:
    the mask is the lung crop's, not the lesion lung mask's)."""
    from scipy import ndimage as ndi

    lesion = (probability >= threshold) & lungs
    n_lung = int(lungs.sum())
    area = lungs.size
    if n_lung == 0:
        return LesionSummary(None, float(probability.max(initial=0.0)), None, None, None, None, 0.0, 0.0, 2.0)
    labels = lung_sides(lungs)
    share, lung_area = {}, {}
    for side in (RIGHT, LEFT):
        mine = labels == side
        lung_area[side] = float(mine.sum() / area)
        share[side] = float((lesion & mine).sum() / mine.sum()) if mine.any() else None
    depth = ndi.distance_transform_edt(lungs)
    rim = lungs & (depth <= np.percentile(depth[lungs], 33))  # the outer third of the lung
    n_lesion = int(lesion.sum())
    return LesionSummary(n_lesion / n_lung, float(probability[lungs].max()), float(probability[lungs].mean()),
                         share[LEFT], share[RIGHT], float((lesion & rim).sum() / n_lesion) if n_lesion else 0.0,
                         n_lung / area, n_lesion / area, 1.0 if fallback else 0.0, lung_area[RIGHT], lung_area[LEFT])


def lesion_map_of(dense: DenseSlice, cell_probability: np.ndarray, threshold: float,
                  lungs: np.ndarray | None = None) -> LesionMap:
    """A slice's full-size lesion map from its grid of cell probabilities (bilinear upsampling);
    ``lungs``: its lung mask (default: the classical one of ``dense``; lungs.py learns a better one)."""
    probability = np.clip(resize_map(cell_probability.astype(np.float32), dense.shape), 0.0, 1.0)
    fallback = dense.lungs.note is not None
    if lungs is None:
        lungs = dense.lungs.mask
    else:
        fallback = fallback and not lungs.any()
    return LesionMap(probability, lungs, threshold, summarize(probability, lungs, threshold, fallback), dense.grey)
