"""Site recalibration on synthetic features: a frozen model, refit probabilities and threshold."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from classifiers.estimators.recalibration import recalibrate
from covidct_core.errors import TrainingDataError


def site(n, flip, rng):
    y = rng.integers(0, 2, n)
    X = rng.normal(0, 1, (n, 3))
    X[:, 0] += (1 - 2 * y if flip else 2 * y - 1) * 1.5
    return X, y


def test_a_few_local_labels_turn_a_backwards_model_around_and_set_a_balanced_threshold():
    rng = np.random.default_rng(0)
    model = LogisticRegression().fit(*site(400, False, rng))
    X_new, y_new = site(600, True, rng)  # the new site's images read the other way round
    assert roc_auc_score(y_new, model.predict_proba(X_new)[:, 1]) < 0.2
    sample, rest = slice(0, 25), slice(25, None)
    result = recalibrate(model, X_new[sample], y_new[sample])
    assert roc_auc_score(y_new[rest], result.estimator.predict_proba(X_new[rest])[:, 1]) > 0.8
    assert result.threshold["threshold"] == pytest.approx(y_new[sample].mean())
    assert model.coef_[0, 0] > 0  # the original model is untouched (frozen)
    target = recalibrate(model, X_new[sample], y_new[sample], target_sensitivity=0.9).threshold
    assert target["sample_sensitivity"] >= 0.9


def test_a_sample_without_both_classes_twice_is_refused():
    rng = np.random.default_rng(1)
    model = LogisticRegression().fit(*site(100, False, rng))
    with pytest.raises(TrainingDataError, match="at least 2 images of each class"):
        recalibrate(model, rng.normal(size=(5, 3)), np.array([1, 1, 1, 1, 0]))
