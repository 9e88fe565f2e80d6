"""The right and the left lung of a lung mask, as radiologists name them.

Axial slices are shown in the radiological convention: the patient's right lung on the image's
left. The two largest parts of the mask are the two lungs, told apart by where their centres lie;
lungs that touch (one part) are split at the column between them where the mask is thinnest.
"""
from __future__ import annotations

import numpy as np

OUTSIDE, RIGHT, LEFT = 0, 1, 2   # the labels (also the NIfTI label volume's lung labels)


def lung_sides(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8: RIGHT (the patient's right lung, image left), LEFT, or OUTSIDE."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return out
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1] + 1
    if n >= 2 and sizes[order[1] - 1] >= 0.2 * sizes[order[0] - 1]:
        # Two lungs: every part goes to the side of the nearer of the two largest parts' centres.
        cols = np.arange(mask.shape[1])
        centres = [float((labels == k).sum(axis=0) @ cols / (labels == k).sum()) for k in order[:2]]
        split = sum(centres) / 2
    else:
        # One part: split at the thinnest column of its middle half.
        columns = mask.sum(axis=0)
        filled = np.flatnonzero(columns)
        lo, hi = filled[0], filled[-1]
        quarter = (hi - lo) // 4
        middle = np.arange(lo + quarter, hi - quarter + 1)
        split = float(middle[np.argmin(columns[middle])]) if len(middle) else (lo + hi) / 2
    column = np.arange(mask.shape[1])[None, :]
    out[mask & (column < split)] = RIGHT
    out[mask & (column >= split)] = LEFT
    return out
