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

from covidct_core.errors import CovidCTError
from covidct_core.provenance import command_line, fingerprint, library_versions, utc_now
from covidct_core.run_context import RunContext
from feature_extractor.segmentation.lesion_data import LesionData, check_masks, load_lesion_data
from feature_extractor.extract import FeatureExtractor
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.dataset import Dataset, Record, load_datasets, load_unlabeled, with_keys
from feature_extractor.runtimes.engine import joblib_engine
from feature_extractor.weights import NONE, NONE_WARNING

from ..estimators.balance import default_balance, sample_weights
from ..estimators.harmonize import HarmonizationError, Harmonizer, make_harmonizer
from ..estimators.ood import NearestNeighborOOD
from ..estimators.registry import STACK, get_classifier
from ..estimators.stacking import FINAL_CS, StackedEnsemble
from ..estimators.study_aggregation import choose_aggregation, study_scores
from ..estimators.thresholds import threshold_for_sensitivity
from ..records.lesion_summary import CLASSIFIER_SUMMARY, lesion_columns
from ..records.model_card import Harmonization, ModelCard, TrainingData, estimator_record, feature_blocks
from ..settings import AnswerSettings, FitSettings, LesionSettings
from .answer_policy import fit_answer_parts
from .bundle import DEFAULT_MODELS_DIR, ModelBundle, save_bundle
from .features import FeatureSelection, feature_matrix, resolve_sources
from .lesions.maps import LesionMapper
from .lesions.training import SegmentationFit, finding_calibration, train_segmentation
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


@dataclass
class TrainingSet:
    """fit's training images (train+val) with their cached features, labels, patients and sources."""

    paths: list[str]                # the --data folders
    dataset: Dataset
    records: list[Record]
    splits: list[str]
    X: np.ndarray                   # raw features, the backbones' blocks side by side
    y: np.ndarray
    groups: np.ndarray              # patients
    sources: list[str | None]
    backbones: list[dict]           # each backbone's manifest entry
    specs: list[FeatureSpec]

    @property
    def grouping(self) -> str:
        return "patient" if self.dataset.has_patients else "image"


@dataclass
class LesionParts:
    """What fit learns from lesion data (none without it): the segmentation network (its training and
    out-of-fold maps, workflows/lesions/training.py) and, with --lesion-features, each training image's
    lesion summaries and lesion area."""

    fit: SegmentationFit | None = None
    columns: np.ndarray | None = None
    areas: np.ndarray | None = None

    @property
    def segmenter(self):
        return None if self.fit is None else self.fit.segmenter

    @property
    def record(self) -> dict | None:
        return None if self.fit is None else self.fit.record


