#!/usr/bin/env python
"""Lesion maps against radiologists, and what they bring to COVID screening.

1. The lung mask (feature_extractor/lungs/mask.py) against the radiologists' lung masks of
   lesion-slices: pooled Dice, per patient, slices with lung (>= 1% of the image) left without
   a mask; the lung crop's segmentation (lung_crop.lung_field) beside it.
2. Leave one patient out on lesion-slices: the lesion head (the product's whole procedure:
   candidates chosen by patient-grouped CV, calibrated) trained on the five other patients and
   lesion-slices-sirm, applied to the held-out patient with the product's own lung mask: pixel
   Dice per patient and pooled, slice AUC among slices whose lungs fill >= 10% of the image with
   the lung-share-only AUC beside it (slice position is a confound), Spearman correlation of
   predicted and expert share of lung involved.
3. Hospital DICOM studies (the head trained on all lesion data): within-study slice AUC in P001
   and cap001 against the radiologists' slice labels, and each study's lesion burden.
4. Image level, leave one source out (COVID-CT, MosMed): (a) the demo's configuration, (b) the
   share of lung involved as the COVID score with no image-level training, (c) a logistic
   regression on the lesion summaries alone, (d) the demo's configuration with the lesion
   summaries joined (fit --lesion-features); and each on COVID-CT's official test split.
5. Cost per slice on this machine: dense features + lesion head next to the pooled features.
No choice looks at held-out labels: the head's choices are made by patient-grouped CV on its
training patients; the dicom-studies labels and held-out sources are only scored.

    .venv/bin/python bench/lesions.py        # or: make bench-lesions
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import MODELS, REPO, SHARED, bench_parser, publish, table_section

from classifiers.estimators.lesion_head import LesionHead  # noqa: E402
from classifiers.records.metrics import bootstrap_metrics  # noqa: E402
from classifiers.workflows.cross_source import leave_one_source_out  # noqa: E402
from classifiers.workflows.evaluate import evaluate_model  # noqa: E402
from classifiers.workflows.features import FeatureSelection  # noqa: E402
from classifiers.workflows.lesions.evaluate import agreement, score_slice  # noqa: E402
from classifiers.settings import LesionSettings  # noqa: E402
from classifiers.records.severity import SliceAreas, severity  # noqa: E402
from classifiers.workflows.lesions.lungs import (LUNG_CELLS_PER_SLICE, cell_shares, lung_cell_features,  # noqa: E402
                                                 lung_grid, lungs_from_grid)
from classifiers.workflows.lesions.maps import LesionMapper  # noqa: E402
from feature_extractor.lungs.sides import lung_sides  # noqa: E402
from classifiers.workflows.lesions.summary import CLASSIFIER_SUMMARY, lesion_map_of  # noqa: E402
from classifiers.workflows.lesions.training import training_cells  # noqa: E402
from classifiers.workflows.model import load_model  # noqa: E402
from classifiers.settings import FitSettings  # noqa: E402
from classifiers.workflows.train import fit_model  # noqa: E402
from feature_extractor.dense.hypercolumns import HypercolumnExtractor  # noqa: E402
from feature_extractor.dense.lesion_data import load_lesion_folder, slice_masks  # noqa: E402
from feature_extractor.dense.slices import read_dense  # noqa: E402
from feature_extractor.extract import FeatureExtractor  # noqa: E402
from feature_extractor.feature_spec import FeatureSpec  # noqa: E402
from feature_extractor.imaging.dataset import Record, load_datasets  # noqa: E402
from feature_extractor.lungs.crop import lung_field  # noqa: E402
from covidct_core.run_context import RunContext  # noqa: E402
from feature_extractor.weights import WeightsChoice  # noqa: E402

WEIGHTS = {"mobilenetv2": MODELS / "mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5",
           "mobilenet": MODELS / "mobilenet_v1_1.0_224_imagenet_from_coral_quant_no_top.h5"}
FEATURES = {"pooling": "multiscale", "tta": "flip"}
DATA = SHARED / "data"


def f3(v) -> str:
    return "" if v is None else f"{v:.3f}"


def lung_masks(data, rows) -> str:
    """Section 1: the product's lung mask and the crop's against the radiologists'."""
    from PIL import Image

    parts = {"lung mask (lung_mask.py)": {}, "lung crop's segmentation (lung_crop.py)": {}}
    missing = {k: 0 for k in parts}
    n_lung = 0
    for s in data.slices:
        dense = read_dense(s.path)
        expert = slice_masks(s, dense.shape).lungs
        crop, _ = lung_field(np.repeat(np.asarray(Image.open(s.path).convert("L"))[..., None], 3, axis=2))
        crop = np.zeros(dense.shape, bool) if crop is None else crop
        n_lung += expert.mean() >= 0.01
        for name, mask in zip(parts, (dense.lungs.mask, crop)):
            a = parts[name].setdefault(s.patient, [0, 0])
            a[0] += int((mask & expert).sum())
            a[1] += int(mask.sum() + expert.sum())
            missing[name] += bool(expert.mean() >= 0.01 and not mask.any())
    for name, by in parts.items():
        pooled = 2 * sum(v[0] for v in by.values()) / sum(v[1] for v in by.values())
        rows.append((name, f3(pooled), ", ".join(f"{p} {2 * v[0] / v[1]:.3f}" for p, v in by.items()),
                     f"{missing[name]} of {n_lung}"))
    return (f"Against the radiologists' lung masks of lesion-slices ({len(data.slices)} slices of 6 patients; "
            f"{n_lung} with lung on at least 1% of the image).")


