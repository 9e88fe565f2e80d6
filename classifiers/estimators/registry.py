"""The classifiers trained on deep features: one registry entry each.

An entry is a name, a factory for the bare scikit-learn estimator (or XGBoost's sklearn
wrapper), the hyperparameters to tune and whether the features need scaling. fit's
``--clf``, the stack's ``--base``, the command-line choices and the benchmarks all read
this registry: a new classifier is one entry. Scaling sits inside the pipeline, so CV folds
never see statistics of their held-out part.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from covidct_core.errors import CovidCTError

if TYPE_CHECKING:  # scikit-learn is imported when an estimator is built: the CLI reads the names at start-up
    from sklearn.base import BaseEstimator

    from .search import GroupedSearchCV


@dataclass(frozen=True)
class ClassifierEntry:
    """One classifier: ``factory(random_state, y, class_weighted)`` makes the bare estimator,
    weighting the classes equally itself when ``class_weighted`` (``y``, the training labels,
    only for class weights that need counts); ``grid`` names the bare estimator's
    hyperparameters to tune."""

    name: str
    factory: Callable[[int, np.ndarray | None, bool], BaseEstimator]
    grid: Mapping[str, Sequence[Any]]
    needs_scaling: bool
    description: str

    def build(self, random_state: int = 0, y: np.ndarray | None = None,
              class_weighted: bool = True) -> tuple[BaseEstimator, dict]:
        """A fresh estimator (behind a StandardScaler when it needs one) and its grid.
        ``class_weighted=False``: no class weighting of its own (sample weights do it)."""
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        estimator = self.factory(random_state, y, class_weighted)
        if not self.needs_scaling:
            return estimator, {k: list(v) for k, v in self.grid.items()}
        pipeline = make_pipeline(StandardScaler(), estimator)
        step = pipeline.steps[-1][0]
        return pipeline, {f"{step}__{k}": list(v) for k, v in self.grid.items()}

    def search(self, cv: int | Any = 5, random_state: int = 0, y: np.ndarray | None = None,
               class_weighted: bool = True) -> GroupedSearchCV:
        """The estimator inside a patient-grouped grid search over its grid."""
        from .search import GroupedSearchCV

        estimator, grid = self.build(random_state, y, class_weighted)
        return GroupedSearchCV(estimator, grid, cv=cv, random_state=random_state)


def _svm(random_state: int, y, class_weighted: bool) -> BaseEstimator:
    from sklearn.calibration import CalibratedClassifierCV

    from .rbf_svc import RBFSVC

    # Platt scaling fitted on internal CV predictions of one SVC (sklearn's replacement for
    # SVC(probability=True)); tuning and scoring stay patient-grouped outside it. With sample
    # weights (class_weighted=False): one calibrated SVC per internal fold, because
    # ensemble=False fits its internal CV models without the weights (only fit params are
    # routed there) and the sigmoid then learns from unweighted scores; on two sources that
    # inverted the ranking (grouped CV AUC 0.22).
    svc = RBFSVC(kernel="rbf", class_weight="balanced" if class_weighted else None, random_state=random_state)
    return CalibratedClassifierCV(svc, method="sigmoid", ensemble=not class_weighted)


def _logreg(random_state: int, y, class_weighted: bool) -> BaseEstimator:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000, class_weight="balanced" if class_weighted else None,
                              random_state=random_state)


def _rf(random_state: int, y, class_weighted: bool) -> BaseEstimator:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=300, class_weight="balanced_subsample" if class_weighted else None,
                                  n_jobs=-1, random_state=random_state)


def _xgboost(random_state: int, y, class_weighted: bool) -> BaseEstimator:
    from xgboost import XGBClassifier

    # max_bin=32: 3.7x faster than 256 on 1280-dim features, same grouped-CV AUC (+-0.007).
    pos = float(np.sum(y == 1)) if y is not None and class_weighted else 1.0
    neg = float(np.sum(y == 0)) if y is not None and class_weighted else 1.0
    return XGBClassifier(n_estimators=300, learning_rate=0.05, subsample=0.8, colsample_bytree=0.3,
                         tree_method="hist", max_bin=32, eval_metric="logloss",
                         scale_pos_weight=neg / max(pos, 1.0), random_state=random_state)


CLASSIFIERS: dict[str, ClassifierEntry] = {e.name: e for e in (
    ClassifierEntry("svm", _svm, {"estimator__C": (0.3, 1.0, 3.0, 10.0)}, True,
                    "RBF support vector machine, Platt-calibrated"),
    ClassifierEntry("rf", _rf, {"max_features": ("sqrt", 0.05), "min_samples_leaf": (1, 3)}, False,
                    "random forest, 300 trees"),
    ClassifierEntry("xgboost", _xgboost, {"max_depth": (2, 4)}, False, "gradient-boosted trees (XGBoost)"),
    ClassifierEntry("logreg", _logreg, {"C": (0.001, 0.01, 0.1, 1.0)}, True, "logistic regression"),
)}
STACK = "stack"  # fit --clf stack: every backbone x every --base classifier (stacking.py)
DEFAULT_BASE = ("svm", "rf", "xgboost")


def get_classifier(name: str) -> ClassifierEntry:
    if name not in CLASSIFIERS:
        raise CovidCTError(f"unknown classifier {name!r}; valid: {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name]
