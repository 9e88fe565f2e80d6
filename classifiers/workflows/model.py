"""A saved model, loaded and verified once per command, with the feature extractors that
reproduce its features: predict, evaluate, the explainer and the report all share one.

The manifest is read here and nowhere else in the workflows: each backbone's FeatureSpec,
the threshold, where the weights are now (``--weights NAME=FILE``, checked by SHA-256), and
whether a ``--crop`` given on the command line is the model's own.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from feature_extractor.cache import FeatureCache
from feature_extractor.dataset import Record
from feature_extractor.errors import ModelBundleError
from feature_extractor.extract import ExtractionReport, FeatureExtractor
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.run_context import RunContext
from feature_extractor.weights import parse_weights_options

from .bundle import ModelBundle, latest_model, load_bundle
from .features import feature_matrix


@dataclass
class ModelFeatures:
    """Features of records for one model: rows of ``X`` follow ``good``."""

    records: list[Record]          # with keys
    errors: dict[str, str]         # path -> reason, for files with no features
    good: list[Record]
    X: np.ndarray
    extractions: list[ExtractionReport]


class LoadedModel:
    """A verified model bundle and how to get its features for new images.

    Parameters
    ----------
    bundle : the model, its manifest and path (see bundle.load_bundle).
    context : features folder, batch size, offline mode, weights overrides, progress.
    """

    def __init__(self, bundle: ModelBundle, context: RunContext | None = None):
        self.bundle = bundle
        self.context = context or RunContext()
        specs = [FeatureSpec.from_record(entry) for entry in bundle.manifest["backbones"]]
        overrides = parse_weights_options(self.context.weights_overrides, [s.backbone for s in specs],
                                          default=None)
        # An override says where the weights are; the SHA-256 they must have stays the model's.
        self.specs = [replace(s, weights=overrides[s.backbone]) if s.backbone in overrides else s
                      for s in specs]

    @property
    def manifest(self) -> dict:
        return self.bundle.manifest

    @property
    def path(self) -> Path:
        return self.bundle.path

    @property
    def threshold(self) -> float:
        return self.bundle.threshold

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["feature_dim"])

    @cached_property
    def extractors(self) -> list[FeatureExtractor]:
        """One per backbone, built once; each builds its CNN only when an image needs it."""
        return [FeatureExtractor(spec, self.context) for spec in self.specs]

    def check_crop(self, crop: str | None) -> None:
        """``--crop`` on predict and evaluate only confirms the model's own crop."""
        if crop is None:
            return
        trained = {s.crop for s in self.specs}
        if trained != {crop}:
            raise ModelBundleError(
                f"{self.path} was trained with --crop {'/'.join(sorted(trained))}, not --crop {crop}; "
                f"fit a model on features extracted with --crop {crop}")

    def features(self, records: Sequence[Record]) -> ModelFeatures:
        """Every backbone's features of ``records``, through the cache (new images run the CNN)."""
        for extractor in self.extractors:  # every backbone's weights checked before any CNN runs
            extractor.weights
        records = list(records)
        errors: dict[str, str] = {}
        caches, reports = [], []
        for extractor in self.extractors:
            report = extractor.extract(records)
            reports.append(report)
            records = report.records  # keys filled in once
            for path, reason in report.failed.items():
                errors.setdefault(path, reason)
            caches.append(FeatureCache(report.cache_path))
        good = [r for r in records if r.path not in errors]
        X = feature_matrix(good, caches) if good else np.zeros((0, self.feature_dim), np.float32)
        if X.shape[1] != self.feature_dim:
            raise ModelBundleError(f"features have {X.shape[1]} columns, the model expects {self.feature_dim}")
        return ModelFeatures(records, errors, good, X, reports)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(COVID) of each row of ``X``."""
        return self.bundle.estimator.predict_proba(X)[:, 1] if len(X) else np.zeros(0)


def load_model(model_path: str | Path | None = None, context: RunContext | None = None) -> LoadedModel:
    """The model at ``model_path`` (default: the newest in models/), hash-checked and unpickled."""
    return LoadedModel(load_bundle(model_path or latest_model()), context)
