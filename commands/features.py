"""Commands that make features: `backbones` lists the CNNs, `extract` fills the feature cache."""
from __future__ import annotations

import sys

import click

from .common import (EXIT_PARTIAL, batch_option, data_option, engine_options, feature_settings, features_option,
                     lesion_data_option, offline_option, report_failures, run_context, runtime_option,
                     weights_option)


@click.command()
def backbones() -> None:
    """List the registered backbones and whether their ImageNet weights are here offline."""
    from feature_extractor.weights import backbones_listing

    click.echo(backbones_listing())


@click.command()
@click.option("--backbone", "-b", "backbone_names", multiple=True,
              help="Backbone name (see `backbones`). Repeatable. Needed unless only --lesion-data is checked.")
@data_option
@weights_option
@features_option
@batch_option
@feature_settings(select=False)
@offline_option
@runtime_option
@lesion_data_option
@engine_options
def extract(backbone_names, data, weights, features_dir, batch_size, offline, runtime, lesion_data, engine,
            **settings) -> None:
    """Extract CNN features of every image under --data into the feature cache.

    --data is a labeled dataset (COVID-CT, COVID/ and NonCOVID/ folders, a manifest) or any folder of
    images: labels are needed only by the commands that use them (fit, evaluate). Images already
    cached (same bytes, same backbone, weights and settings) are not run again. Each setting
    (--pooling, --tta, --precision, --crop, --window) has its own cache. --lesion-data: check lesion
    data (every mask against its slice) before fit trains the segmentation network on it.
    """
    from feature_extractor.extract import DatasetExtraction
    from feature_extractor.feature_spec import specs_from_options

    if lesion_data:
        from feature_extractor.segmentation.lesion_data import check_masks, load_lesion_data

        lesions = load_lesion_data(lesion_data)
        check_masks(lesions)
        d = lesions.describe()
        click.echo(f"lesion data: {d['n_slices']} slices of {d['patients']} patients ({d['n_infected']} infected, "
                   f"{d['n_with_masks']} with infection masks, {d['n_with_lung_masks']} with lung masks): every mask fits "
                   "its slice")
        for note in lesions.notes:
            click.secho(f"  note: {note}", fg="yellow", err=True)
        if not backbone_names:
            return
    if not backbone_names:
        raise click.UsageError("Missing option '--backbone' / '-b'.")

    run = DatasetExtraction(data, specs_from_options(backbone_names, weights, **settings),
                            run_context(features_dir, batch_size, offline, engine=engine, runtime=runtime))
    click.echo(run.summary())
    any_failed = False
    for report in run:
        click.echo(report.summary())
        for warning in report.warnings():
            click.secho(f"  warning: {warning}", fg="yellow", err=True)
        report_failures(report.crop_fallbacks, limit=5)
        report_failures(report.failed)
        any_failed = any_failed or bool(report.failed)
    if any_failed:
        sys.exit(EXIT_PARTIAL)
