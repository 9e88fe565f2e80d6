"""Lung-field cropping: keep the lungs, drop what a model could use as a shortcut.

COVID-CT's COVID images come from papers (arrows, letters, scale bars, varied framing),
its non-COVID ones are homogeneous, so a CNN can learn the source instead of the disease
(UCSD-AI4H/COVID-CT issue #3). ``crop_lungs`` finds the lungs by classical 2D segmentation
(Otsu threshold, morphology, connected components; scikit-image and scipy), crops to their
bounding box and blacks out everything outside them. When it finds no plausible lungs it
returns the full image unchanged, with the reason, so the caller can warn.

The segmentation runs on a copy scaled to 256 px (about 30 ms an image); the crop and mask
are applied at full resolution. Each lung's mask is its convex hull, mirrored about the
body's midline, so a dense consolidation (bright, not dark like aerated lung) stays inside.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Part of the cache identity (FeatureSpec.crop_version): a change to the algorithm below must bump it.
# 2: a second search inside the field of view when the whole image finds no lungs (MosMed).
# The lungs-equalized crop is this crop plus equalize_lungs: a change to either bumps it.
LUNG_CROP_VERSION = 2

SEGMENTATION_SIDE = 256           # segmentation resolution (longest side)
_MIN_PART = 0.01           # a lung candidate covers at least 1% of the image
_MAX_BORDER_CONTACT = 0.1  # dark parts touching more of the border are air around the body
_MIN_LUNGS, _MAX_LUNGS = 0.03, 0.85  # plausible lung area, as a fraction of the image
_MARGIN = 0.04             # bounding-box margin, as a fraction of the image side


@dataclass(frozen=True)
class SliceCrop:
    """What a crop (lungs here, the body in body.py) left of a slice."""

    image: np.ndarray                  # cropped, outside pixels black; or the input
    bbox: tuple[int, int, int, int]    # (top, left, bottom, right) in input pixels
    found: bool
    reason: str | None = None          # why the full image was kept
    kind: str = "lungs"                # what was looked for
    inner: tuple[int, int, int, int] | None = None  # where the bbox's pixels lie in ``image`` when padded


def disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def lung_mask(grey: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Lung mask of a 2D grey image at its own resolution, or (None, reason).

    When the whole image finds no lungs, the search runs again inside the scanner's field of
    view: MosMed-like slices show a grey disc (air in the lung window) on black corners, so
    Otsu on the whole image only splits corners from disc.
    """
    from scipy import ndimage as ndi

    if float(grey.max()) - float(grey.min()) < 1e-6:
        return None, "blank image"
    smooth = ndi.median_filter(grey, 3)
    mask, reason = _lungs_in(smooth, None)
    if mask is None:
        fov = field_of_view(smooth)
        if fov is not None:
            in_fov, _ = _lungs_in(smooth, fov)
            if in_fov is not None:
                return in_fov, None
    return mask, reason


def field_of_view(smooth: np.ndarray) -> np.ndarray | None:
    """Everything but the image's darkest value connected to its border (the corners outside a
    reconstruction disc); None when that is not a sizeable part of the image."""
    from skimage import measure

    outside = measure.label(smooth <= float(smooth.min()) + 2.0)
    border_labels = np.unique(np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]]))
    corners = np.isin(outside, border_labels[border_labels > 0])
    return ~corners if 0.02 < corners.mean() < 0.6 else None


