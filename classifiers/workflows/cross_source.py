"""evaluate --cv-by source: leave one source out, the number that says whether a model
works on another hospital's images.

For each source in turn, the model's whole fit (the same classifier, settings, tuning by
patient-grouped CV and balance; manifest "fit") is run again on the training images of the
other sources only, and scored on every labeled image of the held-out source, with
patient-bootstrap CIs. Nothing about the held-out source, labels included, reaches that fit.
The model's features (its backbones and settings) are reused; they come from frozen CNNs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from feature_extractor.dataset import LABEL_NAMES, load_datasets
from feature_extractor.engine import joblib_engine
from feature_extractor.errors import CovidCTError, TrainingDataError
from feature_extractor.provenance import library_versions, utc_now

from ..estimators.conformal import ConformalAnswers
from ..estimators.ood import NearestNeighborOOD
from .metrics import bootstrap_metrics
from .selective import risk_coverage, selective_metrics, wrong_answers_caught
from .model import LoadedModel
from .model_card import ModelCard
from .train import TRAIN_SPLITS, train_estimator


@dataclass
class HeldOutSource:
    source: str
    train_sources: list[str]
    n_train: int
    n: dict[str, int]
    threshold: float
    metrics: dict[str, dict]       # name -> {value, ci_low, ci_high}
    y: np.ndarray
    p: np.ndarray
    records: list = field(default_factory=list)  # the held-out images, in the order of y and p
    train_cv_auc: float | None = None            # the refit's grouped CV AUC on its training sources
    estimator: object = None                     # the refit model, for recalibration studies
    X: np.ndarray | None = None                  # its input for the held-out images
    answers: list | None = None                  # conformal answers (the refit's calibration and OOD detector)
    selective: dict | None = None                # coverage and error among answered, with CIs
    caught: dict | None = None                   # of the threshold's wrong labels, how many abstained
    in_distribution: np.ndarray | None = None
    risk_coverage: list | None = None            # its answers' curve over error rates
    shift: dict | None = None                    # the set-shift test of its images (ood.py)
    answers_per_image: list | None = None        # the answers without the set-shift rule (for measuring it)


@dataclass
class CrossSourceReport:
    model_path: Path
    card: ModelCard
    data: str
    held_out: list[HeldOutSource]
    bootstrap: dict
    errors: dict[str, str] = field(default_factory=dict)
    error_rate: float | None = None

    def header(self) -> str:
        return (f"leave-one-source-out with the configuration of {self.model_path} "
                f"({self.card.classifier}, balance {self.card.balance}, harmonize "
                f"{self.card.fit.harmonize}) on {self.data}")

    def table(self) -> str:
        lines = [f"{'held out':<16} {'n':>5} {'trained on':<24} {'AUC [95% CI]':<22} {'accuracy':>8} "
                 f"{'sens':>6} {'spec':>6}"]
        for h in self.held_out:
            m = h.metrics
            auc = f"{m['roc_auc']['value']:.3f} [{m['roc_auc']['ci_low']:.3f}, {m['roc_auc']['ci_high']:.3f}]"
            lines.append(f"{h.source:<16} {h.n['images']:>5} {'+'.join(h.train_sources):<24} {auc:<22} "
                         f"{m['accuracy']['value']:>8.3f} {m['sensitivity']['value']:>6.3f} "
                         f"{m['specificity']['value']:>6.3f}")
        for h in self.held_out:
            if h.selective is None:
                continue
            s, c = h.selective, h.caught
            lines.append(f"answers on {h.source} (error rate {self.error_rate:g}): coverage {s['coverage']['value']:.3f}, "
                         f"error among answered {s['error']['value']:.3f} [{s['error']['ci_low']:.3f}, "
                         f"{s['error']['ci_high']:.3f}]; of {c['wrong_labels']} wrong labels, {c['uncertain']} "
                         f"uncertain, {c['not_assessable']} not assessable, {c['still_wrong']} still answered wrongly")
        return "\n".join(lines)

    def to_json(self) -> dict:
        c = self.card
        return {
            "cv_by_source": [{"held_out": h.source, "trained_on": h.train_sources, "n_train": h.n_train, "n": h.n,
                              "threshold": h.threshold, "train_cv_auc": h.train_cv_auc, **h.metrics,
                              "answers": None if h.selective is None else {
                                  "error_rate": self.error_rate, "selective": h.selective,
                                  "wrong_labels_caught": h.caught}}
                             for h in self.held_out],
            "model": {"path": str(self.model_path), "sha256": c.model_sha256, "classifier": c.classifier,
                      "fit": c.to_manifest()["fit"], "balance": c.balance, "backbones": c.public_backbones()},
            "data": self.data,
            "bootstrap": self.bootstrap,
            "unreadable": self.errors,
            "created": utc_now(),
            "versions": library_versions(),
        }


def leave_one_source_out(model: LoadedModel, data: Sequence[str | Path], n_boot: int = 2000,
                         seed: int = 0) -> CrossSourceReport:
    """Refit the model's configuration without each source in turn; score it on that source."""
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    dataset = load_datasets(paths)
    if len(dataset.sources) < 2:
        raise CovidCTError("--cv-by source needs two or more sources: pass --data once per source")
    feats = model.features([r for r in dataset.records if r.label is not None])
    good = feats.good
    X = feats.raw  # each refit harmonizes its own training sources
    lesion = feats.X[:, model.feature_dim:] if model.card.lesion_columns else None  # never harmonized
    y = np.array([r.label for r in good], dtype=int)
    groups = np.array([r.group for r in good])
    sources = np.array([r.source for r in good], dtype=object)
    with_split = {s: dataset.source_has_split(s) for s in dataset.sources}
    trainable = np.array([not with_split[r.source] or r.split in TRAIN_SPLITS for r in good])
    settings = model.card.refit_settings
    blocks = model.card.blocks
    one_class = [s for s in dataset.sources if len(set(y[sources == s])) < 2]
    if one_class:  # before any fit: no AUC can be measured on such a source
        raise CovidCTError(f"source(s) {', '.join(one_class)} have readable images of one class only")
    held_out = []
    with joblib_engine(model.context.engine):  # the refits' grouped-CV fits on every core
        for source in dataset.sources:
            held_out.append(_refit_without(source, model, good, X, lesion, y, groups, sources, trainable, settings,
                                           blocks, n_boot, seed))
    bootstrap = {"n": n_boot, "unit": "patient (image where no patient ids)", "level": 0.95, "seed": seed,
                 "method": "percentile"}
    return CrossSourceReport(model.path, model.card, "; ".join(map(str, paths)), held_out, bootstrap,
                             feats.errors, model.error_rate)


