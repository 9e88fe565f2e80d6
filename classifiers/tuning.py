"""Hyperparameter search by patient-grouped, stratified cross-validation.

Slices of one patient are never split between a CV fold's training and held-out parts,
so the CV score is not inflated by near-duplicate slices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold

from feature_extractor.errors import CovidCTError


@dataclass
class TuningResult:
    estimator: BaseEstimator        # refit on all the training images with the best params
    best_params: dict[str, Any]
    cv_auc: float
    cv_auc_std: float
    n_folds: int
    candidates: list[dict[str, Any]]


def grouped_folds(y: np.ndarray, groups: np.ndarray, n_splits: int = 5,
                  random_state: int = 0) -> StratifiedGroupKFold:
    n_groups = min(len(np.unique(groups[y == c])) for c in (0, 1))
    if n_groups < 2:
        raise CovidCTError("training needs at least 2 patients of each class for cross-validation")
    return StratifiedGroupKFold(n_splits=min(n_splits, n_groups), shuffle=True,
                                random_state=random_state)


def tune(estimator: BaseEstimator, grid: dict[str, list], X: np.ndarray, y: np.ndarray,
         groups: np.ndarray, n_splits: int = 5, random_state: int = 0,
         n_jobs: int | None = None) -> TuningResult:
    if set(np.unique(y)) != {0, 1}:
        raise CovidCTError("training needs labeled images of both classes (COVID and NonCOVID)")
    cv = grouped_folds(y, groups, n_splits, random_state)
    search = GridSearchCV(estimator, grid, scoring="roc_auc", cv=cv, refit=True, n_jobs=n_jobs,
                          error_score="raise")
    search.fit(X, y, groups=groups)
    res = search.cv_results_
    best = search.best_index_
    candidates = [{"params": {k: _plain(v) for k, v in p.items()},
                   "cv_auc": float(m), "cv_auc_std": float(s)}
                  for p, m, s in zip(res["params"], res["mean_test_score"], res["std_test_score"])]
    return TuningResult(search.best_estimator_, {k: _plain(v) for k, v in search.best_params_.items()},
                        float(res["mean_test_score"][best]), float(res["std_test_score"][best]),
                        cv.get_n_splits(), candidates)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
