"""--balance source: every source and both classes inside it weigh the same."""
import numpy as np
import pytest

from classifiers.estimators.balance import source_balance_weights
from classifiers.estimators.registry import CLASSIFIERS, get_classifier
from classifiers.estimators.search import GroupedSearchCV
from classifiers.estimators.stacking import StackedEnsemble
from covidct_core.errors import TrainingDataError


def test_every_source_and_class_cell_weighs_the_same():
    y = np.array([1] * 70 + [0] * 10 + [1] * 5 + [0] * 15)
    sources = ["a"] * 80 + ["b"] * 20
    w = source_balance_weights(y, sources)
    cells = {(s, c): w[(np.array(sources) == s) & (y == c)].sum() for s in "ab" for c in (0, 1)}
    assert np.allclose(list(cells.values()), len(y) / 4) and w.mean() == pytest.approx(1)


def test_a_source_with_one_class_is_refused():
    with pytest.raises(TrainingDataError, match="b have images of one class only"):
        source_balance_weights(np.array([1, 0, 1, 1]), ["a", "a", "b", "b"])


def source_only_data(seed=0, n=400):
    """Features that say only which source an image came from; source a is 80% COVID, b 20%."""
    rng = np.random.default_rng(seed)
    sources = np.repeat(["a", "b"], n // 2)
    y = np.where(sources == "a", rng.random(n) < 0.8, rng.random(n) < 0.2).astype(int)
    X = np.c_[(sources == "a") + rng.normal(0, 0.1, n), rng.normal(size=(n, 3))]
    return X, y, sources, np.arange(n)


@pytest.mark.parametrize("name", [pytest.param(c, marks=pytest.mark.slow) if c == "rf" else c
                                  for c in [*CLASSIFIERS, "stack"]])
def test_source_balance_leaves_the_source_no_label_information(name):
    """Trained on the source alone, an unweighted model learns the sources' COVID rates; the
    weights take most of that away (all of it for the linear ones; deep trees keep some, as
    their leaves are pure whatever the weights). The stack's CV honours them too."""
    X, y, sources, groups = source_only_data()
    X_new, _, new_sources, _ = source_only_data(seed=1)  # in-sample predictions would recite labels
    weights = source_balance_weights(y, sources)
    gaps = {}
    for label, w in (("balanced", weights), ("unweighted", None)):
        # default hyperparameters: a grid would pick the strongest shrinkage on ties, hiding the gap
        base = GroupedSearchCV(get_classifier("logreg" if name == "stack" else name).build(class_weighted=False)[0],
                               {}, cv=3)
        model = StackedEnsemble([("logreg", base)], cv=3) if name == "stack" else base
        p = model.fit(X, y, groups, sample_weight=w).predict_proba(X_new)[:, 1]
        gaps[label] = abs(p[new_sources == "a"].mean() - p[new_sources == "b"].mean())
    assert gaps["unweighted"] > 0.25 and gaps["balanced"] < 0.5 * gaps["unweighted"], gaps
    if name in ("logreg", "svm", "stack"):
        assert gaps["balanced"] < 0.1, gaps
