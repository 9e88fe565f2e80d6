"""Hyperparameter search by patient-grouped, stratified cross-validation.

Slices of one patient are never split between a fold's training and held-out parts, so the
CV score is not inflated by near-duplicate slices. The best candidate's out-of-fold (OOF)
probabilities are kept: they feed the stack's meta-learner and the choice of a decision
threshold, without any extra fits and without touching the test split.
"""
from __future__ import annotations

from numbers import Integral
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import ParameterGrid, StratifiedGroupKFold
from sklearn.utils._param_validation import HasMethods
from sklearn.utils.parallel import Parallel, delayed
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from covidct_core.errors import TrainingDataError


def grouped_folds(y: np.ndarray, groups: np.ndarray, n_splits: int = 5,
                  random_state: int = 0) -> StratifiedGroupKFold:
    """Stratified, patient-grouped folds; fewer than ``n_splits`` when a class has fewer patients."""
    n_groups = min(len(np.unique(groups[y == c])) for c in (0, 1))
    if n_groups < 2:
        raise TrainingDataError("training needs at least 2 patients of each class for cross-validation")
    return StratifiedGroupKFold(n_splits=min(n_splits, n_groups), shuffle=True,
                                random_state=random_state)


def fold_splits(cv: int | Any | Iterable, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
                random_state: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: ``cv`` folds by :func:`grouped_folds` (an int), a splitter's
    folds (an object with ``split``), or the given pairs."""
    if isinstance(cv, (int, np.integer)):
        cv = grouped_folds(y, groups, int(cv), random_state)
    if hasattr(cv, "split"):
        return list(cv.split(X, y, groups))
    return [(np.asarray(train), np.asarray(test)) for train, test in cv]


def fold_aucs(y: np.ndarray, p: np.ndarray, folds: Sequence[np.ndarray],
              sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Held-out AUC of each fold (weighted by ``sample_weight`` when given)."""
    return np.array([roc_auc_score(y[idx], p[idx], sample_weight=None if sample_weight is None else sample_weight[idx])
                     for idx in folds if len(np.unique(y[idx])) == 2])


def sample_weight_params(estimator: BaseEstimator, sample_weight: np.ndarray | None) -> dict[str, Any]:
    """``fit`` keyword arguments that give ``estimator`` (or a Pipeline's last step) the weights."""
    if sample_weight is None:
        return {}
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        return {f"{estimator.steps[-1][0]}__sample_weight": sample_weight}
    return {"sample_weight": sample_weight}


class GroupedSearchCV(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Grid search over patient-grouped folds, scored by mean held-out ROC AUC.

    Parameters
    ----------
    estimator : estimator
        A binary classifier with ``predict_proba``.
    param_grid : dict of str to list
        Candidates (see ``ParameterGrid``); empty: the estimator as it is.
    cv : int, splitter or iterable of (train, test), default 5
        An int means that many stratified folds grouped by ``groups`` (see :func:`grouped_folds`).
    random_state : int, default 0
        Shuffles the folds when ``cv`` is an int.
    n_jobs : int, optional
        Parallel fits (every candidate x fold is one); None: joblib's current setting (one,
        unless inside ``joblib.parallel_config``, e.g. the Ray backend of ``fit --engine ray``).
        The same results whatever it is.

    Attributes
    ----------
    best_params_ : dict
        The candidate with the best mean held-out AUC (the first one on ties).
    best_estimator_ : estimator
        That candidate refit on all of ``X``.
    cv_auc_, cv_auc_std_ : float
        Mean and standard deviation over folds of its held-out AUC.
    oof_ : ndarray of shape (n_samples,)
        Its out-of-fold probability of class 1 for every sample.
    candidates_ : list of dict
        Each candidate's params, ``cv_auc`` and ``cv_auc_std``.
    n_splits_ : int
        Folds used.
    classes_ : ndarray
        The labels, as ``best_estimator_`` has them.
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict_proba"])], "param_grid": [dict, None], "cv": ["cv_object"],
        "random_state": ["random_state"], "n_jobs": [Integral, None],
    }

    def __init__(self, estimator: BaseEstimator, param_grid: Mapping[str, Sequence] | None = None,
                 cv: int | Any = 5, random_state: int = 0, n_jobs: int | None = None):
        self.estimator = estimator
        self.param_grid = param_grid
        self.cv = cv
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X, y, groups=None, sample_weight=None) -> "GroupedSearchCV":
        """``sample_weight``: weights for every fit and for the held-out AUCs."""
        self._validate_params()
        X, y = np.asarray(X), np.asarray(y)
        if set(np.unique(y)) != {0, 1}:
            raise TrainingDataError("training needs labeled images of both classes (COVID and NonCOVID)")
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        splits = fold_splits(self.cv, X, y, groups, self.random_state)
        held_out = [test for _, test in splits]
        self.candidates_, best, best_oof = [], None, None
        weights = sample_weight_params(self.estimator, sample_weight)
        grid = list(ParameterGrid(dict(self.param_grid or {})))
        fold_probas = Parallel(n_jobs=self.n_jobs)(
            delayed(_held_out_proba)(clone(self.estimator).set_params(**params), X, y, train, test, weights)
            for params in grid for train, test in splits)
        for c, params in enumerate(grid):
            oof = np.empty(len(y))
            for (_, test), proba in zip(splits, fold_probas[c * len(splits):(c + 1) * len(splits)]):
                oof[test] = proba
            aucs = fold_aucs(y, oof, held_out, sample_weight)
            entry = {"params": {k: _plain(v) for k, v in params.items()},
                     "cv_auc": float(aucs.mean()), "cv_auc_std": float(aucs.std())}
            self.candidates_.append(entry)
            if best is None or entry["cv_auc"] > best["cv_auc"]:
                best, best_oof = entry, oof
        self.best_params_ = best["params"]
        self.cv_auc_, self.cv_auc_std_ = best["cv_auc"], best["cv_auc_std"]
        self.oof_ = best_oof
        self.n_splits_ = len(splits)
        self.best_estimator_ = clone(self.estimator).set_params(**self.best_params_).fit(X, y, **weights)
        self.classes_ = self.best_estimator_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)


def _held_out_proba(model: BaseEstimator, X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
                    weights: dict[str, np.ndarray]) -> np.ndarray:
    """P(class 1) on ``test`` of ``model`` fit on ``train`` (one fold of one candidate)."""
    model.fit(X[train], y[train], **{k: w[train] for k, w in weights.items()})
    proba = model.predict_proba(X[test])
    return proba[:, list(model.classes_).index(1)]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
