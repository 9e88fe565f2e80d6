"""calibrate: a model taught a new site from a small labeled sample of it, saved as a new model.

Default (``--method site``): the site model (estimators/site_model.py) learns the site beside the
training sources (their images are read again from the paths the model card records; their
features come from the cache); the site's patient-grouped out-of-fold scores calibrate its answer
thresholds. ``--method sigmoid|isotonic`` only recalibrates the frozen model's probabilities and
threshold (a frozen ranking stays a frozen ranking). Either way the site becomes a known source:
the source test recognises its sets (their answers use the site's thresholds, and its model), and
the per-image check takes its images as seen. The original model is not changed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidct_core.errors import CovidCTError
from covidct_core.provenance import command_line, library_versions, utc_now
from feature_extractor.imaging.dataset import load_datasets

from ..estimators.options import CALIBRATION_METHODS
from ..estimators.recalibration import out_of_fold_recalibrated, recalibrate
from ..estimators.site_model import SiteModel
from ..estimators.study_aggregation import study_scores
from ..records.model_card import Harmonization, ModelCard
from ..settings import CalibrateSettings
from .bundle import ModelBundle, save_bundle
from .model import LoadedModel, ModelFeatures, extract_features
from .train import data_fingerprint, training_records

SITE = CALIBRATION_METHODS[0]  # learn the site; the others recalibrate


def learn_site(model: LoadedModel, site: str, feats: ModelFeatures, y: np.ndarray, groups: np.ndarray) -> SiteModel:
    """The site model, trained on the model's training sources and the site's sample."""
    paths = [p for p in model.card.training.data]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise CovidCTError(f"calibrate learns the site beside the model's training images, which are not at {missing[0]} "
                           "any more; give them back, or only recalibrate with --method sigmoid")
    training, _ = training_records(load_datasets(paths))
    train = extract_features(model.extractors, training)
    blocks = [train.raw, feats.raw]
    n_lesion = 0
    if model.lesions is not None:
        blocks = [np.hstack([train.raw, model.lesions.columns(train.readable)]),
                  np.hstack([feats.raw, model.lesions.columns(feats.readable)])]
        n_lesion = blocks[0].shape[1] - train.raw.shape[1]
    X = np.vstack(blocks)
    y_all = np.r_[[r.label for r in train.readable], y].astype(int)
    sources = np.r_[np.array([r.source for r in train.readable], dtype=object), np.full(len(y), site, dtype=object)]
    groups_all = np.r_[np.array([r.group for r in train.readable], dtype=object), np.asarray(groups, dtype=object)]
    return SiteModel(site, n_lesion).fit(X, y_all, sources, groups_all)


@dataclass
class SiteSample:
    """The site's labeled sample: its name, features, labels and patients."""

    site: str
    feats: ModelFeatures
    y: np.ndarray
    groups: np.ndarray


@dataclass
class SiteFit:
    """What calibrate learned of a site: the estimator (the model's, or recalibrated), its out-of-fold
    scores on the sample, the site model (``--method site``), the card's changes and its record."""

    estimator: object
    oof: np.ndarray
    site_model: SiteModel | None
    changes: dict
    how: dict


def calibrate_model(model: LoadedModel, data: str | Path, *, out: str | Path | None = None,
                    settings: CalibrateSettings | None = None) -> ModelBundle:
    """Teach ``model`` the site of the labeled images in ``data`` (one source); save the result
    (default: <model>-<site>.joblib beside the model). See the module docstring."""
    settings = settings or CalibrateSettings()
    if model.bundle.thresholds is None:
        raise CovidCTError(f"{model.path} has no answer thresholds (fitted before the answer policy): refit it first")
    sample = read_site_sample(model, data)
    harmonizer = model.harmonizer.with_site(sample.site, sample.feats.raw)
    fitted = fit_site(model, sample, harmonizer, settings)
    parts = site_answer_parts(model, sample, fitted.oof)
    card = calibrated_card(model, sample, data, harmonizer, parts, fitted)
    out = Path(out) if out else model.path.with_name(f"{model.path.stem}-{sample.site}.joblib")
    if out.resolve() == model.path.resolve():
        raise CovidCTError("calibrate writes a new model; give --out another path than --model")
    return save_bundle(dataclasses.replace(model.bundle, estimator=fitted.estimator, card=card, path=out,
                                           harmonizer=harmonizer, site_model=fitted.site_model, **parts))


def read_site_sample(model: LoadedModel, data: str | Path) -> SiteSample:
    """The labeled images of one site, through the model's feature caches."""
    dataset = load_datasets([data])
    if len(dataset.sources) != 1:
        raise CovidCTError(f"calibrate takes one site; {data} holds {len(dataset.sources)} sources")
    records = [r for r in dataset.records if r.label is not None]
    feats = extract_features(model.extractors, records)
    if not feats.readable:
        raise CovidCTError(f"none of the {len(records)} images in {data} could be read")
    return SiteSample(dataset.sources[0], feats, np.array([r.label for r in feats.readable], dtype=int),
                      np.array([r.group for r in feats.readable]))


