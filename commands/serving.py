"""`serve`: a web page and a JSON API for one model."""
from __future__ import annotations

from pathlib import Path

import click

from .common import explain_method_option, model_options


@click.command()
@model_options(load=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --token-file.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file holding the bearer token every API call must send (Authorization: Bearer ...).")
@click.option("--max-request-mb", type=click.FloatRange(0, min_open=True), default=200.0, show_default=True,
              help="Largest upload per request; bigger ones get 413.")
@click.option("--max-files", type=click.IntRange(1), default=1000, show_default=True,
              help="Most files per request, zip members included.")
@click.option("--keep-identifiers", is_flag=True,
              help="Patient identifiers from DICOM headers in responses (default: removed).")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Dynamic batching: at most this many new slices of concurrent requests in one CNN batch.")
@click.option("--batch-wait-ms", type=click.FloatRange(0, 1000), default=10.0, show_default=True,
              help="Dynamic batching: how long the first new slice waits for others to join its batch.")
@explain_method_option
def serve(model_path, context, answers, host, port, token_file, max_request_mb, max_files, keep_identifiers,
          max_batch, batch_wait_ms, explain_method) -> None:
    """A web page and a JSON API for one model: upload slices or a zipped DICOM study.

    The model is loaded once (with its integrity check); requests queue for the CNN; seen images
    come from the cache. Research use only.
    """
    from classifiers.workflows.model import load_model
    from service.server import check_web_extra, serve as run_server
    from service.settings import ServeSettings

    settings = ServeSettings(host, port, ServeSettings.read_token(token_file), max_request_mb, max_files,
                             keep_identifiers=keep_identifiers, heatmap_method=explain_method,
                             max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    check_web_extra()  # before the model: a missing extra is the first thing to fix
    model = load_model(model_path, context, answers)
    if keep_identifiers:
        click.secho("warning: --keep-identifiers: responses carry patient identifiers from DICOM headers",
                    fg="yellow", err=True)
    click.echo(f"serving on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops")
    run_server(model, settings)
