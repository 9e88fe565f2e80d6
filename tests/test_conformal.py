"""Conformal answers on synthetic scores: the error rate holds, abstentions are what they say."""
import numpy as np
import pytest
from scipy.stats import binom

from classifiers.estimators.conformal import ConformalAnswers
from classifiers.settings import AnswerSettings
from classifiers.records.selective import risk_coverage, selective_metrics, wrong_answers_caught
from feature_extractor.errors import SettingsError, TrainingDataError


def scores(n, rng):
    """P(COVID) of n images per class from overlapping distributions (an imperfect model)."""
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    logit = rng.normal(np.where(y == 1, 1.0, -1.0), 1.2)
    return 1 / (1 + np.exp(-logit)), y


@pytest.mark.parametrize("error_rate", [0.05, 0.1, 0.2])
def test_each_class_is_missed_at_most_the_error_rate(error_rate):
    """Class-conditional validity: over many calibration/test draws, the share of a class's test
    images whose prediction set misses their class stays within the binomial bound of the rate."""
    rng = np.random.default_rng(0)
    misses, total = {0: 0, 1: 0}, {0: 0, 1: 0}
    for _ in range(200):
        p_cal, y_cal = scores(100, rng)
        p_test, y_test = scores(50, rng)
        sets = ConformalAnswers().fit(p_cal, y_cal).prediction_sets(p_test, error_rate)
        for c in (0, 1):
            mine = y_test == c
            misses[c] += int(np.sum(~sets[mine, c]))
            total[c] += int(mine.sum())
    for c in (0, 1):
        bound = binom.ppf(0.999, total[c], error_rate) / total[c]
        assert misses[c] / total[c] <= bound, (c, misses[c] / total[c], bound)
        assert misses[c] / total[c] > error_rate / 3  # not vacuous: sets are not simply everything


def test_answers_ood_uncertain_and_single_class():
    rng = np.random.default_rng(1)
    p_cal, y_cal = scores(200, rng)
    model = ConformalAnswers().fit(p_cal, y_cal)
    answers = model.answers([0.999, 0.001, 0.5, 0.999], 0.1, [True, True, True, False])
    assert answers == ["COVID", "NonCOVID", "uncertain", "not assessable"]
    flags = np.array([True, False])  # the detector's flags come as NumPy booleans
    assert model.answers([0.999, 0.999], 0.1, flags) == ["COVID", "not assessable"]
    sets = model.prediction_sets([0.5], 0.1)
    assert sets.all()  # both classes: uncertain
    empty = model.answers([0.5], 0.9)  # at a 90% error rate a middling score fits neither class
    assert model.prediction_sets([0.5], 0.9).sum() == 0 and empty == ["uncertain"]
    with pytest.raises(TrainingDataError, match="at least 10 images of each class"):
        ConformalAnswers().fit([0.1] * 5 + [0.9] * 30, [0] * 5 + [1] * 30)
    with pytest.raises(SettingsError, match="--error-rate 1.5: must be 0 < error_rate < 1"):
        AnswerSettings(error_rate=1.5)


def test_selective_metrics_and_the_curve():
    y = np.array([1, 1, 0, 0, 1, 0])
    answers = ["COVID", "NonCOVID", "NonCOVID", "uncertain", "not assessable", "NonCOVID"]
    m = selective_metrics(y, answers, np.arange(6), n_boot=200)
    assert m["coverage"]["value"] == pytest.approx(4 / 6) and m["error"]["value"] == pytest.approx(1 / 4)
    assert m["coverage_COVID"]["value"] == pytest.approx(2 / 3) and m["error_COVID"]["value"] == pytest.approx(1 / 2)
    assert m["error_NonCOVID"]["value"] == 0 and m["not_assessable"]["value"] == pytest.approx(1 / 6)
    caught = wrong_answers_caught(y, ["COVID", "NonCOVID", "COVID", "COVID", "NonCOVID", "NonCOVID"], answers)
    assert caught == {"wrong_labels": 4, "uncertain": 1, "not_assessable": 1, "still_wrong": 1}
    rng = np.random.default_rng(2)
    p_cal, y_cal = scores(200, rng)
    p, y2 = scores(100, rng)
    curve = risk_coverage(y2, ConformalAnswers().fit(p_cal, y_cal).p_values(p))
    coverage = [c["coverage"] for c in curve]
    # Up to 0.1 a higher rate answers more; beyond, middling scores fit neither class (empty sets: uncertain).
    assert coverage[:4] == sorted(coverage[:4]) and coverage[0] < coverage[3]
    assert all(0 <= c["error"] <= 1 for c in curve if c["coverage"] > 0)
