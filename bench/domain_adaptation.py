#!/usr/bin/env python
"""Feature-level domain adaptation from skada, against the per-site standardization `fit
--harmonize standardize` ships, leave one source out.

Each adapter sees the training source's labeled features and the held-out source's features
without labels (what `fit --adapt-to DIR` would give it), then scores the held-out source.
One fixed pipeline for all, chosen before any result: standardize, then (where the adapter
needs a small space) PCA, then a class-balanced logistic regression (C = 0.01). Adapters:
CORAL (Sun et al. 2016), subspace alignment (Fernando et al. 2013), density-ratio
importance weighting (skada's DensityReweight, a kernel density ratio).
Needs skada (`pip install -e ".[bench]"`); skipped without it.

    .venv/bin/python bench/domain_adaptation.py        # or: make bench-adaptation
"""
from __future__ import annotations

import sys

import numpy as np
from accuracy import available  # noqa: E402
from common import SHARED, bench_parser, publish, table_section

from classifiers.estimators.harmonize import SiteStandardizer  # noqa: E402
from classifiers.workflows.features import feature_matrix  # noqa: E402
from feature_extractor.cache.feature_cache import list_caches  # noqa: E402
from feature_extractor.imaging.dataset import load_datasets, with_keys  # noqa: E402

SOURCES = (SHARED / "data" / "covid-ct", SHARED / "data" / "mosmed-slices")
FEATURES = {"pooling": "multiscale", "tta": "flip", "crop": "none"}


def pipelines() -> dict:
    import sklearn
    from skada import CORAL, DensityReweight, SubspaceAlignment, make_da_pipeline
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sklearn.set_config(enable_metadata_routing=True)  # DensityReweight hands sample weights on

    def clf():
        return LogisticRegression(C=0.01, max_iter=5000, class_weight="balanced")

    return {
        "none": lambda: make_pipeline(StandardScaler(), clf()),
        "per-site standardize (shipped)": None,
        "CORAL": lambda: make_da_pipeline(StandardScaler(), PCA(64, random_state=0), CORAL(clf())),
        "subspace alignment": lambda: make_da_pipeline(StandardScaler(), SubspaceAlignment(clf(), n_components=32)),
        "density reweighting": lambda: make_da_pipeline(
            StandardScaler(), PCA(32, random_state=0),
            DensityReweight(clf().set_fit_request(sample_weight=True))),
    }


def main() -> int:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    try:
        import skada  # noqa: F401
    except ImportError:
        print('skipped: needs skada (pip install -e ".[bench]")')
        return 0
    from sklearn.metrics import roc_auc_score

    if not all(p.exists() for p in SOURCES):
        print(f"skipped: needs {SOURCES}")
        return 0
    records = with_keys([r for r in load_datasets(SOURCES).records if r.label is not None])
    y = np.array([r.label for r in records])
    source = np.array([r.source for r in records], dtype=object)
    trainable = np.array([r.split != "test" for r in records])
    rows = []
    for backbone in available():
        caches = [c for c in list_caches(args.features_dir, backbone) if c.spec.matches(**FEATURES)]
        if not caches:
            print(f"{backbone}: no cached features ({FEATURES}); run bench/generalization.py first")
            continue
        X = feature_matrix(records, caches[:1]).astype(np.float64)
        for name, make in pipelines().items():
            aucs = []
            for held in dict.fromkeys(source):
                test, train = source == held, (source != held) & trainable
                if make is None:  # ours: each site by its own statistics, then the plain pipeline
                    h = SiteStandardizer().fit(X[train], source[train])
                    model = pipelines()["none"]().fit(h.transform(X[train], source[train]), y[train])
                    p = model.predict_proba(h.with_site(held, X[test]).transform(X[test], source[test]))[:, 1]
                elif name == "none":
                    p = make().fit(X[train], y[train]).predict_proba(X[test])[:, 1]
                else:  # skada: the target's rows unlabeled (-1), negative sample_domain
                    Xa = np.vstack([X[train], X[test]])
                    ya = np.r_[y[train], -np.ones(test.sum(), int)]
                    domain = np.r_[np.ones(train.sum(), int), -2 * np.ones(test.sum(), int)]
                    model = make().fit(Xa, ya, sample_domain=domain)
                    p = model.predict_proba(X[test], sample_domain=-2 * np.ones(test.sum(), int))[:, 1]
                aucs.append(f"{roc_auc_score(y[test], p):.3f} (n={test.sum()})")
            rows.append((backbone, name, *aucs))
            print(" | ".join(rows[-1]), flush=True)
    header = ("features", "adaptation", *(f"held out: {s} AUC" for s in dict.fromkeys(source)))
    section = table_section("adaptation", "domain_adaptation.py", "bench-adaptation", (
        "Leave one source out, features multiscale + flip, crop none. Each adapter saw the held-out "
        "source's features without labels. Pipeline for all: standardize, (PCA,) adapter, class-balanced "
        "logistic regression C=0.01, fixed before any result (no tuning, so the \"none\" row differs a little "
        "from the generalization table's tuned logreg). skada " + __import__("skada").__version__ + "."),
        header, rows)
    publish(section, "Domain adaptation (skada)", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
