"""Site recalibration: a fitted model's probabilities and threshold refit on a few labeled
images of a new site; its features and classifier stay frozen.

Probability calibration is sklearn's CalibratedClassifierCV around a FrozenEstimator (Platt's
sigmoid, or isotonic for larger samples), fitted on the site's labeled sample. A sigmoid may
come out with a negative slope: when a model ranks a site's images backwards, a few local
labels say so, and the recalibrated model ranks them the other way. The threshold is the
sample's COVID share (calibrated probabilities above the prevalence: balanced errors), or
the one that reaches a target sensitivity on the sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

from covidct_core.errors import TrainingDataError

from .thresholds import threshold_for_sensitivity

RECALIBRATIONS = ("sigmoid", "isotonic")


@dataclass
class Recalibration:
    estimator: CalibratedClassifierCV
    threshold: dict


def out_of_fold_recalibrated(estimator, X: np.ndarray, y: np.ndarray, groups: np.ndarray, method: str = "sigmoid",
                             n_splits: int = 5, random_state: int = 0) -> np.ndarray:
    """Each image's recalibrated probability from a calibration fitted without its patient
    (patient-grouped folds): scores exchangeable with a new image of the site, for the site's
    answer thresholds (Learn-then-Test)."""
    from .search import grouped_folds

    y = np.asarray(y, dtype=int)
    oof = np.empty(len(y))
    for train, test in grouped_folds(y, groups, n_splits, random_state).split(X, y, groups):
        everything = np.arange(len(train))
        part = CalibratedClassifierCV(FrozenEstimator(estimator), method=method,
                                      cv=[(everything, everything)]).fit(X[train], y[train])
        oof[test] = part.predict_proba(X[test])[:, 1]
    return oof


def recalibrate(estimator, X: np.ndarray, y: np.ndarray, method: str = "sigmoid",
                target_sensitivity: float | None = None) -> Recalibration:
    """``estimator`` (fitted, frozen) with probabilities and threshold refit on (X, y)."""
    y = np.asarray(y, dtype=int)
    if method not in RECALIBRATIONS:
        raise TrainingDataError(f"unknown recalibration {method!r}; valid: {', '.join(RECALIBRATIONS)}")
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise TrainingDataError(f"recalibration needs at least 2 images of each class; the sample has "
                                f"{counts[1]} COVID and {counts[0]} NonCOVID")
    # One "fold" that is the whole sample: the frozen model is not refit, so folds would only
    # fit the calibrator on less of an already small sample.
    everything = np.arange(len(y))
    calibrated = CalibratedClassifierCV(FrozenEstimator(estimator), method=method,
                                        cv=[(everything, everything)]).fit(X, y)
    p = calibrated.predict_proba(X)[:, 1]
    if target_sensitivity is None:
        prevalence = float(np.mean(y))
        pred = p >= prevalence
        threshold = {"threshold": prevalence, "rule": "the sample's COVID share (balanced errors)"}
    else:
        threshold = threshold_for_sensitivity(y, p, target_sensitivity)
        pred = p >= threshold["threshold"]
        threshold = {"threshold": threshold["threshold"], "target_sensitivity": target_sensitivity,
                     "rule": "target sensitivity on the site's labeled sample"}
    threshold["sample_sensitivity"] = float(np.mean(pred[y == 1]))
    threshold["sample_specificity"] = float(np.mean(~pred[y == 0]))
    return Recalibration(calibrated, threshold)
