"""A slice's segmentation at its own pixels, from the network's probabilities, and its summary
(records/lesion_summary.py): the one place maps become lungs, lesion and numbers, for training's
out-of-fold maps and for every prediction alike.

The lungs are the network's: where the two lungs are likelier than the outside, and where the lesion is
called; a part with little aerated lung of its own (under a fiftieth of the largest part's) is dropped, so a
lesion called outside the lungs (the chest wall, an arm at the image's edge) is neither lung nor lesion; each
lung's holes are filled. Which image side is the patient's right comes from the slice (its
ImageOrientationPatient). The lesion is where its probability reaches the model's cut-off, its parts
smaller than the minimum area dropped: a radiologist does not score a speck.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feature_extractor.lungs.sides import LEFT, OUTSIDE, RIGHT
from feature_extractor.segmentation.network import LUNG_CHANNELS
from feature_extractor.segmentation.slices import SegmentationSlice

from ...records.lesion_summary import NO_LUNG, SIDES_FROM_IMAGE, LesionSummary, SliceSegmentation

REFERENCE_SIDE = 512   # a slice side the minimum area in pixels refers to (scaled for other sizes)
MIN_LUNG_PART = 0.02   # a lung part with less aerated lung than this share of the largest's is dropped
# The version of how probabilities become lungs, lesion and numbers (part of the summary cache's identity):
# bump it when segmentation_of or summarize changes what they give.
SEGMENTATION_VERSION = 2


@dataclass(frozen=True)
class MinimumArea:
    """The smallest lesion part that counts: in mm² where the slice's pixel spacing is known, else in
    pixels of a 512 px slice (scaled by the slice's own pixel count)."""

    mm2: float
    px_at_512: float

    def pixels(self, s: SegmentationSlice) -> float:
        if s.pixel_mm2:
            return self.mm2 / s.pixel_mm2
        return self.px_at_512 * s.shape[0] * s.shape[1] / REFERENCE_SIDE ** 2


def segmentation_of(s: SegmentationSlice, probabilities: np.ndarray, threshold: float,
                    minimum: MinimumArea) -> SliceSegmentation:
    """The slice's segmentation from the network's (side, side, 4) probabilities (network.OUTPUTS)."""
    full = s.from_network(probabilities)
    probability = np.clip(full[..., LUNG_CHANNELS], 0.0, 1.0)
    # Lung where the two lungs together are likelier than the outside, or where the lesion is called: radiologists
    # draw the lungs with their lesions, and a consolidation as dense as the chest wall is a lesion in a lung.
    aerated = full[..., 1] + full[..., 2] > full[..., 0]
    kept = _main_parts(aerated | (probability >= threshold), aerated)
    is_left = full[..., 1] >= full[..., 2]   # the side: the likelier of the image-left and the image-right lung
    image_left, image_right = _filled(kept & is_left), _filled(kept & ~is_left)
    right_left = (RIGHT, LEFT) if s.right_on_image_left is not False else (LEFT, RIGHT)
    sides = np.select([image_left, image_right & ~image_left], right_left, OUTSIDE).astype(np.uint8)
    lungs = sides > 0
    lesion = _without_specks((probability >= threshold) & lungs, minimum.pixels(s))
    status = SIDES_FROM_IMAGE if s.dicom and s.right_on_image_left is None else 0.0
    return SliceSegmentation(sides, probability, lesion, threshold, s.grey, summarize(sides, probability, lesion, s,
                                                                                      status))


def _main_parts(mask: np.ndarray, aerated: np.ndarray) -> np.ndarray:
    """The mask's parts holding at least MIN_LUNG_PART of the largest part's ``aerated`` pixels."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels[aerated], minlength=n + 1)[1:]
    return np.isin(labels, np.flatnonzero(sizes >= max(MIN_LUNG_PART * sizes.max(), 1)) + 1)


def _filled(mask: np.ndarray) -> np.ndarray:
    """A lung with its holes (vessels, nodules the network left out) filled."""
    from scipy import ndimage as ndi

    return ndi.binary_fill_holes(mask)


def _without_specks(lesion: np.ndarray, min_pixels: float) -> np.ndarray:
    """The lesion without its parts smaller than ``min_pixels``."""
    from scipy import ndimage as ndi

    if min_pixels <= 1 or not lesion.any():
        return lesion
    labels, n = ndi.label(lesion)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return sizes[labels] >= min_pixels


def summarize(sides: np.ndarray, probability: np.ndarray, lesion: np.ndarray, s: SegmentationSlice,
              status: float = 0.0) -> LesionSummary:
    """A slice's summary from its sides, lesion probability and lesion (see LesionSummary)."""
    from scipy import ndimage as ndi

    lungs = sides > 0
    area = lungs.size
    n_lung, n_lesion = int(lungs.sum()), int(lesion.sum())
    mm2 = s.pixel_mm2
    if n_lung == 0:
        return LesionSummary(None, float(probability.max(initial=0.0)), None, None, None, None, 0.0, 0.0, 0.0, 0.0,
                             None if mm2 is None else 0.0, None if mm2 is None else 0.0, 0.0, NO_LUNG)
    share = {}
    for side in (RIGHT, LEFT):
        mine = sides == side
        share[side] = float((lesion & mine).sum() / mine.sum()) if mine.any() else None
    peripheral = 0.0
    if n_lesion:
        depth = ndi.distance_transform_edt(lungs)
        rim = lungs & (depth <= np.percentile(depth[lungs], 33))   # the lungs' outer third
        peripheral = float((lesion & rim).sum() / n_lesion)
    parts = ndi.label(lesion)[1] if n_lesion else 0
    return LesionSummary(
        n_lesion / n_lung, float(probability[lungs].max()), float(probability[lungs].mean()), share[RIGHT],
        share[LEFT], peripheral, n_lung / area, n_lesion / area, float((sides == RIGHT).sum() / area),
        float((sides == LEFT).sum() / area), None if mm2 is None else n_lesion * mm2,
        None if mm2 is None else n_lung * mm2, float(parts), status)
