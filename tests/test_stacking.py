import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from classifiers.estimators.registry import get_classifier
from classifiers.estimators.stacking import StackedEnsemble
from tests.test_classifiers import grouped_data


def searches(*names, cv=3):
    return [(name, get_classifier(name).search(cv=cv)) for name in names]


@pytest.mark.slow  # check_estimator runs some 50 fits
def test_follows_the_sklearn_estimator_contract():
    # A weight of 2 is not a duplicated row here: the duplicate can land in another CV fold.
    check_estimator(StackedEnsemble(searches("logreg", cv=2), cv=2), expected_failed_checks={
        "check_sample_weight_equivalence_on_dense_data": "grouped CV folds see a duplicated row, not a weight"})


def test_per_backbone_blocks_and_meta_weights():
    X, y, groups = grouped_data(dim=20)  # signal only in columns 0-2, i.e. block "a"
    stack = StackedEnsemble(searches("logreg", "svm"), blocks=[("a", 0, 10), ("b", 10, 20)], cv=3)
    assert stack.fit(X, y, groups) is stack
    assert [(r["block"], r["classifier"]) for r in stack.base_reports_] == [
        ("a", "logreg"), ("a", "svm"), ("b", "logreg"), ("b", "svm")]
    weights = stack.meta_weights()
    assert weights["a/logreg"] + weights["a/svm"] > abs(weights["b/logreg"]) + abs(weights["b/svm"])
    assert stack.cv_auc_ > 0.9 and stack.oof_.shape == y.shape
    assert weights["C"] in (0.01, 0.1, 1.0, 10.0) and weights["C"] == stack.final_estimator_.C
    p = stack.predict_proba(X)
    assert p.shape == (len(y), 2) and np.allclose(p.sum(axis=1), 1)


def test_base_models_share_the_stacks_grouped_folds():
    """Every base search is given the stack's folds, so its out-of-fold probabilities are
    honest inputs to the final estimator's own CV on the same folds."""
    X, y, groups = grouped_data(dim=6)
    stack = StackedEnsemble(searches("logreg", cv=5), cv=3).fit(X, y, groups)
    # the base model's CV AUC is over the stack's 3 folds, not the 5 its search was built with
    on_3 = get_classifier("logreg").search(cv=3).fit(X, y, groups)
    on_5 = get_classifier("logreg").search(cv=5).fit(X, y, groups)
    assert on_3.cv_auc_ != on_5.cv_auc_
    assert stack.base_reports_[0]["cv_auc"] == on_3.cv_auc_


def test_a_plain_estimator_gets_out_of_fold_probabilities_too():
    X, y, groups = grouped_data(dim=6)
    plain = make_pipeline(StandardScaler(), LogisticRegression())
    stack = StackedEnsemble([("plain", plain)], cv=3).fit(X, y, groups)
    assert stack.base_reports_[0]["params"] == {} and 0.75 < stack.base_reports_[0]["cv_auc"] <= 1


def test_usable_in_pipeline_and_grid_search():
    X, y, groups = grouped_data()
    pipe = make_pipeline(StandardScaler(), StackedEnsemble(searches("logreg"), cv=3))
    assert pipe.fit(X, y, stackedensemble__groups=groups).score(X, y) > 0.8
    # the grid reaches the final estimator: a constant one ranks nothing (AUC 0.5), so
    # GridSearchCV must prefer the logistic regression
    stack = StackedEnsemble(searches("logreg"), final_param_grid={}, cv=3)
    search = GridSearchCV(stack, {"final_estimator": [DummyClassifier(), LogisticRegression()]},
                          cv=3, scoring="roc_auc").fit(X, y)
    dummy, logistic = search.cv_results_["mean_test_score"]
    assert dummy == pytest.approx(0.5) and logistic > 0.8
    assert isinstance(search.best_estimator_.final_estimator_, LogisticRegression)


def test_blocks_must_fit_the_features():
    X, y, groups = grouped_data(dim=5)
    with pytest.raises(ValueError, match="blocks"):
        StackedEnsemble(searches("logreg"), blocks=[("a", 0, 10)]).fit(X, y, groups)
