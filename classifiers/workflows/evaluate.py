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
from typing import Sequence

import numpy as np
from sklearn.base import clone
from sklearn.metrics import confusion_matrix

from feature_extractor.dataset import Dataset, Record, load_datasets
from feature_extractor.errors import CovidCTError
from feature_extractor.provenance import library_versions, utc_now
from feature_extractor.run_context import RunContext

from ..estimators.balance import sample_weights
from ..estimators.search import grouped_folds, sample_weight_params
from ..presentation.evaluation_files import write_cross_source, write_evaluation
from .cross_source import leave_one_source_out
from .metrics import METRICS, binary_metrics, bootstrap_metrics, patient_scores
from .model import LoadedModel, load_model
from .model_card import ModelCard
from .predict import PredictionRow, score_features
from .selective import risk_coverage, selective_metrics
from ..estimators.options import ANSWERS
from .train import data_fingerprint, records_of_splits, training_records


@dataclass
class EvaluationReport:
    metrics: dict[str, dict]          # name -> {value, ci_low, ci_high}
    confusion: list[list[int]]        # rows true NonCOVID/COVID, columns predicted
    n: dict[str, int]
    threshold: float
    model_path: Path
    card: ModelCard
    split: str
    data: str
    layout: str
    data_fingerprint: str
    bootstrap: dict
    y: np.ndarray
    rows: list[PredictionRow]         # one per scored image, in the order of y
    patient_level: dict[str, dict] = field(default_factory=dict)  # "mean"/"max" -> metrics
    by_source: dict[str, dict] = field(default_factory=dict)      # source -> {n, metrics}, when several
    cv: dict | None = None
    errors: dict[str, str] = field(default_factory=dict)
    site_notes: dict[str, str] = field(default_factory=dict)
    error_rate: float | None = None
    selective: dict | None = None        # coverage and error among answered (selective.py), with CIs
    risk_coverage: list | None = None    # the curve over error rates
    groups: np.ndarray | None = None

    @property
    def p(self) -> np.ndarray:
        return np.array([r.p_covid for r in self.rows], dtype=float)

    @property
    def in_distribution(self) -> np.ndarray | None:
        """Per image, for models with a detector."""
        flags = [r.in_distribution for r in self.rows]
        return None if not flags or flags[0] is None else np.array(flags, dtype=bool)

    def ood_line(self) -> str | None:
        if self.in_distribution is None:
            return None
        flagged = int(np.sum(~self.in_distribution))
        return (f"out of distribution: {flagged} of {len(self.in_distribution)} images "
                f"({flagged / max(len(self.in_distribution), 1):.1%}) look unlike the training images")

    def header(self) -> str:
        n = self.n
        return (f"model {self.model_path} on {self.data} split={self.split} "
                f"(n={n['images']}: {n['COVID']} COVID, {n['NonCOVID']} NonCOVID"
                + (f", {n['patients']} patients" if n.get("patients") else "")
                + f"; threshold {self.threshold:.3f})")

    def answers_lines(self) -> list[str]:
        if not self.selective:
            return ["answers: none (the model has no conformal calibration: refit it)"]
        s = self.selective

        def ci(name: str) -> str:
            m = s[name]
            return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
        return [f"answers at error rate {self.error_rate:g}: coverage {ci('coverage')}, error among answered "
                f"{ci('error')} (n answered {s['error']['n']}); uncertain {s['uncertain']['value']:.1%}, not "
                f"assessable {s['not_assessable']['value']:.1%}",
                *[f"  true {c}: answered {ci('coverage_' + c)}, wrong among answered {ci('error_' + c)}"
                  for c in ("COVID", "NonCOVID")]]

    def table(self) -> str:
        lines = self.answers_lines()
        lines += [f"{'metric':<12} {'value':>6}  95% CI ({self.bootstrap['unit']} bootstrap; P(COVID) at the threshold)"]
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
        for source, part in self.by_source.items():
            auc, acc = part["metrics"]["roc_auc"], part["metrics"]["accuracy"]
            lines.append(f"source {source} (n={part['n']['images']}): accuracy {acc['value']:.3f}, "
                         f"AUC {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]")
        lines += [f"site {site}: {note}" for site, note in self.site_notes.items()]
        if (ood := self.ood_line()) is not None:
            lines.append(ood)
        if self.cv:
            lines.append(f"{self.cv['n_folds']}-fold grouped CV on {'+'.join(self.cv['splits'])}: " +
                         ", ".join(f"{k} {v['mean']:.3f} +- {v['sd']:.3f}"
                                   for k, v in self.cv["metrics"].items()))
        return "\n".join(lines)

    def to_json(self) -> dict:
        c = self.card
        return {
            **self.metrics,
            "n": self.n,
            "threshold": self.threshold,
            "confusion_matrix": {"labels": ["NonCOVID", "COVID"], "rows": "true", "columns": "predicted",
                                 "matrix": self.confusion},
            "model": {"path": str(self.model_path), "sha256": c.model_sha256, "classifier": c.classifier,
                      "created": c.created, "backbones": c.public_backbones(),
                      "training_fingerprint": c.training.fingerprint},
            "split": self.split,
            "data": {"path": self.data, "layout": self.layout, "fingerprint": self.data_fingerprint},
            "bootstrap": self.bootstrap,
            "patient_level": self.patient_level,
            "answers": None if self.selective is None else {
                "error_rate": self.error_rate, "selective": self.selective, "risk_coverage": self.risk_coverage,
                "counts": {a: sum(1 for r in self.rows if r.answer == a) for a in ANSWERS}},
            "by_source": self.by_source,
            "sites": self.site_notes,
            "out_of_distribution": None if self.in_distribution is None else {
                "n_flagged": int(np.sum(~self.in_distribution)), "n": int(len(self.in_distribution)),
                "detector": c.ood},
            "cv": self.cv,
            "unreadable": self.errors,
            "created": utc_now(),
            "versions": library_versions(),
        }


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


