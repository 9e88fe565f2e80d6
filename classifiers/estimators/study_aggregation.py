"""One score per study from its slices' probabilities, and the choice of how.

Slice probabilities of one study are pooled by the mean, the max, the mean of the top 3, or
noisy-OR (1 - prod(1 - p): "at least one slice is COVID", computed in log space). Which one
a model uses is chosen at fit time on the patient-grouped out-of-fold probabilities of its
training slices (each patient's slices pooled, AUC over patients): training data only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

AGGREGATIONS = ("mean", "max", "top3", "noisy_or")
DEFAULT_AGGREGATION = "mean"  # models fitted before aggregation was chosen


def aggregate(p: Sequence[float], method: str = DEFAULT_AGGREGATION) -> float:
    """The study's P(COVID) from its slices' ``p`` (at least one)."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    if p.size == 0:
        raise ValueError("a study needs at least one scored slice")
    if method == "mean":
        return float(p.mean())
    if method == "max":
        return float(p.max())
    if method == "top3":
        return float(np.sort(p)[-3:].mean())
    if method == "noisy_or":
        return float(-np.expm1(np.sum(np.log1p(-np.minimum(p, 1 - 1e-12)))))
    raise ValueError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")


def choose_aggregation(oof: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict:
    """The aggregation with the best patient-level AUC of pooled out-of-fold probabilities
    (the first of AGGREGATIONS on ties), with every method's AUC."""
    patients = {}
    for p, label, group in zip(oof, y, groups):
        patients.setdefault(group, ([], label))[0].append(p)
    labels = np.array([label for _, label in patients.values()])
    record = {"n_patients": len(patients),
              "n_patients_with_several_slices": sum(1 for ps, _ in patients.values() if len(ps) > 1)}
    if len(np.unique(labels)) < 2:
        return {**record, "method": DEFAULT_AGGREGATION, "patient_cv_auc": {}}
    aucs = {m: float(roc_auc_score(labels, [aggregate(ps, m) for ps, _ in patients.values()]))
            for m in AGGREGATIONS}
    best = max(AGGREGATIONS, key=lambda m: (aucs[m], -AGGREGATIONS.index(m)))
    return {**record, "method": best, "patient_cv_auc": {m: round(a, 4) for m, a in aucs.items()}}
