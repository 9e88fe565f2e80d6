"""evaluate: a fitted model's metrics on labeled images it was not trained on.

By default the official test split; with another labeled dataset, all of its images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from feature_extractor.dataset import load_dataset
from feature_extractor.errors import CovidCTError
from feature_extractor.weights import WeightsChoice

from .bundle import DEFAULT_MODELS_DIR, latest_model, load_bundle
from .predict import ProgressFactory, features_for_model, predict_proba
from .train import data_fingerprint

METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Point estimates; sensitivity is COVID recall, specificity NonCOVID recall."""
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b else float("nan")

    precision, sensitivity = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"accuracy": ratio(tp + tn, len(y)), "sensitivity": sensitivity,
            "specificity": ratio(tn, tn + fp), "precision": precision,
            "f1": ratio(2 * precision * sensitivity, precision + sensitivity),
            "roc_auc": float(roc_auc_score(y, p)) if len(set(y)) == 2 else float("nan")}


@dataclass
class EvaluationReport:
    metrics: dict[str, float]
    confusion: list[list[int]]  # rows true NonCOVID/COVID, columns predicted
    n: dict[str, int]
    threshold: float
    model_path: Path
    split: str
    data: str
    data_fingerprint: str
    errors: dict[str, str]

    def table(self) -> str:
        lines = [f"{name:<12} {self.metrics[name]:.3f}" for name in METRICS]
        (tn, fp), (fn, tp) = self.confusion
        lines.append(f"confusion    TN={tn} FP={fp} FN={fn} TP={tp}")
        return "\n".join(lines)


def evaluate_model(data: str | Path, model_path: str | Path | None = None, split: str = "test",
                   models_dir: str | Path = DEFAULT_MODELS_DIR, features_dir: str | Path = "features",
                   batch_size: int = 32, weights: Mapping[str, WeightsChoice] | None = None,
                   progress: ProgressFactory | None = None,
                   offline: bool | None = None) -> EvaluationReport:
    bundle = load_bundle(model_path or latest_model(models_dir))
    dataset = load_dataset(data)
    records = [r for r in dataset.records if r.label is not None]
    if dataset.has_split:
        records = [r for r in records if r.split == split]
    else:
        split = "all"
    if not records:
        raise CovidCTError(f"no labeled images of split {split!r} in {data}")
    feats = features_for_model(bundle.manifest, records, features_dir, batch_size, weights,
                               progress, offline)
    if not feats.good:
        raise CovidCTError(f"none of the {len(records)} images could be read")
    training = bundle.manifest.get("training", {})
    fingerprint = data_fingerprint(feats.good)
    if fingerprint == training.get("fingerprint"):
        raise CovidCTError("these are exactly the images the model was trained on; "
                           "evaluate on held-out data")
    y = np.array([r.label for r in feats.good], dtype=int)
    p = predict_proba(bundle, feats.X)
    threshold = float(bundle.manifest.get("threshold", 0.5))
    cm = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1])
    return EvaluationReport(binary_metrics(y, p, threshold), cm.tolist(),
                            {"COVID": int(np.sum(y == 1)), "NonCOVID": int(np.sum(y == 0))},
                            threshold, bundle.path, split, str(data), fingerprint, feats.errors)
