"""Answers whose error among answered is controlled: Learn-then-Test thresholds on a score.

A score ``s`` (P(COVID), a slice's share of lung involved) answers the positive class where
``s >= high``, the negative class where ``s <= low``, and abstains in between. Each threshold
is chosen by Learn-then-Test (Angelopoulos et al. 2021) on calibration scores with known labels
(patient-grouped out-of-fold scores, never the images they are applied to): among the answers
of each class, the wrong share (1 - precision) stays under the error rate ``A`` with confidence
``1 - delta`` (``delta / 2`` per class, Bonferroni), so the wrong share among all answers stays
under ``A`` too. The library is MAPIE (``mapie.risk_control.BinaryClassificationController`` with
the precision risk, binomial (Bentkus) p-values for this 0/1 loss, Bonferroni-Holm over a few
label-free thresholds). Where no threshold qualifies, that class is never answered (MAPIE returns
none).

Slices of one patient are not independent, so on slices the confidence is approximate; the
thresholds are kept per source (``groups``) because each source's scores behave differently, and
a set of images recognised as one source (source_test.py) is answered with that source's.
"""
from __future__ import annotations

import warnings
from numbers import Real
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval

from covidct_core.errors import TrainingDataError

POOLED = "all"      # the thresholds of every calibration score, for a set whose source is not known
MIN_PER_CLASS = 10  # fewer calibration scores of a class give no threshold of that class
FIRST, STEP = 20, 1.5  # thresholds tried: the calibration scores at ranks 20, 30, 45, ... (label-free)
RATES_TRIED = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)  # where no threshold certifies the asked one


def _mapie_threshold(score: np.ndarray, y: np.ndarray, error_rate: float, delta: float) -> float | None:
    """The lowest threshold t whose answers (score >= t, positive) are wrong at most ``error_rate`` of
    the time with confidence 1 - delta (MAPIE); None when none qualifies."""
    from mapie.risk_control import BinaryClassificationController, precision

    if (y == 1).sum() < MIN_PER_CLASS or (y == 0).sum() < MIN_PER_CLASS:
        return None
    # The thresholds tried are the scores themselves at label-free ranks growing geometrically from the
    # FIRST strictest (a threshold answering a handful of images tests nothing), tested together with
    # Bonferroni-Holm: no single unlucky threshold can stop the others, as it would a fixed sequence.
    ranked = np.sort(score)[::-1]
    if len(ranked) < FIRST:
        return None
    ranks = [FIRST]
    while ranks[-1] * STEP < len(ranked):
        ranks.append(int(round(ranks[-1] * STEP)))
    grid = np.unique(ranked[np.array(ranks + [len(ranked)]) - 1])

    def proba(X):
        s = np.asarray(X, dtype=float).ravel()
        return np.column_stack([1 - s, s])

    controller = BinaryClassificationController(proba, risk=precision, target_level=1 - error_rate,
                                                confidence_level=1 - delta, list_predict_params=grid,
                                                fwer_method="bonferroni_holm")
    with warnings.catch_warnings():  # its monotonicity note and its "no threshold" warning: we report those ourselves
        warnings.simplefilter("ignore")
        controller.calibrate(score.reshape(-1, 1), y)
    best = controller.best_predict_param
    return None if best is None else float(best)


