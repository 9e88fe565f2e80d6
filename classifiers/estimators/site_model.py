"""A model that learns a site from a few of its labeled patients (``calibrate``).

The frozen model's ranking does not transfer to a new hospital (leave one source out: AUC
0.45), and recalibrating a frozen ranking cannot fix that. The site model learns the site. Its
candidates: a logistic regression on the images' features (standardized, PCA to ``n_components``,
fitted on the training and the site's images, no labels used) with, where the model has a lesion
head, the images' lesion summaries, which transfer; one on the lesion summaries alone; one on the
site's own lesion summaries only; and the share of lung involved itself (nothing fitted: the floor
any site gets without labels). The regressions train on the training sources and the site together
(but the third), every source (the site one of them) and both classes inside it weighing the same.
Which candidate and which regularization: by the AUC of the site's patient-grouped out-of-fold
scores (cross-fitting: each site patient scored by a model that did not see it, the training
sources always in). Those out-of-fold scores then calibrate the site's answer thresholds
(risk_control.py).
"""
from __future__ import annotations

from numbers import Integral
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from covidct_core.errors import TrainingDataError

from .balance import source_balance_weights

CANDIDATES = ("features and lesions", "lesions", "the site's lesions", "share of lung involved")
FIT_FREE = "share of lung involved"   # the first lesion summary as the score: nothing to fit, nothing to forget
MIN_PATIENTS = 5  # of each class: fewer leave nothing to cross-fit
CS = (0.01, 0.1, 1.0)


class SiteModel(ClassifierMixin, BaseEstimator):
    """Learns a site beside the training sources (see the module docstring).

    Parameters
    ----------
    site : the site's name (a source among ``sources`` given to fit).
    n_lesion : how many of the last columns are lesion summaries (0: none).
    n_components : the image features' PCA dimensions.
    cv : patient-grouped folds of the site's images.
    random_state : the PCA's seed.

    Attributes
    ----------
    projection_ : StandardScaler + PCA of the image features; choice_ : (candidate, C);
    cv_auc_ : (candidate, C) -> the site's out-of-fold AUC; oof_ : the site's out-of-fold
    P(COVID), in the order of its rows; estimator_ : the chosen logistic regression refit on all.
    """

    _parameter_constraints: dict = {
        "site": [str], "n_lesion": [Interval(Integral, 0, None, closed="left")],
        "n_components": [Interval(Integral, 1, None, closed="left")], "cv": [Interval(Integral, 2, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, site: str, n_lesion: int = 0, n_components: int = 64, cv: int = 5, random_state: int = 0):
        self.site = site
        self.n_lesion = n_lesion
        self.n_components = n_components
        self.cv = cv
        self.random_state = random_state

    def _inputs(self, X: np.ndarray, candidate: str) -> np.ndarray:
        image, lesion = X[:, :X.shape[1] - self.n_lesion], X[:, X.shape[1] - self.n_lesion:]
        if candidate == FIT_FREE:
            return lesion[:, :1]
        if candidate in ("lesions", "the site's lesions"):
            return lesion
        return np.hstack([self.projection_.transform(image), lesion])

    def _candidates(self) -> list[tuple[str, float]]:
        if not self.n_lesion:
            return [(CANDIDATES[0], c) for c in CS]
        return [(name, c) for name in CANDIDATES[:3] for c in CS] + [(FIT_FREE, 0.0)]

    def _rows(self, candidate: tuple[str, float], train: np.ndarray, site: np.ndarray) -> np.ndarray:
        """The training rows of a candidate: the site's own for "the site's lesions", else every source's."""
        return train & site if candidate[0] == "the site's lesions" else train

    def fit(self, X: np.ndarray, y: np.ndarray, sources: Sequence[str], groups: Sequence[str]) -> "SiteModel":
        self._validate_params()
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=int)
        sources, groups = np.asarray(sources, dtype=object), np.asarray(groups, dtype=object)
        site = sources == self.site
        n_site_groups = len(set(groups[site]))
        per_class = [len(set(groups[site & (y == c)])) for c in (0, 1)]
        if min(per_class) < MIN_PATIENTS:
            raise TrainingDataError(f"learning the site {self.site} needs labeled images of both classes from at least "
                                    f"{MIN_PATIENTS} patients each; it has {per_class[1]} COVID and {per_class[0]} "
                                    "NonCOVID patients")
        image = X[:, :X.shape[1] - self.n_lesion]
        k = max(1, min(self.n_components, len(X) - 1, image.shape[1]))
        self.projection_ = make_pipeline(StandardScaler(), PCA(k, random_state=self.random_state)).fit(image)
        weights = source_balance_weights(y, sources)
        site_rows = np.flatnonzero(site)
        folds = list(GroupKFold(min(self.cv, n_site_groups)).split(site_rows, groups=groups[site_rows]))
        self.cv_auc_, oof = {}, {}
        for candidate in self._candidates():
            Z = self._inputs(X, candidate[0])
            p = np.full(len(site_rows), np.nan)
            for train_part, test_part in folds:
                train = np.ones(len(X), bool)
                train[site_rows[test_part]] = False
                train = self._rows(candidate, train, site)
                if candidate[0] == FIT_FREE:
                    p[test_part] = Z[site_rows[test_part], 0]
                    continue
                if len(set(y[train])) < 2:
                    break
                p[test_part] = self._model(candidate).fit(Z[train], y[train], logisticregression__sample_weight=
                                                          weights[train]).predict_proba(Z[site_rows[test_part]])[:, 1]
            oof[candidate] = p
            ok = np.isfinite(p).all() and len(set(y[site_rows])) == 2
            self.cv_auc_[candidate] = float(roc_auc_score(y[site_rows], p)) if ok else np.nan
        self.choice_ = max(self.cv_auc_, key=lambda c: (np.nan_to_num(self.cv_auc_[c], nan=-1), -self._candidates().index(c)))
        self.oof_ = oof[self.choice_]
        Z = self._inputs(X, self.choice_[0])
        rows = self._rows(self.choice_, np.ones(len(X), bool), site)
        self.estimator_ = None if self.choice_[0] == FIT_FREE else \
            self._model(self.choice_).fit(Z[rows], y[rows], logisticregression__sample_weight=weights[rows])
        self.classes_ = np.array([0, 1])
        return self

    @staticmethod
    def _model(candidate: tuple[str, float]):
        return clone(make_pipeline(StandardScaler(), LogisticRegression(C=candidate[1], max_iter=2000)))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "choice_")
        X = np.asarray(X, dtype=np.float64)
        if not len(X):
            return np.zeros((0, 2))
        Z = self._inputs(X, self.choice_[0])
        if self.estimator_ is None:  # the share of lung involved itself
            p = np.clip(Z[:, 0], 0, 1)
            return np.column_stack([1 - p, p])
        return self.estimator_.predict_proba(Z)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def describe(self) -> dict:
        return {"site": self.site, "method": "logistic regression on the training sources and the site, source- and "
                                             "class-balanced; candidate and C chosen by the site's patient-grouped "
                                             "out-of-fold AUC", "choice": {"inputs": self.choice_[0], "C": self.choice_[1]},
                "site_cv_auc": {f"{c} (C={v})": round(a, 4) for (c, v), a in self.cv_auc_.items()}}
