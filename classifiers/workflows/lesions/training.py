"""The lesion head's training (``fit --lesion-data DIR``): every slice with an infection mask is
read for dense features (feature_extractor/dense/); its lung cells (the expert lung mask where
given, else the product's own) are drawn at random, at most ``cells_per_slice`` a slice, so
lesion cells keep their share; a cell is lesion when the radiologist marked most of its lung.
The head (estimators/lesion_head.py) is chosen by patient-grouped CV and calibrated.
"""
from __future__ import annotations

import numpy as np

from covidct_core.errors import CovidCTError, TrainingDataError
from covidct_core.run_context import RunContext
from feature_extractor.dense.hypercolumns import HypercolumnExtractor
from feature_extractor.dense.lesion_data import LesionData, check_masks, slice_masks
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.decode import resize_map

from ...estimators.lesion_head import LesionHead
from ...estimators.risk_control import SelectiveThresholds
from ...settings import LesionSettings

MIN_CELL_LUNG = 0.5       # a cell is lung when its lung covers at least half of it
# The finding's candidate slice scores (LesionSummary values), chosen by out-of-fold AUC at fit.
FINDING_SCORES = ("lesion_fraction", "lesion_p_max")


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


def finding_calibration(head: LesionHead, spec: FeatureSpec, data: LesionData, context: RunContext,
                        delta: float, lung_head: LesionHead | None = None) -> tuple[SelectiveThresholds | None, dict]:
    """The finding's answer thresholds, on out-of-fold slice scores: each labeled slice of ``data``
    mapped by the fold's head that did not see its patient (the final head for slices it never
    trained on), inside the product's own lung mask, as predict maps it; its score is its share of
    lung involved. Also the record of that calibration (patients as numbers, no names)."""
    from sklearn.metrics import roc_auc_score

    from .lungs import lung_grid, lungs_from_grid
    from .summary import lesion_map_of

    labeled = [s for s in data.slices if s.infected is not None]
    by_path = {s.path: s for s in labeled}
    extractor = HypercolumnExtractor(spec, context)
    candidates = {name: [] for name in FINDING_SCORES}
    labels, groups, sources = [], [], []
    for path, item, grid in extractor.batches([s.path for s in labeled], "finding       ", np.float32):
        if grid is None:
            continue
        s = by_path[path]
        g = grid.shape[0]
        cells = head.predict_proba_out_of_fold(grid.reshape(-1, grid.shape[-1]), s.group)[:, 1].reshape(g, g)
        lungs = None if lung_head is None else \
            lungs_from_grid(lung_grid(lung_head, grid, item, s.group), item, float(lung_head.threshold_))
        summary = lesion_map_of(item, cells, float(head.threshold_), lungs).summary
        if summary.lesion_fraction is None or summary.lung_note is not None:
            continue  # no lungs found: no finding to calibrate
        for name, values in candidates.items():
            values.append(getattr(summary, name))
        labels.append(int(s.infected))
        groups.append(s.group)
        sources.append(s.source)
    y = np.array(labels, dtype=int)
    aucs = {name: float(roc_auc_score(y, v)) if len(set(labels)) == 2 else float("nan")
            for name, v in candidates.items()}
    chosen = max(FINDING_SCORES, key=lambda name: (np.nan_to_num(aucs[name], nan=-1), -FINDING_SCORES.index(name)))
    scores = candidates[chosen]
    numbers = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    record = {"score": chosen, "score_choice": "the out-of-fold slice AUC of each candidate: "
              + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items()),
              "labels": "the lesion data's slice labels (infected)", "n_slices": len(y),
              "n_infected": int(y.sum()) if len(y) else 0, "oof_auc": aucs[chosen] if aucs[chosen] == aucs[chosen] else None,
              "oof_columns": ["source", "patient number", "infected", "score"],
              "oof": [[src, numbers[g], int(label), round(float(score), 5)]
                      for src, g, label, score in zip(sources, groups, labels, scores)]}
    try:
        return SelectiveThresholds(delta).fit(scores, y, score_name=chosen), record
    except TrainingDataError as exc:
        record["missing"] = str(exc)
        return None, record
