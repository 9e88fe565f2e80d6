#!/usr/bin/env python
"""Site recalibration with few labels: a learning curve on each held-out source.

The configuration is fixed before looking at any held-out result: MobileNet (v1) features
(multiscale pooling + flip TTA, full slices), logistic regression, source-balanced, the best
grouped-CV AUC of the single-backbone rows on the training data. For each source in turn it
is fitted on the other source (as `evaluate --cv-by source`), then `calibrate` is simulated
on k labeled patients of the held-out source (random patients, both classes at least twice;
several draws) and scored on the rest of that source: AUC, sensitivity and specificity at the
recalibrated threshold. k = 0: the model as trained, scored on the same rest.
Writes the table into BENCHMARKS.md (recalibration markers).

    .venv/bin/python bench/recalibration.py        # or: make bench-recalibration
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from accuracy import available  # noqa: E402
from common import SHARED, bench_parser, publish, table_section
from sklearn.metrics import roc_auc_score

from classifiers.estimators.recalibration import recalibrate  # noqa: E402
from classifiers.workflows.cross_source import leave_one_source_out  # noqa: E402
from classifiers.workflows.features import FeatureSelection  # noqa: E402
from classifiers.workflows.model import load_model  # noqa: E402
from classifiers.settings import FitSettings  # noqa: E402
from classifiers.workflows.train import fit_model  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402

FEATURES = {"pooling": "multiscale", "tta": "flip", "crop": "none"}
SOURCES = (SHARED / "data" / "covid-ct", SHARED / "data" / "mosmed-slices")
BACKBONE = "mobilenet"


def draw(groups: np.ndarray, y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A mask of the images of k random patients, with each class at least twice."""
    patients = np.unique(groups)
    while True:
        chosen = np.isin(groups, rng.choice(patients, size=k, replace=False))
        if min(np.sum(y[chosen] == c) for c in (0, 1)) >= 2:
            return chosen


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--labels", default="0,10,25,50,100", help="labeled patients of the new site")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--harmonize", default="none,standardize")
    args = parser.parse_args()
    weights = available()
    if BACKBONE not in weights or not all(p.exists() for p in SOURCES):
        print(f"skipped: needs {SOURCES} and the offline {BACKBONE} weights")
        return 0
    context = RunContext(args.features_dir, offline=True)
    rows = []
    for harmonize in args.harmonize.split(","):
        path = Path(args.models_dir) / f"recalibration-{harmonize}.joblib"
        selection = FeatureSelection((BACKBONE,), {BACKBONE: weights[BACKBONE]}, FEATURES)
        fit_model(list(SOURCES), fit=FitSettings("logreg", harmonize=harmonize), selection=selection, context=context,
                  model_path=path)
        for held in leave_one_source_out(load_model(path, context), list(SOURCES), 200).held_out:
            groups = np.array([r.group for r in held.records])
            rng = np.random.default_rng(0)
            for k in map(int, args.labels.split(",")):
                aucs, sens, spec = [], [], []
                for _ in range(args.draws if k else 1):
                    labeled = draw(groups, held.y, k, rng) if k else np.zeros(len(groups), bool)
                    rest = ~labeled
                    if k:
                        result = recalibrate(held.estimator, held.X[labeled], held.y[labeled])
                        p, threshold = result.estimator.predict_proba(held.X[rest])[:, 1], result.threshold["threshold"]
                    else:
                        p, threshold = held.p, held.threshold
                    y = held.y[rest]
                    aucs.append(roc_auc_score(y, p))
                    sens.append(np.mean(p[y == 1] >= threshold))
                    spec.append(np.mean(p[y == 0] < threshold))

                def spread(v: list[float]) -> str:
                    return f"{np.median(v):.3f}" + (f" [{np.min(v):.3f}, {np.max(v):.3f}]" if len(v) > 1 else "")

                rows.append((held.source, harmonize, str(k), str(int((~labeled).sum())), spread(aucs), spread(sens),
                             spread(spec)))
                print(" | ".join(rows[-1]), flush=True)
    header = ("held out", "harmonize", "local labeled patients", "n scored", "AUC median [min, max]",
              "sensitivity", "specificity")
    section = table_section("recalibration", "recalibration.py", "bench-recalibration", (
        f"Model: {BACKBONE} (multiscale + flip, crop none) + logistic regression, "
        "source-balanced, fitted on the other source (as in `evaluate --cv-by source`). Then `calibrate` "
        "(sigmoid calibration around the frozen model, threshold at the sample's COVID share) on k labeled "
        f"patients of the held-out source, {args.draws} random draws per k; scored on the rest of that source. "
        "Median over draws and the range."), header, rows)
    publish(section, "Site recalibration with few labels", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
