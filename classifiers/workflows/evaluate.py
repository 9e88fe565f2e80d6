"""evaluate: a fitted model's metrics on labeled images it was not trained on.

By default the official test split; with another labeled dataset, all of its images. Every
metric gets a 95% bootstrap CI that resamples patients when patient ids are known (slices of
one patient are not independent), else images. With patient ids there are patient-level
results too: a patient's score is the mean (and the max) of its slices' probabilities.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.base import clone
from sklearn.metrics import confusion_matrix

from covidct_core.errors import CovidCTError
from feature_extractor.imaging.dataset import Dataset, Record, load_datasets

from ..estimators.balance import sample_weights
from ..estimators.search import grouped_folds, sample_weight_params
from ..presentation.evaluation_files import write_cross_source, write_evaluation
from ..records.evaluation import EvaluationReport
from ..records.metrics import METRICS, binary_metrics, bootstrap_metrics, patient_scores
from ..records.selective import risk_coverage, selective_metrics
from .cross_source import leave_one_source_out
from .model import LoadedModel
from .answer_policy import answers_at, certification_notes
from .scoring import score
from .train import data_fingerprint, records_of_splits, training_records


def cross_validate_model(model: LoadedModel, records: Sequence[Record], X: np.ndarray,
                         n_splits: int, random_state: int = 0) -> dict:
    """Refit the model's configuration on K patient-grouped folds; metrics as mean +- sd."""
    y = np.array([r.label for r in records], dtype=int)
    groups = np.array([r.group for r in records])
    sources = np.array([r.source for r in records], dtype=object)
    balance = model.card.balance
    cv = grouped_folds(y, groups, n_splits, random_state)
    per_fold = []
    for train, test in cv.split(X, y, groups):
        estimator = clone(model.bundle.estimator)
        weights = sample_weights(balance, y[train], sources[train])
        if "groups" in inspect.signature(estimator.fit).parameters:  # the stack groups its inner CV too
            estimator.fit(X[train], y[train], groups=groups[train],
                          **({} if weights is None else {"sample_weight": weights}))
        else:
            estimator.fit(X[train], y[train], **sample_weight_params(estimator, weights))
        per_fold.append(binary_metrics(y[test], estimator.predict_proba(X[test])[:, 1], model.threshold))
    return {"n_folds": cv.get_n_splits(), "per_fold": per_fold,
            "metrics": {k: {"mean": float(np.nanmean([f[k] for f in per_fold])),
                            "sd": float(np.nanstd([f[k] for f in per_fold]))} for k in METRICS}}


def held_out_records(dataset: Dataset, split: str = "test") -> tuple[list[Record], str]:
    """Labeled records to evaluate on: ``split`` of each source with the official split, all of
    each source without one; and the split's name for the report."""
    records, used = records_of_splits(dataset, (split,))
    return records, "+".join(sorted(used, key=lambda k: k == "all"))


def _refuse_training_images(model: LoadedModel, readable: Sequence[Record]) -> None:
    trained = model.card.training.source_fingerprints()
    for source in dict.fromkeys(r.source for r in readable):
        name = trained.get(data_fingerprint([r for r in readable if r.source == source]))
        if name is not None:
            raise CovidCTError(f"{source or 'these images'}: exactly the images the model was trained on "
                               f"({name}); evaluate on held-out data")
    if data_fingerprint(readable) in trained:
        raise CovidCTError("these are exactly the images the model was trained on; evaluate on held-out data")


