"""The answer policy's parts on synthetic data: thresholds that keep the error among answered under
the rate at their confidence, a source test that knows a new source from a split of a known one,
the policy's rules and notes, and the metrics of answers."""
import numpy as np
import pytest

from classifiers.estimators.risk_control import POOLED, SelectiveThresholds
from classifiers.estimators.source_test import SourceTest
from classifiers.records.selective import risk_coverage, selective_metrics, wrong_answers_caught
from classifiers.settings import AnswerSettings
from classifiers.workflows.answer_policy import (AnswerParts, answer_images, answers_at, certification_notes,
                                                 findings, study_finding)
from covidct_core.errors import SettingsError, TrainingDataError


def scores(n, rng, separation=2.0):
    """P(COVID) of n images per class from overlapping distributions (an imperfect model)."""
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    logit = rng.normal(np.where(y == 1, separation, -separation), 1.2)
    return 1 / (1 + np.exp(-logit)), y


@pytest.mark.parametrize("error_rate", [0.05, 0.1])
def test_the_error_among_answered_stays_under_the_rate_at_the_stated_confidence(error_rate):
    """Over many calibration draws on exchangeable scores, the true error among answered (each answer
    class, measured on a large test draw) exceeds the rate in at most delta of them."""
    rng = np.random.default_rng(0)
    p_test, y_test = scores(20000, rng)
    failures, coverage, draws = 0, [], 60
    for _ in range(draws):
        p_cal, y_cal = scores(300, rng)
        coded = SelectiveThresholds(delta=0.1).fit(p_cal, y_cal).answer(p_test, error_rate)
        answered = coded >= 0
        wrong = answered & (coded != y_test)
        failures += int(wrong.sum() / max(answered.sum(), 1) > error_rate)
        coverage.append(answered.mean())
    assert failures / draws <= 0.1 + 0.05  # delta, with room for a few draws' noise
    assert np.mean(coverage) > 0.05  # not vacuous: it answers


def test_thresholds_per_group_and_none_where_a_class_is_too_rare():
    rng = np.random.default_rng(1)
    p, y = scores(200, rng)
    groups = np.where(np.arange(len(p)) % 2, "a", "b")
    t = SelectiveThresholds().fit(p, y, groups)
    assert set(t.groups) == {POOLED, "a", "b"}
    low, high = t.thresholds(0.1, "a")
    assert low is not None and high is not None
    assert t.thresholds(0.1, "unknown") == t.thresholds(0.1, POOLED)
    few = SelectiveThresholds().fit([0.9] * 5 + [0.1] * 40, [1] * 5 + [0] * 40)
    assert few.thresholds(0.1)[1] is None  # five COVID scores are too few to answer COVID
    with pytest.raises(TrainingDataError):
        SelectiveThresholds().fit([0.2, 0.3], [0, 0])
    with pytest.raises(SettingsError, match="--error-rate 1.5: must be 0 < error_rate < 1"):
        AnswerSettings(error_rate=1.5)


