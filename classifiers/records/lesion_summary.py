"""What a lesion map says of a slice, as records: its summary (share of lung involved, left and right,
peripheral, the lung's share of the slice: the numbers every prediction carries) and the map itself.
Computed by classifiers/workflows/lesions/ (summary.py); a summary's ``classifier_features`` are what
joins a COVID classifier's features (fit --lesion-features), through :func:`lesion_columns`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from covidct_core.errors import CovidCTError
from feature_extractor.lungs.sides import lung_sides

from .severity import SliceAreas

# The summaries that join a COVID classifier's features (fit --lesion-features): the disease,
# not how much lung the slice shows (slice position is a confound).
CLASSIFIER_SUMMARY = ("lesion_fraction", "lesion_p_max", "lesion_p_mean", "lesion_left", "lesion_right",
                      "lesion_peripheral")
SUMMARY = CLASSIFIER_SUMMARY + ("lung_fraction", "lesion_area", "lung_status", "lung_right_area", "lung_left_area")
LUNG_STATUS = {0.0: None, 1.0: "lung mask: fallback to the lung crop's segmentation", 2.0: "no lung found"}


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


def lesion_columns(summaries: Mapping[str, "LesionSummary | str"], paths: Sequence[str]) -> np.ndarray:
    """The classifier features (CLASSIFIER_SUMMARY) of the slices at ``paths``, one row each, from their
    summaries (a text: why the slice could not be mapped, an error naming the first such slice)."""
    bad = [p for p in paths if isinstance(summaries[p], str)]
    if bad:
        raise CovidCTError(f"{len(bad)} images cannot be read for lesion maps, e.g. {bad[0]}: {summaries[bad[0]]}")
    if not paths:
        return np.zeros((0, len(CLASSIFIER_SUMMARY)), np.float32)
    return np.stack([summaries[p].classifier_features() for p in paths])
