"""A saved model, loaded and verified once per command, with the feature extractors that
reproduce its features: predict, evaluate, the explainer and the report all share one.

Its manifest is read once, as a typed ModelCard (model_card.py): each backbone's FeatureSpec,
the threshold, where the weights are now (``--weights NAME=FILE``, checked by SHA-256), and
whether a ``--crop`` given on the command line is the model's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from covidct_core.errors import ModelBundleError
from covidct_core.run_context import RunContext
from feature_extractor.extract import ExtractionReport, FeatureExtractor
from feature_extractor.imaging.dataset import Record, with_keys
from feature_extractor.weights import parse_weights_options

from ..records.lesion_summary import lesion_columns
from ..records.model_card import ModelCard
from ..settings import AnswerSettings
from .bundle import ModelBundle, latest_model, load_bundle
from .features import feature_matrix

BATCH = "batch"  # --site batch: standardize by the statistics of the images of this run


@dataclass
class ModelFeatures:
    """Features of records for one model: rows of ``X`` follow ``readable``. ``X`` is what the
    classifier reads: ``raw`` standardized by site when the model harmonizes (``sites``: each
    row's site; ``site_notes``: where each site's statistics came from)."""

    records: list[Record]          # with keys
    errors: dict[str, str]         # path -> reason, for files with no features
    readable: list[Record]
    X: np.ndarray
    extractions: list[ExtractionReport]
    raw: np.ndarray | None = None
    sites: list[str | None] = field(default_factory=list)
    site_notes: dict[str, str] = field(default_factory=dict)
    lesions: dict = field(default_factory=dict)   # path -> LesionSummary, models with a segmentation network
    harmonizer: Any = None   # the model's harmonizer, knowing this run's batches too (None: no harmonization)

    def __post_init__(self) -> None:
        if self.raw is None:
            self.raw = self.X
        if not self.sites:
            self.sites = [None] * len(self.readable)


STREAM_CHUNK = 256   # images run through every network and cached before the next ones: memory stays flat


def extract_features(extractors: Sequence[FeatureExtractor], records: Sequence[Record], mapper=None,
                     on_map=None) -> ModelFeatures:
    """Every backbone's features of ``records``, through the cache (new images run the CNN), and with a
    ``mapper`` (workflows/lesions/maps.py) every readable image's lesion summary (``on_map``: called with
    each image's maps, see LesionMapper.summaries). Images go through in chunks, each decoded once for
    every network while its pixels are still in the decoded-pixels memo."""
    for extractor in extractors:  # every backbone's weights checked before any CNN runs
        extractor.weights
    records = with_keys(records)  # keys computed once for every network
    errors: dict[str, str] = {r.path: r.error for r in records if r.error}
    reports, summaries = [], {}
    for start in range(0, len(records), STREAM_CHUNK):
        chunk = records[start:start + STREAM_CHUNK]
        for extractor in extractors:
            report = extractor.extract(chunk)
            reports.append(report)
            for path, reason in report.failed.items():
                errors.setdefault(path, reason)
        if mapper is not None:
            summaries.update(mapper.summaries([r for r in chunk if r.path not in errors], on_map))
    errors.update({p: s for p, s in summaries.items() if isinstance(s, str)})  # e.g. a colour DICOM: no lungs
    caches = [extractor.open_cache() for extractor in extractors]  # the objects extract used: attributes read once
    readable = [r for r in records if r.path not in errors]
    X = feature_matrix(readable, caches) if readable else np.zeros((0, 0), np.float32)
    lesions = {p: s for p, s in summaries.items() if p not in errors}
    return ModelFeatures(records, errors, readable, X, reports, lesions=lesions)


class LoadedModel:
    """A verified model bundle and how to get its features for new images.

    Parameters
    ----------
    bundle : the model, its manifest and path (see bundle.load_bundle).
    context : features folder, batch size, offline mode, weights overrides, progress.
    answers : how answers are given (the error rate; None: the model's own, recorded at fit).
    """

    def __init__(self, bundle: ModelBundle, context: RunContext | None = None, answers: AnswerSettings | None = None):
        self.bundle = bundle
        self.context = context or RunContext()
        self.answers = answers or AnswerSettings()
        self.error_rate = self.answers.rate(bundle.card.error_rate)
        specs = bundle.card.specs
        overrides = parse_weights_options(self.context.weights_overrides, [s.backbone for s in specs],
                                          default=None)
        # An override says where the weights are; the SHA-256 they must have stays the model's.
        self.specs = [replace(s, weights=overrides[s.backbone]) if s.backbone in overrides else s
                      for s in specs]

    @property
    def card(self) -> ModelCard:
        return self.bundle.card

    @property
    def path(self) -> Path:
        return self.bundle.path

    @property
    def threshold(self) -> float:
        return self.bundle.threshold

    @property
    def feature_dim(self) -> int:
        return self.card.feature_dim

    @cached_property
    def lesions(self):
        """The lesion mapper (workflows/lesions/maps.py), None for a model without a segmentation network."""
        from .lesions.maps import mapper_for

        return mapper_for(self.bundle, self.context)

    @cached_property
    def extractors(self) -> list[FeatureExtractor]:
        """One per backbone, built once; each builds its CNN only when an image needs it."""
        return [FeatureExtractor(spec, self.context) for spec in self.specs]

    def check_crop(self, crop: str | None) -> None:
        """``--crop`` on predict and evaluate only confirms the model's own crop."""
        if crop is None:
            return
        trained = {s.crop for s in self.specs}
        if trained != {crop}:
            raise ModelBundleError(
                f"{self.path} was trained with --crop {'/'.join(sorted(trained))}, not --crop {crop}; "
                f"fit a model on features extracted with --crop {crop}")

    @property
    def harmonizer(self):
        return self.bundle.harmonizer

    @property
    def ood(self):
        return self.bundle.ood

    def features(self, records: Sequence[Record], site: str | None = None, on_map=None) -> ModelFeatures:
        """Every backbone's features of ``records``, through the cache (new images run the CNN),
        standardized by site when the model harmonizes (see ``site_harmonizer``); with a segmentation
        network, each image's lesion summary (``on_map``: see LesionMapper.summaries)."""
        if site is not None and not self.harmonizer.active:
            raise ModelBundleError(f"--site is for models fit with --harmonize; {self.path} standardizes no site")
        feats = extract_features(self.extractors, records, self.lesions, on_map)
        if not feats.readable:
            feats.X = feats.raw = np.zeros((0, self.feature_dim), np.float32)
        if feats.X.shape[1] != self.feature_dim:
            raise ModelBundleError(f"features have {feats.X.shape[1]} columns, the model expects {self.feature_dim}")
        feats.harmonizer = self.harmonizer
        if self.harmonizer.active and feats.readable:
            feats.harmonizer, feats.sites, feats.site_notes = self.site_harmonizer(feats.readable, feats.raw, site)
        feats.X = feats.harmonizer.transform(feats.raw, feats.sites)
        if self.card.lesion_columns:
            feats.X = np.hstack([feats.X, lesion_columns(feats.lesions, [r.path for r in feats.readable])])
        return feats

    def site_harmonizer(self, records: Sequence[Record], X: np.ndarray,
                        site: str | None = None) -> tuple[Any, list[str], dict[str, str]]:
        """Which site's statistics standardize each record's features: a copy of the model's harmonizer
        that also knows this run's batches (the model's own is never changed), each record's site and
        where each site's statistics came from. ``site``: a site the model knows (all records), ``batch``
        (each source's images of this run, by their own statistics), or None: a record's own source when
        the model knows it, else the site it was recalibrated on or its one --adapt-to site, else its
        batch."""
        h = self.harmonizer
        known = self.card.harmonization
        adapted = known.site_names("calibrate")[-1:] or known.site_names("adapt-to")
        names = []
        for r in records:
            if site not in (None, BATCH):
                names.append(site)
            elif site is None and h.knows(r.source):
                names.append(r.source)
            elif site is None and len(adapted) == 1:
                names.append(adapted[0])
            else:
                names.append(f"{BATCH}:{r.source}" if r.source else BATCH)
        notes = {}
        for name in dict.fromkeys(names):
            rows = np.array([n == name for n in names])
            if name.startswith(BATCH):
                h = h.with_site(name, X[rows])
                notes[name] = f"standardized by the {int(rows.sum())} images' own statistics"
            else:
                h.site_step(name)  # an unknown name fails here, with the known ones
                notes[name] = f"standardized by the model's statistics of {name} ({h.n_images_[name]} images)"
        return h, names, notes

    def estimator_for_site(self, site: str | None = None, harmonizer: Any = None):
        """The classifier on raw features of ``site`` (its scaler in front when the model harmonizes);
        ``harmonizer``: one that knows the site (ModelFeatures.harmonizer: a run's batch), else the model's."""
        harmonizer = harmonizer or self.harmonizer
        if not harmonizer.active or site is None:
            return self.bundle.estimator
        from sklearn.pipeline import Pipeline

        est = self.bundle.estimator
        steps = list(est.steps) if isinstance(est, Pipeline) else [("classifier", est)]
        return Pipeline([("site", harmonizer.site_step(site))] + steps)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(COVID) of each row of ``X`` (the classifier's input: ModelFeatures.X)."""
        return self.bundle.estimator.predict_proba(X)[:, 1] if len(X) else np.zeros(0)

    @cached_property
    def answer_parts(self):
        """What the answer policy (answer_policy.py) answers this model's images with, at its error rate."""
        from .answer_policy import AnswerParts

        b = self.bundle
        parts = [b.thresholds, b.study_thresholds, b.finding]
        if self.answers.confidence is not None:  # another confidence than the model's: copies that use it
            parts = [None if t is None else clone_with_delta(t, self.answers.delta()) for t in parts]
        return AnswerParts(self.error_rate, parts[0], parts[1], b.source_test, b.ood, parts[2], b.site_model)

    def site_inputs(self, feats: ModelFeatures, rows: Sequence[int]) -> np.ndarray:
        """The site model's input of rows of ``feats``: raw features, then lesion summaries when it reads them."""
        rows = np.asarray(rows, dtype=int)
        n_lesion = getattr(self.bundle.site_model, "n_lesion", 0)
        if not n_lesion:
            return feats.raw[rows]
        return np.hstack([feats.raw[rows], lesion_columns(feats.lesions, [feats.readable[i].path for i in rows])])

    def ood_scores(self, feats: ModelFeatures) -> tuple[np.ndarray, np.ndarray] | None:
        """(score, in_distribution) of each readable record; None for a model without a detector."""
        if self.ood is None:
            return None
        scores = self.ood.score_samples(feats.raw)
        return scores, self.ood.in_distribution(scores)


def clone_with_delta(thresholds, delta: float):
    """A copy of fitted thresholds answering with another confidence (its ``delta`` parameter)."""
    import copy

    return copy.deepcopy(thresholds).set_params(delta=delta)


def load_model(model_path: str | Path | None = None, context: RunContext | None = None,
               answers: AnswerSettings | None = None) -> LoadedModel:
    """The model at ``model_path`` (default: the newest in models/), hash-checked and unpickled;
    ``answers``: how it answers (default: the error rate the model recorded)."""
    return LoadedModel(load_bundle(model_path or latest_model()), context, answers)
