"""evaluate: a fitted model's metrics on labeled images it was not trained on.

By default the official test split; with another labeled dataset, all of its images. Every
metric gets a 95% bootstrap CI that resamples patients when patient ids are known (slices of
one patient are not independent), else images. With patient ids there are patient-level
results too: a patient's score is the mean (and the max) of its slices' probabilities.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from sklearn.base import clone
from scipy.stats import rankdata
from sklearn.metrics import confusion_matrix

from feature_extractor.dataset import Record, load_dataset, with_keys
from feature_extractor.errors import CovidCTError
from feature_extractor.provenance import library_versions, utc_now
from feature_extractor.weights import WeightsChoice

from .bundle import DEFAULT_MODELS_DIR, ModelBundle, latest_model, load_bundle
from .predict import ProgressFactory, features_for_model, predict_proba
from .train import data_fingerprint, training_records
from .tuning import grouped_folds

METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula (ties count half, as in roc_auc_score);
    plain numpy because the bootstrap calls it thousands of times."""
    n_pos = int(np.sum(y == 1))
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Point estimates; sensitivity is COVID recall, specificity NonCOVID recall."""
    pred = p >= threshold
    pos = y == 1
    tp, fn = int(np.sum(pred & pos)), int(np.sum(~pred & pos))
    fp, tn = int(np.sum(pred & ~pos)), int(np.sum(~pred & ~pos))

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b else float("nan")

    precision, sensitivity = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"accuracy": ratio(tp + tn, len(y)), "sensitivity": sensitivity,
            "specificity": ratio(tn, tn + fp), "precision": precision,
            "f1": ratio(2 * precision * sensitivity, precision + sensitivity),
            "roc_auc": roc_auc(y, p)}


def bootstrap_metrics(y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float = 0.5,
                      n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """Each metric as {value, ci_low, ci_high}: percentile CI over resampled groups."""
    point = binary_metrics(y, p, threshold)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    rng = np.random.default_rng(seed)
    samples = {m: [] for m in METRICS}
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        if len(np.unique(y[idx])) < 2:
            continue  # AUC, sensitivity and specificity need both classes
        for name, value in binary_metrics(y[idx], p[idx], threshold).items():
            samples[name].append(value)
    alpha = (1 - level) / 2
    out = {}
    for name in METRICS:
        values = np.array(samples[name], dtype=float)
        values = values[np.isfinite(values)]
        lo, hi = np.quantile(values, [alpha, 1 - alpha]) if len(values) else (np.nan, np.nan)
        out[name] = {"value": point[name], "ci_low": float(lo), "ci_high": float(hi)}
    return out


def patient_scores(y: np.ndarray, p: np.ndarray, groups: np.ndarray,
                   how: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (label, score) per patient; a patient's slices share its label."""
    ids = np.unique(groups)
    reduce = {"mean": np.mean, "max": np.max}[how]
    y_pat = np.array([y[groups == g].max() for g in ids])
    p_pat = np.array([reduce(p[groups == g]) for g in ids])
    return y_pat, p_pat, ids


