"""The lung mask that lesion measurements stand on: lungs with their lesions, on every slice.

Where the lung crop (crop.py) only needs a box around the lungs, a lesion burden needs
the lungs themselves, ground-glass opacities included: radiologists' lung masks include the
diseased lung. Classical segmentation (scikit-image, scipy), in two passes:

1. Aerated lung: the dark regions inside the body. "Inside" is what the body's outline
   encloses, with the image border closing figures cut inside the chest (papers' crops); dark
   regions touching much of the border are the air around the patient (or the scanner's field
   of view) and are dropped.
2. Lungs with their lesions: the threshold is set between the slice's own aerated lung (30th
   percentile of pass 1) and its soft tissue (median of the body), at 80% of the way to the
   tissue, so ground-glass (-700 to -300 HU) stays inside; the two largest parts are kept,
   closed and their holes (vessels, nodules) filled.

Hounsfield units (DICOM) go through the lung window (-600, 1500) first and use fixed anchors
(aerated lung -850 HU, soft tissue 40 HU) instead of the slice's own percentiles. 8-bit
slices are taken as lung-windowed, as published slices are. Dense consolidation as bright
as muscle can fall outside (measured: 88% of the expert-marked lesion pixels of
lesion-slices lie inside, BENCHMARKS "Lesions").

Every slice gets a mask: when the two passes find no lung, the lung crop's own segmentation is
tried, and failing that the mask is empty; ``LungMask.note`` says which, per image.
Measured against radiologists' lung masks: bench/lesions.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..imaging.decode import window_grey
from .crop import SEGMENTATION_SIDE, disk

# Part of the lesion maps' identity (slices.DENSE_VERSION covers it): a change to the
# algorithm below must bump it.
LUNG_MASK_VERSION = 2  # 2: the learned lungs (classifiers/workflows/lesions/lungs.py) stand beside this mask

_MIN_LUNG_PART = 0.002        # a lung part covers at least 0.2% of the image
_MAX_BORDER_SHARE = 0.35  # dark parts touching more of the image border are air around the body
_TOWARDS_TISSUE = 0.8    # threshold between aerated lung and soft tissue (pass 2)
_HU_ANCHORS = (-850.0, 40.0)  # aerated lung, soft tissue


@dataclass(frozen=True)
class LungMask:
    """A slice's lung mask at its own resolution; ``note``: why it is a fallback or empty;
    ``anchors``: the grey levels of its aerated lung and soft tissue (None when not found)."""

    mask: np.ndarray
    note: str | None = None
    anchors: tuple[float, float] | None = None

    @property
    def found(self) -> bool:
        return bool(self.mask.any())

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0



def _grey(value_hu: float) -> float:
    return float(window_grey(np.array(value_hu)))


def lung_mask(grey: np.ndarray, anchors: tuple[float, float] | None = None) -> LungMask:
    """The lung mask of an (H, W) lung-windowed grey slice (0-255). ``anchors``: the grey levels
    of aerated lung and soft tissue when known (DICOM), else measured on the slice."""
    from skimage.transform import resize

    grey = np.asarray(grey, dtype=np.float32)
    h, w = grey.shape
    if float(grey.max()) - float(grey.min()) < 1e-6:
        return LungMask(np.zeros((h, w), bool), "no lung found: blank image")
    scale = SEGMENTATION_SIDE / max(h, w)
    work = resize(grey, (max(8, round(h * scale)), max(8, round(w * scale))), anti_aliasing=True,
                  preserve_range=True)
    mask, reason, anchors = _segment(work, anchors)
    if mask is not None:
        return LungMask(resize(mask.astype(np.float32), (h, w), order=1) > 0.5, None, anchors)
    from .crop import lung_field

    rgb = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    crop_mask, crop_reason = lung_field(rgb)
    if crop_mask is not None:
        return LungMask(crop_mask, f"fallback to the lung crop's segmentation ({reason})")
    return LungMask(np.zeros((h, w), bool), f"no lung found: {reason}; {crop_reason}")


def lung_mask_hu(hu: np.ndarray) -> LungMask:
    """The lung mask of a slice in Hounsfield units (fixed anchors, see the module docstring)."""
    return lung_mask(window_grey(hu), (_grey(_HU_ANCHORS[0]), _grey(_HU_ANCHORS[1])))


def _segment(g: np.ndarray, anchors: tuple[float, float] | None
             ) -> tuple[np.ndarray | None, str | None, tuple[float, float] | None]:
    from scipy import ndimage as ndi
    from skimage import filters

    g = ndi.median_filter(g, 3)
    first = float(np.clip(filters.threshold_otsu(g), 120, 190))
    labels, parts = _dark_parts(g, first)
    if not parts:
        return None, "no dark lung-like region inside the body", None
    if anchors is None:
        core = np.isin(labels, parts)
        tissue = (g >= first) & ~ndi.binary_dilation(core, disk(3))
        anchors = (float(np.percentile(g[core], 30)),
                   float(np.percentile(g[tissue], 50)) if tissue.sum() > 50 else _grey(_HU_ANCHORS[1]))
    aerated, tissue_level = anchors
    labels, parts = _dark_parts(g, aerated + _TOWARDS_TISSUE * (tissue_level - aerated))
    if not parts:
        return None, "no lung-like region inside the body", None
    areas = np.bincount(labels.ravel())
    parts.sort(key=lambda p: -areas[p])
    keep = parts[:1] + [p for p in parts[1:3] if areas[p] >= 0.1 * areas[parts[0]]]
    mask = np.isin(labels, keep)
    mask = ndi.binary_closing(mask, disk(max(2, round(0.02 * max(g.shape)))))
    return ndi.binary_fill_holes(mask), None, anchors


def _dark_parts(g: np.ndarray, threshold: float) -> tuple[np.ndarray, list[int]]:
    """Labels of the parts darker than ``threshold`` inside the body, and the ones kept."""
    from scipy import ndimage as ndi
    from skimage import measure

    h, w = g.shape
    bright = ndi.binary_opening(g >= threshold, disk(1))
    pad = 4  # the border closes figures cut inside the chest
    inside = ndi.binary_fill_holes(ndi.binary_closing(np.pad(bright, pad, constant_values=True), disk(2),
                                                      border_value=1))[pad:-pad, pad:-pad]
    labels = measure.label(ndi.binary_opening(~bright & inside, disk(1)))
    edge = np.zeros((h, w), bool)
    edge[0] = edge[-1] = edge[:, 0] = edge[:, -1] = True
    contact = np.bincount(labels[edge], minlength=labels.max() + 1) / (2 * (h + w))
    areas = np.bincount(labels.ravel(), minlength=labels.max() + 1)
    parts = [p for p in range(1, labels.max() + 1)
             if areas[p] >= _MIN_LUNG_PART * h * w and contact[p] <= _MAX_BORDER_SHARE]
    return labels, parts
