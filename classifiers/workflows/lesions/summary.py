"""What a lesion map says of a slice: its probability per pixel inside the lungs, the lesion the
head's threshold makes of it, and the summary every prediction carries (share of lung involved,
left and right, peripheral, the lung's share of the slice)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feature_extractor.dense.slices import DenseSlice
from feature_extractor.imaging.decode import resize_map
from feature_extractor.lungs.sides import LEFT, RIGHT, lung_sides

from ...records.model_card import N_LESION_COLUMNS

SUMMARY = ("lesion_fraction", "lesion_p_max", "lesion_p_mean", "lesion_left", "lesion_right",
           "lesion_peripheral", "lung_fraction", "lesion_area", "lung_status", "lung_right_area", "lung_left_area")
LUNG_STATUS = {0.0: None, 1.0: "lung mask: fallback to the lung crop's segmentation", 2.0: "no lung found"}
# The summaries that join a COVID classifier's features (fit --lesion-features): the disease,
# not how much lung the slice shows (slice position is a confound).
CLASSIFIER_SUMMARY = SUMMARY[:N_LESION_COLUMNS]


@dataclass
class LesionSummary:
    """One slice's lesion measurements (SUMMARY); ``None`` values where the slice has no lung."""

    lesion_fraction: float | None
    lesion_p_max: float
    lesion_p_mean: float | None
    lesion_left: float | None       # the lesion's share of the patient's left lung (the image's right)
    lesion_right: float | None      # of the patient's right lung (the image's left)
    lesion_peripheral: float | None
    lung_fraction: float
    lesion_area: float
    lung_status: float = 0.0   # LUNG_STATUS: the lung mask found, a fallback, or none
    lung_right_area: float = 0.0   # the right lung's share of the slice
    lung_left_area: float = 0.0

    def areas(self):
        """Per lung, lung and lesion areas (shares of the slice): for a study's severity."""
        from ...records.severity import SliceAreas

        return SliceAreas(self.lung_right_area, self.lung_left_area, (self.lesion_right or 0.0) * self.lung_right_area,
                          (self.lesion_left or 0.0) * self.lung_left_area)

    @property
    def lung_note(self) -> str | None:
        return LUNG_STATUS.get(self.lung_status)

    def vector(self) -> np.ndarray:
        return np.array([np.nan if getattr(self, k) is None else getattr(self, k) for k in SUMMARY], np.float32)

    @classmethod
    def from_vector(cls, v: np.ndarray) -> "LesionSummary":
        return cls(*[None if np.isnan(x) else float(x) for x in v[:len(SUMMARY)]])

    def classifier_features(self) -> np.ndarray:
        """CLASSIFIER_SUMMARY as numbers (a slice without lung: no lesion)."""
        return np.array([0.0 if getattr(self, k) is None else getattr(self, k) for k in CLASSIFIER_SUMMARY],
                        np.float32)


@dataclass
class LesionMap:
    """A slice's lesion map at its own size: probability per pixel, its lungs and the lesion."""

    probability: np.ndarray   # (H, W) float32
    lungs: np.ndarray         # (H, W) bool
    threshold: float
    summary: LesionSummary
    grey: np.ndarray          # (H, W) the slice in the lung window, for pictures

    @property
    def lesion(self) -> np.ndarray:
        """The binary lesion the summary's numbers come from."""
        return (self.probability >= self.threshold) & self.lungs

    @property
    def sides(self) -> np.ndarray:
        """The lungs as RIGHT (1), LEFT (2) or none (0) (feature_extractor/lungs/sides.py)."""
        return lung_sides(self.lungs)


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
