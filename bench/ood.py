#!/usr/bin/env python
"""The out-of-distribution flag: the share of images it flags, by where they come from.

For each offline backbone and all of them together (multiscale pooling + flip TTA, crop
none and lungs) and each choice of training sources, the detector `fit` ships
(classifiers/estimators/ood.py: cosine distance to the 5th nearest training image, cut-off
at the 99% quantile of out-of-fold training scores) is fitted on the training patients and applied to:
- held-out patients of the training sources: COVID-CT's official test split, and a fixed
  20% of MosMed's studies (both never seen by the detector); target about 1%;
- the other source, when the detector saw one source only;
- 30 pictures that are not CT slices (photo crops, radiograph-like drawings, noise; made by
  tests/helpers.py:non_ct_pictures); target all.
Writes the table into BENCHMARKS.md (ood markers).

    .venv/bin/python bench/ood.py        # or: make bench-ood
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from accuracy import available  # noqa: E402
from common import SHARED, bench_parser, publish, table_section

from classifiers.estimators.ood import NearestNeighborOOD  # noqa: E402
from classifiers.workflows.model import extract_features  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402
from feature_extractor.extract import FeatureExtractor  # noqa: E402
from feature_extractor.feature_spec import FeatureSpec  # noqa: E402
from feature_extractor.imaging.dataset import load_datasets, load_unlabeled, with_keys  # noqa: E402
from tests.helpers import non_ct_pictures  # noqa: E402

FEATURES = {"pooling": "multiscale", "tta": "flip"}
SOURCES = (SHARED / "data" / "covid-ct", SHARED / "data" / "mosmed-slices")


def features(records, specs, context) -> np.ndarray:
    """Every spec's features of ``records``, side by side (the CNN runs for uncached images)."""
    return extract_features([FeatureExtractor(spec, context) for spec in specs], records).raw


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--crops", default="none,lungs")
    args = parser.parse_args()
    weights = available()
    if not weights or not all(p.exists() for p in SOURCES):
        print(f"skipped: needs {SOURCES} and offline weights")
        return 0
    context = RunContext(args.features_dir, offline=True)
    dataset = load_datasets(SOURCES)
    records = with_keys([r for r in dataset.records if r.label is not None])
    y = np.array([r.label for r in records])
    groups = np.array([r.group for r in records])
    source = np.array([r.source for r in records])
    rng = np.random.default_rng(0)
    mosmed_held = set(rng.choice(np.unique(groups[source == "mosmed-slices"]),
                                 size=int(0.2 * len(np.unique(groups[source == "mosmed-slices"]))), replace=False))
    held = np.array([r.split == "test" or (r.source == "mosmed-slices" and r.group in mosmed_held)
                     for r in records])
    pictures = load_unlabeled(_pictures()).records
    rows = []
    for crop in args.crops.split(","):
        sets = {name: [FeatureSpec(name, choice, crop=crop, **FEATURES)] for name, choice in weights.items()}
        sets[" + ".join(weights)] = [s for specs in list(sets.values()) for s in specs]
        for label, specs in sets.items():
            X = features(records, specs, context)
            X_pictures = features(list(pictures), specs, context)
            for trained_on in ("covid-ct", "mosmed-slices", "both"):
                in_source = np.ones(len(records), bool) if trained_on == "both" else source == trained_on
                train = in_source & ~held
                detector = NearestNeighborOOD().fit(X[train], y[train], groups[train])

                def flagged(mask: np.ndarray | None, Z: np.ndarray | None = None) -> str:
                    Z = X[mask] if Z is None else Z
                    share = 1 - detector.in_distribution(detector.score_samples(Z)).mean()
                    return f"{share:.1%} (n={len(Z)})"

                other = "" if trained_on == "both" else flagged(~in_source)
                rows.append((label, crop, trained_on, f"{train.sum()}", flagged(in_source & held), other,
                             flagged(None, X_pictures)))
                print(" | ".join(rows[-1]), flush=True)
    header = ("features", "crop", "detector trained on", "n train", "held-out patients of the training sources",
              "the other source", "non-CT pictures")
    section = table_section("ood", "ood.py", "bench-ood", (
        "The detector `fit` ships with every model: the cosine distance from an image's "
        "raw features to its 5th nearest training image (deep nearest neighbours), flagged above the 99% "
        "quantile of out-of-fold training scores (5 patient-grouped folds). Held-out patients: COVID-CT's "
        "official test split and a fixed random 20% of MosMed's studies, never seen by the detector. "
        "Non-CT pictures: 30 made by "
        "`tests/helpers.py:non_ct_pictures` (photo crops, radiograph-like drawings, noise). "
        "Features: multiscale pooling + flip TTA."), header, rows)
    publish(section, "Out-of-distribution flag", args.out)
    return 0


def _pictures() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="non-ct-"))
    non_ct_pictures(folder, 30)
    return folder


if __name__ == "__main__":
    sys.exit(main())
