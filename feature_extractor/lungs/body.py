"""A fixed field of view: every slice cropped to the patient's body and padded square.

Sources frame the body differently: COVID-CT's figures are cut from papers at any zoom,
MosMed's slices show the whole 512 px reconstruction disc. The CNN then sees lungs at
different scales, and the scale says which source. Cropping to the body outline (the
largest bright part inside the scanner's field of view, with the lung field, holes filled)
and padding it to a square shows every body at the same size; what lies outside the body (text, bed, the disc's
rim) goes black. Where no plausible body is found, the full image is kept, with the reason.
A figure already cut inside the chest (many of COVID-CT's) cannot be zoomed out: it stays as
it is, so this harmonizes framing only where the body's outline is in the image.
"""
from __future__ import annotations

import numpy as np

from .crop import SEGMENTATION_SIDE, SliceCrop, disk, field_of_view, lung_mask

# Part of the cache identity (FeatureSpec.crop_version): a change to the algorithm below must bump it.
BODY_CROP_VERSION = 1

_MIN_BODY = 0.1    # the body covers at least 10% of the image
_BODY_MARGIN = 0.02     # bounding-box margin, as a fraction of the image side


def body_mask(grey: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Body mask of a 2D grey image at its own resolution, or (None, reason)."""
    from scipy import ndimage as ndi
    from skimage import filters, measure

    if float(grey.max()) - float(grey.min()) < 1e-6:
        return None, "blank image"
    smooth = ndi.median_filter(grey, 3)
    fov = field_of_view(smooth)
    inside = np.ones(grey.shape, bool) if fov is None else ndi.binary_erosion(fov, disk(3))
    bright = (smooth > filters.threshold_otsu(smooth[inside])) & inside
    labels = measure.label(ndi.binary_opening(bright, disk(2)))
    if not labels.max():
        return None, "no bright body region"
    largest = max(measure.regionprops(labels), key=lambda r: r.area)
    body = labels == largest.label
    lungs, _ = lung_mask(grey)
    if lungs is not None:  # figures cut inside the chest: the lungs reach the border, keep them
        body |= lungs
    body = ndi.binary_fill_holes(body)
    if body.mean() < _MIN_BODY:
        return None, f"implausible body area ({body.mean():.0%} of the image)"
    return body, None


def crop_body(rgb: np.ndarray) -> SliceCrop:
    """Crop an (H, W, 3) uint8 slice to its body, black out the rest, pad to a square."""
    from skimage.transform import resize

    h, w = rgb.shape[:2]
    grey = rgb.astype(np.float32).mean(axis=2)
    scale = SEGMENTATION_SIDE / max(h, w)
    work = resize(grey, (max(8, round(h * scale)), max(8, round(w * scale))), anti_aliasing=True,
                  preserve_range=True)
    mask, reason = body_mask(work)
    if mask is None:
        return SliceCrop(rgb, (0, 0, h, w), False, reason, "body")
    mask = resize(mask.astype(np.float32), (h, w), order=0) > 0.5
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    margin = round(_BODY_MARGIN * max(h, w))
    top, bottom = max(0, int(rows[0]) - margin), min(h, int(rows[-1]) + 1 + margin)
    left, right = max(0, int(cols[0]) - margin), min(w, int(cols[-1]) + 1 + margin)
    region = np.where(mask[..., None], rgb, 0).astype(np.uint8)[top:bottom, left:right]
    side = max(region.shape[:2])
    square = np.zeros((side, side, 3), np.uint8)
    y0, x0 = (side - region.shape[0]) // 2, (side - region.shape[1]) // 2
    square[y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = region
    return SliceCrop(square, (top, left, bottom, right), True, kind="body",
                     inner=(y0, x0, y0 + region.shape[0], x0 + region.shape[1]))
