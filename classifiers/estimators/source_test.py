"""Is this set of images from a source the model knows? A two-sample test with power.

A set (a folder given to predict or evaluate, a study, a request's slices) is compared with a
reference sample of each known source: the maximum mean discrepancy (MMD², unbiased, Gaussian
kernel; Gretton et al., JMLR 2012) between their features, after one projection fitted on the
training images (standardized, PCA to ``n_components``, whitened). MMD on the whole set has far
more power than a test on one score per image: the one-sided Kolmogorov-Smirnov test on the
out-of-distribution scores, used before, let another hospital's 2,481 slices through.

The cut-off is calibrated on the training sources, for each known source and set size:

- new patients of the source: sets drawn from patient-grouped folds of it, against a
  reference drawn from its other folds (the statistic's 99th percentile, ``q_within``);
- the other known sources: their sets against this source's reference (the 1st percentile,
  ``q_across``).

The cut-off is their geometric mean (the midpoint on a log scale between "new patients of a known
source" and "another source"). With one known source there is nothing across, and the cut-off is
``margin`` times ``q_within``. A set is exchangeable with a source when its statistic stays under
that source's cut-off; a set exchangeable with none is from a source the model does not know.
Sets smaller than ``min_set`` are not tested (too little power); sets larger than the largest
calibrated size are subsampled to it.
"""
from __future__ import annotations

from numbers import Integral, Real
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from covidct_core.errors import TrainingDataError

SIZES = (10, 20, 50, 100)


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def mmd2(a: np.ndarray, b: np.ndarray, gamma: float) -> float:
    """Unbiased MMD² between two samples with the kernel exp(-gamma * |x - y|²)."""
    kaa, kbb, kab = (np.exp(-gamma * _sq_distances(x, y)) for x, y in ((a, a), (b, b), (a, b)))
    n, m = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                 - 2 * kab.mean())


