"""What the segmentation network says of a slice, as records: its maps (:class:`SliceSegmentation`: the
lungs by side, the lesion's probability and the lesion itself, at the slice's own pixels) and their
summary (:class:`LesionSummary`: the numbers every prediction carries). Every quantity names its
denominator: a share of the lungs, of one lung, of the lesion, of the slice, or an area in mm² (where the
file gives its pixel spacing). Computed by classifiers/workflows/lesions/summary.py; a summary's
``classifier_features`` are what joins a COVID classifier's features (fit --lesion-features), through
:func:`lesion_columns`."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping, Sequence

import numpy as np

from covidct_core.errors import CovidCTError

from .severity import SliceAreas

# The summaries that join a COVID classifier's features (fit --lesion-features): the disease,
# not how much lung the slice shows (slice position is a confound).
CLASSIFIER_SUMMARY = ("lesion_fraction", "lesion_p_max", "lesion_p_mean", "lesion_share_right_lung",
                      "lesion_share_left_lung", "lesion_share_peripheral")
# Why a slice's lungs are as they are, when that is worth a note (the code is stored with the summary).
LUNG_NOTES = {0.0: None,
              1.0: "right and left from the image's side: the DICOM header gives no ImageOrientationPatient",
              2.0: "no lung found"}
SIDES_FROM_IMAGE, NO_LUNG = 1.0, 2.0


@dataclass
class LesionSummary:
    """One slice's lungs and lesion in numbers; ``None`` where the slice has no lung (or no pixel spacing).
    The lesion counts only its parts of at least the model's minimum area (LesionSettings)."""

    lesion_fraction: float | None          # the lesion's share of the lungs
    lesion_p_max: float                    # the highest lesion probability inside the lungs
    lesion_p_mean: float | None            # the mean lesion probability inside the lungs
    lesion_share_right_lung: float | None  # the lesion's share of the patient's right lung
    lesion_share_left_lung: float | None   # ... of the left lung
    lesion_share_peripheral: float | None  # the share of the lesion in the lungs' outer third (by depth)
    lung_share_of_slice: float             # the lungs' share of the slice
    lesion_share_of_slice: float           # the lesion's share of the slice
    lung_right_share_of_slice: float       # the right lung's share of the slice
    lung_left_share_of_slice: float
    lesion_area_mm2: float | None          # the lesion's area (the file's pixel spacing)
    lung_area_mm2: float | None
    lesion_parts: float                    # the lesion's separate parts (of at least the minimum area)
    lung_status: float = 0.0               # LUNG_NOTES' code

    def areas(self) -> SliceAreas:
        """Per lung, lung and lesion areas (shares of the slice): for a study's severity."""
        return SliceAreas(self.lung_right_share_of_slice, self.lung_left_share_of_slice,
                          (self.lesion_share_right_lung or 0.0) * self.lung_right_share_of_slice,
                          (self.lesion_share_left_lung or 0.0) * self.lung_left_share_of_slice)

    @property
    def lung_note(self) -> str | None:
        return LUNG_NOTES.get(self.lung_status)

    def vector(self) -> np.ndarray:
        return np.array([np.nan if getattr(self, k) is None else getattr(self, k) for k in SUMMARY], np.float32)

    @classmethod
    def from_vector(cls, v: np.ndarray) -> "LesionSummary":
        return cls(*[None if np.isnan(x) else float(x) for x in v[:len(SUMMARY)]])

    def classifier_features(self) -> np.ndarray:
        """CLASSIFIER_SUMMARY as numbers (a slice without lung: no lesion)."""
        return np.array([0.0 if getattr(self, k) is None else getattr(self, k) for k in CLASSIFIER_SUMMARY],
                        np.float32)


SUMMARY = tuple(f.name for f in fields(LesionSummary))   # a cached summary's columns, in order


@dataclass
class SliceSegmentation:
    """A slice's maps at its own pixels: ``sides`` (0 outside, RIGHT or LEFT: the patient's sides,
    feature_extractor/lungs/sides.py), the lesion's ``probability`` and the ``lesion`` (at or above the
    cut-off, inside the lungs, parts of at least the minimum area), ``grey`` (the slice in the lung window,
    for pictures) and the ``summary`` of them."""

    sides: np.ndarray          # (H, W) uint8
    probability: np.ndarray    # (H, W) float32
    lesion: np.ndarray         # (H, W) bool
    threshold: float
    grey: np.ndarray           # (H, W) float32 0-255
    summary: LesionSummary

    @property
    def lungs(self) -> np.ndarray:
        return self.sides > 0


def lesion_columns(summaries: Mapping[str, "LesionSummary | str"], paths: Sequence[str]) -> np.ndarray:
    """The classifier features (CLASSIFIER_SUMMARY) of the slices at ``paths``, one row each, from their
    summaries (a text: why the slice could not be mapped, an error naming the first such slice)."""
    bad = [p for p in paths if isinstance(summaries[p], str)]
    if bad:
        raise CovidCTError(f"{len(bad)} images cannot be read for lesion maps, e.g. {bad[0]}: {summaries[bad[0]]}")
    if not paths:
        return np.zeros((0, len(CLASSIFIER_SUMMARY)), np.float32)
    return np.stack([summaries[p].classifier_features() for p in paths])
