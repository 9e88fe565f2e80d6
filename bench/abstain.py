#!/usr/bin/env python
"""Answer or abstain: coverage and error among answered, where the model is and where it is not.

The demo's configuration (a stack of svm and logreg on MobileNetV2 + MobileNet features,
multiscale pooling, flip TTA, source-balanced weights) with its conformal answers
(classifiers/estimators/conformal.py) at several error rates, on:
- COVID-CT's official test split, the model fitted on both sources' training images;
- each source held out (leave one source out): the configuration refit on the other source, its
  answers calibrated on that refit's out-of-fold scores and its out-of-distribution detector
  fitted on that refit's training images; and how many of the threshold's wrong labels become
  uncertain or not assessable;
- the three hospital DICOM studies (study-level answers, calibrated on the training patients with
  several slices);
- 20 pictures that are not CT (tests/helpers.py non_ct_pictures): the share not assessable, and
  how many are called COVID.
Targets: COVID-CT test at error rate 0.1, error among answered <= 0.10 and coverage >= 60%;
a held-out source, error among answered <= 0.25; non-CT pictures >= 95% not assessable, none COVID.

    .venv/bin/python bench/abstain.py        # or: make bench-abstain
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from common import MODELS, REPO, SHARED, bench_parser, publish, table_section

from classifiers.records.selective import selective_metrics  # noqa: E402
from classifiers.workflows.cross_source import leave_one_source_out  # noqa: E402
from classifiers.workflows.evaluate import evaluate_model  # noqa: E402
from classifiers.workflows.features import FeatureSelection  # noqa: E402
from classifiers.workflows.model import load_model  # noqa: E402
from classifiers.workflows.predict import predict_folder  # noqa: E402
from classifiers.workflows.studies import predict_studies  # noqa: E402
from classifiers.settings import AnswerSettings, FitSettings  # noqa: E402
from classifiers.workflows.train import fit_model  # noqa: E402
from feature_extractor.extract import FeatureExtractor  # noqa: E402
from feature_extractor.feature_spec import FeatureSpec  # noqa: E402
from feature_extractor.imaging.dataset import load_datasets  # noqa: E402
from feature_extractor.run_context import RunContext  # noqa: E402
from feature_extractor.weights import WeightsChoice  # noqa: E402

WEIGHTS = {"mobilenetv2": MODELS / "mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5",
           "mobilenet": MODELS / "mobilenet_v1_1.0_224_imagenet_from_coral_quant_no_top.h5"}
FEATURES = {"pooling": "multiscale", "tta": "flip"}
DATA = SHARED / "data"
RATES = (0.05, 0.1, 0.2)


def ci(m: dict, pct: bool = False) -> str:
    if m["value"] != m["value"]:
        return "-"
    f = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: f"{v:.3f}")
    return f"{f(m['value'])} [{f(m['ci_low'])}, {f(m['ci_high'])}]"


def row(name: str, rate: float, y, answers, groups, n_boot: int, extra: str = "") -> tuple[str, ...]:
    s = selective_metrics(y, answers, groups, n_boot)
    covid = sum(a == "COVID" for a in answers)
    return (name, f"{rate:g}", str(len(answers)), ci(s["coverage"], True), ci(s["error"]),
            f"{s['uncertain']['value']:.0%}", f"{s['not_assessable']['value']:.0%}", str(covid), extra)


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--sources", nargs="+", default=[str(DATA / "covid-ct"), str(DATA / "mosmed-slices")])
    parser.add_argument("--studies", default=DATA / "dicom-studies")
    args = parser.parse_args()
    sources = [Path(p) for p in args.sources]
    if not all(p.is_dir() for p in sources) or not all(p.is_file() for p in WEIGHTS.values()):
        print(f"skipped: needs {args.sources} and {list(WEIGHTS.values())}")
        return 0
    context = RunContext(args.features_dir, batch_size=32, offline=True)
    dataset = load_datasets(sources)
    for name, path in WEIGHTS.items():
        print(FeatureExtractor(FeatureSpec(name, WeightsChoice("file", str(path)), **FEATURES), context)
              .extract(dataset.records).summary(), flush=True)
    selection = FeatureSelection(tuple(WEIGHTS), {n: WeightsChoice("file", str(p)) for n, p in WEIGHTS.items()}, FEATURES)
    path = Path(args.models_dir) / "abstain-demo.joblib"
    fit_model(sources, fit=FitSettings("stack", base=("svm", "logreg")), selection=selection, context=context, model_path=path)
    rows, curves = [], []
    for rate in RATES:
        model = load_model(path, context, AnswerSettings(rate))
        test = evaluate_model(model, sources[0], "test", args.bootstrap)
        rows.append(row("COVID-CT test split (both sources' training images)", rate, test.y,
                        [r.answer for r in test.rows], test.groups, args.bootstrap))
        if rate == 0.1:
            curves.append(("COVID-CT test split", test.risk_coverage))
        print(" | ".join(rows[-1]), flush=True)
    for rate in RATES:
        cross = leave_one_source_out(load_model(path, context, AnswerSettings(rate)), sources, args.bootstrap)
        for h in cross.held_out:
            groups = np.array([r.group for r in h.records])
            c = h.caught
            rows.append(row(f"held out: {h.source} (AUC {h.metrics['roc_auc']['value']:.3f})", rate, h.y, h.answers,
                            groups, args.bootstrap, f"{c['wrong_labels']} wrong labels: {c['uncertain']} uncertain, "
                                                    f"{c['not_assessable']} not assessable, {c['still_wrong']} "
                                                    "answered wrongly"))
            print(" | ".join(rows[-1]), flush=True)
            if h.answers_per_image is not None and h.answers_per_image != h.answers:  # what the set rule changed
                rows.append(row(f"held out: {h.source}, per image only (without the set rule)", rate, h.y,
                                h.answers_per_image, groups, args.bootstrap))
                print(" | ".join(rows[-1]), flush=True)
            if rate == 0.1 and h.risk_coverage:
                curves.append((f"held out: {h.source}", h.risk_coverage))
    study_rows = []
    if Path(args.studies).is_dir():
        for rate in RATES:
            report = predict_studies(load_model(path, context, AnswerSettings(rate)), args.studies)
            for result in report.results:
                study_rows.append((result.study.name, f"{rate:g}", result.answer or "-",
                                   f"{result.p_covid:.3f}" if result.p_covid is not None else "-",
                                   str(result.in_distribution).lower()))
                print(" | ".join(study_rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(REPO))
        from tests.helpers import non_ct_pictures

        non_ct_pictures(Path(tmp) / "pictures", n=20, seed=7)
        for rate in RATES:
            predicted = predict_folder(load_model(path, context, AnswerSettings(rate)), Path(tmp) / "pictures")
            answers = [r.answer for r in predicted.rows]
            rows.append(row("20 non-CT pictures (no labels: only abstentions count)", rate, np.zeros(len(answers)),
                            answers, np.arange(len(answers)), args.bootstrap))
            print(" | ".join(rows[-1]), flush=True)
    from classifiers.presentation.plots import plot_risk_coverage

    plot_risk_coverage(curves, REPO / "docs" / "risk_coverage.png", "Answers: the demo's model", 0.1)
    header = ("images", "error rate", "n", "coverage [95% CI]", "error among answered [95% CI]", "uncertain",
              "not assessable", "answered COVID", "the threshold's wrong labels")
    text = ("The demo's model (stack of svm and logreg on MobileNetV2 + MobileNet, multiscale pooling, flip TTA, "
            "source-balanced weights, both sources' training images), its conformal answers at each error rate. "
            "Coverage: share answered COVID or NonCOVID; error among answered: the wrong share of those; 95% "
            "patient-bootstrap CIs (1000). Held-out rows: the configuration refit without that source, its answers "
            "calibrated on the refit's out-of-fold scores, its out-of-distribution detector fitted on the refit's "
            "training images; \"per image only\": the same answers without the rule that makes a whole set not "
            "assessable when its images lie farther from the training images than any training source's (what a "
            "new source gets image by image). Targets: COVID-CT test at 0.1: error <= 0.10, coverage >= 60%; a "
            "held-out source: "
            "error <= 0.25; non-CT pictures >= 95% not assessable, none COVID.")
    publish(table_section("abstain", "abstain.py", "bench-abstain", text, header, rows), "Answer or abstain",
            args.out, REPO / "README.md")
    if study_rows:
        publish(table_section("abstain-studies", "abstain.py", "bench-abstain",
                              "The three hospital studies' answers (study-level calibration: the training patients "
                              "with several slices, pooled by the model's study aggregation). Each study's slices, "
                              "as a set, lie farther from the training images than any training source's do (one-sided "
                              "Kolmogorov-Smirnov on the out-of-distribution scores), so no study is assessable: they "
                              "come from a hospital the model has not seen; calibrate on that hospital's labeled "
                              "slices makes its studies assessable.",
                              ("study", "error rate", "answer", "P(COVID)", "in distribution"), study_rows),
                "Answer or abstain: hospital studies", args.out, REPO / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
