"""The lesion head: a classical classifier per grid cell of the lungs, learned from radiologists'
infection masks, with calibrated probabilities.

Each training row is one lung cell of a slice (its hypercolumn, feature_extractor/dense/hypercolumns.py)
labeled by whether the radiologist marked most of its lung as infected. Candidates (logistic
regression, SGD, XGBoost) are compared by patient-grouped CV: the mean over folds of the cells'
average precision (lesion cells are a minority). The winner's out-of-fold probabilities fit an
isotonic calibration (so 0.7 means 70% of such cells are lesion) and the decision threshold
that maximises the out-of-fold cell Dice; then the winner is refit on every cell.
"""
from __future__ import annotations

from numbers import Integral
from typing import Callable, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils._param_validation import Interval
from sklearn.utils.parallel import Parallel, delayed
from sklearn.utils.validation import check_is_fitted

from covidct_core.errors import TrainingDataError

from .options import LESION_HEADS


def _logreg(random_state: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=300))


def _sgd(random_state: int):
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", alpha=1e-3, max_iter=15, tol=None,
                                                         random_state=random_state))


def _xgboost(random_state: int):
    from xgboost import XGBClassifier

    return XGBClassifier(n_estimators=120, max_depth=4, learning_rate=0.15, subsample=0.5, colsample_bytree=0.3,
                         max_bin=64, tree_method="hist", n_jobs=0, random_state=random_state, verbosity=0)


HEADS: dict[str, Callable[[int], BaseEstimator]] = {"logreg": _logreg, "sgd": _sgd, "xgboost": _xgboost}
DEFAULT_HEADS = LESION_HEADS


def dice_at(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    predicted = p >= threshold
    total = predicted.sum() + y.sum()
    return 1.0 if total == 0 else float(2 * (predicted & (y == 1)).sum() / total)


class LesionHead(ClassifierMixin, BaseEstimator):
    """Per-cell lesion classifier chosen by patient-grouped CV, calibrated.

    Parameters
    ----------
    candidates : names in HEADS to compare.
    cv : grouped folds (fewer when there are fewer patients).
    random_state : seed of the folds and the estimators.

    Attributes
    ----------
    choice_ : the winning candidate; cv_ : every candidate's out-of-fold scores;
    estimator_ : the winner refit on every cell; calibration_ : isotonic map of its
    probabilities; threshold_ : calibrated probability from which a cell is called lesion;
    cv_dice_ : the out-of-fold cell Dice at that threshold.
    """

    _parameter_constraints: dict = {
        "candidates": [list, tuple], "cv": [Interval(Integral, 2, None, closed="left")], "random_state": ["random_state"],
    }

    def __init__(self, candidates: Sequence[str] = DEFAULT_HEADS, cv: int = 3, random_state: int = 0):
        self.candidates = candidates
        self.cv = cv
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> "LesionHead":
        self._validate_params()
        from sklearn.isotonic import IsotonicRegression
        from sklearn.metrics import average_precision_score
        from sklearn.model_selection import GroupKFold

        y = np.asarray(y, dtype=int)
        groups = np.asarray(groups)
        unknown = [c for c in self.candidates if c not in HEADS]
        if unknown:
            raise TrainingDataError(f"unknown lesion head(s) {unknown}; valid: {', '.join(HEADS)}")
        n_groups = len(np.unique(groups))
        if len(np.unique(y)) < 2 or n_groups < 2:
            raise TrainingDataError(f"a lesion head needs lesion and clean lung cells from two or more patients; "
                                    f"got {int(y.sum())} lesion cells of {len(y)} from {n_groups} patient(s)")
        folds = list(GroupKFold(n_splits=min(self.cv, n_groups)).split(X, y, groups))
        # Every candidate x fold is one joblib task (joblib's current setting: fit runs them on every core).
        held_out = Parallel()(delayed(_held_out)(name, self.random_state, X, y, train, test)
                              for name in self.candidates for train, test in folds)
        self.cv_, oof, fold_models = {}, {}, {}
        for i, name in enumerate(self.candidates):
            p = np.zeros(len(y))
            scores = []
            fold_models[name] = [model for _, model in held_out[i * len(folds):(i + 1) * len(folds)]]
            for (train, test), (probabilities, _) in zip(folds, held_out[i * len(folds):(i + 1) * len(folds)]):
                p[test] = probabilities
                scores.append(average_precision_score(y[test], p[test]) if y[test].any() else np.nan)
            oof[name] = p
            self.cv_[name] = {"average_precision": float(np.nanmean(scores)),
                              "average_precision_sd": float(np.nanstd(scores))}
        self.choice_ = max(self.candidates, key=lambda c: self.cv_[c]["average_precision"])
        # The winner of each fold and the patients it did not see: out-of-fold maps of whole slices.
        self.fold_estimators_ = fold_models[self.choice_]
        self.fold_of_group_ = {g: k for k, (_, test) in enumerate(folds) for g in np.unique(groups[test])}
        self.calibration_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(oof[self.choice_], y)
        calibrated = self.calibration_.predict(oof[self.choice_])
        grid = np.round(np.arange(0.2, 0.81, 0.05), 2)
        dice = [dice_at(y, calibrated, t) for t in grid]
        self.threshold_ = float(grid[int(np.argmax(dice))])
        self.cv_dice_ = float(max(dice))
        self.folds_ = len(folds)
        self.estimator_ = clone(HEADS[self.choice_](self.random_state)).fit(_float(X), y)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        p = self.calibration_.predict(self.estimator_.predict_proba(_float(X))[:, 1])
        return np.column_stack([1 - p, p])

    def predict_proba_out_of_fold(self, X: np.ndarray, group: str) -> np.ndarray:
        """predict_proba of cells of a training patient by the fold's winner that did not see it
        (calibrated like the final head's); a patient the head never saw: the final head."""
        check_is_fitted(self, "estimator_")
        k = getattr(self, "fold_of_group_", {}).get(group)
        if k is None:
            return self.predict_proba(X)
        p = self.calibration_.predict(self.fold_estimators_[k].predict_proba(_float(X))[:, 1])
        return np.column_stack([1 - p, p])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)

    def describe(self) -> dict:
        """The model card's record of the head."""
        return {"classifier": self.choice_, "candidates": self.cv_, "cv_folds": self.folds_,
                "cv_scheme": "GroupKFold by patient over lung cells; average precision of lesion cells",
                "calibration": "isotonic on out-of-fold probabilities", "threshold": self.threshold_,
                "threshold_rule": "the calibrated probability with the best out-of-fold cell Dice",
                "cv_cell_dice": self.cv_dice_}


def _held_out(name: str, random_state: int, X: np.ndarray, y: np.ndarray, train: np.ndarray,
              test: np.ndarray) -> tuple[np.ndarray, object]:
    model = HEADS[name](random_state).fit(_float(X[train]), y[train])
    return model.predict_proba(_float(X[test]))[:, 1], model


def _float(X: np.ndarray) -> np.ndarray:
    return np.asarray(X, dtype=np.float32)
