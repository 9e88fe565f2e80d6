"""Lesion maps as pictures: the PNG files of ``predict --lesion-maps`` and the overlays of the
report, the study page, ``--explain-method lesion`` and the web page."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from feature_extractor.imaging.decode import resize_rgb
from feature_extractor.lungs.sides import LEFT, RIGHT

LESION_COLOUR = np.array([255, 64, 0], np.float32)   # lesion: orange-red


LUNG_VALUES = {1: 255, 2: 128}   # the lungs PNG: the patient's right lung 255, the left 128, elsewhere 0


def map_files(segmentation, out_dir: str | Path, stem: str) -> tuple[Path, Path, Path]:
    """At the slice's own size, in ``out_dir``: ``<stem>_lesion.png``, the binary lesion (0 / 255) whose
    share of the lungs is lesion_fraction; ``<stem>_lesion_prob.png``, the network's lesion probability x
    255; ``<stem>_lungs.png``, the lungs (right 255, left 128)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lesion, prob, lungs = (out_dir / f"{stem}_{what}.png" for what in ("lesion", "lesion_prob", "lungs"))
    sides = segmentation.sides
    for path, values in ((lesion, segmentation.lesion.astype(np.uint8) * 255),
                         (prob, np.round(np.clip(segmentation.probability, 0, 1) * 255).astype(np.uint8)),
                         (lungs, np.select([sides == k for k in LUNG_VALUES], list(LUNG_VALUES.values()), 0))):
        Image.fromarray(values.astype(np.uint8), "L").save(path, compress_level=1)  # fast: a study writes hundreds
    return lesion, prob, lungs


def involved(segmentation) -> str:
    """'12.3% of lung involved', or why there is no share."""
    share = segmentation.summary.lesion_fraction
    return "no lung found" if share is None else f"{100 * share:.1f}% of lung involved"


def overlay(grey: np.ndarray, segmentation, max_side: int | None = 256) -> np.ndarray:
    """The slice (grey, (H, W)) with the lesion filled in colour (opacity growing with its probability above
    the cut-off) and each lung outlined in its side's colour (label_volumes.VOLUME_LABELS: right cyan, left
    violet); RGB uint8 scaled to ``max_side``."""
    from scipy import ndimage as ndi

    from .label_volumes import VOLUME_LABELS

    base = np.repeat(np.clip(grey, 0, 255).astype(np.float32)[..., None], 3, axis=2)
    p = np.where(segmentation.lesion, segmentation.probability, 0.0)
    alpha = np.clip((p - segmentation.threshold) / max(1 - segmentation.threshold, 1e-6), 0, 1) * 0.45
    alpha = np.where(segmentation.lesion, 0.3 + alpha, 0.0)[..., None]
    out = (1 - alpha) * base + alpha * LESION_COLOUR
    width = max(1, round(max(p.shape) / 256))
    for side, (_, colour) in VOLUME_LABELS.items():
        lung = segmentation.sides == side
        if side in (RIGHT, LEFT) and lung.any():
            out[lung & ~ndi.binary_erosion(lung, iterations=width)] = colour
    rgb = np.round(out).astype(np.uint8)
    if max_side:
        scale = max_side / max(rgb.shape[:2])
        rgb = resize_rgb(rgb, (max(1, round(rgb.shape[0] * scale)), max(1, round(rgb.shape[1] * scale))))
    return rgb


def heat(segmentation) -> np.ndarray:
    """The lesion probability inside the lungs, for the heatmap renderer (0 outside)."""
    return np.where(segmentation.lungs, segmentation.probability, 0.0).astype(np.float32)

