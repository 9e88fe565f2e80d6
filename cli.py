"""covidct: screen chest CT images for COVID-19 with deep features.

A thin layer: each command (commands/) parses options, calls one library function
(feature_extractor/ and classifiers/workflows/) and prints what it returns; this module puts them
under one group and turns domain errors into one message and a non-zero exit. Exit codes: 0
done; 1 error (message printed, nothing or only part written); 2 bad command-line usage; 3 done,
but some files could not be read (their reasons are in the output).
"""
from __future__ import annotations

import logging
import sys

import click

from commands.common import EXIT_ERROR
from commands.features import backbones, extract
from commands.predictions import evaluate, predict, report
from commands.serving import serve
from commands.training import calibrate, fit
from covidct_core.errors import CovidCTError
from feature_extractor.library_warnings import counted_warnings


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("covidct-features")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class DomainErrorGroup(click.Group):
    """Turns every domain error into one clear line and exit code 1, and library warnings into
    one line of ours per kind with a count of its repeats (all of them with -v), in one place."""

    def invoke(self, ctx: click.Context):
        with counted_warnings(_warning_line) as tally:
            try:
                return super().invoke(ctx)
            except CovidCTError as exc:
                click.secho(f"Error: {exc}", fg="red", err=True)
                sys.exit(EXIT_ERROR)
            except KeyboardInterrupt:
                click.echo("Interrupted.", err=True)
                sys.exit(130)
            finally:
                for line in tally.lines():
                    _warning_line(line)


def _warning_line(text: str) -> None:
    click.secho(f"  {text}", fg="yellow", err=True)


@click.group(cls=DomainErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="covidct")
@click.option("--verbose", "-v", is_flag=True, help="Also log what the library is doing, and every library "
                                                    "warning in full.")
def main(verbose: bool) -> None:
    """Screen chest CT images for COVID-19 with frozen ImageNet CNN features.

    \b
    Typical use:
      covidct extract --backbone mobilenetv2     # CNN features -> features/*.h5
      covidct fit --clf xgboost                  # tuned by patient-grouped CV
      covidct evaluate                           # metrics on the official test split
      covidct predict scans/                     # -> predictions.csv

    Research use only, not for clinical diagnosis.
    """
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)  # also when an earlier command of this process configured logging


for _command in (backbones, extract, fit, evaluate, predict, calibrate, report, serve):
    main.add_command(_command)


if __name__ == "__main__":
    main()
