#!/usr/bin/env python
"""Cross-source generalization: leave one source out, COVID-CT and MosMed, with each
harmonization option (image level: crops; feature level: per-site standardization).

For every offline backbone (features: multiscale pooling + flip TTA, as the accuracy table)
and classifier, and the stack over all backbones (on the --deep-crops): a model is fitted on
both sources with source-balanced weights (`fit --data A --data B --harmonize H`), then
`evaluate --cv-by source` refits that configuration without each source in turn and scores
every labeled image of the held-out source (95% patient-bootstrap CIs); the MosMed-trained
model is also scored on COVID-CT's official test split alone. The last columns are the
both-source model on COVID-CT's official test split and its grouped CV AUC. No choice looks
at a held-out source's labels.
Prints a table and writes it into BENCHMARKS.md (generalization markers).

    .venv/bin/python bench/generalization.py        # or: make bench-generalization
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from accuracy import available, ci  # noqa: E402
from common import SHARED, bench_parser, publish, table_section

from classifiers.estimators.registry import STACK  # noqa: E402
from classifiers.records.metrics import bootstrap_metrics  # noqa: E402
from classifiers.workflows.cross_source import leave_one_source_out  # noqa: E402
from classifiers.workflows.evaluate import evaluate_model  # noqa: E402
from classifiers.workflows.features import FeatureSelection  # noqa: E402
from classifiers.workflows.model import load_model  # noqa: E402
from classifiers.settings import FitSettings  # noqa: E402
from classifiers.workflows.train import fit_model  # noqa: E402
from feature_extractor.extract import FeatureExtractor  # noqa: E402
from feature_extractor.feature_spec import FeatureSpec  # noqa: E402
from feature_extractor.imaging.dataset import load_datasets  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402

FEATURES = {"pooling": "multiscale", "tta": "flip"}
SOURCES = (SHARED / "data" / "covid-ct", SHARED / "data" / "mosmed-slices")


def held_out_test_split(held) -> str:
    """AUC of the model that never saw COVID-CT on COVID-CT's official test split alone (the
    split every COVID-CT paper reports), 95% patient-bootstrap CI."""
    if held is None:
        return ""
    test = np.array([r.split == "test" for r in held.records])
    groups = np.array([r.group for r in held.records])
    metrics = bootstrap_metrics(held.y[test], held.p[test], groups[test], held.threshold, 1000, 0)
    return f"{ci(metrics['roc_auc'])} (n={int(test.sum())})"


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--sources", nargs="+", default=[str(p) for p in SOURCES])
    parser.add_argument("--classifiers", default="logreg", help="for every crop")
    parser.add_argument("--crops", default="none,lungs,lungs-equalized,body", help="--crop settings to compare")
    parser.add_argument("--deep-crops", default="none", help="crops that also get --deep-classifiers and the stack")
    parser.add_argument("--deep-classifiers", default="svm")
    parser.add_argument("--no-stack", action="store_true")
    parser.add_argument("--harmonize", default="none,standardize", help="--harmonize settings to compare")
    args = parser.parse_args()
    weights = available()
    if not weights or not all(Path(p).exists() for p in args.sources):
        print(f"skipped: needs {args.sources} and offline weights")
        return 0
    sources = [Path(p) for p in args.sources]
    dataset = load_datasets(sources)
    context = RunContext(args.features_dir, offline=True)
    crops = args.crops.split(",")
    for crop in crops:
        for name, choice in weights.items():
            spec = FeatureSpec(name, choice, crop=crop, **FEATURES)
            print(FeatureExtractor(spec, context).extract(dataset.records).summary(), flush=True)
    names = dataset.sources
    covidct = next((p for p in sources if p.name == "covid-ct"), None)
    rows = []

    def run(label: str, clf: str, backbones: list[str], crop: str, harmonize: str, **kw) -> None:
        start = time.perf_counter()
        path = Path(args.models_dir) / f"both-crop-{crop}-{harmonize}-{label.replace(' + ', '+')}-{clf}.joblib"
        selection = FeatureSelection(tuple(backbones), {b: weights[b] for b in backbones},
                                     {**FEATURES, "crop": crop})
        bundle = fit_model(sources, fit=FitSettings(clf, harmonize=harmonize, **kw), selection=selection, context=context,
                           model_path=path)
        model = load_model(path, context)
        held = {h.source: h for h in leave_one_source_out(model, sources, args.bootstrap).held_out}
        test = evaluate_model(model, covidct, "test", args.bootstrap).metrics["roc_auc"] if covidct else None
        rows.append((label, clf, crop, harmonize,
                     *(f"{ci(held[s].metrics['roc_auc'])} (n={held[s].n['images']})" for s in names),
                     held_out_test_split(held.get("covid-ct")),
                     f"{held['covid-ct'].train_cv_auc:.3f}" if "covid-ct" in held else "", ci(test) if test else "",
                     f"{bundle.card.cv_auc:.3f}", f"{time.perf_counter() - start:.0f}"))
        print(" | ".join(rows[-1]), flush=True)

    deep = args.deep_crops.split(",")
    for crop in crops:
        classifiers = args.classifiers.split(",") + (args.deep_classifiers.split(",") if crop in deep else [])
        for harmonize in args.harmonize.split(","):
            for name in weights:
                for clf in classifiers:
                    run(name, clf, [name], crop, harmonize)
            if crop in deep and not args.no_stack:
                everything = list(weights)
                run(" + ".join(everything), STACK, everything, crop, harmonize, base=tuple(classifiers))
    counts = {s: sum(r.source == s and r.label is not None for r in dataset.records) for s in names}
    header = ("features", "classifier", "crop", "harmonize", *(f"held out: {s} AUC [95% CI]" for s in names),
              "held out: covid-ct, its test split only", "mosmed alone: CV AUC", "both sources: COVID-CT test AUC",
              "both: CV AUC", "s")
    section = table_section("generalization", "generalization.py", "bench-generalization", (
        "Sources: " + ", ".join(f"{s} ({n} labeled images)" for s, n in counts.items())
        + ". Each \"held out\" column: the configuration refit on the other source's training images "
        "(COVID-CT: train+val; MosMed: all) with source-balanced weights, scored on every labeled image "
        f"of the held-out source; 95% patient-bootstrap CIs ({args.bootstrap} resamples). Features: "
        "multiscale pooling + flip TTA; crop none (full slices), lungs (lung crop v2), lungs-equalized (the lung "
        "crop with the lung field's histogram equalized), body (a fixed field of view: the body outline, "
        "padded square). "
        "Harmonize standardize: each source's features standardized by its own mean and sd; the held-out "
        "source by the statistics of its own images (no labels), as `predict --site batch`. \"its test split "
        "only\": the model trained on MosMed alone, scored on COVID-CT's official test split; \"mosmed alone\": "
        "that model's patient-grouped CV AUC on MosMed. The last columns: "
        "the model fitted on both sources, on COVID-CT's official test split, and its grouped CV AUC."), header, rows)
    publish(section, "Generalization across sources (leave one source out)", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
