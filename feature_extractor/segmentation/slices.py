"""A slice as the lungs and lesion segmentation network sees it: grey levels in the lung window, padded
to a square and resized to the network's side; and the way back to the slice's own pixels.

DICOM slices are read in Hounsfield units through the lung window (-600, 1500); PNG/JPEG slices are
taken as published (in a lung window already). Nothing else is normalized: the network is trained with
window and intensity jitter instead. A DICOM slice also gives its pixel spacing (lesion areas in mm²)
and which way its rows run in the patient (ImageOrientationPatient): whether the image's left is the
patient's right, as in the radiological convention of a supine, head-first series, or not (a prone or
mirrored series). An image file has neither: it is taken in the radiological convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..imaging.dataset import DICOM_SUFFIXES
from ..imaging.decode import DicomPixels, read_pixels, resize_map, window_grey

# Part of a map spec's identity (FeatureSpec.identity): bump it when what the network is shown changes.
MAP_INPUT_VERSION = 1
SEG_SIDE = 256   # the network's default side in px: 64 x 64 maps at stride 4
PAD_GREY = 0.0   # what the padding to a square shows: air in the lung window


@dataclass(frozen=True)
class SegmentationSlice:
    """A slice ready for the segmentation network.

    ``grey``: (H, W) float32 0-255 in the lung window; ``spacing_mm``: the rows' and columns' pixel
    spacing when the file says it; ``right_on_image_left``: whether the patient's right lung is on the
    image's left (True: the radiological convention; from ImageOrientationPatient where the file has
    it, else None, taken as True); ``dicom``: read from a DICOM file (whose header should say it)."""

    grey: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    right_on_image_left: bool | None = None
    dicom: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.grey.shape

    @property
    def pixel_mm2(self) -> float | None:
        return None if self.spacing_mm is None else float(self.spacing_mm[0] * self.spacing_mm[1])

    def _square(self) -> tuple[int, int, int]:
        """The padded square's side and where the slice sits in it (top, left)."""
        h, w = self.shape
        side = max(h, w)
        return side, (side - h) // 2, (side - w) // 2

    def network_input(self, side: int) -> np.ndarray:
        """(side, side) float32 grey levels 0-255: the slice padded to a square and resized (bilinear)."""
        square, top, left = self._square()
        padded = np.full((square, square), PAD_GREY, np.float32)
        padded[top:top + self.shape[0], left:left + self.shape[1]] = self.grey
        return padded if square == side else resize_map(padded, (side, side))

    def from_network(self, maps: np.ndarray) -> np.ndarray:
        """Maps of the network's (side, side, C) grid back at the slice's own (H, W, C) pixels (bilinear)."""
        square, top, left = self._square()
        h, w = self.shape
        out = np.empty((h, w, maps.shape[-1]), np.float32)
        for c in range(maps.shape[-1]):
            full = maps[..., c] if maps.shape[0] == square else resize_map(maps[..., c], (square, square))
            out[..., c] = full[top:top + h, left:left + w]
        return out


def right_on_image_left(row_direction: tuple[float, float, float] | None) -> bool | None:
    """Whether a slice's image left is the patient's right: its rows run towards the patient's left (+x
    in DICOM's patient coordinates, LPS). None when the header does not say, or its rows run front to
    back or head to foot (not an axial slice)."""
    if row_direction is None:
        return None
    x = float(row_direction[0])
    return None if abs(x) < 0.5 else x > 0


def read_segmentation_slice(path: str | Path) -> SegmentationSlice:
    """A file's slice for the network, through the decoded-pixels memo (ImageDecodeError or OSError)."""
    pixels = read_pixels(str(path), Path(path).suffix.lower() in DICOM_SUFFIXES)
    if isinstance(pixels, DicomPixels):
        return SegmentationSlice(window_grey(pixels.hu()).astype(np.float32), pixels.spacing_mm,
                                 right_on_image_left(pixels.row_direction), dicom=True)
    return SegmentationSlice(pixels.astype(np.float32).mean(axis=2))
