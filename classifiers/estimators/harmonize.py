"""Feature-level harmonization: each site's features standardized by that site's own mean and sd.

Why: a frozen CNN's features of one hospital's slices sit in their own corner of feature
space (scanner, reconstruction, export, field of view). A classifier trained on two sources
then separates them by site before it separates them by disease. Centering and scaling
every site by its own statistics removes the first and second moments of that shift. It
needs no labels from the site, only its images: the training sources, a new site's unlabeled
images given to ``fit --adapt-to DIR``, or the images a run predicts on (their batch).

The per-site maps are sklearn ``StandardScaler`` objects, so a linear head stays linear
(Grad-CAM folds a site's scaler into its weights like any other scaler).

One small interface for every command (fit, predict, calibrate, leave one source out): ``fit``
on the training sources, ``transform`` rows by their sites, ``with_site`` (a copy that also
knows a new site, from its unlabeled features), ``knows`` and ``site_step`` (the site's map as
a pipeline step). ``make_harmonizer("none")`` gives :class:`NoHarmonization`, the same
interface doing nothing, so no caller asks "is there a harmonizer?".

Measured, not assumed: see BENCHMARKS "Generalization across sources". A site whose
class mix differs from the others' loses part of the signal with its mean (MosMed is 77%
COVID); this is the method's known price.
"""
from __future__ import annotations

import copy
from numbers import Integral
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from covidct_core.errors import CovidCTError

from .options import HARMONIZATIONS

MIN_SITE_IMAGES = 20  # fewer images give a mean and sd too noisy to standardize by


class HarmonizationError(CovidCTError, ValueError):
    """A site the model cannot standardize: unknown, or too few images to learn it from."""


class SiteStandardizer(BaseEstimator):
    """Per-site StandardScaler.

    Parameters
    ----------
    min_images : the fewest images a site's statistics may be learned from.

    Attributes
    ----------
    scalers_ : site name -> fitted StandardScaler.
    n_images_ : site name -> images its statistics came from.
    """

    _parameter_constraints: dict = {"min_images": [Interval(Integral, 1, None, closed="left")]}

    def __init__(self, min_images: int = MIN_SITE_IMAGES):
        self.min_images = min_images

    def fit(self, X: np.ndarray, sites: Sequence[str]) -> "SiteStandardizer":
        self._validate_params()
        sites = np.asarray(sites, dtype=object)
        self.scalers_, self.n_images_ = {}, {}
        for site in dict.fromkeys(sites):
            self._learn_site(str(site), X[sites == site])
        return self

    def _learn_site(self, site: str, X: np.ndarray) -> "SiteStandardizer":
        """Learn (or relearn) one site's statistics from its unlabeled features (fit, with_site)."""
        if len(X) < self.min_images:
            raise HarmonizationError(
                f"site {site!r} has {len(X)} readable images; standardizing its features needs at least "
                f"{self.min_images}: give more images of it at once, name a site the model knows "
                f"(--site), or refit with --adapt-to DIR")
        self.scalers_[site] = StandardScaler().fit(X)
        self.n_images_[site] = int(len(X))
        return self

    @property
    def sites(self) -> list[str]:
        return list(getattr(self, "scalers_", {}))

    def scaler(self, site: str) -> StandardScaler:
        check_is_fitted(self, "scalers_")
        try:
            return self.scalers_[site]
        except KeyError:
            raise HarmonizationError(f"the model has no statistics of site {site!r}; known: "
                                     f"{', '.join(self.scalers_)}") from None

    def transform(self, X: np.ndarray, sites: Sequence[str]) -> np.ndarray:
        sites = np.asarray(sites, dtype=object)
        out = np.empty(X.shape, dtype=np.float64)
        for site in dict.fromkeys(sites):
            rows = sites == site
            out[rows] = self.scaler(str(site)).transform(X[rows])
        return out

    def fit_transform(self, X: np.ndarray, sites: Sequence[str]) -> np.ndarray:
        return self.fit(X, sites).transform(X, sites)

    def with_site(self, site: str, X: np.ndarray) -> "SiteStandardizer":
        """A copy that also knows ``site``, learned from its unlabeled features ``X``."""
        check_is_fitted(self, "scalers_")
        return copy.deepcopy(self)._learn_site(site, X)

    def knows(self, site: str) -> bool:
        return site in getattr(self, "scalers_", {})

    def site_step(self, site: str):
        """The site's map as a pipeline step (its StandardScaler)."""
        return self.scaler(site)

    @property
    def active(self) -> bool:
        return True


class NoHarmonization(BaseEstimator):
    """The harmonization interface doing nothing: features go to the classifier as they are."""

    def fit(self, X: np.ndarray, sites: Sequence[str]) -> "NoHarmonization":
        return self

    def transform(self, X: np.ndarray, sites: Sequence[str]) -> np.ndarray:
        return X

    def fit_transform(self, X: np.ndarray, sites: Sequence[str]) -> np.ndarray:
        return X

    def with_site(self, site: str, X: np.ndarray) -> "NoHarmonization":
        return self

    def knows(self, site: str) -> bool:
        return False

    def site_step(self, site: str):
        return "passthrough"

    @property
    def sites(self) -> list[str]:
        return []

    @property
    def active(self) -> bool:
        return False


Harmonizer = SiteStandardizer | NoHarmonization


def make_harmonizer(method: str) -> Harmonizer:
    if method not in HARMONIZATIONS:
        raise HarmonizationError(f"unknown harmonization {method!r}; valid: {', '.join(HARMONIZATIONS)}")
    return SiteStandardizer() if method == "standardize" else NoHarmonization()