def _lungs_in(smooth: np.ndarray, fov: np.ndarray | None) -> tuple[np.ndarray | None, str | None]:
    """The lung search within ``fov`` (None: the whole image); dark parts touching the image
    border or the field of view's edge are air around the body."""
    from scipy import ndimage as ndi
    from skimage import filters, measure

    h, w = smooth.shape
    inside = np.ones((h, w), bool) if fov is None else fov
    threshold = filters.threshold_otsu(smooth[inside])
    dark = ndi.binary_opening((smooth < threshold) & inside, disk(2))
    labels = measure.label(dark)
    edge = np.zeros_like(dark)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    if fov is not None:
        edge |= ndi.binary_dilation(fov & ~ndi.binary_erosion(fov, disk(2)), disk(2))
    contact = np.bincount(labels[edge], minlength=labels.max() + 1)
    candidates = []
    for region in measure.regionprops(labels):
        top, left, bottom, right = region.bbox
        box_h, box_w = (bottom - top) / h, (right - left) / w
        if (region.area < _MIN_PART * h * w
                or contact[region.label] > _MAX_BORDER_CONTACT * 2 * (h + w)  # outside air
                or (box_w > 0.6 and box_h < 0.25 * box_w)                   # bed, bands
                or not 0.1 < region.centroid[0] / h < 0.9):
            continue
        candidates.append(region)
    if not candidates:
        return None, "no dark lung-like region inside the body"
    candidates.sort(key=lambda r: -r.area)
    keep = candidates[:1] + [r for r in candidates[1:2] if r.area >= 0.15 * candidates[0].area]
    mask = np.zeros((h, w), bool)
    for region in keep:
        top, left, bottom, right = region.bbox
        mask[top:bottom, left:right] |= region.image_convex
    # Mirror about the body's midline: a lung too dense to look dark is kept with its twin.
    body = measure.label(~dark & (smooth >= threshold) & inside)
    if body.max():
        largest = max(measure.regionprops(body), key=lambda r: r.area)
        mid2 = largest.bbox[1] + largest.bbox[3] - 1  # twice the midline column
        cols = np.clip(mid2 - np.arange(w), 0, w - 1)
        mask |= mask[:, cols]
    fraction = mask.mean()
    if not _MIN_LUNGS <= fraction <= _MAX_LUNGS:
        return None, f"implausible lung area ({fraction:.0%} of the image)"
    return ndi.binary_dilation(mask, disk(max(1, round(0.02 * max(h, w))))), None


def lung_field(rgb: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Full-resolution lung mask of an (H, W, 3) uint8 slice, or (None, reason)."""
    from skimage.transform import resize

    h, w = rgb.shape[:2]
    grey = rgb.astype(np.float32).mean(axis=2)
    scale = SEGMENTATION_SIDE / max(h, w)
    work_shape = (max(8, round(h * scale)), max(8, round(w * scale)))
    mask, reason = lung_mask(resize(grey, work_shape, anti_aliasing=True, preserve_range=True))
    if mask is None:
        return None, reason
    return resize(mask.astype(np.float32), (h, w), order=0) > 0.5, None


def crop_lungs(rgb: np.ndarray, equalize: bool = False) -> SliceCrop:
    """Crop an (H, W, 3) uint8 slice to its lungs and black out the rest (see module doc).
    ``equalize``: also equalize the lung field's histogram (see equalize_lungs)."""
    h, w = rgb.shape[:2]
    mask, reason = lung_field(rgb)
    if mask is None:
        return SliceCrop(rgb, (0, 0, h, w), False, reason)
    if equalize:
        rgb = equalize_lungs(rgb, mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    margin = round(_MARGIN * max(h, w))
    top, bottom = max(0, int(rows[0]) - margin), min(h, int(rows[-1]) + 1 + margin)
    left, right = max(0, int(cols[0]) - margin), min(w, int(cols[-1]) + 1 + margin)
    out = np.where(mask[..., None], rgb, 0).astype(np.uint8)[top:bottom, left:right]
    return SliceCrop(np.ascontiguousarray(out), (top, left, bottom, right), True)


def equalize_lungs(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Intensity standardization of the lung field: histogram equalization of the pixels inside
    ``mask`` (skimage.exposure.equalize_hist), so that every source's lungs span the same grey
    levels whatever its window, export and contrast. Order is kept: a ground-glass opacity stays
    brighter than aerated lung, but absolute density is given up."""
    from skimage.exposure import equalize_hist

    grey = rgb.astype(np.float32).mean(axis=2)
    equalized = equalize_hist(grey, nbins=256, mask=mask)
    out = np.where(mask, np.round(equalized * 255), 0).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=2)
