"""Evaluation plots as PNG files: ROC curve, calibration curve, confusion matrix."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed (servers, CI)
    import matplotlib.pyplot as plt

    return plt


def plot_roc(y: np.ndarray, p: np.ndarray, out: Path, title: str, auc_ci: tuple[float, float] | None = None,
             threshold: float | None = None) -> Path:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    fpr, tpr, thresholds = roc_curve(y, p)
    auc = roc_auc_score(y, p)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    label = f"AUC {auc:.3f}" + (f" (95% CI {auc_ci[0]:.3f}-{auc_ci[1]:.3f})" if auc_ci else "")
    ax.plot(fpr, tpr, lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if threshold is not None:
        pred = p >= threshold
        ax.plot(np.mean(pred[y == 0]), np.mean(pred[y == 1]), "o", color="crimson",
                label=f"threshold {threshold:.2f}")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, out)


def plot_roc_by_source(curves: list[tuple[str, np.ndarray, np.ndarray, tuple[float, float, float]]],
                       out: Path, title: str) -> Path:
    """One ROC curve per held-out source on one plot; ``curves``: (source, y, p, (auc, lo, hi))."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    for source, y, p, (auc, lo, hi) in curves:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"held out: {source}, AUC {auc:.3f} ({lo:.3f}-{hi:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out)


def plot_calibration(y: np.ndarray, p: np.ndarray, out: Path, title: str, n_bins: int = 10) -> Path:
    from sklearn.calibration import calibration_curve

    plt = pyplot()
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), dpi=120, sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(mean_pred, frac_pos, "o-", lw=2, label="model")
    ax.set(ylabel="fraction of COVID images", title=title, ylim=(-0.02, 1.02))
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    bins = np.linspace(0, 1, n_bins + 1)
    hist.hist([p[y == 0], p[y == 1]], bins=bins, label=["NonCOVID", "COVID"], stacked=True)
    hist.set(xlabel="predicted P(COVID)", ylabel="images", xlim=(0, 1))
    hist.legend(fontsize=8)
    return save_figure(fig, out)


def plot_confusion(matrix: list[list[int]], out: Path, title: str) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=120)
    ConfusionMatrixDisplay(np.array(matrix), display_labels=["NonCOVID", "COVID"]).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title(title)
    return save_figure(fig, out)


def save_figure(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    pyplot().close(fig)
    return out


def plot_risk_coverage(curves: list[tuple[str, list[dict]]], out: Path, title: str,
                       chosen: float | None = None) -> Path:
    """Error among answered against coverage, one line per set of images (``curves``: (name,
    risk_coverage points)); the points at ``chosen`` (the error rate in use) marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    for name, curve in curves:
        cov = [c["coverage"] for c in curve]
        err = [c["error"] for c in curve]
        line, = ax.plot(cov, err, "o-", ms=3, label=name)
        for c in curve:
            if chosen is not None and abs(c["error_rate"] - chosen) < 1e-9:
                ax.plot(c["coverage"], c["error"], "s", ms=8, color=line.get_color())
    rates = [c["error_rate"] for c in curves[0][1]] if curves else []
    ax.set(xlabel="coverage (share answered COVID or NonCOVID)", ylabel="error among answered",
           title=title, xlim=(0, 1.02), ylim=(0, max(0.55, max((c["error"] for _, cv in curves for c in cv
                                                                 if c["error"] == c["error"]), default=0) + 0.05)))
    ax.text(0.02, 0.97, f"error rates {rates[0]:g}-{rates[-1]:g}; square: {chosen:g}" if rates and chosen else "",
            transform=ax.transAxes, va="top", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out)
