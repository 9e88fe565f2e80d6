"""fit: from a labeled dataset and cached features to a saved, tuned model.

Trains on train+val of the official split (all labeled images when there is no split);
the test split is never read here. Hyperparameters are chosen by patient-grouped CV.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from feature_extractor.dense.hypercolumns import dense_spec
from feature_extractor.dense.lesion_data import check_masks, load_lesion_data
from feature_extractor.errors import CovidCTError
from feature_extractor.extract import FeatureExtractor
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.dataset import Dataset, Record, load_datasets, load_unlabeled, with_keys
from feature_extractor.provenance import command_line, fingerprint, library_versions, utc_now
from feature_extractor.run_context import RunContext
from feature_extractor.runtimes.engine import joblib_engine
from feature_extractor.weights import NONE, NONE_WARNING

from ..estimators.balance import default_balance, sample_weights
from ..estimators.harmonize import HarmonizationError, Harmonizer, make_harmonizer
from ..estimators.ood import NearestNeighborOOD
from ..estimators.registry import STACK, get_classifier
from ..estimators.stacking import FINAL_CS, StackedEnsemble
from ..estimators.study_aggregation import choose_aggregation, study_scores
from ..estimators.thresholds import threshold_for_sensitivity
from ..records.model_card import Harmonization, ModelCard, TrainingData, estimator_record, feature_blocks
from ..settings import AnswerSettings, FitSettings, LesionSettings
from .bundle import DEFAULT_MODELS_DIR, ModelBundle, save_bundle
from .features import FeatureSelection, feature_matrix, resolve_sources
from .lesions.maps import LesionMapper
from .lesions.summary import CLASSIFIER_SUMMARY
from .answer_policy import fit_answer_parts
from .lesions.lungs import train_lung_head
from .lesions.training import finding_calibration, train_lesion_head
from .model import extract_features

TRAIN_SPLITS = ("train", "val")


def records_of_splits(dataset: Dataset, splits: Sequence[str]) -> tuple[list[Record], list[str]]:
    """Labeled records of ``splits`` from each source with the official split, all labeled
    records of each source without one; and the split names used ("all" for the latter)."""
    records, used = [], []
    for source in dataset.sources or [None]:
        labeled = [r for r in dataset.records if r.label is not None and r.source == source]
        if any(r.split for r in labeled):
            records += [r for r in labeled if r.split in splits]
            names = list(splits)
        else:
            records += labeled
            names = ["all"]
        used += [s for s in names if s not in used]
    return records, used


def training_records(dataset: Dataset) -> tuple[list[Record], list[str]]:
    """Labeled records to train on, and which splits they came from: train+val of a source
    with the official split, all of a source without one."""
    return records_of_splits(dataset, TRAIN_SPLITS)


def data_fingerprint(records: Sequence[Record]) -> str:
    return fingerprint(f"{r.key}:{r.label}" for r in records)


def source_summaries(records: Sequence[Record]) -> list[dict]:
    """Per source: image and class counts, splits and fingerprint (for the manifest)."""
    out = []
    for source in dict.fromkeys(r.source for r in records):
        mine = [r for r in records if r.source == source]
        out.append({"name": source, "n_images": len(mine), "n_covid": sum(r.label == 1 for r in mine),
                    "n_noncovid": sum(r.label == 0 for r in mine),
                    "splits": sorted({r.split or "all" for r in mine}), "fingerprint": data_fingerprint(mine)})
    return out


@dataclass
class TrainedEstimator:
    """A fitted estimator and what its training said: params, CV scores, out-of-fold
    probabilities, the balance used and the threshold chosen. ``harmonizer``: the per-site
    standardization fitted on the training sources (NoHarmonization without --harmonize); the
    estimator reads its output."""

    estimator: object
    params: dict
    cv: dict
    oof: np.ndarray
    balance: str
    threshold: dict
    harmonizer: Harmonizer


def train_estimator(X: np.ndarray, y: np.ndarray, groups: np.ndarray, sources: Sequence[str | None],
                    blocks: Sequence[tuple[str, int, int]], settings: FitSettings,
                    lesion: np.ndarray | None = None) -> TrainedEstimator:
    """Tune and fit ``settings.clf`` on arrays: the whole of fit but the files. ``X``: raw
    features (harmonized here when ``settings.harmonize`` says so); ``lesion``: the lesion
    summaries joined after them (never harmonized: they measure the disease, not the site).
    ``blocks``: the (backbone, start, stop) columns of each block, for the stack."""
    harmonizer = make_harmonizer(settings.harmonize)
    X = harmonizer.fit_transform(X, sources)
    if lesion is not None:
        X = np.hstack([X, lesion])
    balance = settings.balance or default_balance(len(set(sources)))
    weights = sample_weights(balance, y, sources)
    if settings.clf == STACK:
        estimators = [(name, get_classifier(name).search(settings.cv_folds, settings.seed, y, weights is None))
                      for name in settings.base]
        stack = StackedEnsemble(estimators, list(blocks), cv=settings.cv_folds,
                                random_state=settings.seed).fit(X, y, groups, weights)
        estimator, oof = stack, stack.oof_
        params = {"base": list(settings.base), "final_estimator": "LogisticRegression",
                  "final_param_grid": {"C": list(FINAL_CS)}, "cv": settings.cv_folds, "random_state": settings.seed}
        cv = {"auc": stack.cv_auc_, "auc_std": stack.cv_auc_std_, "base_models": stack.base_reports_,
              "meta_learner": "LogisticRegression on logits of out-of-fold base probabilities",
              "meta_weights": stack.meta_weights()}
    else:
        search = get_classifier(settings.clf).search(settings.cv_folds, settings.seed, y, weights is None)
        search.fit(X, y, groups, weights)
        estimator, params, oof = search.best_estimator_, search.best_params_, search.oof_
        cv = {"auc": search.cv_auc_, "auc_std": search.cv_auc_std_, "n_folds": search.n_splits_,
              "candidates": search.candidates_}
    threshold = {"threshold": 0.5, "rule": "default"}
    if settings.target_sensitivity is not None:
        threshold = {**threshold_for_sensitivity(y, oof, settings.target_sensitivity),
                     "rule": "target sensitivity on out-of-fold predictions of the training images"}
    return TrainedEstimator(estimator, params, cv, oof, balance, threshold, harmonizer)


def fit_model(data: str | Path | Sequence[str | Path], *, fit: FitSettings,
              selection: FeatureSelection | None = None, context: RunContext | None = None,
              model_path: str | Path | None = None, adapt_to: Sequence[str | Path] = (),
              lesion_data: Sequence[str | Path] = (), lesion: LesionSettings | None = None,
              answers: AnswerSettings | None = None) -> ModelBundle:
    """fit: train ``fit.clf`` on cached features of the training images of one or more
    datasets and save it with its manifest (default path: models/<clf>.joblib). The test split
    is never read. ``adapt_to``: folders of unlabeled images of sites the model will be used
    on; with ``fit.harmonize``, each one's feature statistics are learned (its features are
    extracted if they are not cached). ``lesion_data``: folders of slices with radiologists'
    infection masks: a lesion head is trained on them (``lesion``: how; workflows/lesions/) and
    saved with the model; with ``fit.lesion_features`` its summaries of each image join the
    image features. ``answers``: the default error rate the model records (0.1 when not given)."""
    settings = fit
    answer_settings = answers or AnswerSettings()
    error_rate = answer_settings.rate()
    lesion_settings = lesion or LesionSettings()
    if lesion_settings.seed is None:  # the lesion head's sampling and folds follow the fit's seed
        lesion_settings = dataclasses.replace(lesion_settings, seed=settings.seed)
    context = context or RunContext()
    lesions = load_lesion_data(lesion_data) if lesion_data else None
    if settings.lesion_features and lesions is None:
        raise CovidCTError("--lesion-features needs a lesion head: add --lesion-data DIR (slices with infection masks)")
    if lesions is not None:
        check_masks(lesions)  # a mask that does not fit its slice stops fit before anything runs
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    dataset = load_datasets(paths)
    records, splits = training_records(dataset)
    records = with_keys(records)
    unreadable = [r for r in records if r.error]
    if unreadable:
        raise CovidCTError(f"{len(unreadable)} training images cannot be read, e.g. "
                           f"{unreadable[0].path}: {unreadable[0].error}")
    if not records:
        raise CovidCTError(f"no labeled training images in {data}")
    if adapt_to and settings.harmonize == "none":
        raise HarmonizationError("--adapt-to needs a harmonization that uses the site's images: "
                                 "add --harmonize standardize")
    sources = resolve_sources(records, selection or FeatureSelection(), context.features_dir)
    X = feature_matrix(records, [s.cache for s in sources])
    y = np.array([r.label for r in records], dtype=int)
    groups = np.array([r.group for r in records])
    record_sources = [r.source for r in records]
    backbones = [s.manifest_entry() for s in sources]
    head, lung_head, lesion_record, lesion_columns = None, None, None, None
    blocks = feature_blocks(backbones, settings.lesion_features)
    with joblib_engine(context.engine):  # the grouped-CV fits on every core (with --engine ray: over Ray)
        if lesions is not None:
            spec = lesion_dense_spec([s.spec for s in sources], lesion_settings)
            head, lesion_record = train_lesion_head(lesions, spec, lesion_settings, context)
            lung_head, lesion_record["lung_head"] = train_lung_head(lesions, spec, context, lesion_settings.seed)
            if settings.lesion_features:
                mapper = LesionMapper(head, FeatureSpec.from_record(lesion_record["dense"]), context, lung_head)
                lesion_columns, lesion_areas = lesion_matrix(mapper, records)
                lesion_record["classifier_features"] = list(CLASSIFIER_SUMMARY)
        trained = train_estimator(X, y, groups, record_sources, blocks, settings, lesion_columns)
        harmonizer = trained.harmonizer
        adapted = [adapt_site(harmonizer, folder, [s.spec for s in sources], context) for folder in adapt_to]
    ood = NearestNeighborOOD(random_state=settings.seed).fit(X, y, groups, np.array(record_sources, dtype=object))
    areas = None if lesion_columns is None else lesion_areas
    aggregation = choose_aggregation(trained.oof, y, groups, areas)
    delta = answer_settings.delta()
    thresholds, study_thresholds, source_test, answers_record = fit_answer_parts(
        trained.oof, y, groups, record_sources, X, *study_scores(trained.oof, y, groups, aggregation["method"], areas),
        delta, error_rate, settings.seed)
    finding = None
    if head is not None:  # the finding's thresholds: out-of-fold slice scores of the lesion data
        finding, answers_record["finding"] = finding_calibration(head, FeatureSpec.from_record(lesion_record["dense"]),
                                                                 lesions, context, delta, lung_head)
        if finding is not None:
            answers_record["finding"]["thresholds"] = finding.describe(error_rate)["groups"]["all"]
    grouping = "patient" if dataset.has_patients else "image"
    training_sources = source_summaries(records)
    card = ModelCard(
        classifier=settings.clf, fit=settings, backbones=tuple(backbones), feature_dim=int(X.shape[1]),
        training=TrainingData(
            tuple(str(Path(p).resolve()) for p in paths), dataset.layout, tuple(splits), len(records),
            int(np.sum(y == 1)), int(np.sum(y == 0)), int(len(np.unique(groups))), grouping,
            data_fingerprint(records), tuple(training_sources)),
        threshold=trained.threshold["threshold"], threshold_choice=trained.threshold, balance=trained.balance,
        harmonization=Harmonization(settings.harmonize, tuple(
            [{"name": s["name"], "role": "training", "n_images": s["n_images"], "fingerprint": s["fingerprint"]}
             for s in training_sources] + adapted) if harmonizer.active else ()),
        ood=ood.describe(), study_aggregation=aggregation, params=trained.params,
        estimator=estimator_record(trained.estimator),
        answers=answers_record, error_rate=error_rate,
        cv={"scheme": f"StratifiedGroupKFold(n_splits={settings.cv_folds}, shuffle=True, "
                      f"random_state={settings.seed}) grouped by {grouping}", "scoring": "roc_auc", **trained.cv},
        engine=context.engine.record(), created=utc_now(), command=command_line(), versions=library_versions(),
        warning=NONE_WARNING if any(b["weights_source"] == NONE for b in backbones) else None,
        lesion=lesion_record)
    path = Path(model_path) if model_path else DEFAULT_MODELS_DIR / f"{settings.clf}.joblib"
    return save_bundle(ModelBundle(trained.estimator, card, path, harmonizer, ood, thresholds, study_thresholds,
                                   source_test, finding, head, lung_head=lung_head))


def lesion_dense_spec(specs: Sequence[FeatureSpec], settings: LesionSettings) -> FeatureSpec:
    """The dense features of the lesion head: of ``settings.backbone`` (default: the first of the
    model's backbones that has hypercolumn layers), with that backbone's weights."""
    from feature_extractor.backbones import BACKBONES, get_backbone

    dense = [s for s in specs if s.backbone_spec.dense_layers]
    if settings.backbone is not None:
        name = get_backbone(settings.backbone).name
        dense = [s for s in specs if s.backbone == name]
        if not dense:
            raise CovidCTError(f"--lesion-backbone {name}: the lesion head uses one of the model's backbones "
                               f"({', '.join(s.backbone for s in specs)}) with its weights")
    if not dense:
        able = ", ".join(sorted(n for n, b in BACKBONES.items() if b.dense_layers))
        raise CovidCTError(f"none of the model's backbones ({', '.join(s.backbone for s in specs)}) has hypercolumn "
                           f"layers declared; lesion maps work with {able}")
    return dense_spec(dense[0], settings.input_side, settings.grid)


def lesion_matrix(mapper: LesionMapper, records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    """The lesion summaries (CLASSIFIER_SUMMARY) of ``records``, one row each, and each one's
    lesion area (for the study aggregation)."""
    summaries = mapper.summaries(records)
    bad = [(r.path, summaries[r.path]) for r in records if isinstance(summaries[r.path], str)]
    if bad:
        raise CovidCTError(f"{len(bad)} images cannot be read for lesion maps, e.g. {bad[0][0]}: {bad[0][1]}")
    return (np.stack([summaries[r.path].classifier_features() for r in records]),
            np.array([summaries[r.path].lesion_area for r in records]))


def adapt_site(harmonizer, folder: str | Path, specs: Sequence, context: RunContext) -> dict:
    """Learn the feature statistics of the unlabeled images in ``folder`` (fit --adapt-to) as
    the site named after the folder; the manifest's record of it."""
    site = Path(folder).resolve().name
    if site in harmonizer.sites:
        raise HarmonizationError(f"--adapt-to {folder}: a site called {site!r} is already known to this "
                                 "fit (a training source or another --adapt-to folder); rename the folder")
    feats = extract_features([FeatureExtractor(spec, context) for spec in specs], load_unlabeled(folder).records)
    harmonizer.add_site(site, feats.raw)
    return {"name": site, "role": "adapt-to", "data": str(Path(folder).resolve()), "n_images": len(feats.good),
            "n_unreadable": len(feats.errors), "fingerprint": fingerprint(r.key for r in feats.good)}


def answers_summary(card: ModelCard) -> list[str]:
    """The answer policy's lines of fit's summary: thresholds, study thresholds, source test, finding."""
    a = card.answers
    if not a:
        return ["answers: none (a model fitted before the answer policy: refit it)"]

    def pair(t) -> str:
        return "(" + ", ".join("none" if v is None else f"{v:.3f}" for v in t) + ")"
    slices = a["slices"]["groups"]
    lines = [f"answers at error rate {card.error_rate:g} with confidence {a['confidence']:g} (Learn-then-Test), "
             "NonCOVID/COVID thresholds: " + ", ".join(f"{g} {pair(v['thresholds_at_default_rate'])}"
                                                      for g, v in slices.items())]
    studies = a["studies"]
    lines.append("  studies: " + (studies if isinstance(studies, str) else
                                  f"{pair(studies['groups']['all']['thresholds_at_default_rate'])} on "
                                  f"{sum(studies['groups']['all']['n'].values())} training patients with several slices"))
    lines.append(f"  source test: sets of {a['source_test']['min_set']} or more images against "
                 f"{', '.join(a['source_test']['sources'])} (two-sample MMD)")
    f = a.get("finding")
    if f:
        got = f.get("thresholds") or {}
        lines.append(f"  finding: {f.get('missing') or 'clear/opacities thresholds ' + pair(got.get('thresholds_at_default_rate', (None, None)))} "
                     f"on {f['n_slices']} lesion slices' out-of-fold {f.get('score', 'lesion_fraction')}"
                     + (f" (AUC {f['oof_auc']:.3f})" if f.get("oof_auc") is not None else ""))
    return lines


def fit_summary(bundle: ModelBundle) -> list[str]:
    """What fit reports: data, features, CV scores, threshold and the files written."""
    c = bundle.card
    t = c.training
    lines = [f"trained {c.classifier} on {t.n_images} images ({t.n_covid} COVID, "
             f"{t.n_noncovid} NonCOVID, {t.n_groups} {t.grouping} groups; splits: {'+'.join(t.splits)})"]
    if len(t.sources) > 1:
        lines += [f"  source {s['name']}: {s['n_images']} images ({s['n_covid']} COVID, {s['n_noncovid']} "
                  f"NonCOVID; {'+'.join(s['splits'])})" for s in t.sources]
    lines.append(f"features: {' + '.join(b['backbone'] for b in c.backbones)} ({c.feature_dim} dims, "
                 f"crop {c.backbones[0]['crop']})")
    for b in c.cv.get("base_models", []):
        lines.append(f"  base {b['block']:<14} {b['classifier']:<8} CV AUC {b['cv_auc']:.3f} "
                     f"+- {b['cv_auc_std']:.3f}  meta weight {b['meta_weight']:+.2f}")
    params = "" if c.classifier == STACK else f" with {dict(c.params)}"
    weighted = ", source-balanced weights" if c.balance == "source" else ""
    lines.append(f"CV AUC {c.cv_auc:.3f} +- {c.cv['auc_std']:.3f}{params}{weighted}")
    if c.harmonization.sites:
        lines.append("features standardized per site: " + ", ".join(
            f"{s['name']} ({s['role']}, {s['n_images']} images)" for s in c.harmonization.sites))
    lines.append(f"out-of-distribution cut-off {c.ood['cut_off']:.4f} ({c.ood['cut_off_rule']})")
    lines += answers_summary(c)
    if c.lesion:
        h = c.lesion["head"]
        lines.append(f"lesion head: {h['classifier']} on {c.lesion['training_cells']['n']} lung cells of "
                     f"{c.lesion['data']['n_with_masks']} slices ({c.lesion['data']['patients']} patients), out-of-fold "
                     f"cell Dice {h['cv_cell_dice']:.3f} at probability {h['threshold']:.2f}")
        lung = c.lesion.get("lung_head") or {}
        lines.append(f"lung head: {lung['head']['classifier']} on {lung['training_cells']['n']} cells of "
                     f"{lung['n_slices']} slices ({lung['patients']} patients) with radiologists' lung masks, "
                     f"out-of-fold cell Dice {lung['head']['cv_cell_dice']:.3f}" if "head" in lung else
                     f"lung head: none ({lung.get('missing', 'a model fitted before lung heads')})")
    choice = c.threshold_choice
    if choice["rule"] != "default":
        lines.append(f"threshold {choice['threshold']:.3f} (out-of-fold sensitivity "
                     f"{choice['oof_sensitivity']:.3f}, specificity {choice['oof_specificity']:.3f})")
    lines.append(f"saved {bundle.path} and {bundle.path.with_suffix('.json')}")
    return lines
