#!/usr/bin/env python
"""What a new hospital gets: the source test, answers whose error among answered is controlled,
the lesion finding, and calibrate learning a site (workflows/answer_policy.py).

The demo's configuration (a stack of svm and logreg on MobileNetV2 + MobileNet features,
multiscale pooling, flip TTA, source-balanced weights, the segmentation network on both lesion folders)
fitted on both sources' training images, then:

1. The source test: draws of 20 slices of a source held out (the test of a refit that knows only
   the other source), draws of 20, 50 and 100 of COVID-CT's own test split, each hospital study.
2. Answers: COVID-CT's test split at error rates 0.05, 0.1, 0.2, before (class-conditional
   conformal, the policy until now, recomputed on the same out-of-fold scores) and after
   (Learn-then-Test thresholds); each source held out (leave one source out: the refit's parts;
   with and without the set rule); the hospital studies; 20 non-CT pictures.
3. The finding: the hospital studies' radiologist-labelled slices; and leave one patient out on
   lesion-slices (each patient's out-of-fold scores answered by thresholds learned on the others').
4. The learning curve: each source held out, k = 25, 50, 100, 200 of its labeled patients given to
   calibrate (10 draws), AUC, error among answered and coverage on the rest of that source.

    .venv/bin/python bench/abstain.py        # or: make bench-abstain
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from common import MODELS, REPO, SHARED, bench_parser, publish, table_section

from classifiers.estimators.risk_control import POOLED, SelectiveThresholds  # noqa: E402
from classifiers.estimators.site_model import SiteModel  # noqa: E402
from classifiers.estimators.source_test import SourceTest  # noqa: E402
from classifiers.records.lesion_summary import lesion_columns  # noqa: E402
from classifiers.records.metrics import roc_auc  # noqa: E402
from classifiers.records.selective import selective_metrics  # noqa: E402
from classifiers.settings import AnswerSettings, FitSettings, LesionSettings  # noqa: E402
from classifiers.workflows.cross_source import leave_one_source_out  # noqa: E402
from classifiers.workflows.evaluate import evaluate_model  # noqa: E402
from classifiers.workflows.features import FeatureSelection  # noqa: E402
from classifiers.workflows.lesions.evaluate import evaluate_lesions  # noqa: E402
from classifiers.workflows.model import load_model  # noqa: E402
from classifiers.workflows.predict import predict_folder  # noqa: E402
from classifiers.workflows.studies import predict_studies  # noqa: E402
from classifiers.workflows.train import fit_model, training_records  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402
from feature_extractor.extract import FeatureExtractor  # noqa: E402
from feature_extractor.feature_spec import FeatureSpec  # noqa: E402
from feature_extractor.imaging.dataset import Record, load_datasets  # noqa: E402
from feature_extractor.imaging.slice_choice import slices_to_score  # noqa: E402
from feature_extractor.imaging.studies import find_studies  # noqa: E402
from feature_extractor.weights import WeightsChoice  # noqa: E402

WEIGHTS = {"mobilenetv2": MODELS / "mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5",
           "mobilenet": MODELS / "mobilenet_v1_1.0_224_imagenet_from_coral_quant_no_top.h5"}
FEATURES = {"pooling": "multiscale", "tta": "flip"}
DATA = SHARED / "data"
RATES = (0.05, 0.1, 0.2)
KS = (25, 50, 100, 200)
DRAWS = 10


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


def conformal_before(p_cal, y_cal, p, rate, ood) -> list[str]:
    """The answers of the policy until now: class-conditional (Mondrian) split conformal on the same
    out-of-fold scores, non-conformity 1 - P(class), non-smoothed p-values; out of distribution: not
    assessable."""
    out = []
    for score, ok in zip(p, ood):
        pv = [(1 + np.sum((1 - np.where(c, p_cal, 1 - p_cal))[y_cal == c] >= 1 - (score if c else 1 - score)))
              / (np.sum(y_cal == c) + 1) for c in (0, 1)]
        keep = [pv[0] > rate, pv[1] > rate]
        out.append("not assessable" if not ok else "COVID" if keep == [False, True] else
                   "NonCOVID" if keep == [True, False] else "uncertain")
    return out


def finding_rows(model, evaluation, studies: Path, rates) -> list[tuple[str, ...]]:
    """The finding's error and coverage on the hospital studies' labelled slices and, leave one
    patient out, on lesion-slices (thresholds from the other patients' out-of-fold scores)."""
    rows = []
    if evaluation is not None:
        for rate in rates:
            m = evaluation.by_source[studies.name]["finding"][str(rate)]
            rows.append((f"hospital studies' labelled slices ({m['n']}, radiologists' slice labels)", f"{rate:g}",
                         f"{100 * m['coverage']:.0f}%", f"{m['error']:.3f}" if m["error"] == m["error"] else "-",
                         f"{m['coverage_infected']:.0%} / {m['coverage_clean']:.0%}"))
    oof = model.card.answers.get("finding", {}).get("oof", [])
    entries = [(src, pat, lab, s) for src, pat, lab, s in oof]
    lesion = [e for e in entries if e[0] == "lesion-slices"]
    for rate in rates:
        answered = wrong = infected_ans = clean_ans = 0
        for patient in sorted({e[1] for e in lesion}):
            mine = [e for e in lesion if e[1] == patient]
            rest = [e for e in entries if not (e[0] == "lesion-slices" and e[1] == patient)]
            t = SelectiveThresholds(model.bundle.finding.delta).fit([e[3] for e in rest], [e[2] for e in rest])
            coded = t.answer([e[3] for e in mine], rate)
            labels = np.array([e[2] for e in mine])
            answered += int((coded >= 0).sum())
            wrong += int(((coded >= 0) & (coded != labels)).sum())
            infected_ans += int(((coded >= 0) & (labels == 1)).sum())
            clean_ans += int(((coded >= 0) & (labels == 0)).sum())
        n, n_inf = len(lesion), sum(e[2] for e in lesion)
        rows.append((f"lesion-slices, leave one patient out ({n} slices of 6 patients)", f"{rate:g}",
                     f"{100 * answered / n:.0f}%", f"{wrong / max(answered, 1):.3f}",
                     f"{infected_ans / n_inf:.0%} / {clean_ans / (n - n_inf):.0%}"))
    return rows


def learning_curve(model, sources, context, seed: int = 0) -> list[tuple[str, ...]]:
    """calibrate's site model on k labeled patients of a held-out source, scored on the rest of it."""
    dataset = load_datasets(sources)
    records = [r for r in dataset.records if r.label is not None]
    feats = model.features(records)
    summaries = model.lesions.summaries(feats.readable)
    lesion = lesion_columns(summaries, [r.path for r in feats.readable])
    fraction = np.array([summaries[r.path].lesion_fraction or 0.0 for r in feats.readable])
    X = np.hstack([feats.raw, lesion])
    y = np.array([r.label for r in feats.readable])
    src = np.array([r.source for r in feats.readable], dtype=object)
    grp = np.array([r.group for r in feats.readable], dtype=object)
    train_keys = {r.path for r in training_records(dataset)[0]}
    trainable = np.array([r.path in train_keys for r in feats.readable])
    rows = []
    for held in dataset.sources:
        mine = src == held
        rows.append((held, "0 (no site labels)", "share of lung involved alone", f"{roc_auc(y[mine], fraction[mine]):.3f}",
                     "-", "-"))
        patients = np.unique(grp[mine])
        for k in KS:
            aucs, errors, coverages = [], [], []
            for draw in range(DRAWS):
                rng = np.random.default_rng(1000 * k + draw + seed)
                chosen = set(rng.choice(patients, k, replace=False))
                site = mine & np.isin(grp, list(chosen))
                rest = mine & ~site
                fit_rows = (~mine & trainable) | site
                names = np.where(site, "site", src)
                try:
                    sm = SiteModel("site", lesion.shape[1]).fit(X[fit_rows], y[fit_rows], names[fit_rows], grp[fit_rows])
                except Exception as exc:  # too few patients of a class in the draw
                    print(f"  {held} k={k} draw {draw}: {exc}")
                    continue
                p = sm.predict_proba(X[rest])[:, 1]
                aucs.append(roc_auc(y[rest], p))
                coded = SelectiveThresholds(model.bundle.thresholds.delta).fit(sm.oof_, y[site]).answer(p, 0.1)
                coverages.append(float((coded >= 0).mean()))
                if (coded >= 0).any():
                    errors.append(float(((coded >= 0) & (coded != y[rest])).sum() / (coded >= 0).sum()))
            rows.append((held, str(k), f"{DRAWS} draws", f"{np.mean(aucs):.3f} ({np.min(aucs):.3f}-{np.max(aucs):.3f})",
                         f"{np.mean(errors):.3f}" if errors else "-", f"{100 * np.mean(coverages):.0f}%"))
            print(" | ".join(rows[-1]), flush=True)
    return rows


def source_test_rows(model, sources, studies, seed: int = 0) -> list[tuple[str, ...]]:
    dataset = load_datasets(sources)
    records = [r for r in dataset.records if r.label is not None]
    feats = model.features(records)
    src = np.array([r.source for r in feats.readable], dtype=object)
    grp = np.array([r.group for r in feats.readable], dtype=object)
    train_keys = {r.path for r in training_records(dataset)[0]}
    trainable = np.array([r.path in train_keys for r in feats.readable])
    rows = []
    for held in dataset.sources:  # the refit's test knows only the other source's training images
        known = trainable & (src != held)
        test = SourceTest(random_state=seed).fit(feats.raw[known], src[known], grp[known])
        pool = np.flatnonzero(src == held)
        flagged = [not test.test(feats.raw[np.random.default_rng(i).choice(pool, 20, replace=False)])["exchangeable"]
                   for i in range(100)]
        rows.append((f"held out: {held} (a test that knows {', '.join(sorted(set(src[known])))})", "20", "100",
                     f"{np.mean(flagged):.0%}", ">= 99%"))
    test = model.bundle.source_test
    split = np.flatnonzero(np.array([r.split == "test" for r in feats.readable]))
    for n in (20, 50, 100):
        flagged = [not test.test(feats.raw[np.random.default_rng(i).choice(split, n, replace=False)])["exchangeable"]
                   for i in range(100)]
        rows.append(("COVID-CT's own test split (the demo's model)", str(n), "100", f"{np.mean(flagged):.0%}", "<= 5%"))
    if Path(studies).is_dir():
        for study in find_studies(studies).studies:
            used, _ = slices_to_score(study)
            t = test.test(model.features([Record(p) for p in used]).raw)
            rows.append((f"hospital study {study.name}", str(t["n"]), "1", "yes" if not t["exchangeable"] else "no",
                         f"flagged (nearest {t['nearest']} at {t['ratio']:.1f}x its cut-off)"))
    return rows


def headline_rows(cross, source_rows, evaluation, studies: Path, study_rows, curve) -> list[tuple[str, str]]:
    """The few numbers a new hospital gets, gathered from the tables below them."""
    rows = [("The image-level model on a source it never saw (leave one source out, ROC AUC)",
             ", ".join(f"{h.source} {h.metrics['roc_auc']['value']:.2f}" for h in cross.held_out))]
    held = [r for r in source_rows if r[0].startswith("held out")]
    rows.append(("A new source recognised as new (draws of 20 of its slices flagged by the source test)",
                 ", ".join(f"{r[0].split()[2]} {r[3]}" for r in held)))
    rows.append(("Its slices answered COVID/NonCOVID by the image-level model (as one set, error rate 0.1)",
                 ", ".join(f"{h.source} {sum(a in ('COVID', 'NonCOVID') for a in h.answers)} of {len(h.answers)}"
                           for h in cross.held_out)))
    if evaluation is not None:
        m = evaluation.by_source[studies.name]
        f = m["finding"]["0.1"]
        rows.append(("The lesion evidence on the unseen hospital's labelled slices (slice ROC AUC, never trained there)",
                     f"{m['slice_auc']:.2f} ({m['n_slice_auc']} slices; lung share alone "
                     f"{m['slice_auc_lung_share_only']:.2f})"))
        rows.append(("The lesion finding on those slices at error rate 0.1 (opacities / clear / uncertain)",
                     f"answers {100 * f['coverage']:.0f}%, wrong among answered {f['error']:.2f} (target 0.10: missed)"
                     if f["error"] > 0.1 else f"answers {100 * f['coverage']:.0f}%, wrong among answered {f['error']:.2f}"))
    opacity = [(r[0], r[5]) for r in study_rows if r[1] == "0.1"]
    if opacity:
        rows.append(("The hospital's studies: opacity (percentage of the lungs' volume), every answer not assessable",
                     ", ".join(f"{name} {b}" for name, b in opacity)))
    for held in dict.fromkeys(r[0] for r in curve):
        at = {r[1]: r[3].split()[0] for r in curve if r[0] == held}
        rows.append((f"{held} held out, after calibrate with 100 / 200 of its labeled patients (ROC AUC)",
                     f"{at.get('100', '-')} / {at.get('200', '-')} (share of lung involved alone "
                     f"{at.get('0 (no site labels)', '-')})"))
    return rows


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--sources", nargs="+", default=[str(DATA / "covid-ct"), str(DATA / "mosmed-slices")])
    parser.add_argument("--studies", default=DATA / "dicom-studies")
    parser.add_argument("--lesion-data", nargs="+", default=[str(DATA / "lesion-slices"), str(DATA / "lesion-slices-sirm")])
    parser.add_argument("--reuse", action="store_true", help="Reuse the fitted model in --models-dir.")
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
    if not (args.reuse and path.exists()):
        fit_model(sources, fit=FitSettings("stack", base=("svm", "logreg")), selection=selection, context=context,
                  model_path=path, lesion_data=[Path(p) for p in args.lesion_data if Path(p).is_dir()],
                  lesion=LesionSettings())
    model = load_model(path, context)

    source_rows = source_test_rows(model, sources, args.studies)
    for r in source_rows:
        print(" | ".join(r), flush=True)

    rows, curves = [], []
    p_cal, y_cal = model.bundle.thresholds.calibration_[POOLED]
    for rate in RATES:
        m = load_model(path, context, AnswerSettings(rate))
        test = evaluate_model(m, sources[0], "test", args.bootstrap)
        before = conformal_before(p_cal, y_cal, test.p, rate, test.in_distribution)
        rows.append(row("COVID-CT test split, before: class-conditional conformal", rate, test.y, before, test.groups,
                        args.bootstrap))
        rows.append(row("COVID-CT test split, after: Learn-then-Test thresholds", rate, test.y,
                        [r.answer for r in test.rows], test.groups, args.bootstrap))
        if rate == 0.1:
            curves.append(("COVID-CT test split", test.risk_coverage))
        print(" | ".join(rows[-2]) + "\n" + " | ".join(rows[-1]), flush=True)
    for rate in RATES:
        cross = leave_one_source_out(load_model(path, context, AnswerSettings(rate)), sources, args.bootstrap)
        if rate == 0.1:
            cross_at_01 = cross
        for h in cross.held_out:
            groups = np.array([r.group for r in h.records])
            c = h.caught
            rows.append(row(f"held out: {h.source} (AUC {h.metrics['roc_auc']['value']:.3f}), as one set", rate, h.y,
                            h.answers, groups, args.bootstrap, f"{c['wrong_labels']} wrong labels: {c['uncertain']} "
                            f"uncertain, {c['not_assessable']} not assessable, {c['still_wrong']} answered wrongly"))
            rows.append(row(f"held out: {h.source}, image by image (no source test)", rate, h.y, h.answers_per_image,
                            groups, args.bootstrap))
            print(" | ".join(rows[-2]) + "\n" + " | ".join(rows[-1]), flush=True)
            if rate == 0.1 and h.risk_coverage:
                curves.append((f"held out: {h.source}, image by image", h.risk_coverage))
    study_rows = []
    if Path(args.studies).is_dir():
        for rate in RATES:
            report = predict_studies(load_model(path, context, AnswerSettings(rate)), args.studies)
            for result in report.results:
                study_rows.append((result.study.name, f"{rate:g}", result.answer or "-", result.finding or "-",
                                   f"{result.opacity_share:.0%}" if result.opacity_share is not None else "-",
                                   f"{result.severity.opacity_percent:.1f}%" if result.severity is not None
                                   and result.severity.opacity_percent is not None else "-",
                                   f"{result.p_covid:.3f}" if result.p_covid is not None else "-"))
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
    studies = Path(args.studies)
    evaluation = evaluate_lesions(model, [studies]) if (studies / "slices.csv").is_file() else None
    finding = finding_rows(model, evaluation, studies, RATES)
    for r in finding:
        print(" | ".join(r), flush=True)
    curve = learning_curve(model, sources, context)
    from classifiers.presentation.plots import plot_risk_coverage

    plot_risk_coverage(curves, REPO / "docs" / "risk_coverage.png", "Answers: the demo's model", 0.1)
    outs = (args.out,)
    publish(table_section(
        "new-hospital", "abstain.py", "bench-abstain",
        "What a hospital the model has never seen gets, from the tables of BENCHMARKS.md: the demo's model, each "
        "source held out in turn, and the three hospital DICOM studies (never used in any fit).",
        ("what a new hospital gets", "measured"),
        headline_rows(cross_at_01, source_rows, evaluation, studies, study_rows, curve)),
        "What a new hospital gets", *outs, REPO / "README.md")
    publish(table_section(
        "source-test", "abstain.py", "bench-abstain",
        "The source test (estimators/source_test.py): the share of draws of n slices found unlike every source the "
        "test knows. Held-out rows: a test fitted on the other source's training images only (as leave one source "
        "out refits); test-split rows and studies: the demo's model, which knows both sources.",
        ("set", "n", "draws", "flagged", "target"), source_rows), "What a new hospital gets: the source test", *outs)
    publish(table_section(
        "abstain", "abstain.py", "bench-abstain",
        "The demo's model (stack of svm and logreg on MobileNetV2 + MobileNet, multiscale pooling, flip TTA, "
        "source-balanced weights, both sources' training images, the segmentation network) and its answers at each error rate "
        "(answer_policy.py). Coverage: share answered COVID or NonCOVID; error among answered: the wrong share of "
        "those; 95% patient-bootstrap CIs. \"before\": the class-conditional conformal answers of the previous "
        "version, recomputed on the same out-of-fold scores; \"after\": the Learn-then-Test thresholds (COVID-CT's "
        "own thresholds: the test split is a set recognised as COVID-CT). Held-out rows: the configuration refit "
        "without that source, with its own thresholds, source test and out-of-distribution detector; \"as one set\" "
        "is what predict gives a new hospital's folder, \"image by image\" what lone images of it get. Targets: "
        "COVID-CT test at 0.1: error <= 0.10 with coverage >= 50%; at 0.05: error <= 0.05; a held-out source as a "
        "set: never answered; non-CT pictures >= 95% not assessable, none COVID.",
        ("images", "error rate", "n", "coverage [95% CI]", "error among answered [95% CI]", "uncertain",
         "not assessable", "answered COVID", "the threshold's wrong labels"), rows), "Answer or abstain", *outs)
    if study_rows:
        publish(table_section(
            "abstain-studies", "abstain.py", "bench-abstain",
            "The three hospital studies (a hospital the model has not seen): the COVID answer, the study's finding "
            "(opacities when the share of its assessable slices with opacities exceeds the error rate), that share, "
            "and the opacity (the percentage of the lungs' volume with lesion).",
            ("study", "error rate", "answer", "finding", "slices with opacities", "opacity", "P(COVID)"),
            study_rows), "Answer or abstain: hospital studies", *outs)
    publish(table_section(
        "finding", "abstain.py", "bench-abstain",
        "The lesion finding (opacities / clear / uncertain from the share of lung involved, Learn-then-Test thresholds "
        "on the lesion data's out-of-fold slice scores). Coverage: share of slices given opacities or clear; error "
        "among those; coverage of infected / clean slices. Target at 0.1: error <= 0.10 with coverage >= 60%.",
        ("slices", "error rate", "coverage", "error among answered", "coverage infected / clean"), finding),
        "The lesion finding", *outs)
    publish(table_section(
        "learning-curve", "abstain.py", "bench-abstain",
        f"calibrate's site model (estimators/site_model.py) given k labeled patients of a source held out ({DRAWS} "
        "draws each), trained with the other source's training images; scored on the rest of the held-out source: "
        "AUC (mean, min-max over draws), and at error rate 0.1 with the site's thresholds (its out-of-fold scores) "
        "the error among answered and the coverage. Targets: MosMed held out never below the share of lung "
        "involved alone, >= 0.80 at k = 200; COVID-CT held out >= 0.80 at k = 100.",
        ("held out", "k patients", "", "AUC", "error among answered at 0.1", "coverage at 0.1"), curve),
        "Calibrate learns the site: the learning curve", *outs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