def two_sources(rng, n=150, d=40):
    """Features of two sources (each with patients of 2 images) and of a third, new one."""
    def source(shift, n):
        patients = rng.normal(0, 0.3, (n // 2, d)).repeat(2, axis=0)
        return rng.normal(shift, 1.0, (n, d)) + patients
    a, b = source(0.0, n), source(1.5, n)
    new = source(1.5 * np.where(np.arange(d) % 2, 1.0, -1.0), 60)  # another direction than b's
    groups = [f"a{i // 2}" for i in range(n)] + [f"b{i // 2}" for i in range(n)]
    return np.vstack([a, b]), np.array(["a"] * n + ["b"] * n), np.array(groups), new


def test_the_source_test_flags_a_new_source_and_not_new_patients_of_a_known_one():
    rng = np.random.default_rng(2)
    X, sources, groups, new = two_sources(rng)
    held = np.isin(groups, [f"a{i}" for i in range(60, 75)])  # 30 images of patients left out of the fit
    test = SourceTest(draws=20).fit(X[~held], sources[~held], groups[~held])
    assert test.test(new[:3]) is None  # too small to test
    flagged = test.test(new[:20])
    assert flagged["exchangeable"] == [] and flagged["ratio"] > 1
    known = test.test(X[held])
    assert known["exchangeable"] == ["a"] and known["nearest"] == "a"
    site = test.with_source("new", new, [f"n{i // 2}" for i in range(len(new))])
    assert "new" in site.test(new[:20] + rng.normal(0, 0.01, (20, new.shape[1])))["exchangeable"]


def test_the_policy_blocks_unknown_sets_and_says_which_rule_decided():
    rng = np.random.default_rng(3)
    X, sources, groups, new = two_sources(rng)
    p, y = scores(300, rng)
    parts = AnswerParts(0.1, SelectiveThresholds().fit(p, y, rng.permutation(np.r_[sources, sources])), None,
                        SourceTest(draws=10).fit(X, sources, groups))
    raw = np.vstack([X[:20], new[:20], X[:3]])
    p_new = np.full(43, 0.99)
    sets = ["known"] * 20 + ["new hospital"] * 20 + ["lone"] * 3
    answers = answer_images(parts, p_new, raw, sets, [True] * 42 + [False])
    assert set(answers.answer[:20]) == {"COVID"} and "like a" in answers.note[0]
    assert set(answers.answer[20:40]) == {"not assessable"} and "unlike every source" in answers.note[20]
    assert answers.answer[40] == "COVID" and "could not be checked" in answers.note[40]
    assert answers.answer[42] == "not assessable" and "one by one" in answers.note[42]
    assert answers_at(parts, answers, 0.3)[20:] == ["not assessable"] * 20 + answers_at(parts, answers, 0.3)[40:]


def test_findings_are_given_where_lungs_are_found_and_studies_count_them():
    class Summary:
        def __init__(self, fraction, lung=0.2, note=None):
            self.lesion_fraction, self.lung_share_of_slice, self.lung_note = fraction, lung, note
    rng = np.random.default_rng(4)
    share = np.r_[rng.uniform(0, 0.02, 200), rng.uniform(0.05, 0.5, 200)]
    parts = AnswerParts(0.1, finding=SelectiveThresholds().fit(share, np.r_[np.zeros(200), np.ones(200)]))
    got = findings(parts, [Summary(0.4), Summary(0.0), Summary(None, 0.0, "no lung found"), None])
    assert got == ["opacities", "clear", "not assessable", "not assessable"]
    assert study_finding(["opacities", "clear", "clear"], 0.1) == ("opacities", pytest.approx(1 / 3))
    assert study_finding(["clear", "clear", "uncertain"], 0.1) == ("clear", 0.0)
    assert study_finding(["not assessable"], 0.1) == ("not assessable", None)


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
    t = SelectiveThresholds().fit(p_cal, y_cal)
    curve = risk_coverage(y2, lambda rate: ["COVID" if c == 1 else "NonCOVID" if c == 0 else "uncertain"
                                            for c in t.answer(p, rate)])
    coverage = {c["error_rate"]: c["coverage"] for c in curve}
    assert 0 < coverage[0.1] <= coverage[0.3] <= coverage[0.5]  # a higher rate answers more


def test_where_nothing_certifies_the_rate_one_line_gives_the_smallest_rate_that_does():
    """A weak model on few calibration images certifies nothing at 0.1: the note names the group once, the
    smallest rate that does certify and its coverage; at that rate there is no note."""
    rng = np.random.default_rng(3)
    p, y = scores(60, rng, separation=0.6)
    thresholds = SelectiveThresholds().fit(p, y)
    smallest = thresholds.smallest_rate()
    assert thresholds.thresholds(0.1) == (None, None) and smallest is not None and smallest[0] > 0.1
    notes = certification_notes(AnswerParts(0.1, thresholds), [POOLED] * 50)
    assert len(notes) == 1 and f"the smallest rate that does is {smallest[0]:g}" in notes[0]
    assert f"answering {smallest[1]:.0%}" in notes[0]
    assert certification_notes(AnswerParts(smallest[0], thresholds), [POOLED] * 50) == []