class SourceTest(BaseEstimator):
    """Two-sample test of a set of images against each known source (see the module docstring).

    Parameters
    ----------
    n_components : the projection's dimensions.
    reference_size : images kept per source as its reference.
    draws : sets drawn per fold and size for the calibration.
    min_set : the fewest images a set needs to be tested.
    margin : the cut-off over ``q_within`` when only one source is known.
    random_state : seed of the draws.

    Attributes
    ----------
    projection_ : the fitted StandardScaler + PCA; gamma_ : the kernel's scale (1 / median squared
    distance of training images); references_ : source -> its reference (projected); cut_offs_ :
    source -> {size: cut-off}; calibration_ : source -> {size: (q_within, q_across)}.
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "reference_size": [Interval(Integral, 1, None, closed="left")],
        "draws": [Interval(Integral, 1, None, closed="left")], "min_set": [Interval(Integral, 2, None, closed="left")],
        "margin": [Interval(Real, 0, None, closed="neither")], "random_state": ["random_state"],
    }

    def __init__(self, n_components: int = 64, reference_size: int = 300, draws: int = 40, min_set: int = 10,
                 margin: float = 3.0, random_state: int = 0):
        self.n_components = n_components
        self.reference_size = reference_size
        self.draws = draws
        self.min_set = min_set
        self.margin = margin
        self.random_state = random_state

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, X: np.ndarray, sources: Sequence[str], groups: Sequence[str]) -> "SourceTest":
        """``X``: the training images' raw features; ``sources`` and ``groups`` (patients): each image's."""
        self._validate_params()
        X = np.asarray(X, dtype=np.float64)
        if len(X) < 2 * self.min_set:
            raise TrainingDataError(f"a source test needs at least {2 * self.min_set} training images; got {len(X)}")
        k = max(1, min(self.n_components, len(X) - 1, X.shape[1]))
        self.projection_ = make_pipeline(StandardScaler(), PCA(k, whiten=True, random_state=self.random_state)).fit(X)
        Z = self.projection_.transform(X)
        rng = np.random.default_rng(self.random_state)
        sample = Z[rng.choice(len(Z), min(len(Z), 600), replace=False)]
        d = _sq_distances(sample, sample)
        self.gamma_ = float(1.0 / np.median(d[d > 0]))
        self.references_, self._pools = {}, {}
        sources, groups = np.asarray(sources, dtype=object), np.asarray(groups, dtype=object)
        for name in dict.fromkeys(sources):
            mine = sources == name
            self._pools[str(name)] = (Z[mine], groups[mine])
            self.references_[str(name)] = self._sample(Z[mine], self.reference_size, rng)
        self.cut_offs_, self.calibration_ = {}, {}
        for name in self.references_:
            self._calibrate(name, rng)
        del self._pools
        return self

    def _sample(self, Z: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return Z[rng.choice(len(Z), min(n, len(Z)), replace=False)]

    def _calibrate(self, name: str, rng: np.random.Generator) -> None:
        """Cut-offs of ``name`` from its new patients and from the other sources (module docstring)."""
        Z, groups = self._pools[name]
        k = min(3 if len(Z) >= 3 * self.min_set else 2, len(set(groups)))  # held-out folds of min_set or more
        folds = list(GroupKFold(k).split(Z, groups=groups)) if k >= 2 else []
        self.cut_offs_[name], self.calibration_[name] = {}, {}
        for size in SIZES:
            within = [mmd2(self._sample(Z[test], size, rng), self._sample(Z[train], self.reference_size, rng), self.gamma_)
                      for train, test in folds if len(test) >= size for _ in range(self.draws)]
            if not within:
                continue
            q_within = max(float(np.quantile(within, 0.99)), 1e-9)
            across = [mmd2(self._sample(other, size, rng), self.references_[name], self.gamma_)
                      for other_name, (other, _) in self._pools.items() if other_name != name and len(other) >= size
                      for _ in range(self.draws)]
            q_across = float(np.quantile(across, 0.01)) if across else None
            cut = np.sqrt(q_within * q_across) if q_across is not None and q_across > q_within else self.margin * q_within
            self.cut_offs_[name][size] = float(cut)
            self.calibration_[name][size] = (q_within, q_across)

    def with_source(self, name: str, X: np.ndarray, groups: Sequence[str]) -> "SourceTest":
        """A copy that knows one more source (a site's labeled sample, calibrate), its cut-offs
        calibrated on its own patients and against the sources known already."""
        import copy

        other = copy.deepcopy(self)
        rng = np.random.default_rng(self.random_state + 1)
        Z = self.projection_.transform(np.asarray(X, dtype=np.float64))
        other.references_[name] = other._sample(Z, self.reference_size, rng)
        other._pools = {name: (Z, np.asarray(groups, dtype=object))}
        other._pools.update({k: (v, np.array([f"{k}/{i}" for i in range(len(v))], dtype=object))
                             for k, v in self.references_.items() if k != name})
        other._calibrate(name, rng)
        del other._pools
        return other

    # -- testing ---------------------------------------------------------------------------
    @property
    def sources(self) -> list[str]:
        return list(self.references_)

    def cut_off(self, name: str, n: int) -> float | None:
        """The cut-off of source ``name`` for a set of ``n`` images (log-interpolated between sizes)."""
        table = self.cut_offs_.get(name) or {}
        if not table:
            return None
        sizes = np.array(sorted(table))
        n = min(max(n, sizes[0]), sizes[-1])
        return float(np.exp(np.interp(np.log(n), np.log(sizes), np.log([table[s] for s in sizes]))))

    def test(self, X: np.ndarray) -> dict | None:
        """A set's test: None when it has fewer than ``min_set`` images; else {n, statistics (source ->
        MMD²), cut_offs, exchangeable (sources), nearest (the source with the smallest statistic over
        cut-off), ratio (its statistic over its cut-off)}."""
        check_is_fitted(self, "references_")
        X = np.asarray(X, dtype=np.float64)
        if len(X) < self.min_set:
            return None
        largest = max((max(t) for t in self.cut_offs_.values() if t), default=SIZES[-1])
        Z = self.projection_.transform(X)
        if len(Z) > largest:  # a fixed subsample: the same set always gets the same answer
            Z = Z[np.random.default_rng(self.random_state).choice(len(Z), largest, replace=False)]
        stats, cuts = {}, {}
        for name, reference in self.references_.items():
            cut = self.cut_off(name, len(Z))
            if cut is not None:
                stats[name], cuts[name] = max(mmd2(Z, reference, self.gamma_), 0.0), cut  # unbiased MMD² dips below 0
        if not stats:
            return None
        ratios = {name: stats[name] / cuts[name] for name in stats}
        nearest = min(ratios, key=ratios.get)
        return {"n": int(len(X)), "statistics": stats, "cut_offs": cuts,
                "exchangeable": [name for name in stats if stats[name] <= cuts[name]],
                "nearest": nearest, "ratio": float(ratios[nearest])}

    def describe(self) -> dict:
        return {"method": "maximum mean discrepancy (MMD², unbiased, Gaussian kernel) between a set's features and "
                          f"each known source's reference ({self.reference_size} images), after a standardized, "
                          f"whitened PCA to {self.n_components} dimensions fitted on the training images",
                "cut_off_rule": "per source and set size: the geometric mean of the 99th percentile for new patients "
                                "of the source (patient-grouped folds) and the 1st percentile for the other known "
                                f"sources; with one known source, {self.margin:g} times the former",
                "min_set": self.min_set, "sizes": list(SIZES),
                "cut_offs": {k: {str(n): round(c, 5) for n, c in v.items()} for k, v in self.cut_offs_.items()},
                "sources": self.sources}
