"""Classifiers on cached deep features: tuning, fitting, saving, predicting.

Nothing here imports TensorFlow unless features must be extracted (predict on new images).
"""
from .bundle import ModelBundle, latest_model, load_bundle, save_bundle
from .models import CLASSIFIERS, make_classifier

__all__ = ["CLASSIFIERS", "ModelBundle", "latest_model", "load_bundle", "make_classifier", "save_bundle"]
