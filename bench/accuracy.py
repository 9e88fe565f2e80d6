#!/usr/bin/env python
"""Accuracy benchmark on the COVID-CT official patient-level split.

Every backbone whose real ImageNet weights are available offline here x {svm, rf, xgboost,
logreg}, plus the stack over all of them. Model selection (hyperparameters, stack weights)
uses train+val only, by patient-grouped CV; each model reads the test split once, at the end.
Prints a table and writes it into BENCHMARKS.md (between the accuracy markers).

    .venv/bin/python bench/accuracy.py            # or: make bench-accuracy
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from common import MODELS, bench_parser, machine, markdown_table, publish

from classifiers.estimators.registry import CLASSIFIERS, STACK  # noqa: E402
from classifiers.workflows.evaluate import evaluate_model  # noqa: E402
from classifiers.workflows.features import FeatureSelection  # noqa: E402
from classifiers.workflows.model import load_model  # noqa: E402
from classifiers.settings import FitSettings  # noqa: E402
from classifiers.workflows.train import fit_model  # noqa: E402
from feature_extractor.backbones import get_backbone  # noqa: E402
from feature_extractor.extract import FeatureExtractor  # noqa: E402
from feature_extractor.feature_spec import SETTING, FeatureSpec  # noqa: E402
from feature_extractor.imaging.dataset import Dataset, load_dataset  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402
from feature_extractor.weights import WeightsChoice, imagenet_file  # noqa: E402

OFFLINE_WEIGHTS = {  # backbone -> weights we can load without internet
    "mobilenetv2": WeightsChoice("file", str(MODELS / "mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5")),
    "mobilenet": WeightsChoice("file", str(MODELS / "mobilenet_v1_1.0_224_imagenet_from_coral_quant_no_top.h5")),
    "mobilenet025": WeightsChoice("imagenet"),
}
ANCHORS = [
    ("DenseNet-169 baseline, fine-tuned (Zhao et al.)", "0.847", "0.854", "0.919"),
    ("Self-Trans (He et al.)", "0.86", "0.85", "0.94"),
    ("SVM on MobileNet v1 avg-pooled features (reported here before)", "~0.78", "", "~0.85"),
    ("target for the stack with offline backbones", ">= 0.86", "", ">= 0.94"),
]
START, END = "<!-- accuracy:start -->", "<!-- accuracy:end -->"


def available() -> dict[str, WeightsChoice]:
    out = {}
    for name, choice in OFFLINE_WEIGHTS.items():
        path = Path(choice.path) if choice.path else imagenet_file(get_backbone(name))
        if path.is_file():
            out[name] = choice
    return out


def offline_weights_and_data(data) -> tuple[dict[str, WeightsChoice], Dataset] | None:
    """The offline backbones and the dataset; None, with a 'skipped' line, when either is absent."""
    weights = available()
    if not weights or not Path(data).is_dir():
        print(f"skipped: needs the dataset ({data}) and offline weights in {MODELS}")
        return None
    return weights, load_dataset(data)


def ci(metric: dict) -> str:
    return f"{metric['value']:.3f} [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--classifiers", default=",".join(CLASSIFIERS))
    # Chosen by bench/feature_variants.py on train+val grouped CV (not on test).
    parser.add_argument("--pooling", default="multiscale", choices=SETTING["pooling"].choices)
    parser.add_argument("--tta", default="flip", choices=SETTING["tta"].choices)
    args = parser.parse_args()
    classifiers = args.classifiers.split(",")
    setup = offline_weights_and_data(args.data)
    if setup is None:
        return 0
    weights, dataset = setup
    context = RunContext(args.features_dir, offline=True)
    for name, choice in weights.items():
        spec = FeatureSpec(name, choice, pooling=args.pooling, tta=args.tta)
        print(FeatureExtractor(spec, context).extract(dataset.records).summary(), flush=True)

    rows = []

    def run(label: str, clf: str, backbones: list[str], **kw) -> None:
        start = time.perf_counter()
        model = Path(args.models_dir) / f"{label.replace(' + ', '+')}-{clf}.joblib"
        selection = FeatureSelection(tuple(backbones), {b: weights[b] for b in backbones},
                                     {"pooling": args.pooling, "tta": args.tta})
        bundle = fit_model(args.data, fit=FitSettings(clf, **kw), selection=selection, context=context, model_path=model)
        ev = evaluate_model(load_model(model, context), args.data, "test", n_boot=args.bootstrap)
        m = ev.metrics
        rows.append((label, clf, f"{bundle.card.cv_auc:.3f}", ci(m["accuracy"]), ci(m["f1"]),
                     ci(m["roc_auc"]), f"{time.perf_counter() - start:.0f}"))
        print(" | ".join(rows[-1]), flush=True)

    for name in weights:
        for clf in classifiers:
            run(name, clf, [name])
    everything = list(weights)
    run(" + ".join(everything), STACK, everything, base=tuple(classifiers))

    header = ("features", "classifier", "CV AUC (train+val)", "test accuracy [95% CI]",
              "test F1 [95% CI]", "test AUC [95% CI]", "fit+eval s")
    lines = markdown_table(header, rows)
    lines += ["", "Anchors (published or earlier numbers, for scale):", "",
              "| model | accuracy | F1 | AUC |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ANCHORS]
    n = dataset.records
    section = "\n".join([
        START, "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, "
        f"by `.venv/bin/python bench/accuracy.py` (`make bench-accuracy`). Test split: "
        f"{sum(r.split == 'test' for r in n)} images of "
        f"{len({r.patient for r in n if r.split == 'test'})} patients; CIs are 95% patient "
        f"bootstrap ({args.bootstrap} resamples). CV AUC: patient-grouped 5-fold on train+val. "
        f"Features: pooling `{args.pooling}`, TTA `{args.tta}` (chosen by grouped CV in "
        "bench/feature_variants.py).", "",
        *lines, "", END])
    publish(section, "Accuracy", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
