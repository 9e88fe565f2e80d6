"""Frozen ImageNet CNNs turn CT images into cached feature vectors.

Importing this package does not import TensorFlow; only building a backbone does.
"""
from covidct_core.errors import CovidCTError
from covidct_core.run_context import RunContext

from .backbones import BACKBONES, BackboneSpec, get_backbone
from .feature_spec import FeatureSpec
from .imaging.dataset import Dataset, Record, load_dataset, load_unlabeled
from .weights import WeightsChoice, parse_weights_options

__all__ = ["BACKBONES", "BackboneSpec", "CovidCTError", "Dataset", "FeatureSpec", "Record", "RunContext",
           "WeightsChoice", "get_backbone", "load_dataset", "load_unlabeled", "parse_weights_options"]
