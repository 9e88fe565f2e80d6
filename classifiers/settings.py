"""How a model is trained and how it answers: the settings objects of fit, of the segmentation network and
of the answers, each field declared once with its constraints (covidct_core/settings_schema.py).

The declarations make the command-line options (``settings_options``) and the validation; the
model card records each object (``record()``) and every refit (evaluate --cv, leave one source
out, calibrate) reuses it.
"""
from __future__ import annotations

from dataclasses import dataclass

from covidct_core.settings_schema import Settings, setting
from feature_extractor.segmentation.slices import SEG_SIDE

from .estimators.balance import BALANCES
from .estimators.options import CALIBRATION_METHODS, DEFAULT_CONFIDENCE, DEFAULT_ERROR_RATE, HARMONIZATIONS


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
    """How the lungs and lesion segmentation network is trained and read (fit --lesion-data): each field's
    help says what it does (classifiers/estimators/segmenter.py, workflows/lesions/)."""

    backbone: str | None = setting(None, "With --lesion-data: which of the model's backbones gives the segmentation "
                                         "network its maps.  [default: the first with map layers]",
                                   optional=True, option="--lesion-backbone", metavar="NAME")
    side: int = setting(SEG_SIDE, "With --lesion-data: the segmentation network's input side in px (a multiple of 32).",
                        kind=int, low=64, high=1024, option="--lesion-side")
    width: int = setting(16, "With --lesion-data: the decoder's channels at stride 4.", kind=int, low=8, high=256,
                         option="--lesion-width")
    epochs: int = setting(12, "With --lesion-data: the decoders' training epochs (the best of the second half kept "
                              "by patient-grouped validation).", kind=int, low=1, high=500, option="--lesion-epochs")
    members: int = setting(3, "With --lesion-data: decoders averaged, one per patient-grouped fold (at least 2: "
                              "each training patient is mapped by a decoder that did not see it, for the lesion "
                              "cut-off and the finding's thresholds).", kind=int, low=2, high=20,
                           option="--lesion-members")
    output_stride: int = setting(4, "Where the decoder's last convolution runs (1, 2 or 4 px of the network's side).",
                                 kind=int, choices=(1, 2, 4), cli=False)
    views: int = setting(4, "Copies of each training slice the backbone sees: itself, its mirror, augmented ones.",
                         kind=int, low=1, high=16, cli=False)
    per_patient: int = setting(100, "At most this many slices of a patient per epoch.", kind=int, low=1, cli=False)
    cut_off: str = setting("member", "Where the lesion's cut-off comes from: each member's own on its fold (member) or "
                                     "one on the members' pooled out-of-fold maps (pooled).",
                           choices=("member", "pooled"), cli=False)
    min_lesion_mm2: float = setting(20.0, "A lesion part smaller than this (mm², where the slice gives its pixel "
                                          "spacing) does not count: not in the lesion, the shares or the severity.",
                                    kind=float, low=0, option="--min-lesion-mm2")
    min_lesion_px: float = setting(40.0, "The same in pixels of a 512 px slice, where the pixel spacing is unknown.",
                                   kind=float, low=0, option="--min-lesion-px")
    seed: int | None = setting(None, "The decoders' random starts and the augmentation (None: the fit's seed).",
                               kind=int, optional=True, cli=False)


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
