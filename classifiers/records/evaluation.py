"""What an evaluation found, as plain data: the metrics of a held-out split (EvaluationReport)
and of each source left out (CrossSourceReport), with their text tables and JSON.

workflows/evaluate.py and workflows/cross_source.py compute them; presentation/ writes them
(evaluation_files.py, html_report.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covidct_core.provenance import library_versions, utc_now

from ..estimators.options import ANSWERS
from .metrics import METRICS
from .model_card import ModelCard
from .prediction_record import PredictionRow


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
    certification: list[str] = field(default_factory=list)   # why all of a source's answers are uncertain

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
            return ["answers: none (a model fitted before the answer policy: refit it)"]
        s = self.selective

        def ci(name: str) -> str:
            m = s[name]
            return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
        return [f"answers at error rate {self.error_rate:g}: coverage {ci('coverage')}, error among answered "
                f"{ci('error')} (n answered {s['error']['n']}); uncertain {s['uncertain']['value']:.1%}, not "
                f"assessable {s['not_assessable']['value']:.1%}",
                *[f"  true {c}: answered {ci('coverage_' + c)}, wrong among answered {ci('error_' + c)}"
                  for c in ("COVID", "NonCOVID")], *(f"  note: {note}" for note in self.certification)]

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
    answers: list | None = None                  # the answer policy's answers (the refit's thresholds, source test, OOD)
    notes: list | None = None                    # and the rule that decided each
    selective: dict | None = None                # coverage and error among answered, with CIs
    caught: dict | None = None                   # of the threshold's wrong labels, how many abstained
    in_distribution: np.ndarray | None = None
    risk_coverage: list | None = None            # its answers' curve over error rates
    shift: dict | None = None                    # the source test of its images as one set (source_test.py)
    answers_per_image: list | None = None        # the answers without the set-shift rule (for measuring it)
    scores: np.ndarray | None = None             # out-of-distribution scores (the refit's detector)
    rows: list = field(default_factory=list)     # the prediction record of each held-out image, as scored


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

