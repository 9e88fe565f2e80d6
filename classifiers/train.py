"""fit: from a labeled dataset and cached features to a saved, tuned model.

Trains on train+val of the official split (all labeled images when there is no split);
the test split is never read here. Hyperparameters are chosen by patient-grouped CV.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from feature_extractor.backbones import PRECISIONS, get_backbone
from feature_extractor.dataset import Dataset, Record, load_dataset, with_keys
from feature_extractor.errors import AmbiguousCacheError, CovidCTError, FeatureCacheError
from feature_extractor.lung_crop import crop_identity
from feature_extractor.provenance import command_line, fingerprint, library_versions, utc_now
from feature_extractor.weights import NONE, NONE_WARNING, WeightsChoice, resolve_weights

from .bundle import DEFAULT_MODELS_DIR, ModelBundle, save_bundle
from .features import BackboneFeatures, available_backbones, feature_matrix, select_cache
from .models import CLASSIFIERS, make_classifier
from .stacking import DEFAULT_BASE, StackedEnsemble
from .thresholds import threshold_for_sensitivity
from .tuning import tune

TRAIN_SPLITS = ("train", "val")
STACK = "stack"


def training_records(dataset: Dataset) -> tuple[list[Record], list[str]]:
    """Labeled records to train on, and which splits they came from."""
    labeled = [r for r in dataset.records if r.label is not None]
    if dataset.has_split:
        return [r for r in labeled if r.split in TRAIN_SPLITS], list(TRAIN_SPLITS)
    return labeled, ["all"]


def data_fingerprint(records: Sequence[Record]) -> str:
    return fingerprint(f"{r.key}:{r.label}" for r in records)


def _weights_filter(choice: WeightsChoice | None, backbone: str) -> dict[str, str | None]:
    if choice is None:
        return {}
    if choice.source == NONE:
        return {"weights_source": NONE}
    return {"weights_source": choice.source,
            "weights_sha256": resolve_weights(backbone, choice, offline=True).sha256}


def resolve_sources(records: Sequence[Record], features_dir: str | Path,
                    backbones: Sequence[str] | None = None,
                    weights: Mapping[str, WeightsChoice] | None = None,
                    pooling: str | None = None, augment: str | None = None,
                    precision: str | None = None, crop: str | None = None) -> list[BackboneFeatures]:
    """The cache to use for each backbone; all backbones with caches when none are named."""
    keys = [r.key for r in records]
    settings = {"pooling": pooling, "augment": augment,
                "precision": PRECISIONS[precision][0] if precision else None,
                "crop": crop_identity(crop) if crop else None}
    weights = weights or {}

    def select(name: str) -> BackboneFeatures:
        return select_cache(features_dir, name, keys, **settings, **_weights_filter(weights.get(name), name))

    if backbones:
        return [select(name) for name in dict.fromkeys(get_backbone(b).name for b in backbones)]
    sources = []
    for name in available_backbones(features_dir):
        try:  # the backbones whose caches cover the training images
            covering = select_cache(features_dir, name, keys, **settings)
        except AmbiguousCacheError:
            if name in weights:  # --weights may single one out
                covering = None
            else:
                raise
        except FeatureCacheError:
            continue
        sources.append(select(name) if name in weights else covering)
    if not sources:
        raise FeatureCacheError(f"no cached features in {features_dir}/ cover the training "
                                "images; run: python cli.py extract --backbone NAME")
    return sources


def _fit_stack(X, y, groups, described, base, cv_folds, random_state):
    """One block of columns per backbone, each with every base classifier."""
    unknown = [b for b in base if b not in CLASSIFIERS]
    if unknown:
        raise CovidCTError(f"unknown base classifier(s) {unknown}; valid: {', '.join(CLASSIFIERS)}")
    bounds = np.cumsum([0] + [b["feature_dim"] for b in described])
    blocks = [(b["name"], int(a), int(z)) for b, a, z in zip(described, bounds[:-1], bounds[1:])]
    stack = StackedEnsemble(blocks=blocks, base=tuple(base), n_splits=cv_folds,
                            random_state=random_state).fit(X, y, groups)
    report = {"auc": stack.cv_auc_, "auc_std": stack.cv_auc_std_, "base_models": stack.base_reports_,
              "meta_learner": "LogisticRegression on logits of out-of-fold base probabilities",
              "meta_weights": stack.meta_weights()}
    return stack, report, stack.oof_


def fit_model(data: str | Path, clf: str, backbones: Sequence[str] | None = None,
              features_dir: str | Path = "features", model_path: str | Path | None = None,
              weights: Mapping[str, WeightsChoice] | None = None, cv_folds: int = 5,
              random_state: int = 0, base: Sequence[str] = DEFAULT_BASE,
              target_sensitivity: float | None = None, pooling: str | None = None,
              augment: str | None = None, precision: str | None = None,
              crop: str | None = None) -> ModelBundle:
    """Train ``clf`` (one of CLASSIFIERS, or "stack") and save it with its manifest.

    ``base``: the stack's base classifiers. ``target_sensitivity``: choose the decision
    threshold on out-of-fold predictions to reach this COVID recall (default: 0.5).
    ``pooling``/``augment``/``precision``/``crop``: which cached features to use when several exist.
    """
    dataset = load_dataset(data)
    records, splits = training_records(dataset)
    records = with_keys(records)
    unreadable = [r for r in records if r.error]
    if unreadable:
        raise CovidCTError(f"{len(unreadable)} training images cannot be read, e.g. "
                           f"{unreadable[0].path}: {unreadable[0].error}")
    if not records:
        raise CovidCTError(f"no labeled training images in {data}")
    sources = resolve_sources(records, features_dir, backbones, weights, pooling, augment, precision, crop)
    X = feature_matrix(records, sources)
    y = np.array([r.label for r in records], dtype=int)
    groups = np.array([r.group for r in records])
    described = [s.describe() for s in sources]
    if clf == STACK:
        estimator, cv_report, oof = _fit_stack(X, y, groups, described, base, cv_folds, random_state)
        params = {k: v for k, v in estimator.get_params().items() if k != "blocks"}
    else:
        model, grid = make_classifier(clf, y, random_state)
        result = tune(model, grid, X, y, groups, cv_folds, random_state)
        estimator, params, oof = result.estimator, result.best_params, result.oof
        cv_report = {"auc": result.cv_auc, "auc_std": result.cv_auc_std, "n_folds": result.n_folds,
                     "candidates": result.candidates}
    grouping = "patient" if dataset.has_patients else "image"
    threshold = {"threshold": 0.5, "rule": "default"}
    if target_sensitivity is not None:
        threshold = {**threshold_for_sensitivity(y, oof, target_sensitivity),
                     "rule": "target sensitivity on out-of-fold predictions of the training images"}
    manifest = {
        "created": utc_now(),
        "command": command_line(),
        "classifier": clf,
        "params": params,
        "threshold": threshold["threshold"],
        "threshold_choice": threshold,
        "backbones": described,
        "feature_dim": int(X.shape[1]),
        "training": {
            "data": str(Path(data).resolve()), "layout": dataset.layout, "splits": splits,
            "n_images": len(records), "n_covid": int(np.sum(y == 1)),
            "n_noncovid": int(np.sum(y == 0)), "n_groups": int(len(np.unique(groups))),
            "grouping": grouping, "fingerprint": data_fingerprint(records)},
        "cv": {"scheme": f"StratifiedGroupKFold(n_splits={cv_folds}, shuffle=True, "
                         f"random_state={random_state}) grouped by {grouping}",
               "scoring": "roc_auc", **cv_report},
        "versions": library_versions(),
    }
    if any(b["weights_source"] == NONE for b in described):
        manifest["warning"] = NONE_WARNING
    path = Path(model_path) if model_path else DEFAULT_MODELS_DIR / f"{clf}.joblib"
    return save_bundle(estimator, manifest, path)
