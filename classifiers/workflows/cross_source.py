"""evaluate --cv-by source: leave one source out, the number that says whether a model
works on another hospital's images.

For each source in turn, the model's whole fit (the same classifier, settings, tuning by
patient-grouped CV and balance; manifest "fit") is run again on the training images of the
other sources only, and scored on every labeled image of the held-out source, with
patient-bootstrap CIs. Nothing about the held-out source, labels included, reaches that fit.
The model's features (its backbones and settings) are reused; they come from frozen CNNs.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from covidct_core.errors import CovidCTError, TrainingDataError
from feature_extractor.imaging.dataset import load_datasets
from feature_extractor.runtimes.engine import joblib_engine

from ..estimators.options import DEFAULT_CONFIDENCE
from ..estimators.risk_control import SelectiveThresholds
from ..estimators.source_test import SourceTest
from ..estimators.ood import NearestNeighborOOD
from ..records.evaluation import CrossSourceReport, HeldOutSource
from ..records.metrics import bootstrap_metrics
from ..records.selective import risk_coverage, selective_metrics, wrong_answers_caught
from .answer_policy import AnswerParts, answer_images, answers_at
from .model import LoadedModel
from .scoring import label_of, prediction_rows
from .train import TRAIN_SPLITS, train_estimator


def leave_one_source_out(model: LoadedModel, data: Sequence[str | Path], n_boot: int = 2000,
                         seed: int = 0) -> CrossSourceReport:
    """Refit the model's configuration without each source in turn; score it on that source."""
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    dataset = load_datasets(paths)
    if len(dataset.sources) < 2:
        raise CovidCTError("--cv-by source needs two or more sources: pass --data once per source")
    feats = model.features([r for r in dataset.records if r.label is not None])
    readable = feats.readable
    X = feats.raw  # each refit harmonizes its own training sources
    lesion = feats.X[:, model.feature_dim:] if model.card.lesion_columns else None  # never harmonized
    y = np.array([r.label for r in readable], dtype=int)
    groups = np.array([r.group for r in readable])
    sources = np.array([r.source for r in readable], dtype=object)
    with_split = {s: dataset.source_has_split(s) for s in dataset.sources}
    trainable = np.array([not with_split[r.source] or r.split in TRAIN_SPLITS for r in readable])
    settings = model.card.refit_settings
    blocks = model.card.blocks
    one_class = [s for s in dataset.sources if len(set(y[sources == s])) < 2]
    if one_class:  # before any fit: no AUC can be measured on such a source
        raise CovidCTError(f"source(s) {', '.join(one_class)} have readable images of one class only")
    held_out = []
    with joblib_engine(model.context.engine):  # the refits' grouped-CV fits on every core
        for source in dataset.sources:
            held = _refit_without(source, model, readable, X, lesion, y, groups, sources, trainable, settings,
                                  blocks, n_boot, seed)
            held.rows = prediction_rows(held.records, held.p, held.threshold, held.answers, held.notes,
                                        None if held.scores is None else (held.scores, held.in_distribution),
                                        feats.lesions)
            held_out.append(held)
    bootstrap = {"n": n_boot, "unit": "patient (image where no patient ids)", "level": 0.95, "seed": seed,
                 "method": "percentile"}
    return CrossSourceReport(model.path, model.card, "; ".join(map(str, paths)), held_out, bootstrap,
                             feats.errors, model.error_rate)


def _refit_without(source, model, readable, X, lesion, y, groups, sources, trainable, settings, blocks, n_boot,
                   seed) -> HeldOutSource:
    """The configuration refit without ``source``, and its scores of that source."""
    test = sources == source
    train = ~test & trainable
    trained = train_estimator(X[train], y[train], groups[train], sources[train], blocks, settings,
                              None if lesion is None else lesion[train])
    # The held-out site by its own images' statistics (no labels), as --site batch.
    X_test = trained.harmonizer.with_site(source, X[test]).transform(X[test], sources[test])
    if lesion is not None:
        X_test = np.hstack([X_test, lesion[test]])
    p = trained.estimator.predict_proba(X_test)[:, 1]
    threshold = float(trained.threshold["threshold"])
    held = HeldOutSource(
        source, list(dict.fromkeys(sources[train])), int(train.sum()),
        {"images": int(test.sum()), "COVID": int(np.sum(y[test] == 1)), "NonCOVID": int(np.sum(y[test] == 0)),
         "patients": int(len(np.unique(groups[test])))},
        threshold, bootstrap_metrics(y[test], p, groups[test], threshold, n_boot, seed), y[test], p,
        [r for r, held in zip(readable, test) if held], float(trained.cv["auc"]), trained.estimator, X_test)
    _answer(held, trained, X[train], y[train], groups[train], sources[train], X[test], groups[test], model.error_rate,
            n_boot, seed, model.answers.delta(model.bundle.thresholds.delta if model.bundle.thresholds is not None
                                              else 1 - DEFAULT_CONFIDENCE))
    return held


def _answer(held: HeldOutSource, trained, X_train: np.ndarray, y_train: np.ndarray, groups_train: np.ndarray,
            sources_train: np.ndarray, X_test: np.ndarray, groups_test: np.ndarray, error_rate: float, n_boot: int,
            seed: int, delta: float = 1 - DEFAULT_CONFIDENCE) -> None:
    """The held-out source's answers as the refit would give them (answer_policy.py): its thresholds
    (the refit's out-of-fold scores, per training source), its source test and its out-of-distribution
    detector (the refit's training images' raw features); the held-out source is one set."""
    try:
        thresholds = SelectiveThresholds(delta).fit(trained.oof, y_train, sources_train)
        source_test = SourceTest(random_state=seed).fit(X_train, sources_train, groups_train)
    except TrainingDataError:
        return
    ood = NearestNeighborOOD(random_state=seed).fit(X_train, y_train, groups_train, sources_train)
    scores = held.scores = ood.score_samples(X_test)
    held.in_distribution = ood.in_distribution(scores)
    parts = AnswerParts(error_rate, thresholds, None, source_test, ood)
    answers = answer_images(parts, held.p, X_test, [held.source] * len(held.p), held.in_distribution, scores)
    per_image = answer_images(replace(parts, source_test=None), held.p, X_test, [held.source] * len(held.p),
                              held.in_distribution, scores)
    held.answers, held.notes, held.answers_per_image = answers.answer, answers.note, per_image.answer
    held.shift = answers.verdicts[held.source].test
    labels = [label_of(p, held.threshold) for p in held.p]
    held.selective = selective_metrics(held.y, held.answers, groups_test, n_boot, seed)
    held.caught = wrong_answers_caught(held.y, labels, held.answers)
    held.risk_coverage = risk_coverage(held.y, lambda rate: answers_at(parts, answers, rate))
