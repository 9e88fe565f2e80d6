"""predict: a folder of images -> COVID probabilities, through the feature cache.

Every image file found gets one row; one that cannot be read or decoded gets its reason
in ``error`` and the others still go through.
"""
from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Mapping, Sequence

import numpy as np

from feature_extractor.backbones import PRECISIONS
from feature_extractor.cache import FeatureCache, printable_path
from feature_extractor.dataset import LABEL_NAMES, Record, load_unlabeled
from feature_extractor.errors import ModelBundleError
from feature_extractor.images import DEFAULT_WINDOW, parse_window, window_label
from feature_extractor.extract import ExtractionReport, FeatureExtractor, Progress
from feature_extractor.lung_crop import LUNG_CROP_VERSION
from feature_extractor.weights import FILE, WeightsChoice

from .bundle import DEFAULT_MODELS_DIR, ModelBundle, latest_model, load_bundle
from .features import BackboneFeatures, feature_matrix

ProgressFactory = Callable[[str, int], ContextManager[Progress]]
CSV_COLUMNS = ("path", "p_covid", "label", "error")
HEATMAP_COLUMN = "heatmap"  # added when predictions are explained


@dataclass
class PredictionRow:
    path: str
    p_covid: float | None = None
    label: str | None = None
    error: str | None = None
    heatmap: str | None = None  # PNG written by --explain


@dataclass
class PredictionReport:
    rows: list[PredictionRow]
    model_path: Path
    manifest: dict
    extractions: list[ExtractionReport] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.rows if r.error)

    @property
    def n_covid(self) -> int:
        return sum(1 for r in self.rows if r.label == LABEL_NAMES[1])

    def summary(self) -> str:
        n_ok = len(self.rows) - self.n_failed
        return (f"{len(self.rows)} files: {self.n_covid} COVID, {n_ok - self.n_covid} NonCOVID, "
                f"{self.n_failed} could not be read (model {self.model_path}, "
                f"threshold {self.manifest.get('threshold', 0.5)})")


def no_progress(label: str, total: int) -> ContextManager[Progress]:
    return contextlib.nullcontext(lambda n: None)


def precision_option(identity_value: str) -> str:
    """The --precision name of a cache identity's precision value."""
    return next((k for k, (v, _) in PRECISIONS.items() if v == identity_value), "fp32")


def crop_option(identity_value: str | None) -> str:
    """The --crop name of a cache identity's crop value; refuses another crop algorithm."""
    if identity_value in (None, "none"):
        return "none"
    if identity_value == LUNG_CROP_VERSION:
        return "lungs"
    raise ModelBundleError(f"the model was trained on features cropped by {identity_value!r}; this "
                           f"version crops with {LUNG_CROP_VERSION!r}: refit the model with --crop lungs")


def extractor_for(entry: dict, features_dir: str | Path, batch_size: int,
                  override: WeightsChoice | None = None, offline: bool | None = None) -> FeatureExtractor:
    """The extractor that reproduces a model's features for one backbone, checked by hash."""
    choice = override or WeightsChoice(entry["weights_source"],
                                       entry.get("weights_path") if entry["weights_source"] == FILE else None)
    extractor = FeatureExtractor(entry["name"], choice, features_dir, batch_size,
                                 input_size=tuple(entry["input_size"]), offline=offline,
                                 pooling=entry["pooling"], augment=entry.get("augment", "none"),
                                 window=parse_window(entry.get("window") or window_label(DEFAULT_WINDOW)),
                                 precision=precision_option(entry.get("precision", "float32")),
                                 crop=crop_option(entry.get("crop")))
    sha = extractor.weights.sha256
    if sha != entry["weights_sha256"]:
        raise ModelBundleError(
            f"the model was trained on {entry['name']} features from weights with SHA-256 "
            f"{str(entry['weights_sha256'])[:16]}..., but the weights at hand ({choice}) have "
            f"{str(sha)[:16]}...; pass --weights {entry['name']}=FILE with the training weights")
    return extractor


@dataclass
class ModelFeatures:
    """Features of records for one model: rows of ``X`` follow ``good``."""

    records: list[Record]          # with keys
    errors: dict[str, str]         # path -> reason, for files with no features
    good: list[Record]
    X: np.ndarray
    extractions: list[ExtractionReport]


def features_for_model(manifest: dict, records: Sequence[Record], features_dir: str | Path = "features",
                       batch_size: int = 32, weights: Mapping[str, WeightsChoice] | None = None,
                       progress: ProgressFactory | None = None,
                       offline: bool | None = None) -> ModelFeatures:
    """Extract (through the cache) every backbone a model was trained on, checked by hash."""
    progress = progress or no_progress
    records = list(records)
    errors: dict[str, str] = {}
    sources, reports = [], []
    for entry in manifest["backbones"]:
        extractor = extractor_for(entry, features_dir, batch_size, (weights or {}).get(entry["name"]), offline)
        with progress(f"{entry['name']:<14}", len(records)) as update:
            report = extractor.extract(records, update)
        reports.append(report)
        records = report.records  # keys filled in once
        for path, reason in report.failed.items():
            errors.setdefault(path, reason)
        sources.append(BackboneFeatures(entry["name"], FeatureCache(report.cache_path)))
    good = [r for r in records if r.path not in errors]
    X = feature_matrix(good, sources) if good else np.zeros((0, manifest["feature_dim"]), np.float32)
    if X.shape[1] != manifest["feature_dim"]:
        raise ModelBundleError(f"features have {X.shape[1]} columns, the model expects "
                               f"{manifest['feature_dim']}")
    return ModelFeatures(records, errors, good, X, reports)


def predict_proba(bundle: ModelBundle, X: np.ndarray) -> np.ndarray:
    return bundle.estimator.predict_proba(X)[:, 1] if len(X) else np.zeros(0)


def predict_folder(folder: str | Path, model_path: str | Path | None = None,
                   models_dir: str | Path = DEFAULT_MODELS_DIR, features_dir: str | Path = "features",
                   batch_size: int = 32, weights: Mapping[str, WeightsChoice] | None = None,
                   progress: ProgressFactory | None = None, offline: bool | None = None) -> PredictionReport:
    bundle = load_bundle(model_path or latest_model(models_dir))
    dataset = load_unlabeled(folder)
    feats = features_for_model(bundle.manifest, dataset.records, features_dir, batch_size,
                               weights, progress, offline)
    threshold = float(bundle.manifest.get("threshold", 0.5))
    scores = {r.path: float(p) for r, p in zip(feats.good, predict_proba(bundle, feats.X))}
    rows = [PredictionRow(r.path, error=feats.errors[r.path]) if r.path in feats.errors
            else PredictionRow(r.path, scores[r.path], LABEL_NAMES[int(scores[r.path] >= threshold)])
            for r in feats.records]
    return PredictionReport(rows, bundle.path, bundle.manifest, feats.extractions)


def write_predictions_csv(rows: list[PredictionRow], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    explained = any(r.heatmap for r in rows)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS + ((HEATMAP_COLUMN,) if explained else ()))
        for row in rows:
            writer.writerow([printable_path(row.path),
                             "" if row.p_covid is None else f"{row.p_covid:.6f}",
                             row.label or "", row.error or ""]
                            + ([printable_path(row.heatmap or "")] if explained else []))
    return out
