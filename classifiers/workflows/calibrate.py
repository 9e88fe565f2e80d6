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
from pathlib import Path

import numpy as np

from feature_extractor.errors import CovidCTError
from feature_extractor.imaging.dataset import load_datasets
from feature_extractor.provenance import command_line, library_versions, utc_now

from ..estimators.recalibration import out_of_fold_recalibrated, recalibrate
from ..estimators.site_model import SiteModel
from ..estimators.study_aggregation import study_scores
from ..records.model_card import Harmonization
from .bundle import ModelBundle, save_bundle
from .model import LoadedModel, ModelFeatures, extract_features
from .train import data_fingerprint, training_records

SITE = "site"
METHODS = (SITE, "sigmoid", "isotonic")


def _lesion_columns(model: LoadedModel, feats: ModelFeatures) -> np.ndarray:
    summaries = model.lesions.summaries(feats.good)
    bad = [p for p, s in summaries.items() if isinstance(s, str)]
    if bad:
        raise CovidCTError(f"{len(bad)} images cannot be read for lesion maps, e.g. {bad[0]}: {summaries[bad[0]]}")
    return np.stack([summaries[r.path].classifier_features() for r in feats.good])


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
        blocks = [np.hstack([train.raw, _lesion_columns(model, train)]), np.hstack([feats.raw, _lesion_columns(model, feats)])]
        n_lesion = blocks[0].shape[1] - train.raw.shape[1]
    X = np.vstack(blocks)
    y_all = np.r_[[r.label for r in train.good], y].astype(int)
    sources = np.r_[np.array([r.source for r in train.good], dtype=object), np.full(len(y), site, dtype=object)]
    groups_all = np.r_[np.array([r.group for r in train.good], dtype=object), np.asarray(groups, dtype=object)]
    return SiteModel(site, n_lesion).fit(X, y_all, sources, groups_all)


def calibrate_model(model: LoadedModel, data: str | Path, *, out: str | Path | None = None,
                    method: str = SITE, target_sensitivity: float | None = None) -> ModelBundle:
    """Teach ``model`` the site of the labeled images in ``data`` (one source); save the result
    (default: <model>-<site>.joblib beside the model). See the module docstring."""
    if method not in METHODS:
        raise CovidCTError(f"unknown calibration method {method!r}; valid: {', '.join(METHODS)}")
    dataset = load_datasets([data])
    if len(dataset.sources) != 1:
        raise CovidCTError(f"calibrate takes one site; {data} holds {len(dataset.sources)} sources")
    (site,) = dataset.sources
    if model.bundle.thresholds is None:
        raise CovidCTError(f"{model.path} has no answer thresholds (fitted before the answer policy): refit it first")
    records = [r for r in dataset.records if r.label is not None]
    feats = extract_features(model.extractors, records)
    if not feats.good:
        raise CovidCTError(f"none of the {len(records)} images in {data} could be read")
    y = np.array([r.label for r in feats.good], dtype=int)
    groups = np.array([r.group for r in feats.good])
    card, bundle = model.card, model.bundle
    # The site seen through its own images' statistics (a harmonized model), kept in the new model.
    harmonizer = model.harmonizer.with_site(site, feats.raw)
    changes, site_model, estimator = {}, None, bundle.estimator
    if method == SITE:
        site_model = learn_site(model, site, feats, y, groups)
        oof = site_model.oof_
        changes["threshold"], changes["threshold_choice"] = 0.5, {"threshold": 0.5, "rule": "default (the site model)"}
        how = {"method": "a site model learned beside the training sources", **site_model.describe()}
    else:
        X = harmonizer.transform(feats.raw, [site] * len(y))
        if card.lesion_columns:  # the lesion summaries the classifier reads
            X = np.hstack([X, _lesion_columns(model, feats)])
        result = recalibrate(bundle.estimator, X, y, method, target_sensitivity)
        estimator, oof = result.estimator, out_of_fold_recalibrated(bundle.estimator, X, y, groups, method)
        changes["threshold"], changes["threshold_choice"] = result.threshold["threshold"], result.threshold
        how = {"method": f"CalibratedClassifierCV({method}) around the frozen model"}
    thresholds = bundle.thresholds.with_group(site, oof, y)
    study_p, study_y = study_scores(oof, y, groups, card.aggregation)
    study_thresholds = bundle.study_thresholds
    if study_thresholds is not None and min(np.bincount(study_y, minlength=2)) >= 10:
        study_thresholds = study_thresholds.with_group(site, study_p, study_y)
    source_test = bundle.source_test.with_source(site, feats.raw, groups) if bundle.source_test is not None else None
    ood = bundle.ood.with_images(feats.raw) if bundle.ood is not None else None
    n_covid = int(np.sum(y == 1))
    sample = data_fingerprint(feats.good)
    harmonization = card.harmonization
    if harmonizer.active:
        harmonization = Harmonization(harmonization.method, tuple(
            s for s in harmonization.sites if s["name"] != site) + (
            {"name": site, "role": "calibrate", "n_images": len(y), "fingerprint": sample},))
    answers = dict(card.answers or {})
    answers["slices"] = {**answers.get("slices", {}), **thresholds.describe(model.error_rate)}
    if source_test is not None:
        answers["source_test"] = source_test.describe()
    new = card.with_changes(
        created=utc_now(), command=command_line(), versions=library_versions(), answers=answers,
        harmonization=harmonization, ood=ood.describe() if ood is not None else card.ood,
        calibration={"from_model": str(model.path), "from_model_sha256": card.model_sha256, **how, "site": site,
                     "data": str(Path(data).resolve()), "n_images": len(y), "n_covid": n_covid,
                     "n_noncovid": len(y) - n_covid, "n_patients": int(len(np.unique(groups))), "fingerprint": sample,
                     "unreadable": len(feats.errors),
                     "site_answers": "the site's thresholds on its patient-grouped out-of-fold scores"}, **changes)
    out = Path(out) if out else model.path.with_name(f"{model.path.stem}-{site}.joblib")
    if out.resolve() == model.path.resolve():
        raise CovidCTError("calibrate writes a new model; give --out another path than --model")
    return save_bundle(dataclasses.replace(bundle, estimator=estimator, card=new, path=out, harmonizer=harmonizer,
                                           thresholds=thresholds, study_thresholds=study_thresholds,
                                           source_test=source_test, ood=ood, site_model=site_model))


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
