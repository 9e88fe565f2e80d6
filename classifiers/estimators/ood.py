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

Sets of images are tested as sets by source_test.py: another hospital's slices sit just inside
this per-image cut-off one by one.
"""
from __future__ import annotations

import weakref
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from .search import grouped_folds

_REFERENCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # index -> (float64 rows, squared norms)
_CHUNK_ROWS = 2048


def kth_squared_distance(index: NearestNeighbors, X: np.ndarray) -> np.ndarray:
    """Each row's squared Euclidean distance to its k-th nearest row of ``index`` (its
    n_neighbors), by the same brute-force float64 GEMM as sklearn's kneighbors.

    Computed here because kneighbors costs ~12 ms for one query row (its parallel reduction's
    start-up) against ~1 ms: the service scores slices one request at a time."""
    if index not in _REFERENCE:
        reference = np.asarray(index._fit_X, dtype=np.float64)
        _REFERENCE[index] = reference, np.einsum("ij,ij->i", reference, reference)
    reference, norms = _REFERENCE[index]
    k = index.n_neighbors
    out = np.empty(len(X))
    for start in range(0, len(X), _CHUNK_ROWS):
        rows = np.asarray(X[start:start + _CHUNK_ROWS], dtype=np.float64)
        d2 = np.einsum("ij,ij->i", rows, rows)[:, None] - 2 * rows @ reference.T + norms[None, :]
        out[start:start + len(rows)] = np.maximum(np.partition(d2, k - 1, axis=1)[:, k - 1], 0)
    return out


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

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")], "quantile": [Interval(Real, 0, 1, closed="right")],
        "cv": [Interval(Integral, 2, None, closed="left")], "random_state": ["random_state"],
    }

    def __init__(self, n_neighbors: int = 5, quantile: float = 0.99, cv: int = 5, random_state: int = 0):
        self.n_neighbors = n_neighbors
        self.quantile = quantile
        self.cv = cv
        self.random_state = random_state

    def _index(self, X: np.ndarray) -> NearestNeighbors:
        k = min(self.n_neighbors, len(X))
        return NearestNeighbors(n_neighbors=k).fit(normalize(np.asarray(X, dtype=np.float32)))

    @staticmethod
    def _score(index: NearestNeighbors, X: np.ndarray) -> np.ndarray:
        # Euclidean distance d between unit vectors: cosine distance = d^2 / 2.
        return kth_squared_distance(index, normalize(np.asarray(X, dtype=np.float32))) / 2

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
            sources: np.ndarray | None = None) -> "NearestNeighborOOD":
        """``y``: labels (folds are stratified by them); ``groups``: patients. ``sources`` is accepted
        for the call signature of the other parts and not used."""
        self._validate_params()
        oof = np.empty(len(X))
        for train, test in grouped_folds(y, groups, self.cv, self.random_state).split(X, y, groups):
            oof[test] = self._score(self._index(X[train]), X[test])
        self.oof_scores_ = oof
        self.threshold_ = float(np.quantile(oof, self.quantile))
        self.neighbors_ = self._index(X)
        return self

    def with_images(self, X: np.ndarray) -> "NearestNeighborOOD":
        """A copy whose training images include these (a site's labeled sample, calibrate): the site's
        images are then in distribution one by one, as the training sources' are."""
        import copy

        other = copy.deepcopy(self)
        known = np.asarray(self.neighbors_._fit_X, dtype=np.float32)
        other.neighbors_ = NearestNeighbors(n_neighbors=self.neighbors_.n_neighbors).fit(
            np.vstack([known, normalize(np.asarray(X, dtype=np.float32))]))
        return other

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
                                f"images ({self.cv} patient-grouped folds)"}
