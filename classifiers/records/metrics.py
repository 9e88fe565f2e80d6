"""Screening metrics with patient-bootstrap confidence intervals (plain numpy; no files)."""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

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