def evaluate_model(model: LoadedModel, data: str | Path | Sequence[str | Path], split: str = "test",
                   n_boot: int = 2000, cv_folds: int | None = None, seed: int = 0,
                   site: str | None = None) -> EvaluationReport:
    """Metrics of ``model`` on the labeled images of one or more datasets: ``split`` of those
    with the official split, all images of the others. With several sources, each source's
    metrics too. ``site``: see LoadedModel.site_harmonizer (harmonized models; no labels used)."""
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    dataset = load_datasets(paths)
    records, split = held_out_records(dataset, split)
    if not records:
        raise CovidCTError(f"no labeled images of split {split!r} in {'; '.join(map(str, paths))}")
    feats = model.features(records, site)
    if not feats.readable:
        raise CovidCTError(f"none of the {len(records)} images could be read")
    _refuse_training_images(model, feats.readable)
    fingerprint = data_fingerprint(feats.readable)
    y = np.array([r.label for r in feats.readable], dtype=int)
    groups = np.array([r.group for r in feats.readable])
    scored = score(model, feats)
    rows = scored.rows
    p = np.array([r.p_covid for r in rows])
    threshold = model.threshold
    cm = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1])
    unit = "patient" if dataset.has_patients else "image"
    bootstrap = {"n": n_boot, "unit": unit, "level": 0.95, "seed": seed, "method": "percentile"}
    report = EvaluationReport(
        bootstrap_metrics(y, p, groups, threshold, n_boot, seed), cm.tolist(),
        {"images": len(y), "COVID": int(np.sum(y == 1)), "NonCOVID": int(np.sum(y == 0)),
         "patients": int(len(np.unique(groups))) if dataset.has_patients else None},
        threshold, model.path, model.card, split, "; ".join(map(str, paths)), dataset.layout, fingerprint,
        bootstrap, y, rows, errors=feats.errors, site_notes=feats.site_notes, error_rate=model.error_rate,
        groups=groups)
    if rows and rows[0].answer is not None:
        report.selective = selective_metrics(y, [r.answer for r in rows], groups, n_boot, seed)
        report.risk_coverage = risk_coverage(y, lambda rate: answers_at(model.answer_parts, scored.answers, rate))
        report.certification = certification_notes(model.answer_parts, scored.answers.group)
    sources = np.array([r.source for r in feats.readable])
    if len(set(sources)) > 1:
        for source in dict.fromkeys(sources):
            mine = sources == source
            report.by_source[source] = {
                "n": {"images": int(mine.sum()), "COVID": int(np.sum(y[mine] == 1)),
                      "NonCOVID": int(np.sum(y[mine] == 0))},
                "metrics": bootstrap_metrics(y[mine], p[mine], groups[mine], threshold, n_boot, seed)}
    if dataset.has_patients:
        for how in ("mean", "max"):
            y_pat, p_pat, ids = patient_scores(y, p, groups, how)
            report.patient_level[how] = bootstrap_metrics(y_pat, p_pat, ids, threshold, n_boot, seed)
    if cv_folds:
        training, splits = training_records(dataset)
        train_feats = model.features(training)
        report.cv = {"splits": splits, **cross_validate_model(model, train_feats.readable, train_feats.X,
                                                              cv_folds, seed)}
    return report


def evaluate_and_write(model: LoadedModel, data: str | Path | Sequence[str | Path], *, split: str = "test",
                       report_dir: str | Path | None = None, n_boot: int = 2000, cv_folds: int | None = None,
                       crop: str | None = None, cv_by: str | None = None, site: str | None = None):
    """evaluate: metrics of a saved model, written as metrics.json, report.md and plots into
    ``report_dir`` (default reports/<model>-<split>/). ``crop``: confirm the model's crop.
    ``cv_by="source"``: leave one source out instead (default reports/<model>-by-source/).
    Returns the report (EvaluationReport or CrossSourceReport) and the files written."""
    model.check_crop(crop)
    if cv_by == "source":
        cross = leave_one_source_out(model, data, n_boot)
        out_dir = Path(report_dir) if report_dir else Path("reports") / f"{model.path.stem}-by-source"
        return cross, write_cross_source(cross, out_dir)
    report = evaluate_model(model, data, split, n_boot, cv_folds, site=site)
    out_dir = Path(report_dir) if report_dir else Path("reports") / f"{model.path.stem}-{report.split}"
    return report, write_evaluation(report, out_dir)
