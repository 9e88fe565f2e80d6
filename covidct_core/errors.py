"""Domain errors: mistakes a user can cause, each with a message that says what to do.

The CLI catches :class:`CovidCTError` in one place and prints the message without a
traceback; anything else is a bug and keeps its traceback.
"""


class CovidCTError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class UnknownBackboneError(CovidCTError, ValueError):
    """A backbone name that is not in the registry."""


class WeightsUnavailableError(CovidCTError):
    """Pretrained weights cannot be found locally nor downloaded."""


class SettingsError(CovidCTError, ValueError):
    """A feature setting with a value that is not one of its valid ones."""


class DatasetError(CovidCTError):
    """A data folder or manifest that cannot be read as a dataset."""


class TrainingDataError(CovidCTError, ValueError):
    """Training data a classifier cannot learn from (one class, too few patients)."""


class FeatureCacheError(CovidCTError):
    """Cached features are missing, ambiguous or inconsistent."""


class AmbiguousCacheError(FeatureCacheError):
    """Several caches of one backbone fit; the user must say which (--pooling, --crop, ...)."""


class ModelBundleError(CovidCTError):
    """A saved model that cannot be found, verified or used with the features at hand."""