@dataclass
class AnswerFit:
    """The answer policy's fitted parts (answer_policy.py), the study aggregation, and their record."""

    aggregation: dict
    thresholds: object
    study_thresholds: object
    source_test: object
    finding: object
    record: dict


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
    infection (and lung) masks: the lungs and lesion segmentation network is trained on them (``lesion``:
    how; workflows/lesions/) and saved with the model; with ``fit.lesion_features`` its summaries of each image join the
    image features. ``answers``: the default error rate the model records (0.1 when not given)."""
    answers = answers or AnswerSettings()
    context = context or RunContext()
    lesions = read_lesion_data(lesion_data, fit)
    if adapt_to and fit.harmonize == "none":
        raise HarmonizationError("--adapt-to needs a harmonization that uses the site's images: "
                                 "add --harmonize standardize")
    training = read_training_set(data, selection or FeatureSelection(), context)
    with joblib_engine(context.engine):  # the grouped-CV fits on every core (with --engine ray: over Ray)
        parts = train_lesion_parts(lesions, training, lesion_settings(lesion, fit.seed), fit.lesion_features, context)
        trained = train_estimator(training.X, training.y, training.groups, training.sources,
                                  feature_blocks(training.backbones, fit.lesion_features), fit, parts.columns)
        harmonizer, adapted = adapt_sites(trained.harmonizer, adapt_to, training.specs, context)
    ood = NearestNeighborOOD(random_state=fit.seed).fit(training.X, training.y, training.groups,
                                                        np.array(training.sources, dtype=object))
    answer_fit = fit_answers(trained, training, parts, lesions, answers, fit.seed, context)
    card = training_card(fit, training, trained, harmonizer, adapted, ood, answer_fit, parts.record,
                         answers.rate(), context)
    path = Path(model_path) if model_path else DEFAULT_MODELS_DIR / f"{fit.clf}.joblib"
    return save_bundle(ModelBundle(trained.estimator, card, path, harmonizer, ood, answer_fit.thresholds,
                                   answer_fit.study_thresholds, answer_fit.source_test, answer_fit.finding,
                                   segmenter=parts.segmenter))


def lesion_settings(lesion: LesionSettings | None, seed: int) -> LesionSettings:
    """The segmentation network's settings, its random starts following the fit's seed unless given."""
    lesion = lesion or LesionSettings()
    return lesion if lesion.seed is not None else dataclasses.replace(lesion, seed=seed)


def read_lesion_data(folders: Sequence[str | Path], fit: FitSettings) -> LesionData | None:
    """The lesion data of ``folders`` with every mask checked against its slice (None without folders):
    a mask that does not fit stops fit before anything runs."""
    lesions = load_lesion_data(folders) if folders else None
    if fit.lesion_features and lesions is None:
        raise CovidCTError("--lesion-features needs the segmentation network: add --lesion-data DIR (slices with infection masks)")
    if lesions is not None:
        check_masks(lesions)
    return lesions


def read_training_set(data: str | Path | Sequence[str | Path], selection: FeatureSelection,
                      context: RunContext) -> TrainingSet:
    """The training images of ``data`` and their features from the caches ``selection`` picks."""
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
    sources = resolve_sources(records, selection, context.features_dir)
    return TrainingSet([str(p) for p in paths], dataset, records, splits,
                       feature_matrix(records, [s.cache for s in sources]),
                       np.array([r.label for r in records], dtype=int), np.array([r.group for r in records]),
                       [r.source for r in records], [s.manifest_entry() for s in sources], [s.spec for s in sources])


def train_lesion_parts(lesions: LesionData | None, training: TrainingSet, settings: LesionSettings,
                       lesion_features: bool, context: RunContext) -> LesionParts:
    """The segmentation network trained on ``lesions`` (nothing without lesion data); with
    ``lesion_features``, each training image's lesion summaries."""
    if lesions is None:
        return LesionParts()
    parts = LesionParts(train_segmentation(lesions, segmentation_backbone(training.specs, settings), settings,
                                           context))
    if lesion_features:
        mapper = LesionMapper(parts.segmenter, FeatureSpec.from_record(parts.record["maps"]), settings, context)
        parts.columns, parts.areas = lesion_matrix(mapper, training.records)
        parts.record["classifier_features"] = list(CLASSIFIER_SUMMARY)
    return parts


def adapt_sites(harmonizer: Harmonizer, folders: Sequence[str | Path], specs: Sequence[FeatureSpec],
                context: RunContext) -> tuple[Harmonizer, list[dict]]:
    """The harmonizer that also knows each --adapt-to folder's site, and the records of those sites."""
    records = []
    for folder in folders:
        harmonizer, record = adapt_site(harmonizer, folder, specs, context)
        records.append(record)
    return harmonizer, records


def fit_answers(trained: TrainedEstimator, training: TrainingSet, parts: LesionParts, lesions: LesionData | None,
                answers: AnswerSettings, seed: int, context: RunContext) -> AnswerFit:
    """The study aggregation, the answer thresholds (slices, studies), the source test and the finding's
    thresholds (out-of-fold slice scores of the lesion data), chosen on training data only."""
    aggregation = choose_aggregation(trained.oof, training.y, training.groups, parts.areas)
    error_rate, delta = answers.rate(), answers.delta()
    study_p, study_y = study_scores(trained.oof, training.y, training.groups, aggregation["method"], parts.areas)
    thresholds, study_thresholds, source_test, record = fit_answer_parts(
        trained.oof, training.y, training.groups, training.sources, training.X, study_p, study_y, delta, error_rate,
        seed)
    finding = None
    if parts.fit is not None:
        finding, record["finding"] = finding_calibration(parts.fit.out_of_fold, delta)
        if finding is not None:
            record["finding"]["thresholds"] = finding.describe(error_rate)["groups"]["all"]
    return AnswerFit(aggregation, thresholds, study_thresholds, source_test, finding, record)


