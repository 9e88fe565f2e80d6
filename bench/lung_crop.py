#!/usr/bin/env python
"""What --crop lungs changes: full slices vs lung-field crops, per backbone, on COVID-CT.

For every offline backbone (features: multiscale pooling + flip TTA, as the accuracy table),
each classifier is fitted on train+val with --crop none and with --crop lungs; the table
gives its patient-grouped 5-fold CV AUC on train+val and its test-split accuracy and AUC
(95% patient-bootstrap CIs). A stack over all backbones is compared the same way. Also: how
many slices had no plausible lungs (full image used) and the crop's cost per image.

The shortcut probe asks the opposite question: the same models, shown everything BUT the
lungs (the lung field blacked out; text, arrows, framing, body and bed kept). A probe AUC
well above 0.5 means the full-image numbers can come from the image's source, not the disease.
Prints a table and writes it into BENCHMARKS.md (between the lung-crop markers).

    .venv/bin/python bench/lung_crop.py        # or: make bench-crop (about 15 min on 2 cores)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np  # noqa: E402
from accuracy import ci, offline_weights_and_data  # noqa: E402
from common import SHARED, bench_parser, machine, markdown_table, publish

from classifiers.estimators.registry import STACK, get_classifier  # noqa: E402
from classifiers.records.metrics import bootstrap_metrics  # noqa: E402
from classifiers.workflows.evaluate import evaluate_model  # noqa: E402
from classifiers.workflows.features import FeatureSelection  # noqa: E402
from classifiers.workflows.model import load_model  # noqa: E402
from classifiers.settings import FitSettings  # noqa: E402
from classifiers.workflows.train import fit_model  # noqa: E402
from feature_extractor.extract import FeatureExtractor  # noqa: E402
from feature_extractor.feature_spec import SETTING, FeatureSpec  # noqa: E402
from feature_extractor.imaging.dataset import load_datasets, with_keys  # noqa: E402
from feature_extractor.imaging.decode import prepare_image, resize_rgb  # noqa: E402
from feature_extractor.lungs.crop import lung_field  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402

START, END = "<!-- crop:start -->", "<!-- crop:end -->"
CROPS = SETTING["crop"].choices
FEATURES = {"pooling": "multiscale", "tta": "flip"}


def crop_survey(records) -> tuple[int, float]:
    """Slices where no plausible lungs were found, and the crop's median cost in seconds
    (decode + crop, minus decode alone) over every slice."""
    n_fallback, costs = 0, []
    for rec in records:
        data = Path(rec.path).read_bytes()
        t0 = time.perf_counter()
        prepare_image(data)
        t1 = time.perf_counter()
        n_fallback += prepare_image(data, crop="lungs").crop_fallback is not None
        costs.append((time.perf_counter() - t1) - (t1 - t0))
    return n_fallback, float(np.median(costs))


def outside_lungs(path: str, size: tuple[int, int]) -> np.ndarray:
    """The slice with its lung field blacked out (unchanged where no lungs are found)."""
    rgb = prepare_image(Path(path).read_bytes()).original
    mask, _ = lung_field(rgb)
    if mask is not None:
        rgb = np.where(mask[..., None], 0, rgb).astype(np.uint8)
    return resize_rgb(rgb, size)


def shortcut_probe(dataset, name, choice, classifiers, n_boot) -> list[tuple[str, ...]]:
    """CV and test AUC of models that see only what lies outside the lungs."""
    extractor = FeatureExtractor(FeatureSpec(name, choice, **FEATURES), RunContext(offline=True))
    records = [r for r in with_keys(dataset.records) if not r.error]
    X = np.concatenate([extractor.features_of(np.stack([outside_lungs(r.path, extractor.input_size)
                                                        for r in records[i:i + 32]]))
                        for i in range(0, len(records), 32)])
    train = np.array([r.split in ("train", "val") for r in records])
    test = np.array([r.split == "test" for r in records])
    y = np.array([r.label for r in records])
    groups = np.array([r.group for r in records])
    rows = []
    for clf in classifiers:
        search = get_classifier(clf).search().fit(X[train], y[train], groups[train])
        p = search.predict_proba(X[test])[:, 1]
        m = bootstrap_metrics(y[test], p, groups[test], n_boot=n_boot)
        rows.append((name, clf, "outside lungs only (probe)",
                     f"{search.cv_auc_:.3f} ± {search.cv_auc_std_:.3f}", ci(m["accuracy"]), ci(m["roc_auc"])))
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--classifiers", default="svm,logreg")
    parser.add_argument("--no-stack", action="store_true")
    parser.add_argument("--other-sources", nargs="*", default=[str(SHARED / "data" / "mosmed-slices")],
                        help="more sources for the crop's fallback survey")
    args = parser.parse_args()
    setup = offline_weights_and_data(args.data)
    if setup is None:
        return 0
    weights, dataset = setup
    context = RunContext(args.features_dir, offline=True)
    for name, choice in weights.items():
        for crop in CROPS:
            spec = FeatureSpec(name, choice, crop=crop, **FEATURES)
            print(FeatureExtractor(spec, context).extract(dataset.records).summary(), flush=True)

    rows = []

    def run(label: str, clf: str, backbones: list[str], crop: str, **kw) -> None:
        model = Path(args.models_dir) / f"crop-{crop}-{label.replace(' + ', '+')}-{clf}.joblib"
        selection = FeatureSelection(tuple(backbones), {b: weights[b] for b in backbones},
                                     {**FEATURES, "crop": crop})
        bundle = fit_model(args.data, fit=FitSettings(clf, **kw), selection=selection, context=context, model_path=model)
        m = evaluate_model(load_model(model, context), args.data, "test", n_boot=args.bootstrap).metrics
        rows.append((label, clf, crop, f"{bundle.card.cv_auc:.3f} ± {bundle.card.cv['auc_std']:.3f}",
                     ci(m["accuracy"]), ci(m["roc_auc"])))
        print(" | ".join(rows[-1]), flush=True)

    for name in weights:
        for clf in args.classifiers.split(","):
            for crop in CROPS:
                run(name, clf, [name], crop)
    if not args.no_stack:
        everything = list(weights)
        for crop in CROPS:
            run(" + ".join(everything), STACK, everything, crop, base=("svm", "logreg"))
    for name, choice in weights.items():
        rows += shortcut_probe(dataset, name, choice, args.classifiers.split(","), args.bootstrap)

    surveys = {"covid-ct": (len(dataset.records), *crop_survey(dataset.records))}
    for other in args.other_sources:  # the crop must work on every source, not just COVID-CT's
        if Path(other).is_dir():
            records = load_datasets([other]).records
            surveys[Path(other).name] = (len(records), *crop_survey(records))
    n_test = sum(r.split == "test" for r in dataset.records)
    lines = [START, "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, by `.venv/bin/python bench/lung_crop.py` "
             f"(`make bench-crop`). Features: multiscale pooling + flip TTA. CV AUC: patient-grouped "
             f"5-fold on train+val (mean ± sd over folds); test: the official split ({n_test} images), "
             f"95% patient-bootstrap CIs ({args.bootstrap} resamples). The stack uses svm + logreg "
             "base models.", "",
             *markdown_table(("features", "classifier", "crop", "CV AUC (train+val)", "test accuracy [95% CI]",
                              "test AUC [95% CI]"), rows), "",
             "Lung crop (version 2), per source: " + "; ".join(
                 f"{name}: no plausible lungs in {n_fallback} of {n} slices, median cost {1000 * cost:.0f} ms "
                 "a slice on top of decoding" for name, (n, n_fallback, cost) in surveys.items())
             + " (where none are found, the full image is used, with a warning). "
             "Probe rows: the models see the slice with its lung field blacked out (features computed "
             "on the fly, not cached); their AUC measures how much the rest of the image (the source's "
             "framing, text, arrows, body, bed) reveals the label.",
             "", END]
    section = "\n".join(lines)
    publish(section, "Lung-field crop (--crop lungs)", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
