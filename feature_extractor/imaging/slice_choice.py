"""Which slices of a study are scored: those inside the lungs (by a model's segmentation network, decided
by the caller; else by the slice's aerated lung in Hounsfield units), at most ``max_slices`` of them,
evenly spaced."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from covidct_core.run_context import worker_threads

from .dataset import DICOM_SUFFIXES
from .studies import Study

log = logging.getLogger(__name__)
# A slice is "in the lungs" when aerated lung (-950..-400 HU inside the body) covers this share of the body's
# cross-section (neck and abdomen slices: trachea or bowel gas, under 1% on the shared studies; the lung bases
# 2-4%). The gate of models without a segmentation network.
MIN_LUNG_SHARE_OF_BODY = 0.02


def lung_fraction(hu: np.ndarray) -> float:
    """Share of the body's cross-section that is aerated lung (-950..-400 HU).

    The body: the largest connected region above -400 HU, holes filled (the lungs are holes
    in it); air around the patient is outside it.
    """
    from scipy import ndimage as ndi

    dense = hu > -400
    labels, n = ndi.label(dense)
    if n == 0:
        return 0.0
    sizes = np.bincount(labels.ravel())[1:]
    body = ndi.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    area = int(body.sum())
    if area == 0:
        return 0.0
    lung = body & (hu > -950) & (hu < -400)
    lung = ndi.binary_opening(lung, iterations=2)  # speckle is not lung
    return float(lung.sum()) / area


def slice_hu(path: str) -> np.ndarray:
    """HU of a DICOM slice; for an 8-bit image, HU estimated from the lung window it was
    shown in (level -600, width 1500). Raises ImageDecodeError or OSError."""
    from .decode import DicomPixels, read_pixels

    pixels = read_pixels(path, Path(path).suffix.lower() in DICOM_SUFFIXES)
    if isinstance(pixels, DicomPixels):
        return pixels.hu()
    grey = pixels.astype(np.float32).mean(axis=2)
    return grey / 255.0 * 1500.0 - 1350.0


def slices_to_score(study: Study, max_slices: int | None = None, outside: Mapping[str, str] | None = None
                    ) -> tuple[list[str], dict[str, str]]:
    """The slices of ``study`` inside the lungs, at most ``max_slices`` evenly spaced; and path -> why each
    other slice is not scored. ``outside``: path -> why a slice is outside the lungs, when a model's lungs
    said (its segmentation network); without it, the slices' aerated lung in Hounsfield units decides
    (:func:`lung_fraction`)."""
    if outside is None:
        outside = _outside_by_hu(study.slices)
    in_lungs = [p for p in study.slices if p not in outside]
    not_used = {p: outside[p] for p in study.slices if p in outside}
    if max_slices and len(in_lungs) > max_slices:
        keep = set(np.unique(np.round(np.linspace(0, len(in_lungs) - 1, max_slices)).astype(int)))
        for i, path in enumerate(in_lungs):
            if i not in keep:
                not_used[path] = f"not sampled (--max-slices {max_slices})"
        in_lungs = [p for i, p in enumerate(in_lungs) if i in keep]
    return in_lungs, not_used


def _outside_by_hu(paths: Sequence[str]) -> dict[str, str]:
    """path -> why it is outside the lungs, for the slices whose aerated lung is under MIN_LUNG_SHARE_OF_BODY of
    the body (unreadable slices are scored anyway: extraction reports their error)."""
    from concurrent.futures import ThreadPoolExecutor

    def check(path: str) -> float | None:
        try:
            return lung_fraction(slice_hu(path))
        except Exception as exc:
            log.debug("lung check of %s failed: %s", path, exc)
            return None

    # Decoded once here (decode.read_pixels keeps them for the extraction that follows), in threads sized
    # from the cores.
    with ThreadPoolExecutor(worker_threads()) as pool:
        fractions = list(pool.map(check, paths))
    return {p: f"outside the lungs (aerated lung {f:.1%} of the body)" for p, f in zip(paths, fractions)
            if f is not None and f < MIN_LUNG_SHARE_OF_BODY}