def _refuse_training_images(model: LoadedModel, good: Sequence[Record]) -> None:
    trained = model.card.training.source_fingerprints()
    for source in dict.fromkeys(r.source for r in good):
        name = trained.get(data_fingerprint([r for r in good if r.source == source]))
        if name is not None:
            raise CovidCTError(f"{source or 'these images'}: exactly the images the model was trained on "
                               f"({name}); evaluate on held-out data")
    if data_fingerprint(good) in trained:
        raise CovidCTError("these are exactly the images the model was trained on; evaluate on held-out data")


def evaluate_model(model: LoadedModel, data: str | Path | Sequence[str | Path], split: str = "test",
                   n_boot: int = 2000, cv_folds: int | None = None, seed: int = 0,
                   site: str | None = None) -> EvaluationReport:
    """Metrics of ``model`` on the labeled images of one or more datasets: ``split`` of those
    with the official split, all images of the others. With several sources, each source's
    metrics too. ``site``: see LoadedModel.assign_sites (harmonized models; no labels used)."""
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    dataset = load_datasets(paths)
    records, split = held_out_records(dataset, split)
    if not records:
        raise CovidCTError(f"no labeled images of split {split!r} in {'; '.join(map(str, paths))}")
    feats = model.features(records, site)
    if not feats.good:
        raise CovidCTError(f"none of the {len(records)} images could be read")
    _refuse_training_images(model, feats.good)
    fingerprint = data_fingerprint(feats.good)
    y = np.array([r.label for r in feats.good], dtype=int)
    groups = np.array([r.group for r in feats.good])
    rows = score_features(model, feats)
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
        report.risk_coverage = risk_coverage(y, model.p_values(p), [r.in_distribution for r in rows])
    sources = np.array([r.source for r in feats.good])
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
        report.cv = {"splits": splits, **cross_validate_model(model, train_feats.good, train_feats.X,
                                                              cv_folds, seed)}
    return report


def evaluate_and_write(data: str | Path | Sequence[str | Path], model_path: str | Path | None = None, split: str = "test",
                       context: RunContext | None = None, report_dir: str | Path | None = None,
                       n_boot: int = 2000, cv_folds: int | None = None, crop: str | None = None,
                       cv_by: str | None = None, site: str | None = None, error_rate: float | None = None):
    """evaluate: metrics of a saved model, written as metrics.json, report.md and plots into
    ``report_dir`` (default reports/<model>-<split>/). ``crop``: confirm the model's crop.
    ``cv_by="source"``: leave one source out instead (default reports/<model>-by-source/).
    ``error_rate``: the answers' (default: the model's). Returns the report (EvaluationReport
    or CrossSourceReport) and the files written."""
    model = load_model(model_path, context, error_rate)
    model.check_crop(crop)
    if cv_by == "source":
        cross = leave_one_source_out(model, data, n_boot)
        out_dir = Path(report_dir) if report_dir else Path("reports") / f"{model.path.stem}-by-source"
        return cross, write_cross_source(cross, out_dir)
    report = evaluate_model(model, data, split, n_boot, cv_folds, site=site)
    out_dir = Path(report_dir) if report_dir else Path("reports") / f"{model.path.stem}-{report.split}"
    return report, write_evaluation(report, out_dir)