def dense_pass(extractor, slices, cells_per_slice, rng):
    """Every slice's training cells, product lung mask, full-size shape and cell grid (float16)."""
    out = {}
    start = time.perf_counter()
    for path, item, grid in extractor.batches([s.path for s in slices]):
        s = next(x for x in slices if x.path == path)
        masks = slice_masks(s, item.shape)
        lungs = masks.lungs if masks.lungs is not None else item.lungs.mask
        cells, labels = training_cells(grid, masks.infection, lungs, cells_per_slice, rng)
        lung_cells = lung_labels = None
        if masks.lungs is not None:  # the lung head's training cells, as train_lung_head draws them
            share = cell_shares(masks.lungs, grid.shape[0]).ravel()
            pick = rng.choice(len(share), min(LUNG_CELLS_PER_SLICE, len(share)), replace=False)
            lung_cells = lung_cell_features(grid, item)[pick].astype(np.float16)
            lung_labels = (share[pick] >= 0.5).astype(int)
        out[path] = (cells, labels, item, grid, lung_cells, lung_labels)
    return out, (time.perf_counter() - start) / max(len(slices), 1)


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--lesion-data", default=DATA / "lesion-slices")
    parser.add_argument("--extra-training", default=DATA / "lesion-slices-sirm")
    parser.add_argument("--studies", default=DATA / "dicom-studies")
    parser.add_argument("--sources", nargs="+", default=[str(DATA / "covid-ct"), str(DATA / "mosmed-slices")])
    parser.add_argument("--skip-image-level", action="store_true")
    parser.add_argument("--cost-only", action="store_true",
                        help="only the cost table, with the lesion head of "
                             "bench/out/models/lesions-demo-with-lesions.joblib (else of make demo's models/demo.joblib)")
    args = parser.parse_args()
    if not (Path(args.lesion_data).is_dir() and WEIGHTS["mobilenetv2"].is_file()):
        print(f"skipped: needs {args.lesion_data} and {WEIGHTS['mobilenetv2']}")
        return 0
    context = RunContext(args.features_dir, batch_size=16, offline=True)
    settings = LesionSettings()
    spec = FeatureSpec("mobilenetv2", WeightsChoice("file", str(WEIGHTS["mobilenetv2"])),
                       input_size=(settings.input_side,) * 2, grid=settings.grid)
    extractor = HypercolumnExtractor(spec, context)
    data = load_lesion_folder(args.lesion_data)
    extra = load_lesion_folder(args.extra_training) if Path(args.extra_training).is_dir() else None
    sections = []
    if args.cost_only:
        path = Path(args.models_dir) / "lesions-demo-with-lesions.joblib"
        model = load_model(path if path.exists() else REPO / "models" / "demo.joblib", context)  # else make demo's
        marker, heading, text, header, rows = cost_section(context, data, model.lesions, settings)
        publish(table_section(marker, "lesions.py", "bench-lesions", text, header, rows), heading, args.out)
        return 0

    # 1. lung masks
    lung_rows: list[tuple[str, ...]] = []
    text = lung_masks(data, lung_rows)
    sections.append(("lesions-lungs", "Lung masks", text, ("lung mask", "pooled Dice", "Dice per patient",
                                                             "slices with lung but no mask"), lung_rows))
    print(*lung_rows, sep="\n", flush=True)

    # 2. leave one patient out
    rng = np.random.default_rng(settings.seed)
    extractor.weights  # noqa: B018  (resolve before timing)
    dense, _ = dense_pass(extractor, list(data.slices), settings.cells_per_slice, rng)
    extra_dense = dense_pass(extractor, list(extra.slices), settings.cells_per_slice, rng)[0] if extra else {}
    patients = list(dict.fromkeys(s.patient for s in data.slices))
    scores, lopo_rows, lung_rows2, severity_rows = [], [], [], []
    all_counts, all_lesion, percent_gaps, zone_tally = np.zeros(6), 0, [], np.zeros(3)
    scores_before: list = []
    for patient in patients:
        lung_train = [s for s in data.slices if s.patient != patient]
        lung_head = LesionHead(("logreg",), 3, settings.seed).fit(
            np.concatenate([dense[s.path][4] for s in lung_train]), np.concatenate([dense[s.path][5] for s in lung_train]),
            np.concatenate([[s.group] * len(dense[s.path][5]) for s in lung_train]))
        train = [dense[s.path] for s in data.slices if s.patient != patient] + list(extra_dense.values())
        groups = [s.group for s in data.slices if s.patient != patient for _ in range(len(dense[s.path][1]))]
        groups += [s.group for s in (extra.slices if extra else []) for _ in range(len(extra_dense[s.path][1]))]
        head = LesionHead(settings.heads, settings.cv_folds, settings.seed).fit(
            np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), np.array(groups))
        held = sorted((s for s in data.slices if s.patient == patient), key=lambda s: s.position or 0)
        mine, before, counts, areas, expert_areas = [], [], np.zeros(6), [], []
        for s in held:
            _, _, item, grid, _, _ = dense[s.path]
            g = grid.shape[0]
            probability = head.predict_proba(grid.reshape(-1, grid.shape[-1]))[:, 1].reshape(g, g)
            lungs = lungs_from_grid(lung_grid(lung_head, grid, item), item, float(lung_head.threshold_))
            learned = lesion_map_of(item, probability, head.threshold_, lungs)
            classical = lesion_map_of(item, probability, head.threshold_)
            mine.append(score_slice(s, learned))
            before.append(score_slice(s, classical))
            masks = slice_masks(s, item.shape)
            for k, m in enumerate((classical.lungs, learned.lungs)):
                counts[k] += (m & masks.lungs).sum()
                counts[2 + k] += m.sum() + masks.lungs.sum()
                counts[4 + k] += (m & masks.infection).sum()
            areas.append(learned.summary.areas())
            sides = lung_sides(masks.lungs)
            lesion = masks.infection & masks.lungs
            expert_areas.append(SliceAreas(*(float((sides == k).mean()) for k in (1, 2)),
                                           *(float((lesion & (sides == k)).mean()) for k in (1, 2))))
        n_lesion = sum(int((slice_masks(s, dense[s.path][2].shape).infection).sum()) for s in held)
        all_counts += counts
        all_lesion += n_lesion
        lung_rows2.append((patient, str(len(held)), f3(2 * counts[0] / counts[2]), f3(2 * counts[1] / counts[3]),
                           f"{100 * counts[4] / max(n_lesion, 1):.0f}%", f"{100 * counts[5] / max(n_lesion, 1):.0f}%",
                           f3(agreement(before)["pixel_dice"]), f3(agreement(mine)["pixel_dice"])))
        print(" | ".join(lung_rows2[-1]), flush=True)
        ours, theirs = severity(areas), severity(expert_areas)
        same = sum(ours.scores[z] == theirs.scores[z] for z in ours.scores if theirs.scores[z] is not None)
        within = sum(abs((ours.scores[z] or 0) - theirs.scores[z]) <= 1 for z in ours.scores if theirs.scores[z] is not None)
        n_zones = sum(theirs.scores[z] is not None for z in ours.scores)
        percent_gaps.append(abs(ours.opacity_percent - theirs.opacity_percent))
        zone_tally += (same, within, n_zones)
        severity_rows.append((patient, f"{ours.opacity_percent:.1f}%", f"{theirs.opacity_percent:.1f}%",
                              str(ours.severity_score), str(theirs.severity_score), f"{same} of {n_zones}",
                              f"{within} of {n_zones}"))
        print(" | ".join(severity_rows[-1]), flush=True)
        scores += mine
        scores_before += before
        m = agreement(mine)
        lopo_rows.append((patient, str(len(held)), str(m["n_infected"]), f3(m["pixel_dice"]), f3(m["slice_auc"]),
                          f3(m["slice_auc_lung_share_only"]), f3(m["spearman_fraction"]), head.choice_,
                          f"{head.threshold_:.2f}"))
        print(" | ".join(lopo_rows[-1]), flush=True)
    pooled_before, pooled_after = agreement(scores_before), agreement(scores)
    lung_rows2.append(("pooled", str(len(scores)), f3(2 * all_counts[0] / all_counts[2]),
                       f3(2 * all_counts[1] / all_counts[3]), f"{100 * all_counts[4] / max(all_lesion, 1):.0f}%",
                       f"{100 * all_counts[5] / max(all_lesion, 1):.0f}%", f3(pooled_before["pixel_dice"]),
                       f3(pooled_after["pixel_dice"])))
    severity_rows.append(("all volumes", f"median gap {np.median(percent_gaps):.1f} points", "", "", "",
                          f"{zone_tally[0] / zone_tally[2]:.0%}", f"{zone_tally[1] / zone_tally[2]:.0%}"))
    sections.append(("lungs-lopo", "Lungs: leave one patient out",
                     "lesion-slices, each patient held out in turn: the classical lung mask (before) and the learned "
                     "lungs (after: the lung head trained on the other five patients' lung masks, joined by the "
                     "classical mask near it; workflows/lesions/lungs.py) against the radiologists' lung masks; the "
                     "share of the radiologists' lesion pixels inside each; the lesion's pixel Dice inside each (the "
                     "same lesion head). Targets: lung Dice >= 0.97 pooled and >= 0.95 per patient, >= 97% of the lesion "
                     "inside for every patient, lesion Dice >= 0.72 pooled and >= 0.60 for rp3.",
                     ("held-out patient", "slices", "lung Dice before", "lung Dice after", "lesion inside before",
                      "lesion inside after", "lesion Dice before", "lesion Dice after"), lung_rows2))
    sections.append(("severity-lopo", "Severity: leave one patient out",
                     "Each held-out patient's volume (its slices in order): the percentage of opacity of the whole lungs "
                     "and the CT severity score (six zones, 0-5 each; records/severity.py) from the product's maps (the "
                     "learned lungs) and from the radiologists' lung and infection masks; zone scores equal, and within "
                     "one. Targets: percentage within 2 points (median over volumes); zones >= 70% equal, >= 95% "
                     "within one.",
                     ("volume", "opacity % (product)", "opacity % (radiologists)", "score (product)",
                      "score (radiologists)", "zones equal", "zones within one"), severity_rows))
    pooled = agreement(scores)
    lopo_rows.append(("pooled", str(len(scores)), str(pooled["n_infected"]), f3(pooled["pixel_dice"]),
                      f3(pooled["slice_auc"]), f3(pooled["slice_auc_lung_share_only"]),
                      f3(pooled["spearman_fraction"]), "", ""))
    sections.append(("lesions-lopo", "Lesions: leave one patient out",
                     f"lesion-slices (6 Radiopaedia patients, 709 slices), each patient held out in turn; the head "
                     f"trained on the other five and lesion-slices-sirm (98 infected slices), with the product's "
                     f"procedure (candidates {', '.join(settings.heads)} by patient-grouped CV, isotonic calibration, "
                     f"threshold by out-of-fold cell Dice). Pixel Dice inside the product's own lung mask; slice AUC "
                     f"among the {pooled['n_slice_auc']} slices whose lungs fill >= 10% of the image, with the AUC of "
                     "the lung's share alone beside it; Spearman: predicted vs expert share of lung involved. "
                     "Target: pooled Dice >= 0.65 (Inf-Net, a trained segmentation network: 0.68 on MedSeg's slices), "
                     "slice AUC >= 0.90.",
                     ("held-out patient", "slices", "infected", "pixel Dice", "slice AUC", "lung share only AUC",
                      "Spearman", "head chosen", "threshold"), lopo_rows))

    # 3. the head on all lesion data; hospital studies
    everything = [d[:4] for d in dense.values()] + [d[:4] for d in extra_dense.values()]
    all_groups = [s.group for s in data.slices for _ in range(len(dense[s.path][1]))]
    all_groups += [s.group for s in (extra.slices if extra else []) for _ in range(len(extra_dense[s.path][1]))]
    head = LesionHead(settings.heads, settings.cv_folds, settings.seed).fit(
        np.concatenate([t[0] for t in everything]), np.concatenate([t[1] for t in everything]), np.array(all_groups))
    lung_all = [s for s in data.slices if dense[s.path][4] is not None]
    lung_head = LesionHead(("logreg",), 3, settings.seed).fit(
        np.concatenate([dense[s.path][4] for s in lung_all]), np.concatenate([dense[s.path][5] for s in lung_all]),
        np.concatenate([[s.group] * len(dense[s.path][5]) for s in lung_all]))
    mapper = LesionMapper(head, extractor.resolved_spec, context, lung_head)
    study_rows = []
    if Path(args.studies).is_dir():
        from feature_extractor.imaging.studies import find_studies, slices_to_score

        labels = load_lesion_folder(args.studies)
        by_patient = {}
        for s in labels.slices:
            by_patient.setdefault(s.patient, []).append(score_slice(s, mapper.lesion_map(s.path)))
        for study in find_studies(args.studies).studies:
            used, _ = slices_to_score(study)
            sums = [mapper.lesion_map(p).summary for p in used]
            burden = sum(x.lesion_area for x in sums) / max(sum(x.lung_fraction for x in sums), 1e-9)
            patient = Path(study.name).name
            within = agreement(by_patient.get(patient, [])).get("within_patient", {}) if patient in by_patient else {}
            w = next(iter(within.values()), None)
            study_rows.append((study.name, str(len(used)), f"{100 * burden:.1f}%",
                               f3(w["auc"]) if w else "", f3(w["auc_lung_share_only"]) if w else "",
                               f"{w['n_infected']} of {w['n']}" if w else ""))
            print(" | ".join(study_rows[-1]), flush=True)
        sections.append(("lesions-studies", "Lesions: hospital studies",
                         "The three COVID-CT-MD studies (JPEG Lossless DICOM, HU), the head trained on all of "
                         "lesion-slices and lesion-slices-sirm. Burden: lesion area over lung area summed over the "
                         "slices inside the lungs (every third slice of the series is shared). Within-study slice AUC: "
                         "the share of lung involved against the radiologists' slice labels, among slices whose lungs "
                         "fill >= 10% of the image; the lung share alone beside it. Target >= 0.85 in P001 and cap001. "
                         "A lesion is not COVID: cap001 (pneumonia) has lesions too.",
                         ("study", "slices in the lungs", "lesion burden", "within-study slice AUC", "lung share only",
                          "infected slices"), study_rows))

    # 4. image level
    image_rows = []
    sources = [Path(p) for p in args.sources]
    if not args.skip_image_level and all(p.is_dir() for p in sources):
        image_rows = image_level(sources, context, args, mapper, settings)
        sections.append(("lesions-sources", "Lesions: leave one source out",
                         "Each source held out in turn (the configuration refit on the other source's training "
                         "images, source-balanced weights); 95% patient-bootstrap CIs (1000). (a) the demo's "
                         "configuration (stack of svm and logreg on MobileNetV2 + MobileNet, multiscale pooling, flip "
                         "TTA); (b) the share of lung involved as the COVID score, no image-level training at all; (c) "
                         "a logistic regression on the six lesion summaries alone; (d) (a) with the lesion summaries "
                         "joined (fit --lesion-features). COVID-CT test: each configuration fitted on both sources' "
                         "training images, on COVID-CT's official test split. Goals: MosMed held out >= 0.75, COVID-CT "
                         "held out >= 0.70.",
                         ("configuration", "held out: covid-ct AUC", "held out: mosmed-slices AUC",
                          "COVID-CT test split AUC"), image_rows))

    # 5. cost
    sections.append(cost_section(context, data, mapper, settings))

    for marker, heading, text, header, rows in sections:
        section = table_section(marker, "lesions.py", "bench-lesions", text, header, rows)
        publish(section, heading, args.out)
    return 0


