"""The lesion head's training (``fit --lesion-data DIR``): every slice with an infection mask is
read for dense features (feature_extractor/dense/); its lung cells (the expert lung mask where
given, else the product's own) are drawn at random, at most ``cells_per_slice`` a slice, so
lesion cells keep their share; a cell is lesion when the radiologist marked most of its lung.
The head (estimators/lesion_head.py) is chosen by patient-grouped CV and calibrated.
"""
from __future__ import annotations

import numpy as np

from feature_extractor.dense.hypercolumns import HypercolumnExtractor
from feature_extractor.dense.lesion_data import LesionData, check_masks, slice_masks
from feature_extractor.errors import CovidCTError
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.decode import resize_map
from feature_extractor.run_context import RunContext

from ...estimators.lesion_head import LesionHead
from ...settings import LesionSettings

MIN_CELL_LUNG = 0.5       # a cell is lung when its lung covers at least half of it


def cell_shares(mask: np.ndarray, grid: int) -> np.ndarray:
    """Share of each grid cell a full-size mask covers, (grid, grid)."""
    return resize_map(mask.astype(np.float32), (grid * 8, grid * 8)).reshape(grid, 8, grid, 8).mean(axis=(1, 3))


def training_cells(grid_features: np.ndarray, infection: np.ndarray, lungs: np.ndarray, limit: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A slice's lung cells, at most ``limit`` drawn at random (so lesion cells keep their share:
    the calibrated probabilities then mean what they say): (cells, D) features and 0/1 labels."""
    g = grid_features.shape[0]
    lung = cell_shares(lungs, g).ravel()
    lesion = cell_shares(infection & lungs, g).ravel()
    cells = np.flatnonzero(lung >= MIN_CELL_LUNG)
    if len(cells) > limit:
        cells = np.sort(rng.choice(cells, limit, replace=False))
    labels = (lesion[cells] / lung[cells] >= 0.5).astype(int)
    # float16: bounded memory for every slice's cells (converted after sampling: the same values, 20x less work)
    return grid_features.reshape(-1, grid_features.shape[-1])[cells].astype(np.float16), labels


def train_lesion_head(data: LesionData, spec: FeatureSpec, settings: LesionSettings | None = None,
                      context: RunContext | None = None) -> tuple[LesionHead, dict]:
    """A lesion head trained on the masked slices of ``data``; and the model card's record of it."""
    settings = settings or LesionSettings()
    context = context or RunContext()
    seed = 0 if settings.seed is None else settings.seed
    masked = data.with_masks
    if not masked:
        raise CovidCTError(f"--lesion-data {', '.join(data.folders)}: no slice has an infection mask; slice "
                           "labels alone (slices.csv) measure a lesion head (evaluate --lesion-data), they "
                           "cannot train one")
    check_masks(data)  # every mask fits its slice before the CNN runs
    extractor = HypercolumnExtractor(spec, context)
    rng = np.random.default_rng(seed)
    by_path = {s.path: s for s in masked}
    X, y, groups, failed = [], [], [], {}
    for path, item, grid in extractor.batches([s.path for s in masked], "lesion head   ", np.float32):
        if grid is None:
            failed[path] = item
            continue
        s = by_path[path]
        masks = slice_masks(s, item.shape)
        lungs = masks.lungs if masks.lungs is not None else item.lungs.mask
        cells, labels = training_cells(grid, masks.infection, lungs, settings.cells_per_slice, rng)
        X.append(cells)
        y.append(labels)
        groups += [s.group] * len(labels)
    if failed:
        path, reason = next(iter(failed.items()))
        raise CovidCTError(f"{len(failed)} lesion slices cannot be read, e.g. {path}: {reason}")
    X, y = np.concatenate(X), np.concatenate(y)
    head = LesionHead(settings.heads, settings.cv_folds, seed).fit(X, y, np.array(groups))
    record = {"dense": extractor.resolved_spec.to_record(), "data": data.describe(), "head": head.describe(),
              "training_cells": {"n": int(len(y)), "n_lesion": int(y.sum()), "per_slice_at_most": settings.cells_per_slice,
                                 "lung": "the expert lung mask where given, else the product's own",
                                 "label": "lesion when the radiologist marked at least half of the cell's lung"},
              "settings": {**settings.record(), "seed": seed},
              "notes": list(data.notes)}
    return head, record
