"""One score per study from its slices' probabilities, and the choice of how.

Slice probabilities of one study are pooled by the mean, the max, the mean of the top 3, or
noisy-OR (1 - prod(1 - p): "at least one slice is COVID", computed in log space); a model with
lesion summaries may also weigh each slice by its lesion area (``lesion_weighted``: the slices
that show the disease speak for the study; every slice keeps a small weight). Which one a
model uses is chosen at fit time on the patient-grouped out-of-fold probabilities of its
training slices (each patient's slices pooled, AUC over patients): training data only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from .options import DEFAULT_AGGREGATION

AGGREGATIONS = ("mean", "max", "top3", "noisy_or")
LESION_WEIGHTED = "lesion_weighted"  # needs each slice's lesion area
_FLOOR = 0.01  # a slice without lesion keeps this weight


def aggregate(p: Sequence[float], method: str = DEFAULT_AGGREGATION,
              lesion_area: Sequence[float] | None = None) -> float:
    """The study's P(COVID) from its slices' ``p`` (at least one); ``lesion_area``: each slice's
    lesion share of the image, for ``lesion_weighted``."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    if p.size == 0:
        raise ValueError("a study needs at least one scored slice")
    if method == LESION_WEIGHTED:
        if lesion_area is None:
            raise ValueError("lesion_weighted needs each slice's lesion area")
        w = np.asarray(lesion_area, dtype=float) + _FLOOR
        return float(np.sum(w * p) / np.sum(w))
    if method == "mean":
        return float(p.mean())
    if method == "max":
        return float(p.max())
    if method == "top3":
        return float(np.sort(p)[-3:].mean())
    if method == "noisy_or":
        return float(-np.expm1(np.sum(np.log1p(-np.minimum(p, 1 - 1e-12)))))
    raise ValueError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")


def study_scores(oof: np.ndarray, y: np.ndarray, groups: np.ndarray, method: str,
                 lesion_area: np.ndarray | None = None, min_slices: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Each patient with at least ``min_slices`` slices as a study: its slices' out-of-fold
    probabilities pooled by ``method``, and its label."""
    by: dict = {}
    for i, group in enumerate(groups):
        by.setdefault(group, []).append(i)
    rows = [ix for ix in by.values() if len(ix) >= min_slices]
    scores = [aggregate(oof[ix], method, None if lesion_area is None else lesion_area[ix]) for ix in rows]
    return np.array(scores, dtype=float), np.array([y[ix[0]] for ix in rows], dtype=int)


def choose_aggregation(oof: np.ndarray, y: np.ndarray, groups: np.ndarray,
                       lesion_area: np.ndarray | None = None) -> dict:
    """The aggregation with the best patient-level AUC of pooled out-of-fold probabilities
    (the first of AGGREGATIONS on ties), with every method's AUC; ``lesion_area`` (each
    slice's lesion share, models with lesion summaries) adds ``lesion_weighted``."""
    patients = {}
    areas: dict = {}
    for i, (p, label, group) in enumerate(zip(oof, y, groups)):
        patients.setdefault(group, ([], label))[0].append(p)
        if lesion_area is not None:
            areas.setdefault(group, []).append(lesion_area[i])
    labels = np.array([label for _, label in patients.values()])
    record = {"n_patients": len(patients),
              "n_patients_with_several_slices": sum(1 for ps, _ in patients.values() if len(ps) > 1)}
    if len(np.unique(labels)) < 2:
        return {**record, "method": DEFAULT_AGGREGATION, "patient_cv_auc": {}}
    methods = AGGREGATIONS + ((LESION_WEIGHTED,) if lesion_area is not None else ())
    aucs = {m: float(roc_auc_score(labels, [aggregate(ps, m, areas.get(g)) for g, (ps, _) in patients.items()]))
            for m in methods}
    best = max(methods, key=lambda m: (aucs[m], -methods.index(m)))
    return {**record, "method": best, "patient_cv_auc": {m: round(a, 4) for m, a in aucs.items()}}
