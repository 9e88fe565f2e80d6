"""Slices made ready for dense features (hypercolumns.py): the lung window, the lung mask,
normalized grey levels.

What the CNN is shown is made for lesions, not for the image's source: every slice is read in
the lung window (DICOM: -600, 1500), its lungs are found (lungs/mask.py; HU for DICOM), its grey
levels are set so that its aerated lung and soft tissue land on the same values whatever the
published window (volumes of one archive differ by 30 grey levels), and it is smoothed by
1.5 px (at 512 px) so that scanner noise does not read as ground glass. Measured: without the
two, a head trained on five patients called a sixth, noisier patient's clean lung infected
(bench/lesions.py, BENCHMARKS "Lesions").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..imaging.dataset import DICOM_SUFFIXES
from ..imaging.decode import DicomPixels, decode_image, dicom_hu, is_dicom, read_pixels, window_grey
from ..lungs.mask import LungMask, lung_mask, lung_mask_hu

# Part of a dense spec's identity (with LUNG_MASK_VERSION): bump it when the preparation below changes.
DENSE_VERSION = 1
DENSE_INPUT, DENSE_GRID = 448, 56  # the dense FeatureSpec's default input side and grid (8 px cells)
BLUR_AT_512 = 1.5                 # Gaussian sigma in px of a 512 px slice
NORMALIZED = (85.0, 225.0)        # aerated lung and soft tissue after normalization (lung window grey)
_MIN_SPREAD = 20.0



@dataclass(frozen=True)
class DenseSlice:
    """A slice ready for dense features: its lung-window grey levels and its lung mask."""

    grey: np.ndarray      # (H, W) float32, 0-255
    lungs: LungMask

    @property
    def shape(self) -> tuple[int, int]:
        return self.grey.shape

    def normalized(self) -> np.ndarray:
        """Grey levels with the slice's aerated lung and soft tissue moved to NORMALIZED, smoothed."""
        from scipy.ndimage import gaussian_filter

        g = self.grey
        if self.lungs.anchors is not None:
            aerated, tissue = self.lungs.anchors
            g = NORMALIZED[0] + (g - aerated) * (NORMALIZED[1] - NORMALIZED[0]) / max(tissue - aerated, _MIN_SPREAD)
        g = gaussian_filter(g.astype(np.float32), BLUR_AT_512 * max(g.shape) / 512)
        return np.clip(g, 0, 255)

    def model_input(self, side: int) -> np.ndarray:
        """(side, side, 3) float32 grey levels (0-255), before the backbone's preprocessing."""
        from PIL import Image

        grey = np.asarray(Image.fromarray(self.normalized(), "F").resize((side, side), Image.BILINEAR))
        return np.repeat(grey[..., None], 3, axis=2)


def prepare_dense(data: bytes, dicom_hint: bool = False) -> DenseSlice:
    """Decode a file's bytes for dense features (ImageDecodeError when it cannot be)."""
    if is_dicom(data) or dicom_hint:
        hu = dicom_hu(data)
        return DenseSlice(window_grey(hu).astype(np.float32), lung_mask_hu(hu))
    grey = decode_image(data).astype(np.float32).mean(axis=2)
    return DenseSlice(grey, lung_mask(grey))


def read_dense(path: str | Path) -> DenseSlice:
    """prepare_dense of a file, through the decoded-pixels memo (ImageDecodeError or OSError)."""
    pixels = read_pixels(str(path), Path(path).suffix.lower() in DICOM_SUFFIXES)
    if isinstance(pixels, DicomPixels):
        hu = pixels.hu()
        return DenseSlice(window_grey(hu).astype(np.float32), lung_mask_hu(hu))
    grey = pixels.astype(np.float32).mean(axis=2)
    return DenseSlice(grey, lung_mask(grey))


