import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from classifiers.stacking import StackedEnsemble
from tests.test_classifiers import grouped_data


def test_follows_the_sklearn_estimator_contract():
    check_estimator(StackedEnsemble(base=("logreg",), n_splits=2))


def test_per_backbone_blocks_and_meta_weights():
    X, y, groups = grouped_data(dim=20)  # signal only in columns 0-2, i.e. block "a"
    stack = StackedEnsemble(blocks=[("a", 0, 10), ("b", 10, 20)], base=("logreg", "svm"), n_splits=3)
    assert stack.fit(X, y, groups) is stack
    assert [(r["block"], r["classifier"]) for r in stack.base_reports_] == [
        ("a", "logreg"), ("a", "svm"), ("b", "logreg"), ("b", "svm")]
    weights = stack.meta_weights()
    assert weights["a/logreg"] + weights["a/svm"] > abs(weights["b/logreg"]) + abs(weights["b/svm"])
    assert stack.cv_auc_ > 0.9 and stack.oof_.shape == y.shape
    p = stack.predict_proba(X)
    assert p.shape == (len(y), 2) and np.allclose(p.sum(axis=1), 1)


def test_usable_in_pipeline_and_grid_search():
    X, y, groups = grouped_data()
    pipe = make_pipeline(StandardScaler(), StackedEnsemble(base=("logreg",), n_splits=3))
    assert pipe.fit(X, y, stackedensemble__groups=groups).score(X, y) > 0.8
    search = GridSearchCV(StackedEnsemble(base=("logreg",), n_splits=3), {"meta_C": [0.1, 1.0]},
                          cv=3, scoring="roc_auc").fit(X, y)
    assert search.best_params_["meta_C"] in (0.1, 1.0)


def test_blocks_must_fit_the_features():
    X, y, groups = grouped_data(dim=5)
    with pytest.raises(ValueError, match="blocks"):
        StackedEnsemble(blocks=[("a", 0, 10)], base=("logreg",)).fit(X, y, groups)
