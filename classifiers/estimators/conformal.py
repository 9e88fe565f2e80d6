"""Answers with a known error rate: class-conditional split conformal prediction.

Every image gets one of four answers: ``COVID`` or ``NonCOVID`` where the model's error rate is
known, ``uncertain`` where it is not, ``not assessable`` where the image is unlike everything
the model was validated on (the out-of-distribution flag). The first three come from a Mondrian
(class-conditional) conformal classifier calibrated on the patient-grouped out-of-fold
probabilities that fit already computes: for each class, an image's p-value is the share of
calibration images of that class that looked at least as unlike it (non-conformity: 1 -
P(class), crepes.extras.hinge). The prediction set at error rate A holds every class whose
p-value exceeds A: one class gives that answer; both classes, or none, give ``uncertain``.
For images exchangeable with the calibration images, each class is missed at most a share A
of the time (class-conditional validity, Vovk et al. 2005); that is what ``--error-rate``
sets. Slices of one patient are not exchangeable with each other, so on slices the rate is
approximate; ``calibrate`` recalibrates on a new site's labeled images, which is where the
guarantee becomes real for that site.

The library is crepes (Boström 2022-24): its ConformalClassifier takes non-conformity scores
directly, so the out-of-fold scores the model already has calibrate it with no refit and no
wrapper around the stacked ensemble, and Mondrian categories are built in. MAPIE would want a
fitted estimator and data to split. Non-smoothed p-values: the same image always gets the same
answer (smoothing randomises ties).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from feature_extractor.errors import TrainingDataError

from .options import ANSWERS

COVID, NONCOVID, UNCERTAIN, NOT_ASSESSABLE = ANSWERS
MIN_PER_CLASS = 10  # fewer calibration images of a class give p-values too coarse to answer at 0.1


class ConformalAnswers(BaseEstimator):
    """Mondrian conformal classifier on P(COVID).

    Parameters
    ----------
    min_per_class : the fewest calibration images of each class.

    Attributes
    ----------
    classifier_ : crepes.ConformalClassifier fitted on the calibration non-conformity scores,
        Mondrian by the true class; n_per_class_ : calibration images of NonCOVID and COVID.
    """

    def __init__(self, min_per_class: int = MIN_PER_CLASS):
        self.min_per_class = min_per_class

    def fit(self, p_covid: Sequence[float], y: Sequence[int]) -> "ConformalAnswers":
        from crepes import ConformalClassifier
        from crepes.extras import hinge

        p, y = _probabilities(p_covid), np.asarray(y, dtype=int)
        counts = np.bincount(y, minlength=2)
        if counts.min() < self.min_per_class:
            raise TrainingDataError(f"conformal calibration needs at least {self.min_per_class} images of each class; "
                                    f"it has {counts[1]} COVID and {counts[0]} NonCOVID")
        self.classifier_ = ConformalClassifier().fit(hinge(p, np.array([0, 1]), y), bins=y)
        self.n_per_class_ = [int(counts[0]), int(counts[1])]
        return self

    def p_values(self, p_covid: Sequence[float]) -> np.ndarray:
        """(n, 2): each image's p-value for NonCOVID and for COVID."""
        from crepes.extras import hinge

        check_is_fitted(self, "classifier_")
        p = _probabilities(p_covid)
        if not len(p):
            return np.zeros((0, 2))
        alphas = hinge(p)
        return np.column_stack([self.classifier_.predict_p(alphas, np.full(len(p), c), smoothing=False)[:, c]
                                for c in (0, 1)])

    def prediction_sets(self, p_covid: Sequence[float], error_rate: float) -> np.ndarray:
        """(n, 2) booleans: whether NonCOVID, COVID is in each image's prediction set."""
        return self.p_values(p_covid) > error_rate

    def answers(self, p_covid: Sequence[float], error_rate: float,
                in_distribution: Sequence[bool | None] | None = None) -> list[str]:
        """One answer per image (ANSWERS); out of distribution is not assessable."""
        sets = self.prediction_sets(p_covid, error_rate)
        out = [COVID if s[1] and not s[0] else NONCOVID if s[0] and not s[1] else UNCERTAIN for s in sets]
        if in_distribution is not None:
            out = [NOT_ASSESSABLE if out_of_distribution(ok) else a for a, ok in zip(out, in_distribution)]
        return out

    def describe(self) -> dict:
        return {"method": "class-conditional (Mondrian) split conformal prediction, non-conformity 1 - P(class), "
                          "non-smoothed p-values (crepes.ConformalClassifier)",
                "n_calibration": {"NonCOVID": self.n_per_class_[0], "COVID": self.n_per_class_[1]}}


class AnswerCalibration:
    """A model's conformal calibrations: of slices (its training images' out-of-fold
    probabilities) and of studies (its training patients with several slices, their slices'
    out-of-fold probabilities pooled by the model's study aggregation); either may be None with
    the reason in ``notes``."""

    def __init__(self, slices: ConformalAnswers | None, studies: ConformalAnswers | None, notes: dict[str, str]):
        self.slices, self.studies, self.notes = slices, studies, notes

    @classmethod
    def fit(cls, p_covid: np.ndarray, y: np.ndarray, study_p: np.ndarray, study_y: np.ndarray) -> "AnswerCalibration":
        parts, notes = {}, {}
        for level, (p, labels) in {"slices": (p_covid, y), "studies": (study_p, study_y)}.items():
            try:
                parts[level] = ConformalAnswers().fit(p, labels)
            except TrainingDataError as exc:
                parts[level], notes[level] = None, str(exc)
        return cls(parts["slices"], parts["studies"], notes)

    def describe(self) -> dict:
        return {level: (part.describe() if part is not None else {"missing": self.notes.get(level)})
                for level, part in (("slices", self.slices), ("studies", self.studies))}


def out_of_distribution(flag) -> bool:
    """An in-distribution flag that says no (Python or NumPy bool; None: no detector)."""
    return flag is not None and not bool(flag)


def _probabilities(p_covid: Sequence[float]) -> np.ndarray:
    p = np.clip(np.asarray(p_covid, dtype=float), 0.0, 1.0)
    return np.column_stack([1 - p, p])
