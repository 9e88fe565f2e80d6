"""How a model is trained and how it answers: the settings objects of fit, of the lesion head and
of the answers, each field declared once with its constraints (covidct_core/settings_schema.py).

The declarations make the command-line options (``settings_options``) and the validation; the
model card records each object (``record()``) and every refit (evaluate --cv, leave one source
out, calibrate) reuses it.
"""
from __future__ import annotations

from dataclasses import dataclass

from covidct_core.settings_schema import Settings, setting
from feature_extractor.dense.slices import DENSE_GRID, DENSE_INPUT

from .estimators.balance import BALANCES
from .estimators.options import (CALIBRATION_METHODS, DEFAULT_CONFIDENCE, DEFAULT_ERROR_RATE, HARMONIZATIONS,
                                 LESION_HEADS)


def _classifiers() -> tuple[str, ...]:
    from .estimators.registry import CLASSIFIERS

    return tuple(CLASSIFIERS)


def _classifiers_and_stack() -> tuple[str, ...]:
    from .estimators.registry import STACK

    return (*_classifiers(), STACK)


def _default_base() -> tuple[str, ...]:
    from .estimators.registry import DEFAULT_BASE

    return DEFAULT_BASE


def _target_sensitivity(help: str):
    """The decision threshold's target COVID recall (fit, calibrate): one declaration of its range."""
    return setting(None, help, kind=float, low=0, high=1, low_open=True, optional=True)


@dataclass(frozen=True)
class FitSettings(Settings):
    """How fit trains the COVID classifier (each field's help says what it does)."""

    clf: str = setting(None, "Classifier; stack = every backbone x every --base classifier, with a logistic "
                             "meta-learner on their out-of-fold probabilities.", choices=_classifiers_and_stack)
    base: tuple[str, ...] = setting(_default_base(), "The stack's base classifiers.", many=True,
                                    choices=_classifiers, metavar="CLF,CLF,...")
    cv_folds: int = setting(5, "Patient-grouped CV folds for tuning (fewer when a class has fewer patients).",
                            kind=int, low=2, high=20)
    seed: int = setting(0, "Random seed of the folds and the estimators.", kind=int)
    target_sensitivity: float | None = _target_sensitivity(
        "Pick the decision threshold on out-of-fold training predictions to reach this COVID recall (e.g. 0.95). "
        "Default threshold: 0.5.")
    balance: str | None = setting(
        None, "Sample weights: source = every source and both classes inside it weigh the same, so 'which source' "
              "carries no label; class = both classes weigh the same; none.  [default: source with several "
              "--data, else class]", choices=BALANCES, optional=True)
    harmonize: str = setting("none", "standardize: each site's features centered and scaled by that site's own mean "
                                     "and sd before the classifier (training sources, --adapt-to folders, and at "
                                     "predict time --site).", choices=HARMONIZATIONS)
    lesion_features: bool = setting(False, "With --lesion-data: each image's lesion summaries (share of lung "
                                           "involved, highest and mean probability, left and right shares, peripheral "
                                           "share) join its image features.", kind=bool)


@dataclass(frozen=True)
class LesionSettings(Settings):
    """How the lesion head is trained (fit --lesion-data)."""

    backbone: str | None = setting(None, "With --lesion-data: which of the model's backbones gives the dense "
                                         "features.  [default: the first with hypercolumn layers]",
                                   optional=True, option="--lesion-backbone", metavar="NAME")
    input_side: int = setting(DENSE_INPUT, "With --lesion-data: the dense features' input side in px.", kind=int,
                              low=32, high=2048, option="--lesion-input")
    grid: int = setting(DENSE_GRID, "With --lesion-data: the lesion map's grid (cells a side).", kind=int, low=4,
                        high=512, option="--lesion-grid")
    cells_per_slice: int = setting(200, "Lung cells drawn at random per training slice.", kind=int, low=1, cli=False)
    heads: tuple[str, ...] = setting(LESION_HEADS, "With --lesion-data: the lesion head's candidates, chosen by "
                                                   "patient-grouped CV.", many=True, choices=LESION_HEADS,
                                     option="--lesion-heads", metavar="CLF,CLF,...")
    cv_folds: int = setting(3, "Patient-grouped folds of the head's choice.", kind=int, low=2, cli=False)
    seed: int | None = setting(None, "Sampling and folds (None: the fit's seed).", kind=int, optional=True, cli=False)


@dataclass(frozen=True)
class AnswerSettings(Settings):
    """How answers are given: the error rate a COVID or NonCOVID answer (and a finding) keeps to, and
    the confidence of that bound (workflows/answer_policy.py)."""

    error_rate: float | None = setting(
        None, "The answers' error rate: COVID or NonCOVID (and a finding of opacities or clear) only where the wrong "
              "share among such answers stays under this rate (Learn-then-Test on the model's out-of-fold scores); "
              "else uncertain.  [default: the model's, 0.1 unless fit said otherwise]",
        kind=float, low=0, high=1, low_open=True, high_open=True, optional=True, metavar="A")
    confidence: float | None = setting(
        None, "The confidence with which the error among answered stays under --error-rate.  [default: the model's, "
              "0.9 unless fit said otherwise]", kind=float, low=0.5, high=1, high_open=True, optional=True,
        metavar="C")

    def rate(self, model_default: float = DEFAULT_ERROR_RATE) -> float:
        """The error rate in use: this one, else ``model_default``."""
        return model_default if self.error_rate is None else self.error_rate

    def delta(self, model_default: float = 1 - DEFAULT_CONFIDENCE) -> float:
        """One minus the confidence in use: this one's, else ``model_default``."""
        return model_default if self.confidence is None else 1 - self.confidence


@dataclass(frozen=True)
class CalibrateSettings(Settings):
    """How calibrate teaches a model a site (workflows/calibrate.py)."""

    method: str = setting(
        CALIBRATION_METHODS[0], "site: learn the site (a model on the training sources and the site's sample, image "
                                "features and lesion summaries, chosen by the site's patient-grouped out-of-fold AUC); "
                                "sigmoid (Platt) or isotonic: only recalibrate the frozen model's probabilities and "
                                "threshold.", choices=CALIBRATION_METHODS)
    target_sensitivity: float | None = _target_sensitivity(
        "Threshold reaching this COVID recall on the sample (--method sigmoid|isotonic).  [default: balanced errors]")
