import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from classifiers.estimators.thresholds import threshold_for_sensitivity
from classifiers.records.metrics import binary_metrics, bootstrap_metrics, patient_scores, roc_auc


def test_metrics_match_sklearn_including_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(y * 0.3 + rng.normal(0.35, 0.25, 300), 0, 1), 1)  # many ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    m = binary_metrics(y, p, 0.5)
    assert m["f1"] == pytest.approx(f1_score(y, p >= 0.5))
    assert m["sensitivity"] == pytest.approx(np.mean(p[y == 1] >= 0.5))
    assert m["specificity"] == pytest.approx(np.mean(p[y == 0] < 0.5))


def test_bootstrap_resamples_whole_groups():
    """With 2 groups of identical slices, a patient bootstrap has only a few distinct outcomes,
    and its CI is much wider than an image bootstrap that treats slices as independent."""
    rng = np.random.default_rng(1)
    y = np.repeat(rng.integers(0, 2, 40), 5)
    p = np.clip(y * 0.2 + np.repeat(rng.uniform(0.2, 0.8, 40), 5), 0, 1)
    patients = np.repeat(np.arange(40), 5)
    by_patient = bootstrap_metrics(y, p, patients, n_boot=500)
    by_image = bootstrap_metrics(y, p, np.arange(len(y)), n_boot=500)
    width = lambda m: m["roc_auc"]["ci_high"] - m["roc_auc"]["ci_low"]  # noqa: E731
    assert width(by_patient) > 1.5 * width(by_image)
    for m in by_patient.values():
        assert m["ci_low"] <= m["value"] <= m["ci_high"]


def test_patient_scores_mean_and_max():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.2, 0.8, 0.1, 0.3, 0.2])
    groups = np.array(["a", "a", "b", "b", "b"])
    y_pat, p_pat, ids = patient_scores(y, p, groups, "mean")
    assert list(ids) == ["a", "b"] and list(y_pat) == [1, 0] and p_pat == pytest.approx([0.5, 0.2])
    assert patient_scores(y, p, groups, "max")[1] == pytest.approx([0.8, 0.3])


def test_threshold_reaches_target_sensitivity():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 500), 0, 1)
    choice = threshold_for_sensitivity(y, p, 0.95)
    assert choice["oof_sensitivity"] >= 0.95
    # the highest such threshold: any higher one misses the target
    assert np.mean(p[y == 1] > choice["threshold"]) < 0.95