def _refit_without(source, model, good, X, lesion, y, groups, sources, trainable, settings, blocks, n_boot,
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
        [r for r, held in zip(good, test) if held], float(trained.cv["auc"]), trained.estimator, X_test)
    _answer(held, trained, X[train], y[train], groups[train], sources[train], X[test], groups[test], model.error_rate,
            n_boot, seed)
    return held


def _answer(held: HeldOutSource, trained, X_train: np.ndarray, y_train: np.ndarray, groups_train: np.ndarray,
            sources_train: np.ndarray, X_test: np.ndarray, groups_test: np.ndarray, error_rate: float, n_boot: int,
            seed: int) -> None:
    """The held-out source's answers as the refit would give them: its conformal calibration
    (the refit's out-of-fold scores) and its out-of-distribution detector (the refit's training
    images' raw features)."""
    try:
        calibration = ConformalAnswers().fit(trained.oof, y_train)
    except TrainingDataError:
        return
    ood = NearestNeighborOOD(random_state=seed).fit(X_train, y_train, groups_train, sources_train)
    scores = ood.score_samples(X_test)
    held.in_distribution = ood.in_distribution(scores)
    held.answers = held.answers_per_image = calibration.answers(held.p, error_rate, held.in_distribution)
    held.shift = ood.shift(scores)
    if held.shift is not None and held.shift["shifted"]:  # the held-out source as a set: as predict would say
        held.answers = ["not assessable"] * len(held.answers)
    labels = [LABEL_NAMES[int(p >= held.threshold)] for p in held.p]
    held.selective = selective_metrics(held.y, held.answers, groups_test, n_boot, seed)
    held.caught = wrong_answers_caught(held.y, labels, held.answers)
    flags = np.zeros(len(held.p), bool) if held.shift is not None and held.shift["shifted"] else held.in_distribution
    held.risk_coverage = risk_coverage(held.y, calibration.p_values(held.p), flags)
