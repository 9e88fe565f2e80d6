"""The lungs under the lesion maps, learned from radiologists' lung masks (``fit --lesion-data``).

The classical lung mask (feature_extractor/lungs/mask.py) finds aerated lung: dense consolidation
as bright as the chest wall falls outside it, and the lesion measured inside it with it. The lung
head learns the lungs as radiologists draw them, to the pleura: a classifier per grid cell (the same
hypercolumns as the lesion head, with the cell's place in the slice and its mean grey level),
labelled lung where the radiologist's lung mask covers most of the cell, chosen by patient-grouped
CV and calibrated (estimators/lesion_head.py). Applied to a slice, its probabilities, upsampled,
make the learned mask (holes filled, the two largest parts kept); the classical mask's pixels near
it join it, so its sharper edge stays where the two agree. Models without a lung head (or slices it
cannot map) keep the classical mask, the only one that needs no training. Chosen by leave one
patient out on lesion-slices (bench/lesions.py, BENCHMARKS "Lungs").
"""
from __future__ import annotations

import numpy as np

from covidct_core.run_context import RunContext
from feature_extractor.dense.hypercolumns import HypercolumnExtractor
from feature_extractor.dense.lesion_data import LesionData, slice_masks
from feature_extractor.dense.slices import DenseSlice
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.decode import resize_map

from ...estimators.lesion_head import LesionHead

LUNG_CELLS_PER_SLICE = 150
JOIN_AT_512 = 5   # px of a 512 px slice: how near the learned mask the classical mask's pixels join it


def cell_shares(mask: np.ndarray, grid: int) -> np.ndarray:
    """Share of each grid cell a full-size mask (or a 0-1 map) covers, (grid, grid)."""
    return resize_map(mask.astype(np.float32), (grid * 8, grid * 8)).reshape(grid, 8, grid, 8).mean(axis=(1, 3))


def lung_cell_features(grid_features: np.ndarray, dense: DenseSlice) -> np.ndarray:
    """Each cell's hypercolumn, row and column (0-1) and mean grey level (0-1): (g * g, D + 3)."""
    g = grid_features.shape[0]
    rows, cols = np.mgrid[0:g, 0:g] / max(g - 1, 1)
    grey = cell_shares(dense.normalized() / 255.0, g)
    return np.hstack([grid_features.reshape(g * g, -1).astype(np.float32),
                      np.stack([rows.ravel(), cols.ravel(), grey.ravel()], axis=1).astype(np.float32)])


def _largest_two(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    mask = ndi.binary_fill_holes(mask)
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = [k + 1 for k in np.argsort(sizes)[::-1][:2] if sizes[k] >= 0.1 * sizes.max()]
    return np.isin(labels, keep)


def lungs_from_grid(lung_grid: np.ndarray, dense: DenseSlice, threshold: float) -> np.ndarray:
    """A slice's lung mask from its grid of lung probabilities (see the module docstring)."""
    from scipy import ndimage as ndi

    learned = _largest_two(resize_map(lung_grid.astype(np.float32), dense.shape) >= threshold)
    if not learned.any():
        return dense.lungs.mask
    near = ndi.binary_dilation(learned, iterations=max(1, round(JOIN_AT_512 * max(dense.shape) / 512)))
    return _largest_two(learned | (dense.lungs.mask & near))


def lung_grid(head: LesionHead, grid_features: np.ndarray, dense: DenseSlice, group: str | None = None) -> np.ndarray:
    """The (g, g) lung probabilities of a slice; ``group``: its patient, for the out-of-fold head."""
    g = grid_features.shape[0]
    X = lung_cell_features(grid_features, dense)
    p = head.predict_proba(X) if group is None else head.predict_proba_out_of_fold(X, group)
    return p[:, 1].reshape(g, g)


def train_lung_head(data: LesionData, spec: FeatureSpec, context: RunContext, seed: int = 0,
                    candidates: tuple[str, ...] = ("logreg",)) -> tuple[LesionHead | None, dict]:
    """A lung head trained on the slices of ``data`` with a radiologist's lung mask (None without
    them), and the model card's record of it."""
    slices = [s for s in data.slices if s.lung_mask]
    if len({s.group for s in slices}) < 2:
        return None, {"missing": "no lung masks of two or more patients in the lesion data: the classical lung mask "
                                 "is used"}
    extractor = HypercolumnExtractor(spec, context)
    rng = np.random.default_rng(seed)
    by_path = {s.path: s for s in slices}
    X, y, groups = [], [], []
    for path, item, grid in extractor.batches([s.path for s in slices], "lung head     ", np.float32):
        if grid is None:
            continue
        s = by_path[path]
        share = cell_shares(slice_masks(s, item.shape).lungs, grid.shape[0]).ravel()
        cells = rng.choice(len(share), min(LUNG_CELLS_PER_SLICE, len(share)), replace=False)
        X.append(lung_cell_features(grid, item)[cells].astype(np.float16))
        y.append((share[cells] >= 0.5).astype(int))
        groups += [s.group] * len(cells)
    X, y = np.concatenate(X), np.concatenate(y)
    head = LesionHead(candidates, 3, seed).fit(X, y, np.array(groups))
    return head, {"head": head.describe(), "training_cells": {"n": int(len(y)), "n_lung": int(y.sum()),
                                                               "per_slice": LUNG_CELLS_PER_SLICE},
                  "n_slices": len(slices), "patients": len({s.group for s in slices}),
                  "features": "hypercolumns, the cell's row and column, its mean grey level",
                  "label": "lung where the radiologist's lung mask covers at least half of the cell",
                  "fusion": f"the learned mask (holes filled, two largest parts) joined by the classical mask's pixels "
                            f"within {JOIN_AT_512} px (at 512 px)"}