class SelectiveThresholds(BaseEstimator):
    """Learn-then-Test thresholds of a score, per group of calibration scores (see the module docstring).

    Parameters
    ----------
    delta : one minus the confidence with which the error among answered stays under the rate.

    Attributes
    ----------
    calibration_ : group -> (scores in [0, 1], labels); the pooled group is ``POOLED``.
    """

    _parameter_constraints: dict = {"delta": [Interval(Real, 0, 1, closed="neither")]}

    def __init__(self, delta: float = 0.1):
        self.delta = delta

    def fit(self, scores: Sequence[float], y: Sequence[int], groups: Sequence[str] | None = None,
            score_name: str | None = None) -> "SelectiveThresholds":
        """``groups``: each score's group (e.g. its source); ``score_name``: what the scores are (e.g. which
        lesion summary a finding reads), kept as ``score_name_``."""
        self._validate_params()
        scores, y = np.asarray(scores, dtype=float), np.asarray(y, dtype=int)
        if len(scores) == 0 or len(np.unique(y)) < 2:
            raise TrainingDataError("answer thresholds need calibration scores of both classes")
        self.calibration_ = {POOLED: (scores, y)}
        groups = None if groups is None else np.asarray(groups, dtype=object)
        if groups is not None and len(set(groups)) > 1:  # one group's thresholds are the pooled ones
            self.calibration_.update({str(g): (scores[groups == g], y[groups == g]) for g in dict.fromkeys(groups)})
        self.score_name_ = score_name
        return self

    def with_group(self, name: str, scores: Sequence[float], y: Sequence[int]) -> "SelectiveThresholds":
        """A copy with one more group's calibration (a site's out-of-fold scores, calibrate)."""
        import copy

        other = copy.deepcopy(self)
        other.calibration_[name] = (np.asarray(scores, dtype=float), np.asarray(y, dtype=int))
        return other

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_memo"}  # thresholds are recomputed, not stored

    @property
    def groups(self) -> list[str]:
        return list(self.calibration_)

    def thresholds(self, error_rate: float, group: str = POOLED) -> tuple[float | None, float | None]:
        """(low, high): answer negative at or below ``low``, positive at or above ``high`` (None: never)."""
        # A memo of what the calibration data and the parameters give (set_params(delta=...) keys a new entry).
        key = (float(self.delta), float(error_rate), group if group in self.calibration_ else POOLED)
        memo = self.__dict__.setdefault("_memo", {})
        if key not in memo:
            s, y = self.calibration_[key[2]]
            high = _mapie_threshold(s, y, error_rate, self.delta / 2)
            low = _mapie_threshold(1 - s, 1 - y, error_rate, self.delta / 2)
            memo[key] = (None if low is None else 1 - low, high)
        return memo[key]

    def answer(self, scores: Sequence[float], error_rate: float, group: str = POOLED) -> np.ndarray:
        """1 (positive), 0 (negative) or -1 (no answer) per score."""
        low, high = self.thresholds(error_rate, group)
        s = np.asarray(scores, dtype=float)
        if low is not None and high is not None and low >= high:
            # The two answers' regions overlap: every score is answered, split midway (each side's region
            # then lies within its own certified one).
            return np.where(s >= (low + high) / 2, 1, 0)
        pos = np.zeros(len(s), bool) if high is None else s >= high
        neg = np.zeros(len(s), bool) if low is None else s <= low
        return np.where(pos, 1, np.where(neg, 0, -1))

    def smallest_rate(self, group: str = POOLED) -> tuple[float, float] | None:
        """The smallest error rate of RATES_TRIED for which the group's calibration data certify a threshold,
        and the share of its calibration scores answered there; None when none does."""
        s, _ = self.calibration_.get(group, self.calibration_[POOLED])
        for rate in RATES_TRIED:
            low, high = self.thresholds(rate, group)
            if low is not None or high is not None:
                return rate, float(np.mean(self.answer(s, rate, group) >= 0))
        return None

    def counts(self, group: str = POOLED) -> dict[str, int]:
        s, y = self.calibration_.get(group, self.calibration_[POOLED])
        return {"positive": int((y == 1).sum()), "negative": int((y == 0).sum())}

    def describe(self, error_rate: float) -> dict:
        return {"method": "Learn-then-Test thresholds (MAPIE BinaryClassificationController, precision risk per answer "
                          "class, Bonferroni-Holm over thresholds at ranks growing 1.5-fold from 20, binomial p-values)",
                "confidence": 1 - self.delta,
                "groups": {g: {"n": self.counts(g), "thresholds_at_default_rate":
                               [None if t is None else round(t, 4) for t in self.thresholds(error_rate, g)]}
                           for g in self.groups}}
