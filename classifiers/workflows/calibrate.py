"""calibrate: a model recalibrated on a small labeled sample of a new site, saved as a new model.

The site's images are all of ``--data`` (one source); with a harmonized model, the site's
feature statistics are learned from them too and kept in the new model under the site's name,
so that predict on that site's images uses them. The original model is not changed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from feature_extractor.errors import CovidCTError
from feature_extractor.imaging.dataset import load_datasets
from feature_extractor.provenance import command_line, library_versions, utc_now

from ..estimators.conformal import AnswerCalibration
from ..estimators.recalibration import out_of_fold_recalibrated, recalibrate
from ..estimators.study_aggregation import study_scores
from ..records.model_card import Harmonization
from .bundle import ModelBundle, save_bundle
from .model import LoadedModel, extract_features
from .train import data_fingerprint


def calibrate_model(model: LoadedModel, data: str | Path, *, out: str | Path | None = None,
                    method: str = "sigmoid", target_sensitivity: float | None = None) -> ModelBundle:
    """Refit the probability calibration and threshold of a model on the labeled images of one
    site (``data``); save the result (default: <model>-<site>.joblib beside the model)."""
    dataset = load_datasets([data])
    if len(dataset.sources) != 1:
        raise CovidCTError(f"calibrate takes one site; {data} holds {len(dataset.sources)} sources")
    (site,) = dataset.sources
    records = [r for r in dataset.records if r.label is not None]
    feats = extract_features(model.extractors, records)
    if not feats.good:
        raise CovidCTError(f"none of the {len(records)} images in {data} could be read")
    y = np.array([r.label for r in feats.good], dtype=int)
    groups = np.array([r.group for r in feats.good])
    # The site seen through its own images' statistics (a harmonized model), kept in the new model.
    harmonizer = model.harmonizer.with_site(site, feats.raw)
    X = harmonizer.transform(feats.raw, [site] * len(y))
    if model.card.lesion_columns:  # the lesion summaries the classifier reads
        summaries = model.lesions.summaries(feats.good)
        X = np.hstack([X, np.stack([summaries[r.path].classifier_features() for r in feats.good])])
    result = recalibrate(model.bundle.estimator, X, y, method, target_sensitivity)
    answers, conformal = site_answers(model, X, y, groups, method)
    card = model.card
    n_covid = int(np.sum(y == 1))
    sample = data_fingerprint(feats.good)
    harmonization = card.harmonization
    if harmonizer.active:
        harmonization = Harmonization(harmonization.method, tuple(
            s for s in harmonization.sites if s["name"] != site) + (
            {"name": site, "role": "calibrate", "n_images": len(y), "fingerprint": sample},))
    new = card.with_changes(
        created=utc_now(), command=command_line(), versions=library_versions(), conformal=conformal,
        threshold=result.threshold["threshold"], threshold_choice=result.threshold, harmonization=harmonization,
        calibration={"from_model": str(model.path), "from_model_sha256": card.model_sha256,
                     "method": f"CalibratedClassifierCV({method}) around the frozen model", "site": site,
                     "data": str(Path(data).resolve()), "n_images": len(y), "n_covid": n_covid,
                     "n_noncovid": len(y) - n_covid, "fingerprint": sample, "unreadable": len(feats.errors)})
    out = Path(out) if out else model.path.with_name(f"{model.path.stem}-{site}.joblib")
    if out.resolve() == model.path.resolve():
        raise CovidCTError("calibrate writes a new model; give --out another path than --model")
    ood = model.ood.with_reference(site, feats.raw) if model.ood is not None else None  # the site's sets pass
    if ood is not None:
        new = new.with_changes(ood=ood.describe())
    return save_bundle(dataclasses.replace(model.bundle, estimator=result.estimator, card=new, path=out,
                                           harmonizer=harmonizer, conformal=answers, ood=ood))


def site_answers(model, X: np.ndarray, y: np.ndarray, groups: np.ndarray, method: str) -> tuple:
    """The conformal calibration refit on the site's labeled sample (its recalibrated out-of-fold
    probabilities: each image scored by a calibration that did not see its patient), and its
    record. Where the sample is too small for a level, that level keeps the model's own
    calibration, and the record says so."""
    oof = out_of_fold_recalibrated(model.bundle.estimator, X, y, groups, method)
    fresh = AnswerCalibration.fit(oof, y, *study_scores(oof, y, groups, model.card.aggregation))
    old = model.bundle.conformal
    record = {**fresh.describe(), "calibration_data": "the site's labeled sample: recalibrated probabilities, each "
              "image's from a calibration fitted without its patient (5 patient-grouped folds)"}
    for level in ("slices", "studies"):
        if getattr(fresh, level) is None and old is not None and getattr(old, level) is not None:
            setattr(fresh, level, getattr(old, level))
            record[level] = {**getattr(old, level).describe(),
                             "kept": f"from the model's training data: {fresh.notes.get(level)}"}
    return fresh, record


def calibrate_summary(bundle: ModelBundle) -> list[str]:
    c, t = bundle.card.calibration, bundle.card.threshold_choice
    slices = bundle.card.conformal.get("slices", {})
    answers = (f"conformal answers refit on the site's sample ({slices['n_calibration']['COVID']} COVID, "
               f"{slices['n_calibration']['NonCOVID']} NonCOVID out-of-fold scores)" if "kept" not in slices and
               "n_calibration" in slices else f"conformal answers: {slices.get('kept') or slices.get('missing')}")
    return [f"recalibrated {Path(c['from_model']).name} on {c['n_images']} labeled images of {c['site']} "
            f"({c['n_covid']} COVID, {c['n_noncovid']} NonCOVID): {c['method']}", answers,
            f"threshold {t['threshold']:.3f} ({t['rule']}): sensitivity {t['sample_sensitivity']:.3f}, "
            f"specificity {t['sample_specificity']:.3f} on that sample (not a held-out estimate)",
            f"saved {bundle.path} and {bundle.path.with_suffix('.json')}"]