def cost_section(context, data, mapper, settings, n: int = 96):
    """ms per slice on fresh caches, each slice's first read (decoding included): today's pooled
    features (both backbones) and the lesion path (dense features, lung mask, head, summary)."""
    from feature_extractor.imaging.decode import DECODED

    records = [Record(s.path) for s in data.slices[::max(1, len(data.slices) // n)][:n]]
    warm, timed = records[:16], records[16:]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = RunContext(tmp, batch_size=16, offline=True, runtime=context.runtime)
        pooled = 0.0
        for name, path in WEIGHTS.items():
            ex = FeatureExtractor(FeatureSpec(name, WeightsChoice("file", str(path)), **FEATURES), run)
            ex.extract(warm)  # build and warm up
            DECODED.entries.clear()
            DECODED.used = 0
            start = time.perf_counter()
            ex.extract(timed)
            pooled += (time.perf_counter() - start) / len(timed)
        lesion = LesionMapper(mapper.head, mapper.spec, run)
        lesion.summaries(warm)
        DECODED.entries.clear()
        DECODED.used = 0
        start = time.perf_counter()
        lesion.summaries(timed)
        dense = (time.perf_counter() - start) / len(timed)
    rows.append(("pooled features (today): MobileNetV2 + MobileNet, 224 px, multiscale, flip TTA",
                 f"{1000 * pooled:.0f}", "1.0"))
    rows.append((f"dense features + lung mask + lesion head + summary: MobileNetV2, {settings.input_side} px, "
                 f"{settings.grid}x{settings.grid} grid", f"{1000 * dense:.0f}", f"{dense / pooled:.1f}"))
    print(*rows, sep="\n", flush=True)
    return ("lesions-cost", "Lesions: cost per slice",
            f"Milliseconds per slice on this machine ({context.runtime}), on fresh caches, decoding included, "
            f"batches of 16, {len(timed)} lesion-slices images after a warm-up of 16. Target: dense + head <= 3x the "
            "pooled features.", ("what", "ms per slice", "x pooled"), rows)


def image_level(sources, context, args, mapper, settings) -> list[tuple[str, ...]]:
    from accuracy import ci
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    dataset = load_datasets(sources)
    for name, path in WEIGHTS.items():
        ex = FeatureExtractor(FeatureSpec(name, WeightsChoice("file", str(path)), **FEATURES), context)
        print(ex.extract(dataset.records).summary(), flush=True)
    selection = FeatureSelection(tuple(WEIGHTS), {n: WeightsChoice("file", str(p)) for n, p in WEIGHTS.items()}, FEATURES)
    models = Path(args.models_dir)
    labeled = [r for r in dataset.records if r.label is not None]
    summaries = mapper.summaries(labeled)
    names = dataset.sources
    rows = []

    def loso(path: Path) -> list[str]:
        model = load_model(path, context)
        cross = leave_one_source_out(model, sources, args.bootstrap)
        test = evaluate_model(model, sources[0], "test", args.bootstrap)
        by = {h.source: ci(h.metrics["roc_auc"]) for h in cross.held_out}
        return [by[n] for n in names] + [ci(test.metrics["roc_auc"])]

    demo = FitSettings("stack", base=("svm", "logreg"))
    fit_model(sources, fit=demo, selection=selection, context=context, model_path=models / "lesions-demo.joblib")
    rows.append(("(a) the demo's configuration", *loso(models / "lesions-demo.joblib")))
    print(" | ".join(rows[-1]), flush=True)

    y = np.array([r.label for r in labeled])
    src = np.array([r.source for r in labeled])
    groups = np.array([r.group for r in labeled])
    frac = np.array([summaries[r.path].classifier_features()[0] for r in labeled])
    L = np.stack([summaries[r.path].classifier_features() for r in labeled])
    test = np.array([r.source == names[0] and r.split == "test" for r in labeled])
    cells = []
    for n in names:
        mine = src == n
        cells.append(ci(bootstrap_metrics(y[mine], frac[mine], groups[mine], 0.5, args.bootstrap, 0)["roc_auc"]))
    cells.append(ci(bootstrap_metrics(y[test], frac[test], groups[test], 0.5, args.bootstrap, 0)["roc_auc"]))
    rows.append(("(b) share of lung involved alone (no image-level training)", *cells))
    print(" | ".join(rows[-1]), flush=True)
    cells = []
    for n in names:
        train = (src != n) & ~test
        model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced")).fit(L[train], y[train])
        mine = src == n
        cells.append(ci(bootstrap_metrics(y[mine], model.predict_proba(L[mine])[:, 1], groups[mine], 0.5,
                                          args.bootstrap, 0)["roc_auc"]))
    both = ~test
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced")).fit(L[both], y[both])
    cells.append(ci(bootstrap_metrics(y[test], model.predict_proba(L[test])[:, 1], groups[test], 0.5,
                                      args.bootstrap, 0)["roc_auc"]))
    rows.append((f"(c) logistic regression on the lesion summaries ({', '.join(CLASSIFIER_SUMMARY)})", *cells))
    print(" | ".join(rows[-1]), flush=True)

    fit_model(sources, fit=FitSettings("stack", base=("svm", "logreg"), lesion_features=True), selection=selection,
              context=context, model_path=models / "lesions-demo-with-lesions.joblib",
              lesion_data=[args.lesion_data, args.extra_training], lesion=settings)
    rows.append(("(d) the demo's configuration + lesion summaries", *loso(models / "lesions-demo-with-lesions.joblib")))
    print(" | ".join(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
