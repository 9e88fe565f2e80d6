"""Selective metrics: how often a model answers, and how often its answers are wrong.

An answer is COVID or NonCOVID; uncertain and not assessable are abstentions. Coverage is the
share of images answered; the error is the share of answered images answered wrongly (the
risk). Both overall and per true class, with 95% patient-bootstrap CIs; and the
risk-coverage curve over error rates (each rate's answers from the same thresholds' calibration).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..estimators.options import COVID, NONCOVID, NOT_ASSESSABLE, UNCERTAIN

CURVE_RATES = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
_NAMES = {1: "COVID", 0: "NonCOVID"}


def _point(y: np.ndarray, answers: np.ndarray) -> dict[str, float]:
    answered = np.isin(answers, (COVID, NONCOVID))
    wrong = answered & (answers != np.where(y == 1, COVID, NONCOVID))

    def share(a, b) -> float:
        return float(a.sum() / b.sum()) if b.sum() else float("nan")
    everyone = np.ones(len(y), bool)
    out = {"coverage": share(answered, everyone), "error": share(wrong, answered),
           "uncertain": share(answers == UNCERTAIN, everyone), "not_assessable": share(answers == NOT_ASSESSABLE, everyone)}
    for label, name in _NAMES.items():
        mine = y == label
        out[f"coverage_{name}"] = share(answered & mine, mine)
        out[f"error_{name}"] = share(wrong & mine, answered & mine)
    return out


def selective_metrics(y: Sequence[int], answers: Sequence[str], groups: Sequence, n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """Each metric of _point as {value, ci_low, ci_high, n}: percentile CI over resampled groups."""
    y, answers, groups = np.asarray(y), np.asarray(answers, dtype=object), np.asarray(groups)
    point = _point(y, answers)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    rng = np.random.default_rng(seed)
    samples = {k: [] for k in point}
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        for name, value in _point(y[idx], answers[idx]).items():
            samples[name].append(value)
    alpha = (1 - level) / 2
    answered = np.isin(answers, (COVID, NONCOVID))
    counts = {"coverage": len(y), "error": int(answered.sum()), "uncertain": len(y), "not_assessable": len(y)}
    for label, name in _NAMES.items():
        counts[f"coverage_{name}"] = int(np.sum(y == label))
        counts[f"error_{name}"] = int(np.sum(answered & (y == label)))
    out = {}
    for name, value in point.items():
        values = np.array(samples[name], dtype=float)
        values = values[np.isfinite(values)]
        lo, hi = np.quantile(values, [alpha, 1 - alpha]) if len(values) else (np.nan, np.nan)
        out[name] = {"value": value, "ci_low": float(lo), "ci_high": float(hi), "n": counts[name]}
    return out


def risk_coverage(y: Sequence[int], answers_at: Callable[[float], Sequence[str]],
                  rates: Sequence[float] = CURVE_RATES) -> list[dict]:
    """Coverage and error among answered at each error rate (``answers_at``: the same images' answers
    at a rate, workflows/answer_policy.answers_at)."""
    y = np.asarray(y)
    curve = []
    for rate in rates:
        m = _point(y, np.asarray(answers_at(rate), dtype=object))
        curve.append({"error_rate": rate, "coverage": m["coverage"], "error": m["error"]})
    return curve


def wrong_answers_caught(y: Sequence[int], labels: Sequence[str], answers: Sequence[str]) -> dict:
    """Of the images the threshold labels wrongly, how many the answers leave as uncertain or not
    assessable (and how many they still answer wrongly)."""
    y, labels, answers = np.asarray(y), np.asarray(labels, dtype=object), np.asarray(answers, dtype=object)
    truth = np.where(y == 1, COVID, NONCOVID)
    wrong = labels != truth
    return {"wrong_labels": int(wrong.sum()), "uncertain": int(np.sum(wrong & (answers == UNCERTAIN))),
            "not_assessable": int(np.sum(wrong & (answers == NOT_ASSESSABLE))),
            "still_wrong": int(np.sum(wrong & np.isin(answers, (COVID, NONCOVID)) & (answers != truth)))}
