"""Sample weights that keep the training data from teaching "which source" or "which class".

``source``: every source weighs the same, and inside every source both classes weigh the
same, so a source's share of COVID images carries no label information (MosMed is 77%
COVID, COVID-CT 47%: unweighted, "looks like MosMed" predicts COVID). ``class``: the two
classes weigh the same; the classifiers do it themselves (class_weight="balanced" and the
like), as before sources existed. ``none``: every image weighs the same.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from covidct_core.errors import TrainingDataError

BALANCES = ("none", "class", "source")


def default_balance(n_sources: int) -> str:
    return "source" if n_sources > 1 else "class"


def source_balance_weights(y: np.ndarray, sources: Sequence[str]) -> np.ndarray:
    """Weights with equal total per (source, class) cell; they average 1."""
    y, sources = np.asarray(y), np.asarray(sources, dtype=object)
    cells = {(s, c): np.sum((sources == s) & (y == c)) for s in dict.fromkeys(sources) for c in (0, 1)}
    one_class = sorted({s for (s, c), n in cells.items() if n == 0})
    if one_class:
        raise TrainingDataError(f"source(s) {', '.join(map(str, one_class))} have images of one class only; "
                                "source balance needs both classes in every source (or use --balance class)")
    weights = np.array([1.0 / cells[(s, c)] for s, c in zip(sources, y)])
    return weights * len(y) / weights.sum()


def sample_weights(balance: str, y: np.ndarray, sources: Sequence[str]) -> np.ndarray | None:
    """The fit's sample weights for ``balance`` (None: unweighted, or the classifiers' own)."""
    if balance not in BALANCES:
        raise TrainingDataError(f"unknown balance {balance!r}; valid: {', '.join(BALANCES)}")
    return source_balance_weights(y, sources) if balance == "source" else None