def training_card(fit: FitSettings, training: TrainingSet, trained: TrainedEstimator, harmonizer: Harmonizer,
                  adapted: list[dict], ood: NearestNeighborOOD, answer_fit: AnswerFit, lesion_record: dict | None,
                  error_rate: float, context: RunContext) -> ModelCard:
    """The model card of a fit: what it was trained on and how, and what it learned."""
    t = training
    sources = source_summaries(t.records)
    sites = [{"name": s["name"], "role": "training", "n_images": s["n_images"], "fingerprint": s["fingerprint"]}
             for s in sources] + adapted
    return ModelCard(
        classifier=fit.clf, fit=fit, backbones=tuple(t.backbones), feature_dim=int(t.X.shape[1]),
        training=TrainingData(
            tuple(str(Path(p).resolve()) for p in t.paths), t.dataset.layout, tuple(t.splits), len(t.records),
            int(np.sum(t.y == 1)), int(np.sum(t.y == 0)), int(len(np.unique(t.groups))), t.grouping,
            data_fingerprint(t.records), tuple(sources)),
        threshold=trained.threshold["threshold"], threshold_choice=trained.threshold, balance=trained.balance,
        harmonization=Harmonization(fit.harmonize, tuple(sites) if harmonizer.active else ()),
        ood=ood.describe(), study_aggregation=answer_fit.aggregation, params=trained.params,
        estimator=estimator_record(trained.estimator), answers=answer_fit.record, error_rate=error_rate,
        cv={"scheme": f"StratifiedGroupKFold(n_splits={fit.cv_folds}, shuffle=True, random_state={fit.seed}) "
                      f"grouped by {t.grouping}", "scoring": "roc_auc", **trained.cv},
        engine=context.engine.record(), created=utc_now(), command=command_line(), versions=library_versions(),
        warning=NONE_WARNING if any(b["weights_source"] == NONE for b in t.backbones) else None,
        lesion=lesion_record)


def segmentation_backbone(specs: Sequence[FeatureSpec], settings: LesionSettings) -> FeatureSpec:
    """The backbone whose maps feed the segmentation network: ``settings.backbone`` (default: the first
    of the model's backbones with map layers), with that backbone's weights."""
    from feature_extractor.backbones import BACKBONES, get_backbone

    able = [s for s in specs if s.backbone_spec.map_layers]
    if settings.backbone is not None:
        name = get_backbone(settings.backbone).name
        able = [s for s in specs if s.backbone == name]
        if not able:
            raise CovidCTError(f"--lesion-backbone {name}: the segmentation network uses one of the model's backbones "
                               f"({', '.join(s.backbone for s in specs)}) with its weights")
    if not able:
        names = ", ".join(sorted(n for n, b in BACKBONES.items() if b.map_layers))
        raise CovidCTError(f"none of the model's backbones ({', '.join(s.backbone for s in specs)}) has segmentation "
                           f"map layers declared; lung and lesion maps work with {names}")
    return able[0]


def lesion_matrix(mapper: LesionMapper, records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    """The lesion summaries (CLASSIFIER_SUMMARY) of ``records``, one row each, and each one's
    lesion area (for the study aggregation)."""
    summaries = mapper.summaries(records)
    paths = [r.path for r in records]
    return lesion_columns(summaries, paths), np.array([summaries[p].lesion_share_of_slice for p in paths])


def adapt_site(harmonizer: Harmonizer, folder: str | Path, specs: Sequence[FeatureSpec],
               context: RunContext) -> tuple[Harmonizer, dict]:
    """The harmonizer that also knows the feature statistics of the unlabeled images in ``folder`` (fit
    --adapt-to), as the site named after the folder; and the manifest's record of it."""
    site = Path(folder).resolve().name
    if site in harmonizer.sites:
        raise HarmonizationError(f"--adapt-to {folder}: a site called {site!r} is already known to this "
                                 "fit (a training source or another --adapt-to folder); rename the folder")
    feats = extract_features([FeatureExtractor(spec, context) for spec in specs], load_unlabeled(folder).records)
    harmonizer = harmonizer.with_site(site, feats.raw)
    return harmonizer, {"name": site, "role": "adapt-to", "data": str(Path(folder).resolve()),
                        "n_images": len(feats.readable), "n_unreadable": len(feats.errors),
                        "fingerprint": fingerprint(r.key for r in feats.readable)}
