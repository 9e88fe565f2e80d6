"""Out-of-distribution flag: how unlike the training images an image's features are.

The score is the cosine distance from an image's raw CNN features to its k-th nearest
training image (deep nearest neighbours: Sun et al., "Out-of-distribution detection with
deep nearest neighbors", ICML 2022: L2-normalized features, k-th neighbour distance; sklearn's
NearestNeighbors). Raw features, before any site harmonization, because the question is
"does this image look like what the model was trained on": a new scanner, a screenshot or a
photograph should all say no.

Why not a density (Mahalanobis / probabilistic PCA): with a few hundred training images and
over a thousand ReLU features, many features are nearly constant on CT, and standardizing them
blows up any new image's distance; the cut-off then passes photographs (measured: 0 of 12 on
a 200-image model, where the neighbour distance flags all 12).

The cut-off is the ``quantile`` of out-of-fold scores of the training images (folds grouped
by patient, so a patient's other slices never vouch for it): about 1 - quantile of new
images from the training distribution are flagged.

A set of images can be unlike the training images while each one passes: another hospital's
slices sit just inside the cut-off, but all of them farther than the training images are from
each other. ``shift`` tests a set (a folder's images, a study's slices; at least
``min_batch``) against each training source's out-of-fold scores: when the set's scores are
larger than every source's (one-sided two-sample Kolmogorov-Smirnov, p < ``shift_alpha``), the
set is not exchangeable with anything the model was validated on, and its answers are not
assessable. Measured: a COVID-CT-trained detector finds MosMed shifted from 20 random slices
(p 8e-6) and never a random 20 or 50 of COVID-CT's own test split (p < 0.01 in none of 50 draws).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize
from sklearn.utils.validation import check_is_fitted

from .search import grouped_folds


class NearestNeighborOOD(BaseEstimator):
    """k-th nearest training neighbour's cosine distance, with a cut-off learned out of fold.

    Parameters
    ----------
    n_neighbors : k.
    quantile : out-of-fold score quantile used as the cut-off.
    cv : grouped folds for the out-of-fold scores.
    random_state : seed of the folds.

    Attributes
    ----------
    neighbors_ : NearestNeighbors on the L2-normalized training features (float32).
    threshold_ : scores above it are out of distribution.
    oof_scores_ : the training images' out-of-fold scores.
    """

    def __init__(self, n_neighbors: int = 5, quantile: float = 0.99, cv: int = 5, random_state: int = 0,
                 min_batch: int = 20, shift_alpha: float = 0.001):
        self.n_neighbors = n_neighbors
        self.quantile = quantile
        self.cv = cv
        self.random_state = random_state
        self.min_batch = min_batch
        self.shift_alpha = shift_alpha

    def _index(self, X: np.ndarray) -> NearestNeighbors:
        k = min(self.n_neighbors, len(X))
        return NearestNeighbors(n_neighbors=k).fit(normalize(np.asarray(X, dtype=np.float32)))

    @staticmethod
    def _score(index: NearestNeighbors, X: np.ndarray) -> np.ndarray:
        distances, _ = index.kneighbors(normalize(np.asarray(X, dtype=np.float32)))
        # Euclidean distance d between unit vectors: cosine distance = d^2 / 2.
        return distances[:, -1].astype(np.float64) ** 2 / 2

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
            sources: np.ndarray | None = None) -> "NearestNeighborOOD":
        """``y``: labels (folds are stratified by them); ``groups``: patients; ``sources``: each
        image's source (the references of ``shift``; None: one)."""
        oof = np.empty(len(X))
        for train, test in grouped_folds(y, groups, self.cv, self.random_state).split(X, y, groups):
            oof[test] = self._score(self._index(X[train]), X[test])
        self.oof_scores_ = oof
        sources = np.full(len(X), "training", dtype=object) if sources is None else np.asarray(sources, dtype=object)
        self.references_ = {str(s): oof[sources == s] for s in dict.fromkeys(sources)}
        self.threshold_ = float(np.quantile(oof, self.quantile))
        self.neighbors_ = self._index(X)
        return self

    def with_reference(self, name: str, X: np.ndarray) -> "NearestNeighborOOD":
        """A copy that also accepts sets like these images (a site's labeled sample, calibrate)."""
        import copy

        other = copy.deepcopy(self)
        other.references_ = {**self._references(), name: self.score_samples(X)}
        return other

    def _references(self) -> dict[str, np.ndarray]:
        return getattr(self, "references_", None) or {"training": self.oof_scores_}  # older models: one

    def shift(self, scores: np.ndarray) -> dict | None:
        """Whether a set of images (their scores) is unlike every reference set: None for fewer
        than ``min_batch`` images; else {shifted, p_value (the largest over references), reference}."""
        from scipy.stats import ks_2samp

        scores = np.asarray(scores, dtype=float)
        if len(scores) < getattr(self, "min_batch", 20):
            return None
        tests = {name: float(ks_2samp(scores, ref, alternative="less", method="asymp").pvalue)
                 for name, ref in self._references().items() if len(ref)}
        best = max(tests, key=tests.get)
        return {"shifted": tests[best] < getattr(self, "shift_alpha", 0.001), "p_value": tests[best], "reference": best,
                "n": int(len(scores))}

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Higher: further from the training images (0: a training image's twin; at most 1 for
        non-negative features)."""
        check_is_fitted(self, "neighbors_")
        return self._score(self.neighbors_, X) if len(X) else np.zeros(0)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold_

    def describe(self) -> dict:
        return {"method": f"cosine distance to the {self.n_neighbors}th nearest training image in raw "
                          "features (deep nearest neighbours, Sun et al. 2022)",
                "n_training_images": int(self.neighbors_.n_samples_fit_), "cut_off": self.threshold_,
                "cut_off_rule": f"{self.quantile:.0%} quantile of out-of-fold scores of the training "
                                f"images ({self.cv} patient-grouped folds)",
                "set_shift": f"a set of {self.min_batch} or more images whose scores are larger than every training "
                             f"source's out-of-fold scores (one-sided Kolmogorov-Smirnov, p < {self.shift_alpha:g}) "
                             "is not assessable", "references": list(self._references())}
