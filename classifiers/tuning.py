"""Hyperparameter search by patient-grouped, stratified cross-validation.

Slices of one patient are never split between a fold's training and held-out parts, so the
CV score is not inflated by near-duplicate slices. Each candidate's out-of-fold (OOF)
probabilities are kept: the best one's feed the stack's meta-learner and the choice of a
decision threshold, without any extra fits and without touching the test split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import ParameterGrid, StratifiedGroupKFold, cross_val_predict

from feature_extractor.errors import TrainingDataError


@dataclass
class TuningResult:
    estimator: BaseEstimator        # refit on all the training images with the best params
    best_params: dict[str, Any]
    cv_auc: float                   # mean over folds of the held-out AUC
    cv_auc_std: float
    n_folds: int
    candidates: list[dict[str, Any]]
    oof: np.ndarray                 # out-of-fold P(COVID) of the best candidate


def grouped_folds(y: np.ndarray, groups: np.ndarray, n_splits: int = 5,
                  random_state: int = 0) -> StratifiedGroupKFold:
    n_groups = min(len(np.unique(groups[y == c])) for c in (0, 1))
    if n_groups < 2:
        raise TrainingDataError("training needs at least 2 patients of each class for cross-validation")
    return StratifiedGroupKFold(n_splits=min(n_splits, n_groups), shuffle=True,
                                random_state=random_state)


def fold_aucs(y: np.ndarray, p: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    return np.array([roc_auc_score(y[idx], p[idx]) for idx in folds if len(np.unique(y[idx])) == 2])


def tune(estimator: BaseEstimator, grid: dict[str, list], X: np.ndarray, y: np.ndarray,
         groups: np.ndarray, n_splits: int = 5, random_state: int = 0,
         n_jobs: int | None = None) -> TuningResult:
    """Pick the grid point with the best mean held-out AUC, then refit it on everything."""
    if set(np.unique(y)) != {0, 1}:
        raise TrainingDataError("training needs labeled images of both classes (COVID and NonCOVID)")
    cv = grouped_folds(y, groups, n_splits, random_state)
    splits = list(cv.split(X, y, groups))
    held_out = [test for _, test in splits]
    candidates, best, best_oof = [], None, None
    for params in ParameterGrid(grid or {}):
        model = clone(estimator).set_params(**params)
        oof = cross_val_predict(model, X, y, groups=groups, cv=splits, method="predict_proba",
                                n_jobs=n_jobs)[:, 1]
        aucs = fold_aucs(y, oof, held_out)
        entry = {"params": {k: _plain(v) for k, v in params.items()},
                 "cv_auc": float(aucs.mean()), "cv_auc_std": float(aucs.std())}
        candidates.append(entry)
        if best is None or entry["cv_auc"] > best["cv_auc"]:
            best, best_oof = entry, oof
    final = clone(estimator).set_params(**best["params"]).fit(X, y)
    return TuningResult(final, best["params"], best["cv_auc"], best["cv_auc_std"], len(splits),
                        candidates, best_oof)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
