"""Dense frozen features: hypercolumns, what lesion maps are made of.

A frozen backbone's intermediate layers (declared per backbone in backbones.py, strides 4, 8
and 16) are brought to one grid and stacked, so each grid cell of a slice gets a feature
vector that sees fine texture and its surroundings (Hariharan et al., CVPR 2015). The
default: a 448 x 448 input and a 56 x 56 grid (8 px cells), both settings of the FeatureSpec
(``input_size``, ``grid``).

What the CNN is shown is made for lesions, not for the image's source: every slice is read in
the lung window (DICOM: -600, 1500), its lungs are found (lung_mask.py; HU for DICOM), its grey
levels are set so that its aerated lung and soft tissue land on the same values whatever the
published window (volumes of one archive differ by 30 grey levels), and it is smoothed by
1.5 px (at 512 px) so that scanner noise does not read as ground glass. Measured: without the
two, a head trained on five patients called a sixth, noisier patient's clean lung infected
(bench/lesions.py, BENCHMARKS "Lesions").

Dense features are computed, not cached: a slice's 56 x 56 x 912 float16 grid is 5.7 MB, 200
times its pooled vector, while the CNN pass costs about 0.1 s (BENCHMARKS "Lesions": cost).
What is cached is the lesion head's output per slice (classifiers/workflows/lesions.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .dataset import DICOM_SUFFIXES
from .extract import FeatureExtractor
from .feature_spec import DENSE_GRID, DENSE_INPUT, FeatureSpec
from .images import DicomPixels, decode_image, dicom_hu, is_dicom, read_pixels
from .lung_mask import LungMask, lung_mask, lung_mask_hu, window_grey
from .weights import NONE, build_with_weights

# Part of a dense spec's identity (with LUNG_MASK_VERSION): bump it when the preparation below changes.
DENSE_VERSION = 1
DEFAULT_INPUT, DEFAULT_GRID = DENSE_INPUT, DENSE_GRID
BLUR_AT_512 = 1.5                 # Gaussian sigma in px of a 512 px slice
NORMALIZED = (85.0, 225.0)        # aerated lung and soft tissue after normalization (lung window grey)
_MIN_SPREAD = 20.0


def dense_spec(spec: FeatureSpec, input_side: int = DEFAULT_INPUT, grid: int = DEFAULT_GRID) -> FeatureSpec:
    """The dense features of ``spec``'s backbone with the same weights (random-init weights are
    hashed anew: the dense network holds a part of the backbone's layers)."""
    sha = None if spec.weights.source == NONE else spec.weights_sha256
    return FeatureSpec(spec.backbone, spec.weights, sha, (input_side, input_side), grid=grid)


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


class HypercolumnExtractor(FeatureExtractor):
    """A frozen backbone's dense features (``spec.grid`` set), weights resolved and checked like
    the pooled extractor's."""

    def __init__(self, spec: FeatureSpec, context=None):
        if spec.grid is None:
            raise ValueError("a dense FeatureSpec needs a grid")
        super().__init__(spec, context)

    def _build(self, weights):
        return build_with_weights(self.spec.backbone_spec, weights, self.spec.input_size, precision=self.spec.precision,
                                  grid=self.spec.grid)

    @property
    def feature_dim(self) -> int:
        return int(self.model.output_shape[-1])

    def grids(self, slices: Sequence[DenseSlice], dtype=np.float16) -> np.ndarray:
        """(N, grid, grid, D) hypercolumns of prepared slices: float16 to train (bounded memory for
        many slices' cells), float32 to apply (the CNN's own output: converting a slice's 2.9M values
        to float16 and back cost 25 ms, more than the dense CNN pass on ONNX Runtime)."""
        return self.grids_of_inputs(np.stack([s.model_input(self.input_side) for s in slices]), dtype)

    @property
    def input_side(self) -> int:
        return self.spec.input_size[0]

    def grids_of_inputs(self, inputs: np.ndarray, dtype=np.float16) -> np.ndarray:
        """grids() of slices' model inputs, (N, side, side, 3), made beforehand (e.g. in a decoding thread)."""
        return np.asarray(self.forward(eager=len(inputs) == 1)(self.preprocess(inputs)), dtype=dtype)

