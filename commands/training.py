"""Commands that make models: `fit` trains one on cached features, `calibrate` adapts one to a site."""
from __future__ import annotations

from pathlib import Path

import click

from classifiers.estimators.options import DEFAULT_ERROR_RATE
from classifiers.settings import AnswerSettings, CalibrateSettings, FitSettings, LesionSettings
from covidct_core.settings_schema import schema, settings_options

from .common import (
    data_option,
    engine_options,
    feature_settings,
    features_option,
    finish,
    lesion_data_option,
    model_options,
    refuse_together,
    run_context,
)


@click.command()
@settings_options(FitSettings, "fit")
@click.option("--backbone", "-b", "backbone_names", multiple=True,
              help="Backbone(s) whose features are concatenated. Default: every backbone with "
                   "cached features for the training images.")
@data_option
@features_option
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to save the model.  [default: models/<clf>.joblib]")
@click.option("--weights", "weights", multiple=True, metavar="NAME=imagenet|none|FILE",
              help="Pick the cache of these weights when several exist. Repeatable.")
@click.option("--adapt-to", "adapt_to", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of unlabeled images of a site the model will be used on: its feature statistics "
                   "are learned (with --harmonize) and recorded. Repeatable.")
@feature_settings(select=True)
@lesion_data_option
@settings_options(LesionSettings, "lesion")
@settings_options(AnswerSettings, "answers", {"error_rate": DEFAULT_ERROR_RATE})
@engine_options
def fit(fit, backbone_names, data, features_dir, model_path, weights, adapt_to, lesion_data, lesion, answers,
        engine, **settings) -> None:
    """Train a classifier on cached features of the training images (train+val split).

    Hyperparameters are tuned by patient-grouped, stratified CV; the test split is never read.
    With --lesion-data, the lungs and lesion segmentation network is trained on radiologists' masks
    and saved with the model: predict then gives each slice's lungs, lesion and share of lung involved.
    """
    from classifiers.presentation.fit_summary import fit_summary
    from classifiers.workflows.features import FeatureSelection
    from classifiers.workflows.train import fit_model

    if weights and not backbone_names:
        raise click.BadParameter("name the backbones with --backbone when using --weights",
                                 param_hint="--weights")
    if not lesion_data:
        refuse_together("no --lesion-data", {s.flag: s.name for s in schema(LesionSettings) if s.cli} |
                        {"--lesion-features": "lesion_features"})
    bundle = fit_model(data, fit=fit, selection=FeatureSelection.from_options(backbone_names, weights, **settings),
                       context=run_context(features_dir, engine=engine), model_path=model_path, adapt_to=adapt_to,
                       lesion_data=lesion_data, lesion=lesion, answers=answers)
    finish(fit_summary(bundle.card, bundle.path))


@click.command()
@model_options()
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path),
              help="Labeled images of one site (COVID/ and NonCOVID/ folders or a CSV manifest): a small "
                   "sample is enough (e.g. 25 patients).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The new model.  [default: <model>-<site>.joblib beside --model]")
@settings_options(CalibrateSettings, "settings")
def calibrate(model, data, out, settings) -> None:
    """Teach a model a new site from a few of its labeled patients: it learns the site beside its
    training sources (or, with --method sigmoid|isotonic, only recalibrates), the site's answer
    thresholds come from its out-of-fold scores, and its sets of images become a known source.
    Writes a new model."""
    from classifiers.workflows.calibrate import calibrate_model, calibrate_summary

    finish(calibrate_summary(calibrate_model(model, data, out=out, settings=settings)))
