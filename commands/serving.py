"""`serve`: a web page and a JSON API for one model."""
from __future__ import annotations

import click

from covidct_core.settings_schema import settings_options
from service.settings import ServeSettings

from .common import model_options


@click.command()
@model_options(load=False)
@settings_options(ServeSettings, "settings")
def serve(model_path, context, answers, settings) -> None:
    """A web page and a JSON API for one model: upload slices or a zipped DICOM study.

    The model is loaded once (with its integrity check); requests queue for the CNN; seen images
    come from the cache. Research use only.
    """
    from classifiers.workflows.model import load_model
    from service.server import check_web_extra, serve as run_server

    check_web_extra()  # before the model: a missing extra is the first thing to fix
    model = load_model(model_path, context, answers)
    if settings.keep_identifiers:
        click.secho("warning: --keep-identifiers: responses carry patient identifiers from DICOM headers",
                    fg="yellow", err=True)
    click.echo(f"serving on http://{settings.host}:{settings.port}/ (API docs at /docs); Ctrl-C stops")
    run_server(model, settings)
