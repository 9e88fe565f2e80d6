#!/usr/bin/env python
"""Which features and models to use, decided by patient-grouped CV on train+val only.

For every offline backbone: pooling (avg, avgmax, multiscale) x test-time flip, each scored
with logistic regression, SVM and PCA+SVM; then per-backbone vs concatenated stacking on the
best variant. The test split is not read. Prints a table and writes it into BENCHMARKS.md.

    .venv/bin/python bench/feature_variants.py
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np  # noqa: E402
from accuracy import available  # noqa: E402
from common import REPO, SHARED, publish
from sklearn.calibration import CalibratedClassifierCV  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

from classifiers.estimators.registry import get_classifier  # noqa: E402
from classifiers.estimators.search import GroupedSearchCV  # noqa: E402
from classifiers.estimators.stacking import StackedEnsemble  # noqa: E402
from classifiers.workflows.features import feature_matrix, select_cache  # noqa: E402
from classifiers.workflows.train import training_records  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402
from feature_extractor.extract import FeatureExtractor  # noqa: E402
from feature_extractor.feature_spec import FeatureSpec  # noqa: E402
from feature_extractor.imaging.dataset import load_dataset, with_keys  # noqa: E402

VARIANTS = [("avg", "none"), ("avgmax", "none"), ("multiscale", "none"), ("avg", "flip"),
            ("multiscale", "flip")]
START, END = "<!-- variants:start -->", "<!-- variants:end -->"


def pca_svm():
    svc = CalibratedClassifierCV(SVC(kernel="rbf", class_weight="balanced"), ensemble=False)
    model = make_pipeline(StandardScaler(), PCA(n_components=0.95, svd_solver="full", random_state=0), svc)
    return model, {"calibratedclassifiercv__estimator__C": [0.3, 1.0, 3.0, 10.0]}


def main() -> int:
    data = os.environ.get("COVIDCT_DATA", SHARED / "data" / "covid-ct")
    features_dir = REPO / "features"
    weights = available()
    if not weights or not Path(data).is_dir():
        print("skipped: needs the dataset and offline weights")
        return 0
    dataset = load_dataset(data)
    records, _ = training_records(dataset)
    records = with_keys(records)
    keys = [r.key for r in records]
    y = np.array([r.label for r in records])
    groups = np.array([r.group for r in records])
    rows, best = [], {}
    context = RunContext(features_dir, offline=True)
    for name, choice in weights.items():
        for pooling, tta in VARIANTS:
            FeatureExtractor(FeatureSpec(name, choice, pooling=pooling, tta=tta), context).extract(dataset.records)
            src = select_cache(features_dir, name, keys, pooling=pooling, tta=tta, weights_source=choice.source)
            X = feature_matrix(records, [src.cache])
            scores = {}
            for clf, factory in (("logreg", get_classifier("logreg").build),
                                 ("svm", get_classifier("svm").build), ("pca+svm", pca_svm)):
                model, grid = factory()
                search = GroupedSearchCV(model, grid).fit(X, y, groups)
                scores[clf] = (search.cv_auc_, search.cv_auc_std_)
            rows.append((name, pooling, tta, X.shape[1], scores))
            top = max(s[0] for s in scores.values())
            if top > best.get(name, (0,))[0]:
                best[name] = (top, pooling, tta, src)
            print(name, pooling, tta, X.shape[1],
                  {k: f"{m:.3f}+-{s:.3f}" for k, (m, s) in scores.items()}, flush=True)

    # per-backbone vs concatenated stacking, on each backbone's best variant
    sources = [best[n][3] for n in weights]
    X = feature_matrix(records, [s.cache for s in sources])
    bounds = np.cumsum([0] + [s.cache.feature_dim for s in sources])
    blocks = [(s.spec.backbone, int(a), int(b)) for s, a, b in zip(sources, bounds[:-1], bounds[1:])]
    stack_rows = []
    for label, blk in (("per-backbone blocks", blocks), ("one concatenated block", None)):
        for base in (("svm", "logreg"), ("svm", "rf", "xgboost", "logreg")):
            start = time.perf_counter()
            estimators = [(clf, get_classifier(clf).search(y=y)) for clf in base]
            stack = StackedEnsemble(estimators, blocks=blk).fit(X, y, groups)
            stack_rows.append((label, "+".join(base), stack.cv_auc_, stack.cv_auc_std_,
                               time.perf_counter() - start))
            print(stack_rows[-1], flush=True)

    lines = [START, "",
             f"Patient-grouped 5-fold CV AUC on train+val ({len(y)} images, "
             f"{len(np.unique(groups))} patients); the test split is not read. "
             "`.venv/bin/python bench/feature_variants.py`", "",
             "| backbone | pooling | flip TTA | dims | logreg | SVM | PCA(95%)+SVM |", "|---|---|---|---|---|---|---|"]
    for name, pooling, tta, dim, s in rows:
        cells = [f"{s[k][0]:.3f} ± {s[k][1]:.3f}" for k in ("logreg", "svm", "pca+svm")]
        lines.append(f"| {name} | {pooling} | {tta} | {dim} | " + " | ".join(cells) + " |")
    lines += ["", "Stacking on each backbone's best variant ("
              + ", ".join(f"{n}: {best[n][1]}/{best[n][2]}" for n in weights) + "):", "",
              "| blocks | base models | CV AUC | fit s |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {m:.3f} ± {s:.3f} | {t:.0f} |" for a, b, m, s, t in stack_rows]
    section = "\n".join(lines + ["", END])
    publish(section, "Feature variants (grouped CV, no test data)", REPO / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