def fit_site(model: LoadedModel, sample: SiteSample, harmonizer, settings: CalibrateSettings) -> SiteFit:
    """The site model (``--method site``) or the frozen model recalibrated on the site's sample."""
    if settings.method == SITE:
        site_model = learn_site(model, sample.site, sample.feats, sample.y, sample.groups)
        return SiteFit(model.bundle.estimator, site_model.oof_, site_model,
                       {"threshold": 0.5, "threshold_choice": {"threshold": 0.5, "rule": "default (the site model)"}},
                       {"method": "a site model learned beside the training sources", **site_model.describe()})
    X = harmonizer.transform(sample.feats.raw, [sample.site] * len(sample.y))
    if model.card.lesion_columns:  # the lesion summaries the classifier reads
        X = np.hstack([X, model.lesions.columns(sample.feats.readable)])
    result = recalibrate(model.bundle.estimator, X, sample.y, settings.method, settings.target_sensitivity)
    oof = out_of_fold_recalibrated(model.bundle.estimator, X, sample.y, sample.groups, settings.method)
    return SiteFit(result.estimator, oof, None,
                   {"threshold": result.threshold["threshold"], "threshold_choice": result.threshold},
                   {"method": f"CalibratedClassifierCV({settings.method}) around the frozen model"})


def site_answer_parts(model: LoadedModel, sample: SiteSample, oof: np.ndarray) -> dict:
    """The bundle's answer parts with the site added: its thresholds (slices, and studies when it has ten
    patients of each class with several slices), a known source, images seen."""
    bundle, site = model.bundle, sample.site
    study_p, study_y = study_scores(oof, sample.y, sample.groups, model.card.aggregation)
    study_thresholds = bundle.study_thresholds
    if study_thresholds is not None and min(np.bincount(study_y, minlength=2)) >= 10:
        study_thresholds = study_thresholds.with_group(site, study_p, study_y)
    raw = sample.feats.raw
    return {"thresholds": bundle.thresholds.with_group(site, oof, sample.y), "study_thresholds": study_thresholds,
            "source_test": None if bundle.source_test is None else bundle.source_test.with_source(site, raw,
                                                                                                   sample.groups),
            "ood": None if bundle.ood is None else bundle.ood.with_images(raw)}


def calibrated_card(model: LoadedModel, sample: SiteSample, data: str | Path, harmonizer, parts: dict,
                    fitted: SiteFit) -> ModelCard:
    """The model card with what calibrate changed and how (the site's sample described by counts and
    fingerprint)."""
    card, y, site = model.card, sample.y, sample.site
    fingerprint = data_fingerprint(sample.feats.readable)
    harmonization = card.harmonization
    if harmonizer.active:
        harmonization = Harmonization(harmonization.method, tuple(
            s for s in harmonization.sites if s["name"] != site) + (
            {"name": site, "role": "calibrate", "n_images": len(y), "fingerprint": fingerprint},))
    answers = dict(card.answers or {})
    answers["slices"] = {**answers.get("slices", {}), **parts["thresholds"].describe(model.error_rate)}
    if parts["source_test"] is not None:
        answers["source_test"] = parts["source_test"].describe()
    n_covid = int(np.sum(y == 1))
    return card.with_changes(
        created=utc_now(), command=command_line(), versions=library_versions(), answers=answers,
        harmonization=harmonization, ood=parts["ood"].describe() if parts["ood"] is not None else card.ood,
        calibration={"from_model": str(model.path), "from_model_sha256": card.model_sha256, **fitted.how, "site": site,
                     "data": str(Path(data).resolve()), "n_images": len(y), "n_covid": n_covid,
                     "n_noncovid": len(y) - n_covid, "n_patients": int(len(np.unique(sample.groups))),
                     "fingerprint": fingerprint, "unreadable": len(sample.feats.errors),
                     "site_answers": "the site's thresholds on its patient-grouped out-of-fold scores"},
        **fitted.changes)


def calibrate_summary(bundle: ModelBundle) -> list[str]:
    c = bundle.card.calibration
    low, high = bundle.thresholds.thresholds(bundle.card.error_rate, c["site"])
    pair = ", ".join("none" if t is None else f"{t:.3f}" for t in (low, high))
    lines = [f"taught {Path(c['from_model']).name} the site {c['site']} from {c['n_images']} labeled images of "
             f"{c['n_patients']} patients ({c['n_covid']} COVID, {c['n_noncovid']} NonCOVID): {c['method']}"]
    if "site_cv_auc" in c:
        lines.append(f"  site model: {c['choice']['inputs']} (C={c['choice']['C']}), the site's out-of-fold AUC "
                     f"{max(c['site_cv_auc'].values()):.3f}")
    else:
        t = bundle.card.threshold_choice
        lines.append(f"  threshold {t['threshold']:.3f} ({t['rule']}): sensitivity {t['sample_sensitivity']:.3f}, "
                     f"specificity {t['sample_specificity']:.3f} on that sample (not a held-out estimate)")
    lines += [f"  the site's answer thresholds at error rate {bundle.card.error_rate:g}: ({pair}), on its out-of-fold "
              "scores; its sets of images are now a known source",
              f"saved {bundle.path} and {bundle.path.with_suffix('.json')}"]
    return lines
