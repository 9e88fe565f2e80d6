"""Out-of-distribution flag: how unlike the training images an image's features are.

The score is the negative log-likelihood of an image's (standardized) features under
probabilistic PCA fitted to the training features (Tipping & Bishop 1999; sklearn's
``PCA.score_samples``): the Mahalanobis distance inside the principal subspace plus the
residual off it, scaled by the noise variance. Raw CNN features are used, before any site
harmonization, because the question is "does this image look like what the model was
trained on", and a new scanner, a cropped screenshot or a photo of a cat should all say no.

The cut-off is the ``quantile`` of out-of-fold scores of the training images (folds grouped
by patient, so a patient's other slices never vouch for it): about 1 - quantile of new
images from the training distribution are flagged.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from .search import grouped_folds


class FeatureDensityOOD(BaseEstimator):
    """Probabilistic-PCA novelty score with a cut-off learned out of fold.

    Parameters
    ----------
    n_components : principal components (capped by a quarter of the training images).
    quantile : out-of-fold score quantile used as the cut-off.
    cv : grouped folds for the out-of-fold scores.
    random_state : seed of the folds and the PCA solver.

    Attributes
    ----------
    model_ : StandardScaler + PCA fitted on all training features.
    threshold_ : scores above it are out of distribution.
    oof_scores_ : the training images' out-of-fold scores.
    """

    def __init__(self, n_components: int = 64, quantile: float = 0.99, cv: int = 5, random_state: int = 0):
        self.n_components = n_components
        self.quantile = quantile
        self.cv = cv
        self.random_state = random_state

    def _model(self, n_samples: int, n_features: int):
        k = max(1, min(self.n_components, n_samples // 4, n_features - 1))
        return make_pipeline(StandardScaler(), PCA(k, svd_solver="randomized", random_state=self.random_state))

    @staticmethod
    def _score(model, X: np.ndarray) -> np.ndarray:
        scaler, pca = model.steps[0][1], model.steps[1][1]
        with np.errstate(over="ignore", invalid="ignore"):
            return -pca.score_samples(scaler.transform(np.asarray(X, dtype=np.float64)))

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> "FeatureDensityOOD":
        """``y``: labels (folds are stratified by them); ``groups``: patients."""
        X = np.asarray(X, dtype=np.float64)
        oof = np.empty(len(X))
        for train, test in grouped_folds(y, groups, self.cv, self.random_state).split(X, y, groups):
            oof[test] = self._score(clone(self._model(len(train), X.shape[1])).fit(X[train]), X[test])
        self.oof_scores_ = oof
        self.threshold_ = float(np.quantile(oof, self.quantile))
        self.model_ = self._model(len(X), X.shape[1]).fit(X)
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Higher: further from the training images."""
        check_is_fitted(self, "model_")
        return self._score(self.model_, X) if len(X) else np.zeros(0)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold_

    def describe(self) -> dict:
        return {"method": "probabilistic PCA negative log-likelihood of standardized raw features "
                          "(sklearn PCA.score_samples)",
                "n_components": int(self.model_.steps[1][1].n_components_),
                "cut_off": self.threshold_, "cut_off_rule": f"{self.quantile:.0%} quantile of out-of-fold "
                f"scores of the training images ({self.cv} patient-grouped folds)"}