@dataclass
class EvaluationReport:
    metrics: dict[str, dict]          # name -> {value, ci_low, ci_high}
    confusion: list[list[int]]        # rows true NonCOVID/COVID, columns predicted
    n: dict[str, int]
    threshold: float
    model_path: Path
    manifest: dict
    split: str
    data: str
    layout: str
    data_fingerprint: str
    bootstrap: dict
    y: np.ndarray
    p: np.ndarray
    paths: list[str]
    patient_level: dict[str, dict] = field(default_factory=dict)  # "mean"/"max" -> metrics
    cv: dict | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"{'metric':<12} {'value':>6}  95% CI ({self.bootstrap['unit']} bootstrap)"]
        for name in METRICS:
            m = self.metrics[name]
            lines.append(f"{name:<12} {m['value']:>6.3f}  [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
        (tn, fp), (fn, tp) = self.confusion
        lines.append(f"confusion    TN={tn} FP={fp} FN={fn} TP={tp}")
        for how, metrics in self.patient_level.items():
            lines.append(f"patient-level ({how} of slices, n={self.n['patients']}): "
                         f"accuracy {metrics['accuracy']['value']:.3f}, "
                         f"AUC {metrics['roc_auc']['value']:.3f} "
                         f"[{metrics['roc_auc']['ci_low']:.3f}, {metrics['roc_auc']['ci_high']:.3f}]")
        if self.cv:
            lines.append(f"{self.cv['n_folds']}-fold grouped CV on {'+'.join(self.cv['splits'])}: " +
                         ", ".join(f"{k} {v['mean']:.3f} +- {v['sd']:.3f}"
                                   for k, v in self.cv["metrics"].items()))
        return "\n".join(lines)

    def to_json(self) -> dict:
        m = self.manifest
        return {
            **self.metrics,
            "n": self.n,
            "threshold": self.threshold,
            "confusion_matrix": {"labels": ["NonCOVID", "COVID"], "rows": "true", "columns": "predicted",
                                 "matrix": self.confusion},
            "model": {"path": str(self.model_path), "sha256": m.get("model_sha256"),
                      "classifier": m.get("classifier"), "created": m.get("created"),
                      "backbones": [{k: b[k] for k in ("name", "weights_source", "weights_sha256",
                                                         "feature_dim")} for b in m.get("backbones", [])],
                      "training_fingerprint": m.get("training", {}).get("fingerprint")},
            "split": self.split,
            "data": {"path": self.data, "layout": self.layout, "fingerprint": self.data_fingerprint},
            "bootstrap": self.bootstrap,
            "patient_level": self.patient_level,
            "cv": self.cv,
            "unreadable": self.errors,
            "created": utc_now(),
            "versions": library_versions(),
        }


def cross_validate_model(bundle: ModelBundle, records: Sequence[Record], X: np.ndarray,
                         n_splits: int, random_state: int = 0) -> dict:
    """Refit the model's configuration on K patient-grouped folds; metrics as mean +- sd."""
    y = np.array([r.label for r in records], dtype=int)
    groups = np.array([r.group for r in records])
    threshold = float(bundle.manifest.get("threshold", 0.5))
    cv = grouped_folds(y, groups, n_splits, random_state)
    per_fold = []
    for train, test in cv.split(X, y, groups):
        model = clone(bundle.estimator)
        if "groups" in inspect.signature(model.fit).parameters:  # the stack groups its inner CV too
            model.fit(X[train], y[train], groups=groups[train])
        else:
            model.fit(X[train], y[train])
        per_fold.append(binary_metrics(y[test], model.predict_proba(X[test])[:, 1], threshold))
    return {"n_folds": cv.get_n_splits(), "per_fold": per_fold,
            "metrics": {k: {"mean": float(np.nanmean([f[k] for f in per_fold])),
                            "sd": float(np.nanstd([f[k] for f in per_fold]))} for k in METRICS}}


def evaluate_model(data: str | Path, model_path: str | Path | None = None, split: str = "test",
                   models_dir: str | Path = DEFAULT_MODELS_DIR, features_dir: str | Path = "features",
                   batch_size: int = 32, weights: Mapping[str, WeightsChoice] | None = None,
                   progress: ProgressFactory | None = None, offline: bool | None = None,
                   n_boot: int = 2000, cv_folds: int | None = None, seed: int = 0) -> EvaluationReport:
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
    fingerprint = data_fingerprint(feats.good)
    training = bundle.manifest.get("training", {})
    if fingerprint == training.get("fingerprint"):
        raise CovidCTError("these are exactly the images the model was trained on; "
                           "evaluate on held-out data")
    y = np.array([r.label for r in feats.good], dtype=int)
    groups = np.array([r.group for r in feats.good])
    p = predict_proba(bundle, feats.X)
    threshold = float(bundle.manifest.get("threshold", 0.5))
    cm = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1])
    unit = "patient" if dataset.has_patients else "image"
    bootstrap = {"n": n_boot, "unit": unit, "level": 0.95, "seed": seed, "method": "percentile"}
    report = EvaluationReport(
        bootstrap_metrics(y, p, groups, threshold, n_boot, seed), cm.tolist(),
        {"images": len(y), "COVID": int(np.sum(y == 1)), "NonCOVID": int(np.sum(y == 0)),
         "patients": int(len(np.unique(groups))) if dataset.has_patients else None},
        threshold, bundle.path, bundle.manifest, split, str(data), dataset.layout, fingerprint,
        bootstrap, y, p, [r.path for r in feats.good], errors=feats.errors)
    if dataset.has_patients:
        for how in ("mean", "max"):
            y_pat, p_pat, ids = patient_scores(y, p, groups, how)
            report.patient_level[how] = bootstrap_metrics(y_pat, p_pat, ids, threshold, n_boot, seed)
    if cv_folds:
        report.cv = _cv_on_training(bundle, dataset, features_dir, batch_size, weights, progress,
                                    offline, cv_folds, seed)
    return report


def _cv_on_training(bundle, dataset, features_dir, batch_size, weights, progress, offline,
                    cv_folds, seed) -> dict:
    records, splits = training_records(dataset)
    feats = features_for_model(bundle.manifest, with_keys(records), features_dir, batch_size,
                               weights, progress, offline)
    return {"splits": splits, **cross_validate_model(bundle, feats.good, feats.X, cv_folds, seed)}
