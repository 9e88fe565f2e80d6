"""Decision thresholds chosen on out-of-fold predictions of the training images, never on test."""
from __future__ import annotations

import math

import numpy as np

from covidct_core.errors import CovidCTError


def threshold_for_sensitivity(y: np.ndarray, p: np.ndarray, target: float) -> dict[str, float]:
    """The highest threshold whose sensitivity (COVID recall) on (y, p) is at least ``target``.

    Returns the threshold with the sensitivity and specificity it gives on those predictions.
    """
    if not 0 < target <= 1:
        raise CovidCTError(f"target sensitivity must be in (0, 1], got {target}")
    pos = np.sort(p[y == 1])[::-1]
    if len(pos) == 0:
        raise CovidCTError("no COVID images to set a sensitivity target on")
    threshold = float(pos[math.ceil(target * len(pos)) - 1])
    pred = p >= threshold
    return {"threshold": threshold, "target_sensitivity": float(target),
            "oof_sensitivity": float(np.mean(pred[y == 1])),
            "oof_specificity": float(np.mean(~pred[y == 0])) if np.any(y == 0) else float("nan")}
