"""How fit trains: one settings object, recorded in the model card and reused by every refit
(evaluate --cv, leave one source out)."""
from __future__ import annotations

from dataclasses import dataclass

from feature_extractor.errors import CovidCTError

from ..estimators.balance import BALANCES
from ..estimators.harmonize import make_harmonizer
from ..estimators.registry import CLASSIFIERS, DEFAULT_BASE, STACK, get_classifier


@dataclass(frozen=True)
class FitSettings:
    """How fit trains.

    Parameters
    ----------
    clf : a registry classifier (classifiers/estimators/registry.py) or "stack".
    base : the stack's base classifiers (registry names).
    cv_folds : patient-grouped CV folds for tuning (fewer when a class has fewer patients).
    seed : random seed of the folds and the estimators.
    target_sensitivity : choose the decision threshold on out-of-fold predictions of the
        training images to reach this COVID recall (None: 0.5).
    balance : "none", "class" or "source" (see estimators/balance.py); None: source when the
        training data has several sources, class otherwise.
    harmonize : "none" or "standardize": each site's features standardized by its own mean
        and sd before the classifier (estimators/harmonize.py).
    lesion_features : the lesion head's summaries of each image (lesion fraction, highest
        probability, bilateral and lower-zone shares) join its image features; needs a lesion
        head (fit --lesion-data).
    """

    clf: str
    base: tuple[str, ...] = DEFAULT_BASE
    cv_folds: int = 5
    seed: int = 0
    target_sensitivity: float | None = None
    balance: str | None = None
    harmonize: str = "none"
    lesion_features: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", tuple(self.base))
        make_harmonizer(self.harmonize)  # refuses an unknown method
        if self.balance is not None and self.balance not in BALANCES:
            raise CovidCTError(f"unknown balance {self.balance!r}; valid: {', '.join(BALANCES)}")
        if self.clf != STACK:
            get_classifier(self.clf)
        unknown = [b for b in self.base if b not in CLASSIFIERS]
        if unknown:
            raise CovidCTError(f"unknown base classifier(s) {unknown}; valid: {', '.join(CLASSIFIERS)}")
